"""Sampling from a trained Siamese-Diffusion generator: Mask-Diffusion only.

Paper setting: DDIM 50 steps, eta = 0, classifier-free guidance 9 on the *text* only -- the mask
hint stays in the unconditional pass. Pixel mode has no unconditional text, so guidance is off (1).
Any of nnaug's samplers works (``components.make_scheduler("dpmsolver++")`` ...).

Reproducibility: each seed gets its own ``torch.Generator`` for its initial noise and any noise the
scheduler adds later (:mod:`nnaug.generators.reverse_process`), so a seed gives the same image whatever
else is in its batch (up to float rounding of batched kernels).

:class:`SiameseGenerator` is a trained generator folder, ready for ``nnaug synthesize``: it samples
images for given masks only, so ``supports_joint`` is False and ``sample`` needs ``labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from nnaug.errors import NnaugError
from nnaug.generators.reverse_process import reverse_process


@torch.no_grad()
def _checked_hint(components, masks_onehot_hint: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """The masks as the components' hint (on their device, in their dtype), one int seed per mask."""
    device, dtype = components.device, components.dtype
    hint = components.as_mask_hint(masks_onehot_hint.to(device)).to(device=device, dtype=dtype)
    seeds = [int(s) for s in seeds]
    if len(seeds) != hint.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {hint.shape[0]} masks")
    if hint.shape[-1] != components.resolution or hint.shape[-2] != components.resolution:
        raise ValueError(f"masks must be {components.resolution}x{components.resolution}, got {tuple(hint.shape[-2:])}")
    return hint, seeds


def sample_images(
    components,
    masks_onehot_hint: torch.Tensor,
    seeds: Sequence[int],
    scheduler,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    progress: bool = False,
) -> torch.Tensor:
    """Generate one image per mask.

    Args:
        components: a :class:`~nnaug.generators.siamese.backbone.SiameseComponents`.
        masks_onehot_hint: the masks, as labels [B, S, S] (integer, 0..K), the K one-hot channels
            [B, K, S, S] in [0, 1], or a ready hint [B, hint_channels, S, S]
            (see :meth:`SiameseComponents.as_mask_hint`).
        seeds: one int per mask (initial noise and scheduler noise of that sample).
        scheduler: any diffusers scheduler instance, e.g. ``components.make_scheduler()`` (DDIM);
            ``set_timesteps`` is called here. Its ``prediction_type`` must be the components' (what
            ``make_scheduler`` gives).
        num_inference_steps: number of denoising steps.
        guidance_scale: classifier-free guidance on the text; default 9 for sd15, 1 (off) for pixel.
        eta: DDIM's eta (0 = deterministic), passed to schedulers that take it.

    Returns:
        float tensor [B, C_img, S, S] in [-1, 1] on the components' device.
    """
    device, dtype = components.device, components.dtype
    hint, seeds = _checked_hint(components, masks_onehot_hint, seeds)
    b = hint.shape[0]
    guidance = components.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    use_cfg = guidance > 1.0
    if use_cfg and components.backbone == "pixel":
        raise NnaugError("classifier-free guidance needs the sd15 backbone; use guidance scale 1 in pixel mode")

    text = components.text_embeddings(b)
    if use_cfg:
        # Unconditional first, conditional second; the mask hint is in both passes.
        text = torch.cat([components.text_embeddings(b, unconditional=True), text])
        hint = torch.cat([hint, hint])

    def predict(latents, t):
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        t_batch = t.expand(model_in.shape[0]) if torch.is_tensor(t) else torch.full((model_in.shape[0],), t, device=device)
        control = components.control(model_in, t_batch, text, hint)
        # the raw prediction (epsilon or v): the scheduler is built from the same config and converts it
        out = components.predict(model_in, t_batch, text, control)
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        return out

    shape = (components.latent_channels, components.latent_size, components.latent_size)
    latents = reverse_process(scheduler, seeds, shape, num_inference_steps, device, predict, eta=eta, dtype=dtype,
                              progress=progress)
    return components.decode_latents(latents).float()


class SiameseGenerator:
    """Mask-conditioned image sampling from a folder written by ``train-generator --model siamese``."""

    supports_joint = False

    def __init__(self, folder: Path, info: dict, components):
        self.folder, self.info, self.components = Path(folder), dict(info), components
        self.image_channels = int(info.get("image_channels", components.image_channels))
        self.mask_channels = int(info.get("mask_channels", components.mask_channels))
        self.resolution = int(info.get("resolution", components.resolution))

    @classmethod
    def from_pretrained(cls, folder: Path, info: dict | None = None, device: str | torch.device = "cpu",
                        base_model: str | Path | None = None) -> "SiameseGenerator":
        """The folder alone rebuilds it. sd15 generators read their frozen VAE / text encoder from the folder,
        else from ``base_model`` (default: the Stable Diffusion folder recorded at training time)."""
        from nnaug.generators.folder import read_info
        from nnaug.generators.siamese.backbone import SiameseComponents

        info = info or read_info(folder)

        components = SiameseComponents.from_pretrained(folder, base_model=base_model).to(device).eval()
        return cls(folder, info, components)

    def sample(self, seeds: list[int], labels: torch.Tensor | None = None, sampler: str = "ddim", steps: int = 50,
               guidance_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, C, S, S] in [-1, 1], labels [B, S, S]) on the CPU; the labels are the given masks.

        ``guidance_scale``: classifier-free guidance on the text (default 9 for sd15, off for pixel).
        """
        if labels is None:
            raise NnaugError("a Siamese-Diffusion generator cannot sample masks: use --mode mask-conditioned")
        labels = labels.long()
        if labels.dim() != 3 or labels.shape[-1] != self.resolution or labels.shape[-2] != self.resolution:
            raise NnaugError(f"masks must be [B, {self.resolution}, {self.resolution}] for this generator, "
                             f"got {tuple(labels.shape)}")
        scheduler = self.components.make_scheduler(sampler)
        images = sample_images(self.components, labels, seeds, scheduler, num_inference_steps=int(steps),
                               guidance_scale=guidance_scale)
        return images.float().cpu(), labels.cpu()
