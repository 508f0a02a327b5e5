"""Siamese-Diffusion in the shared training run (``nnaug train-generator --model siamese``).

:func:`build_siamese_model` turns the resolved settings (a preset from ``presets.PRESETS`` updated
with the command-line overrides) into a :class:`SiameseModel`, the ``nn.Module`` that
:class:`nnaug.generator_training.GeneratorTrainer` optimises: ``forward`` is :func:`~nnaug.generators.siamese.objective.siamese_loss`,
``export`` writes :meth:`SiameseComponents.save_pretrained` into the generator folder and
``preview`` samples the Mask-Diffusion branch with DDIM for the contact sheet.

Only the parameters Siamese-Diffusion trains have ``requires_grad`` (see
:func:`~nnaug.generators.siamese.objective.trainable_parameters`); the GeneratorTrainer optimises (and EMAs) exactly those.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.generators.siamese.presets import DEFAULT_PROMPT, PROMPT_DROPOUT, check_settings

def attention_levels(resolution: int, channels, attention_resolutions) -> int:
    """How many of the lowest-resolution UNet levels get attention (see :data:`PRESETS`)."""
    sizes = [resolution // 2**i for i in range(len(channels))]
    if not attention_resolutions:
        return 0
    return sum(1 for s in sizes if s <= max(int(r) for r in attention_resolutions))


class SiameseModel(torch.nn.Module):
    """:class:`SiameseComponents` as a TrainableGenerator (forward / export / preview)."""

    def __init__(self, components, consistency: bool = True, preview_steps: int = 20, snr_gamma: float | None = None):
        super().__init__()
        self.components = components
        self.consistency = bool(consistency)
        self.preview_steps = int(preview_steps)
        self.snr_gamma = None if snr_gamma is None else float(snr_gamma)

    def forward(self, batch: dict, step: int, max_steps: int, generator: torch.Generator | None = None):
        from nnaug.generators.siamese.objective import siamese_loss

        out = siamese_loss(self.components, batch, step, max_steps, consistency=self.consistency, generator=generator,
                           snr_gamma=self.snr_gamma)
        logs = {k: float(v.detach()) for k, v in out.items()}
        return out["loss"], logs

    def export(self, folder: Path) -> None:
        self.components.save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels: torch.Tensor, seeds: list[int]):
        """Mask-conditioned DDIM samples for the contact sheet: (images in [-1, 1], the given labels)."""
        from nnaug.generators.siamese.sampling import sample_images

        components = self.components
        was_training = components.training
        components.eval()
        try:
            images = sample_images(components, labels.long(), seeds, components.make_scheduler(),
                                   num_inference_steps=self.preview_steps)
        finally:
            components.train(was_training)
        return images.float(), labels.long()


def build_siamese_model(settings: dict, raw, image_channels: int, mask_channels: int) -> SiameseModel:
    """The trainable Siamese-Diffusion module for ``settings`` (preset + overrides)."""
    from nnaug.generators.siamese.building import build_pixel, load_sd15, pixel_scheduler_config
    from nnaug.generators.siamese.objective import trainable_parameters

    backbone = settings.get("backbone", "pixel")
    resolution = int(settings["resolution"])
    check_settings(settings)
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
            scheduler_config=pixel_scheduler_config(settings["prediction"], settings["noise_schedule"]),
        )
    elif backbone == "sd15":
        components = load_sd15(settings["base_model"], mask_channels=mask_channels, image_channels=image_channels,
                               resolution=resolution, prompt=settings.get("prompt") or DEFAULT_PROMPT,
                               prompt_dropout=float(settings.get("prompt_dropout", PROMPT_DROPOUT)),
                               dhi_channels=None)  # default DHI widths for the VAE's downsampling
    else:
        raise NnaugError(f"unknown backbone '{backbone}': choose pixel or sd15")
    trainable_parameters(components)
    return SiameseModel(components, consistency=settings.get("consistency", True),
                        preview_steps=int(settings.get("preview_steps", 20)), snr_gamma=settings.get("snr_gamma"))
