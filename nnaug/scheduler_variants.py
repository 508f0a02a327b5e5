"""diffusers schedulers with one method each changed, for pixel-space models (see nnaug.samplers).

The DDIM and DDPM ones are adapted from diffusers' own ``step()`` (``DDIMScheduler.step`` and
``DDPMScheduler.step``, diffusers 0.3x-0.4x, Apache-2.0): the same arithmetic with the two changes their
docstrings name. The flow-matching ones change only where their steps fall (``set_timesteps``).
This module imports diffusers; :mod:`nnaug.samplers` imports it only when it builds a scheduler.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from nnaug.parameterisation import eps_from_x0, split_output


def ddim_x0_eps(sample, model_output, a, prediction_type: str, clip: float | None, rederive_eps: bool = True):
    """DDIM's (x0, epsilon) from a network output at ``abar_t = a`` (a number, or a tensor that broadcasts per
    sample): x0 clipped to ``[-clip, clip]`` and, by ``rederive_eps``, epsilon re-derived from the clipped x0
    (improved-diffusion's ``ddim_sample``). The deterministic DDIM step to ``abar_s`` is then
    ``sqrt(abar_s) x0 + sqrt(1 - abar_s) eps``; few-step distillation (nnaug.generators.jdm.distill) takes the
    same step with a different ``a`` per sample."""
    x0, eps = split_output(prediction_type, model_output, sample, a)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if rederive_eps:
            eps = eps_from_x0(sample, x0, a)
    return x0, eps


class ScheduledDDIMScheduler(DDIMScheduler):
    """DDIM that steps to the next *scheduled* timestep and re-derives epsilon from the clipped x0.

    diffusers' DDIM goes to ``t - T // n``, which is not the next scheduled timestep unless n
    divides T; here any step count visits exactly ``self.timesteps`` and ends on x0. And
    diffusers keeps the raw epsilon next to the clipped x0; improved-diffusion's ``ddim_sample``
    re-derives it — on an under-trained pixel model, whose early x0 estimates overshoot
    [-1, 1], the raw form pulled every sample to a grey mean image.
    """

    def previous_timestep(self, timestep) -> int:
        index = int((self.timesteps == timestep).nonzero()[0, 0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = True,
             generator=None, variance_noise=None, return_dict: bool = True):
        prev = self.previous_timestep(timestep)
        a = self.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
        a_prev = (self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod).to(sample.device,
                                                                                            sample.dtype)
        if self.config.thresholding:
            x0, eps = ddim_x0_eps(sample, model_output, a, self.config.prediction_type, clip=None)
            x0 = self._threshold_sample(x0)
            if use_clipped_model_output:
                eps = eps_from_x0(sample, x0, a)
        else:
            clip = self.config.clip_sample_range if self.config.clip_sample else None
            x0, eps = ddim_x0_eps(sample, model_output, a, self.config.prediction_type, clip,
                                  rederive_eps=use_clipped_model_output)
        # Copied from diffusers' DDIMScheduler.step (Song et al. 2021, eq. 12 and 16): the eta-scaled DDIM step
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
        prev_sample = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + sigma * variance_noise
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class NoiseFreeLastStepDDPMScheduler(DDPMScheduler):
    """Ancestral DDPM whose last step returns the x0 estimate without adding noise.

    With respaced (trailing) timesteps the last step starts at t > 0, where diffusers still adds
    noise (from a log variance that mixes in log(1e-20)); improved-diffusion's respaced
    sampler adds none on its last step.
    """

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        out = super().step(model_output, timestep, sample, generator=generator, return_dict=True)
        if int(self.previous_timestep(timestep)) < 0:
            out = DDPMSchedulerOutput(prev_sample=out.pred_original_sample,
                                      pred_original_sample=out.pred_original_sample)
        return out if return_dict else (out.prev_sample, out.pred_original_sample)


def trailing_flow_times(num_steps: int) -> np.ndarray:
    """The ``t`` (diffusers' sigmas) where ``num_steps`` equal steps from t = 1 to 0 start: 1, (n-1)/n, ..., 1/n.

    diffusers' FlowMatch schedulers space their times from 1 down to sigma_min = 1/1000 and then add 0,
    so the last of n steps goes from 0.001 to 0 and changes nothing: n steps integrate like n - 1
    (measured on Kvasir: Euler 2 gave the same images as Euler 1). This is the flow analogue of the
    diffusion samplers' trailing spacing (nnaug.samplers.SPACING)."""
    if num_steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {num_steps}")
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1]


class FlowMatchEulerTrailingScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatch Euler with ``num_steps`` equal steps from t = 1 to 0 (:func:`trailing_flow_times`)."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None:
            sigmas = trailing_flow_times(num_inference_steps)
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


class FlowMatchHeunTrailingScheduler(FlowMatchHeunDiscreteScheduler):
    """diffusers' FlowMatch Heun with ``num_steps`` equal steps from t = 1 to 0 (:func:`trailing_flow_times`):
    Heun on all but the last, which is an Euler step to t = 0, as diffusers does. The interleaving of times
    (each interior time twice: predictor, then corrector) is diffusers' ``set_timesteps``."""

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        super().set_timesteps(num_inference_steps, device=device)  # resets the solver state
        sigmas = torch.from_numpy(trailing_flow_times(num_inference_steps)).to(torch.float32)
        shift = self.config.shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        times = sigmas * self.config.num_train_timesteps
        self.timesteps = torch.cat([times[:1], times[1:].repeat_interleave(2)]).to(device=device)
        sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]]).to(device=device)
