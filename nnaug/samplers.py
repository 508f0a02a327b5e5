"""Sampling schedulers by name, built from a generator's training noise schedule (both generators).

``clip_x0`` is for models that work in pixel space, where data lies in [-1, 1]. DDPM/DDIM clip
their x0 estimate (DDIM then re-derives epsilon from the clipped x0, as improved-diffusion's
``ddim_sample`` does). The multistep solvers (DPM-Solver++, UniPC), which would otherwise use an
unclipped x0, get dynamic thresholding to that range — at the top of the schedule
(alpha_bar ~ 4e-5) a slightly wrong epsilon gives x0 far outside it. Latent models pass False.
"""
from __future__ import annotations

from nnaug.errors import NnaugError

SAMPLERS = ("ddim", "dpmsolver++", "ddpm", "unipc")
_DDPM_ONLY = ("variance_type", "clip_sample", "clip_sample_range", "set_alpha_to_one", "thresholding")


def _ddim_class():
    from diffusers import DDIMScheduler

    class ClippedDDIMScheduler(DDIMScheduler):
        """DDIM whose direction term uses the epsilon implied by the clipped x0 (improved-diffusion's
        ``ddim_sample``). diffusers' default keeps the raw epsilon next to the clipped x0; on an
        under-trained pixel model, whose early x0 estimates overshoot [-1, 1], that pulled every
        sample to a grey mean image (JDM and Siamese pixel models on Kvasir), while DDPM did not."""

        def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = True,
                 **kwargs):
            return super().step(model_output, timestep, sample, eta=eta,
                                 use_clipped_model_output=use_clipped_model_output, **kwargs)

    return ClippedDDIMScheduler


def make_scheduler(name: str, config: dict, clip_x0: bool = True):
    """A diffusers scheduler for ``name``; ``ddpm`` keeps the config's variance type (e.g. learned range)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    base = {k: v for k, v in config.items() if k not in _DDPM_ONLY}
    clip = {"clip_sample": clip_x0, "clip_sample_range": 1.0}
    threshold = {"thresholding": True, "sample_max_value": 1.0, "dynamic_thresholding_ratio": 0.995} if clip_x0 else {}
    if name == "ddpm":
        return DDPMScheduler.from_config({**config, **clip})
    if name == "ddim":
        return _ddim_class().from_config({**base, **clip, "set_alpha_to_one": True})
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config({**base, **threshold, "algorithm_type": "dpmsolver++",
                                                        "solver_order": 2})
    if name == "unipc":
        return UniPCMultistepScheduler.from_config({**base, **threshold, "solver_order": 2, "predict_x0": True})
    raise NnaugError(f"unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}")
