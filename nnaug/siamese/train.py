"""Siamese-Diffusion in the shared training run (``nnaug train-generator --model siamese``).

:func:`build_siamese_model` turns the resolved settings (a preset from :data:`PRESETS` updated
with the command-line overrides) into a :class:`SiameseModel`, the ``nn.Module`` that
:class:`nnaug.training.Trainer` optimises: ``forward`` is :func:`~nnaug.siamese.objective.siamese_loss`,
``export`` writes :meth:`SiameseComponents.save_pretrained` into the generator folder and
``preview`` samples the Mask-Diffusion branch with DDIM for the contact sheet.

Only the parameters Siamese-Diffusion trains have ``requires_grad`` (see
:func:`~nnaug.siamese.objective.trainable_parameters`); the Trainer optimises (and EMAs) exactly those.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.siamese.backbone import DEFAULT_PROMPT, PROMPT_DROPOUT

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


def attention_levels(resolution: int, channels, attention_resolutions) -> int:
    """How many of the lowest-resolution UNet levels get attention (see :data:`PRESETS`)."""
    sizes = [resolution // 2**i for i in range(len(channels))]
    if not attention_resolutions:
        return 0
    return sum(1 for s in sizes if s <= max(int(r) for r in attention_resolutions))


class SiameseModel(torch.nn.Module):
    """:class:`SiameseComponents` with the Trainer's interface (forward / export / preview)."""

    def __init__(self, components, consistency: bool = True, preview_steps: int = 20):
        super().__init__()
        self.components = components
        self.consistency = bool(consistency)
        self.preview_steps = int(preview_steps)

    def forward(self, batch: dict, step: int, max_steps: int, generator: torch.Generator | None = None):
        from nnaug.siamese.objective import siamese_loss

        out = siamese_loss(self.components, batch, step, max_steps, consistency=self.consistency, generator=generator)
        logs = {k: float(v.detach()) for k, v in out.items()}
        return out["loss"], logs

    def export(self, folder: Path) -> None:
        self.components.save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels: torch.Tensor, seeds: list[int]):
        """Mask-conditioned DDIM samples for the contact sheet: (images in [-1, 1], the given labels)."""
        from nnaug.siamese.sampling import sample_images

        components = self.components
        was_training = components.training
        components.eval()
        try:
            images = sample_images(components, labels.long(), seeds, components.make_scheduler(),
                                   num_inference_steps=self.preview_steps)
        finally:
            components.train(was_training)
        return images.float(), labels.long()


def check_settings(settings: dict) -> None:
    """Problems a user can fix before anything is written (run by train-generator first)."""
    if settings.get("backbone") == "sd15" and not settings.get("base_model"):
        raise NnaugError("--backbone sd15 needs --base-model DIR: a local diffusers Stable Diffusion 1.5 folder "
                         "(unet/, vae/, text_encoder/, tokenizer/, scheduler/)")


def build_siamese_model(settings: dict, raw, image_channels: int, mask_channels: int) -> SiameseModel:
    """The trainable Siamese-Diffusion module for ``settings`` (preset + overrides)."""
    from nnaug.siamese.backbone import build_pixel, load_sd15
    from nnaug.siamese.objective import trainable_parameters

    backbone = settings.get("backbone", "pixel")
    resolution = int(settings["resolution"])
    if backbone == "pixel":
        channels = tuple(int(c) for c in settings["channels"])
        components = build_pixel(
            image_channels, mask_channels, resolution, block_out_channels=channels,
            layers_per_block=int(settings["layers_per_block"]),
            cross_attention_dim=int(settings["cross_attention_dim"]),
            attention_head_dim=int(settings["attention_head_dim"]),
            attention_levels=attention_levels(resolution, channels, settings.get("attention_resolutions")),
            text_length=int(settings["text_length"]),
            dhi_channels=tuple(settings.get("dhi_channels") or (16, 32)),
        )
    elif backbone == "sd15":
        check_settings(settings)
        components = load_sd15(settings["base_model"], mask_channels=mask_channels, image_channels=image_channels,
                               resolution=resolution, prompt=settings.get("prompt") or DEFAULT_PROMPT,
                               prompt_dropout=float(settings.get("prompt_dropout", PROMPT_DROPOUT)),
                               dhi_channels=None)  # default DHI widths for the VAE's downsampling
    else:
        raise NnaugError(f"unknown backbone '{backbone}': choose pixel or sd15")
    trainable_parameters(components)
    return SiameseModel(components, consistency=settings.get("consistency", True),
                        preview_steps=int(settings.get("preview_steps", 20)))
