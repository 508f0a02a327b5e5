"""Sampling the JDM with diffusers schedulers: joint pairs, or images for given masks.

Mask-conditioned sampling is thesis Algorithm 2 done right (RePaint-style replacement): after
every reverse step the mask channels are replaced by the given mask forward-noised to the level
the step just reached, q(m_{t'} | m_0) with t' the *next* timestep; after the last step they are
exactly the given mask. Each sample has its own seed (its initial noise, ancestral noise and mask
noise come from a generator of its own), so a seed gives the same pair whatever batch it is in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnaug.masks import decode_channels, encode_labels
from nnaug.samplers import make_scheduler

def _per_sample_noise(shape, generators, device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
def sample(unet, scheduler, seeds: list[int], num_steps: int, image_channels: int, mask_channels: int,
           known_mask: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Run the reverse process; returns x0 ``[B, C_img + C_mask, S, S]`` in [-1, 1].

    ``known_mask`` ([B, C_mask, S, S] in {-1, 1}) switches to mask-conditioned sampling.
    The scheduler is configured here for ``num_steps`` steps (any count the scheduler allows).
    """
    from tqdm.auto import tqdm

    device = unet.device
    size = unet.config.sample_size
    channels = image_channels + mask_channels
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = _per_sample_noise((channels, size, size), generators, device) * scheduler.init_noise_sigma
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    learned_variance = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    if known_mask is not None:
        known_mask = known_mask.to(device=device, dtype=x.dtype)
        x[:, image_channels:] = _noised(known_mask, alphas_cumprod[timesteps[0]], generators, device)
    for i, t in enumerate(tqdm(timesteps, desc="sampling", leave=False, disable=not progress)):
        model_in = scheduler.scale_model_input(x, t)
        out = unet(model_in, t).sample.float()
        if not learned_variance:
            out = out[:, :channels]  # epsilon only: these schedulers use their own variance
        extra = {"generator": generators} if _takes_generator(scheduler) else {}
        x = scheduler.step(out, t, x, return_dict=True, **extra).prev_sample
        if known_mask is not None:
            if i + 1 < len(timesteps):
                x[:, image_channels:] = _noised(known_mask, alphas_cumprod[timesteps[i + 1]], generators, device)
            else:
                x[:, image_channels:] = known_mask
    return x.clamp(-1, 1)


def _takes_generator(scheduler) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters


def _noised(mask: torch.Tensor, alpha_bar: torch.Tensor, generators, device) -> torch.Tensor:
    noise = _per_sample_noise(mask.shape[1:], generators, device)
    return alpha_bar.sqrt() * mask + (1 - alpha_bar).sqrt() * noise


class JDMGenerator:
    """A trained JDM generator folder, ready to sample (the interface ``nnaug synthesize`` uses)."""

    supports_joint = True

    def __init__(self, folder: Path, info: dict, unet, scheduler_config: dict):
        self.folder, self.info, self.unet, self.scheduler_config = Path(folder), info, unet, scheduler_config
        self.image_channels = info["image_channels"]
        self.mask_channels = info["mask_channels"]
        self.resolution = info["resolution"]

    @classmethod
    def from_pretrained(cls, folder: Path, info: dict, device: str | torch.device = "cpu") -> "JDMGenerator":
        from diffusers import DDPMScheduler, UNet2DModel

        unet = UNet2DModel.from_pretrained(str(folder)).to(device).eval()
        config = dict(DDPMScheduler.load_config(str(folder)))
        return cls(folder, info, unet, config)

    def sample(self, seeds: list[int], labels: torch.Tensor | None = None, sampler: str = "ddpm",
               steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, C, S, S] in [-1, 1], labels [B, S, S] holding label values 0..K)."""
        scheduler = make_scheduler(sampler, self.scheduler_config)
        known = None if labels is None else encode_labels(labels.to(self.unet.device), self.mask_channels)
        x = sample(self.unet, scheduler, seeds, steps, self.image_channels, self.mask_channels, known_mask=known)
        images = x[:, : self.image_channels].cpu()
        # decoded from the final mask channels in both modes (mask-conditioned: exactly the given mask)
        return images, decode_channels(x[:, self.image_channels:]).cpu()
