"""Siamese-Diffusion presets (data only: the registry reads these without torch)."""
from __future__ import annotations

from nnaug.errors import NnaugError

PROMPT_DROPOUT = 0.05  # share of steps trained with the empty prompt (classifier-free guidance)
DEFAULT_PROMPT = "A photo of a polyp."

_COMMON = dict(backbone="pixel", base_model=None, prompt=DEFAULT_PROMPT, prompt_dropout=PROMPT_DROPOUT, consistency=True,
               cross_attention_dim=64, attention_head_dim=8, text_length=4, dhi_channels=(16, 32),
               grad_accum=1, weight_decay=0.0, warmup_steps=0, use_ema=True, augment=True, mixed_precision="no",
               seed=0, preview_steps=20)

# Widths are the UNet's block_out_channels (the ControlNet copies its encoder); attention (self +
# cross) sits on every level whose feature map is at most max(attention_resolutions) pixels, and in
# the mid block. channels / layers / attention / dhi_channels apply to the pixel backbone only: the
# sd15 networks come from the Stable Diffusion folder.
PRESETS = {
    # CPU: a fraction of a second to seconds per step; proves the pipeline, not image quality.
    "tiny": dict(_COMMON, resolution=32, channels=(32, 64), layers_per_block=1, attention_resolutions=(16,),
                 steps=200, batch_size=8, lr=5e-4, ema_decay=0.995, checkpoint_every=50),
    # One GPU, about an hour.
    "small": dict(_COMMON, resolution=128, channels=(64, 128, 256, 256), layers_per_block=2,
                  attention_resolutions=(32, 16), cross_attention_dim=256, steps=10000, batch_size=16, lr=1e-4,
                  ema_decay=0.9995, checkpoint_every=1000),
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
    if settings.get("backbone") == "sd15" and not settings.get("base_model"):
        raise NnaugError("--backbone sd15 needs --base-model DIR: a local diffusers Stable Diffusion 1.5 folder "
                         "(unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
