"""Sampling the JDM with diffusers schedulers: joint pairs, or images for given masks.

Mask-conditioned sampling keeps the mask channels on the given mask's forward-noising path:

* deterministic solvers (DDIM, DPM-Solver++, UniPC): one mask noise ``z`` per sample for the whole
  run. The mask channels start at ``sqrt(abar_T) m + sqrt(1 - abar_T) z``, and the model output's
  mask channels are replaced by what a perfect model would predict on that path (epsilon: ``z``;
  v: ``sqrt(abar_t) z - sqrt(1 - abar_t) m``; x0: ``m``). Each solver's own update (its history,
  UniPC's corrector included) then moves the mask channels along exactly
  ``sqrt(abar_t) m + sqrt(1 - abar_t) z``, and the image channels are denoised next to a mask
  that is consistent at every step.
* ancestral DDPM: RePaint-style replacement (thesis Algorithm 2): after every step the mask
  channels are the mask forward-noised with fresh noise to the level just reached.

* flow matching (Euler, Heun): one mask noise ``z`` per sample; the mask channels start at ``z`` and
  their velocity is replaced by the exact ``z - m``, so every step keeps them on ``(1 - t) m + t z``.

After the last step the mask channels are exactly the given mask. Each sample has its own seed
(its initial noise, ancestral noise and mask noise come from a generator of its own), so a seed
gives the same pair whatever batch it is in (the loop is :mod:`nnaug.generators.reverse_process`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnaug.errors import NnaugError
from nnaug.generators.reverse_process import per_sample_noise, reverse_process
from nnaug.masks import decode_channels, encode_labels
from nnaug.parameterisation import flow_interpolate, q_sample, target
from nnaug.samplers import is_flow_config, make_scheduler


def on_mask_path(mask: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``q(m_t | m_0)`` for a given noise draw: ``sqrt(abar_t) m + sqrt(1 - abar_t) z``."""
    return q_sample(mask, noise, alpha_bar)


def on_flow_path(mask: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The straight path of rectified flow at noise level ``s``: ``(1 - s) m + s z``."""
    return flow_interpolate(mask, noise, s)


def oracle_mask_output(mask: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """What a perfect model predicts for the mask channels on the path of ``noise``
    (``flow``: the velocity ``z - m``, the same at every level)."""
    return target(prediction_type, mask, noise, alpha_bar)


class _MaskPath:
    """Where the mask channels of a known mask are at timestep ``t``, and what a perfect model predicts there."""

    def __init__(self, scheduler, device):
        from diffusers import DDPMScheduler

        self.flow = is_flow_config(scheduler)
        self.ancestral = isinstance(scheduler, DDPMScheduler)  # adds fresh noise every step: replacement instead
        if self.flow:
            self.prediction_type, self.scale = "flow", float(scheduler.config.num_train_timesteps)
        else:
            self.prediction_type = scheduler.config.prediction_type
            self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def level(self, t) -> torch.Tensor:
        """abar_t (diffusion) or the flow's noise level s = t / T."""
        return torch.as_tensor(t, dtype=torch.float32) / self.scale if self.flow else self.alphas_cumprod[t]

    def at(self, mask, noise, t) -> torch.Tensor:
        return (on_flow_path if self.flow else on_mask_path)(mask, noise, self.level(t).to(mask.device))

    def oracle(self, mask, noise, t) -> torch.Tensor:
        return oracle_mask_output(mask, noise, self.level(t).to(mask.device), self.prediction_type)


@torch.no_grad()
def sample(unet, scheduler, seeds: list[int], num_steps: int, image_channels: int, mask_channels: int,
           known_mask: torch.Tensor | None = None, progress: bool = False, on_step=None) -> torch.Tensor:
    """Run the reverse process; returns x0 ``[B, C_img + C_mask, S, S]`` in [-1, 1].

    ``known_mask`` ([B, C_mask, S, S] in {-1, 1}) switches to mask-conditioned sampling.
    The scheduler is configured here for ``num_steps`` steps (any count the scheduler allows).
    ``on_step(t_next, x)``, if given, sees the state after every step (tests follow the mask path).
    """
    device = unet.device
    size = unet.config.sample_size
    channels = image_channels + mask_channels
    learned_variance = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    path = _MaskPath(scheduler, device)
    if known_mask is not None:
        known_mask = known_mask.to(device=device, dtype=torch.float32)
    mask_noise = None

    def start(x, timesteps, generators):
        nonlocal mask_noise
        if known_mask is not None:
            mask_noise = per_sample_noise(known_mask.shape[1:], generators, device)
            x[:, image_channels:] = path.at(known_mask, mask_noise, timesteps[0])
        return x

    def predict(x_in, t):
        out = unet(x_in, t).sample.float()
        if not learned_variance:
            out = out[:, :channels]  # the prediction only: these schedulers use their own variance
        if known_mask is not None and not path.ancestral:
            out[:, image_channels:channels] = path.oracle(known_mask, mask_noise, t)
        return out

    def after_step(i, t, x, generators):
        timesteps = scheduler.timesteps
        last = i + 1 == len(timesteps)
        if known_mask is not None and (path.ancestral or last):
            x[:, image_channels:] = known_mask if last else path.at(
                known_mask, per_sample_noise(known_mask.shape[1:], generators, device), timesteps[i + 1])
        if on_step is not None:
            on_step(-1 if last else timesteps[i + 1].item(), x)
        return x

    x = reverse_process(scheduler, seeds, (channels, size, size), num_steps, device, predict, start=start,
                        after_step=after_step, progress=progress)
    return x.clamp(-1, 1)


class JDMGenerator:
    """A trained JDM generator folder, ready to sample (the interface ``nnaug synthesize`` uses)."""

    supports_joint = True

    def __init__(self, folder: Path, info: dict, unet, scheduler_config: dict):
        self.folder, self.info, self.unet, self.scheduler_config = Path(folder), info, unet, scheduler_config
        self.image_channels = info["image_channels"]
        self.mask_channels = info["mask_channels"]
        self.resolution = info["resolution"]

    @classmethod
    def from_pretrained(cls, folder: Path, info: dict | None = None, device: str | torch.device = "cpu") -> "JDMGenerator":
        """The folder alone rebuilds it: nnaug.json, the UNet's config and weights, the noise schedule."""
        from diffusers import DDPMScheduler, UNet2DModel

        from nnaug.generators.folder import read_info

        info = info or read_info(folder)
        unet = UNet2DModel.from_pretrained(str(folder)).to(device).eval()
        config = dict(DDPMScheduler.load_config(str(folder)))
        return cls(folder, info, unet, config)

    def sample(self, seeds: list[int], labels: torch.Tensor | None = None, sampler: str = "ddpm",
               steps: int = 100, guidance_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, C, S, S] in [-1, 1], labels [B, S, S] holding label values 0..K).

        ``guidance_scale``: JDM has no text or class conditioning to guide, so only None (or 1) is accepted."""
        if guidance_scale not in (None, 1, 1.0):
            raise NnaugError("JDM has no conditioning to guide: leave the guidance scale unset")
        scheduler = make_scheduler(sampler, self.scheduler_config)
        known = None if labels is None else encode_labels(labels.to(self.unet.device), self.mask_channels)
        x = sample(self.unet, scheduler, seeds, steps, self.image_channels, self.mask_channels, known_mask=known)
        images = x[:, : self.image_channels].cpu()
        # decoded from the final mask channels in both modes (mask-conditioned: exactly the given mask)
        return images, decode_channels(x[:, self.image_channels:]).cpu()
