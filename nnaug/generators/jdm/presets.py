"""JDM presets and its noise-schedule config (data only: the registry reads these without torch)."""
from __future__ import annotations

# Widths are block_out_channels (one per resolution level); attention is put on the levels whose
# feature map is in ``attention_resolutions``.
#
# ``paper`` is the thesis' setting (reference §1 / thesis Table 4.1): linear betas, epsilon
# prediction with learned-range variance and the hybrid loss, constant-ish lr 1e-4, EMA 0.9999.
# ``tiny`` and ``small`` use what measured faster here (docs/train-generator.md, "Recipe"):
# v-prediction on a cosine schedule with min-SNR-5 weighting, no learned variance (the few-step
# solvers do not use it), a higher lr with warm-up, and an EMA whose decay warms up with the step
# count so that a short run's EMA is not dominated by its first, random weights.
OBJECTIVE_PAPER = dict(prediction="epsilon", learned_variance=True, snr_gamma=None, noise_schedule="linear")
OBJECTIVE_FAST = dict(prediction="v", learned_variance=False, snr_gamma=5.0, noise_schedule="cosine")
DIFFUSION = dict(objective="diffusion", flow_t="logit-normal")  # --objective flow switches to rectified flow (below)
PRESETS = {
    "tiny": dict(resolution=32, channels=(32, 64, 64), layers_per_block=1, attention_resolutions=(8,),
                 attention_head_dim=32, steps=700, batch_size=16, lr=2e-3, warmup_steps=50, ema_decay=0.999,
                 ema_warmup=True, checkpoint_every=350, **OBJECTIVE_FAST, **DIFFUSION),
    "small": dict(resolution=128, channels=(64, 64, 128, 256, 256), layers_per_block=2, attention_resolutions=(16, 8),
                  attention_head_dim=64, steps=20000, batch_size=16, lr=5e-4, warmup_steps=500, ema_decay=0.9995,
                  ema_warmup=True, checkpoint_every=1000, **OBJECTIVE_FAST, **DIFFUSION),
    "paper": dict(resolution=256, channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
                  attention_resolutions=(16, 8), attention_head_dim=128, steps=60000, batch_size=10, lr=1e-4,
                  ema_decay=0.9999, checkpoint_every=5000, **OBJECTIVE_PAPER, **DIFFUSION),
}
# --objective flow (nnaug/generators/jdm/flow.py): rectified flow on the same UNet; --flow-t picks how training
# draws t. The default sampler of a flow JDM: Heun, 9 steps = 17 network evaluations, the cheapest row close to
# its own 25-evaluation set on Kvasir (benchmarks/jdm_sampling.py; fewer lost the fine texture; docs/train-generator.md).
OBJECTIVES = ("diffusion", "flow")
FLOW_DEFAULT_SAMPLING = ("heun", 9)
PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}

# T = 1000, linear betas 1e-4 -> 0.02, epsilon prediction, learned-range variance (the paper setting).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                        clip_sample_range=1.0)  # timestep spacing: nnaug.samplers.SPACING, for every generator


def scheduler_config(prediction: str = "epsilon", learned_variance: bool = True, noise_schedule: str = "linear",
                     **_) -> dict:
    """The diffusers noise-schedule config saved with a JDM (what every sampler is built from)."""
    return {**SCHEDULER_CONFIG, "prediction_type": PREDICTION_TYPES[prediction],
            "variance_type": "learned_range" if learned_variance else "fixed_small",
            "beta_schedule": BETA_SCHEDULES[noise_schedule]}
