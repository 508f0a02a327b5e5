"""A trained Siamese-Diffusion generator folder, ready for ``nnaug synthesize``.

Siamese-Diffusion samples images for given masks only (the Mask-Diffusion branch), so
``supports_joint`` is False and :meth:`SiameseGenerator.sample` needs ``labels``. The samplers are
diffusers schedulers built from the training noise schedule saved with the generator.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.samplers import make_scheduler

class SiameseGenerator:
    """Mask-conditioned image sampling from a folder written by ``train-generator --model siamese``."""

    supports_joint = False

    def __init__(self, folder: Path, info: dict, components):
        self.folder, self.info, self.components = Path(folder), dict(info), components
        self.image_channels = int(info.get("image_channels", components.image_channels))
        self.mask_channels = int(info.get("mask_channels", components.mask_channels))
        self.resolution = int(info.get("resolution", components.resolution))

    @classmethod
    def from_pretrained(cls, folder: Path, info: dict, device: str | torch.device = "cpu",
                        base_model: str | Path | None = None) -> "SiameseGenerator":
        """sd15 generators read their frozen VAE / text encoder from the folder, else from ``base_model``
        (default: the Stable Diffusion folder recorded at training time)."""
        from nnaug.siamese.backbone import SiameseComponents

        components = SiameseComponents.from_pretrained(folder, base_model=base_model).to(device).eval()
        return cls(folder, info, components)

    def sample(self, seeds: list[int], labels: torch.Tensor | None = None, sampler: str = "ddim", steps: int = 50,
               guidance_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, C, S, S] in [-1, 1], labels [B, S, S]) on the CPU; the labels are the given masks.

        ``guidance_scale``: classifier-free guidance on the text (default 9 for sd15, off for pixel).
        """
        from nnaug.siamese.sampling import sample_images

        if labels is None:
            raise NnaugError("a Siamese-Diffusion generator cannot sample masks: use --mode mask-conditioned")
        labels = labels.long()
        if labels.dim() != 3 or labels.shape[-1] != self.resolution or labels.shape[-2] != self.resolution:
            raise NnaugError(f"masks must be [B, {self.resolution}, {self.resolution}] for this generator, "
                             f"got {tuple(labels.shape)}")
        scheduler = make_scheduler(sampler, self.components.scheduler_config,
                                   clip_x0=self.components.backbone == "pixel")  # latents are not clipped
        images = sample_images(self.components, labels, seeds, scheduler, num_inference_steps=int(steps),
                               guidance_scale=guidance_scale)
        return images.float().cpu(), labels.cpu()
