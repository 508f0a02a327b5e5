"""The fixed choices of nnaug's options, in one place: the library checks values against these, and the CLI
offers them (``click.Choice``). Nothing heavy is imported here, so ``nnaug --help`` stays fast."""

MODES = ("joint", "mask-conditioned")  # synthesis: new pairs, or an image for each given mask
MASK_SOURCES = ("train", "augmented")  # mask-conditioned synthesis: the training masks, or augmented copies
DEVICES = ("cpu", "cuda", "mps")
BUDGETS = ("tiny", "small", "gpu")  # nnaug sweep's nnU-Net schedules (nnunet_pretraining.BUDGET_SCHEDULES)
OBJECTIVES = ("diffusion", "flow")
FLOW_T = ("logit-normal", "uniform")  # how flow-matching training draws t
PREDICTIONS = ("epsilon", "v")
NOISE_SCHEDULES = ("linear", "cosine")
LR_SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}  # -> diffusers' names
MIXED_PRECISION = ("no", "fp16", "bf16")
BACKBONES = ("pixel", "sd15")  # siamese
FRD_ROIS = ("both", "image", "mask")
