"""Sampling schedulers by name, built from a generator's training noise schedule (both generators).

Every sampler visits the same timesteps for the same step count: ``trailing`` spacing (starts at
t = T-1, so the first step sees pure noise) for every generator, whatever the saved config says.

``clip_x0`` is for models that work in pixel space, where data lies in [-1, 1]. DDPM/DDIM clip
their x0 estimate (DDIM then re-derives epsilon from the clipped x0, as improved-diffusion's
``ddim_sample`` does). The multistep solvers (DPM-Solver++, UniPC), which would otherwise use an
unclipped x0, get thresholding to that range — at the top of the schedule (alpha_bar ~ 4e-5) a
slightly wrong epsilon gives x0 far outside it. Latent models pass False.
"""
from __future__ import annotations

from nnaug.errors import NnaugError

DIFFUSION_SAMPLERS = ("ddim", "dpmsolver++", "ddpm", "unipc")
FLOW_SAMPLERS = ("euler", "heun")  # for flow-matching models (nnaug.generators.jdm.flow)
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
SPACING = "trailing"
_DDPM_ONLY = ("variance_type", "clip_sample", "clip_sample_range", "set_alpha_to_one", "thresholding")


def _ddim_class():
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor

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
            kind = self.config.prediction_type
            if kind == "epsilon":
                x0, eps = (sample - (1 - a).sqrt() * model_output) / a.sqrt(), model_output
            elif kind == "v_prediction":
                x0 = a.sqrt() * sample - (1 - a).sqrt() * model_output
                eps = a.sqrt() * model_output + (1 - a).sqrt() * sample
            elif kind == "sample":
                x0, eps = model_output, (sample - a.sqrt() * model_output) / (1 - a).sqrt()
            else:
                raise ValueError(f"unknown prediction_type {kind}")
            if self.config.thresholding:
                x0 = self._threshold_sample(x0)
            elif self.config.clip_sample:
                x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
            if use_clipped_model_output:
                eps = (sample - a.sqrt() * x0) / (1 - a).sqrt()
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

    return ScheduledDDIMScheduler


def _ddpm_class():
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

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

    return NoiseFreeLastStepDDPMScheduler


def make_scheduler(name: str, config: dict, clip_x0: bool = True):
    """A diffusers scheduler for ``name``; ``ddpm`` keeps the config's variance type (e.g. learned range).

    A flow-matching model (its config names a ``FlowMatch*`` scheduler) samples with ``euler`` or
    ``heun`` only, a diffusion model with the others: the two integrate different equations."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name not in SAMPLERS:
        raise NnaugError(f"unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}")
    is_flow = str(dict(config).get("_class_name", "")).startswith("FlowMatch")
    if (name in FLOW_SAMPLERS) != is_flow:
        allowed = FLOW_SAMPLERS if is_flow else DIFFUSION_SAMPLERS
        kind = "flow-matching" if is_flow else "diffusion"
        raise NnaugError(f"sampler '{name}' does not fit this {kind} generator: choose one of {', '.join(allowed)}")
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if is_flow:
        return _flow_scheduler(name, config)
    config["timestep_spacing"] = SPACING
    base = {k: v for k, v in config.items() if k not in _DDPM_ONLY}
    clip = {"clip_sample": clip_x0, "clip_sample_range": 1.0}
    threshold = {"thresholding": True, "sample_max_value": 1.0, "dynamic_thresholding_ratio": 0.995} if clip_x0 else {}
    if name == "ddpm":
        return _ddpm_class().from_config({**config, **clip})
    if name == "ddim":
        return _ddim_class().from_config({**base, **clip, "set_alpha_to_one": True})
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config({**base, **threshold, "algorithm_type": "dpmsolver++",
                                                        "solver_order": 2})
    return UniPCMultistepScheduler.from_config({**base, **threshold, "solver_order": 2, "predict_x0": True})


def _flow_scheduler(name: str, config: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    kind = FlowMatchEulerDiscreteScheduler if name == "euler" else FlowMatchHeunDiscreteScheduler
    return kind.from_config({k: v for k, v in config.items() if k in ("num_train_timesteps", "shift")})


def network_evaluations(name: str, steps: int) -> int:
    """How often a sampler calls the network for ``steps`` steps (Heun: twice per step but the last)."""
    return 2 * steps - 1 if name == "heun" else steps
