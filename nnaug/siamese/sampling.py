"""Sampling from a trained Siamese-Diffusion generator: Mask-Diffusion only.

Paper setting: DDIM 50 steps, eta = 0, classifier-free guidance 9 on the *text* only -- the mask
hint stays in the unconditional pass. Pixel mode has no unconditional text, so guidance is off (1).
Any diffusers scheduler works (``components.make_scheduler(DPMSolverMultistepScheduler)`` ...).

Reproducibility: each seed gets its own ``torch.Generator`` (on the CPU) for its initial noise
and for any noise the scheduler adds later, so a seed gives the same image whatever else is in
its batch (up to float rounding of batched kernels).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from nnaug.errors import NnaugError


def _step_kwargs(scheduler, generators: list[torch.Generator], eta: float) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generators  # diffusers' randn_tensor draws per sample from a list
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


@torch.no_grad()
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
        components: a :class:`~nnaug.siamese.backbone.SiameseComponents`.
        masks_onehot_hint: the masks, as labels [B, S, S] (integer, 0..K), the K one-hot channels
            [B, K, S, S] in [0, 1], or a ready hint [B, hint_channels, S, S]
            (see :meth:`SiameseComponents.as_mask_hint`).
        seeds: one int per mask (initial noise and scheduler noise of that sample).
        scheduler: any diffusers scheduler instance, e.g. ``components.make_scheduler()`` (DDIM);
            ``set_timesteps`` is called here.
        num_inference_steps: number of denoising steps.
        guidance_scale: classifier-free guidance on the text; default 9 for sd15, 1 (off) for pixel.
        eta: DDIM's eta (0 = deterministic), passed to schedulers that take it.

    Returns:
        float tensor [B, C_img, S, S] in [-1, 1] on the components' device.
    """
    device, dtype = components.device, components.dtype
    hint = components.as_mask_hint(masks_onehot_hint.to(device)).to(device=device, dtype=dtype)
    b = hint.shape[0]
    seeds = [int(s) for s in seeds]
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} masks")
    if hint.shape[-1] != components.resolution or hint.shape[-2] != components.resolution:
        raise ValueError(f"masks must be {components.resolution}x{components.resolution}, got {tuple(hint.shape[-2:])}")
    guidance = components.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    use_cfg = guidance > 1.0
    if use_cfg and components.backbone == "pixel":
        raise NnaugError("classifier-free guidance needs the sd15 backbone; use guidance scale 1 in pixel mode")

    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    shape = (components.latent_channels, components.latent_size, components.latent_size)
    latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = (latents.to(device) * scheduler.init_noise_sigma).to(dtype)

    text = components.text_embeddings(b)
    if use_cfg:
        # Unconditional first, conditional second; the mask hint is in both passes.
        text = torch.cat([components.text_embeddings(b, unconditional=True), text])
        hint = torch.cat([hint, hint])
    extra = _step_kwargs(scheduler, generators, eta)

    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, desc="sampling", leave=False)
    for t in timesteps:
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        t_batch = t.expand(model_in.shape[0]) if torch.is_tensor(t) else torch.full((model_in.shape[0],), t, device=device)
        control = components.control(model_in, t_batch, text, hint)
        eps = components.predict_eps(model_in, t_batch, text, control)
        if use_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]

    return components.decode_latents(latents).float()
