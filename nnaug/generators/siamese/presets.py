"""Siamese-Diffusion presets (data only: the registry reads these without torch)."""
from __future__ import annotations

from nnaug.errors import NnaugError
from nnaug.choices import NOISE_SCHEDULES, PREDICTIONS

PROMPT_DROPOUT = 0.05  # share of steps trained with the empty prompt (classifier-free guidance)
DEFAULT_PROMPT = "A photo of a polyp."

# The objective. ``paper`` is the published one: epsilon prediction on linear betas, unweighted
# (sd15 takes its schedule and epsilon from the Stable Diffusion folder: prediction and
# noise_schedule apply to the pixel backbone only). ``fast`` is the JDM's tiny/small recipe
# (v-prediction, cosine schedule, min-SNR-5; see objective.py for how each term follows from it).
OBJECTIVE_PAPER = dict(prediction="epsilon", noise_schedule="linear", snr_gamma=None)
OBJECTIVE_FAST = dict(prediction="v", noise_schedule="cosine", snr_gamma=5.0)

_COMMON = dict(backbone="pixel", base_model=None, prompt=DEFAULT_PROMPT, prompt_dropout=PROMPT_DROPOUT, consistency=True,
               cross_attention_dim=64, attention_head_dim=8, text_length=4, dhi_channels=(16, 32),
               grad_accum=1, weight_decay=0.0, warmup_steps=0, use_ema=True, ema_warmup=False, augment=True,
               mixed_precision="no", seed=0, preview_steps=20, objective="diffusion", **OBJECTIVE_PAPER)

# Widths are the UNet's block_out_channels (the ControlNet copies its encoder); attention (self +
# cross) sits on every level whose feature map is at most max(attention_resolutions) pixels, and in
# the mid block. channels / layers / attention / dhi_channels apply to the pixel backbone only: the
# sd15 networks come from the Stable Diffusion folder.
PRESETS = {
    # CPU minutes. Measured on the example dataset (2-core shared CPU, one thread): a step costs about
    # 1.1 CPU-s at batch 8 with these widths (2.3 s at batch 16; (16, 32, 64) at batch 16: 1.7 s), so
    # 200 steps fit in 5 CPU-minutes. With the published objective and the old tiny (ε, linear betas,
    # lr 5e-4, EMA 0.995 from step 0, widths 32,64, batch 8, 200 steps) the contact sheet was colour noise;
    # with this one, step 100 already drew the example's pink-brown background with dark lobed blobs
    # (label 2) and a reddish round one (label 1) under the masks. Batch 16 with widths 16,32,64
    # (85 steps, the same CPU time) drew the same blobs with coloured speckle: narrower did worse.
    # `nnaug demo --model siamese` (2026-11-30): 200 steps in 253 CPU-s; mask consistency 0.564 against a
    # real-only validation Dice of 0.482 (1.17x; the published-objective tiny: 0.66x), FRD 9.40.
    "tiny": dict(_COMMON, resolution=32, channels=(32, 64, 64), layers_per_block=1, attention_resolutions=(8,),
                 steps=200, batch_size=8, lr=2e-3, warmup_steps=30, ema_decay=0.999, ema_warmup=True,
                 checkpoint_every=100, **OBJECTIVE_FAST),
    # One GPU, about an hour.
    "small": dict(_COMMON, resolution=128, channels=(64, 128, 256, 256), layers_per_block=2,
                  attention_resolutions=(32, 16), cross_attention_dim=256, steps=10000, batch_size=16, lr=5e-4,
                  warmup_steps=500, ema_decay=0.9995, ema_warmup=True, checkpoint_every=1000, **OBJECTIVE_FAST),
    # The published setting (Qiu et al. 2025): SD 1.5 + ControlNet/DHI, 384 px, AdamW lr 1e-5 held
    # constant, no gradient clipping, weight decay 0.01, effective batch 48 (6 x 8 accumulation),
    # 3000 steps, no EMA, no augmentation.
    "paper": dict(_COMMON, backbone="sd15", resolution=384, channels=(320, 640, 1280, 1280), layers_per_block=2,
                  attention_resolutions=(48, 24, 12), dhi_channels=None, steps=3000, batch_size=6, grad_accum=8,
                  lr=1e-5, lr_schedule="constant", max_grad_norm=0.0, weight_decay=0.01, use_ema=False,
                  ema_decay=0.9999, augment=False, checkpoint_every=500),
}


def check_settings(settings: dict) -> None:
    """Problems a user can fix before anything is written (run by train-generator first)."""
    if settings.get("prediction", "epsilon") not in PREDICTIONS:
        raise NnaugError(f"--prediction must be epsilon or v, got {settings['prediction']!r}")
    if settings.get("noise_schedule", "linear") not in NOISE_SCHEDULES:
        raise NnaugError(f"--noise-schedule must be linear or cosine, got {settings['noise_schedule']!r}")
    if settings.get("objective", "diffusion") != "diffusion":  # flow matching exists for the JDM only, so far
        raise NnaugError("--objective flow is a JDM option: Siamese-Diffusion trains as a diffusion (leave --objective out)")
    if settings.get("backbone") == "sd15" and not settings.get("base_model"):
        raise NnaugError("--backbone sd15 needs --base-model DIR: a local diffusers Stable Diffusion 1.5 folder "
                         "(unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    if settings.get("backbone", "pixel") == "pixel":  # sd15's factor comes from its VAE and UNet, checked as they load
        from nnaug.generators.registry import check_unet_resolution

        check_unet_resolution(settings)
