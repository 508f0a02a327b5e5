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


def is_flow_config(config) -> bool:
    """Whether a saved scheduler config, or a scheduler itself, belongs to a flow-matching model (diffusers'
    ``FlowMatch*`` schedulers; a live scheduler's ``.config`` does not carry its class name, so it is asked)."""
    name = type(config).__name__ if hasattr(config, "step") else dict(config).get("_class_name", "")
    return str(name).startswith("FlowMatch")


def make_scheduler(name: str, config: dict, clip_x0: bool = True):
    """A diffusers scheduler for ``name``; ``ddpm`` keeps the config's variance type (e.g. learned range).

    A flow-matching model (its config names a ``FlowMatch*`` scheduler) samples with ``euler`` or
    ``heun`` only, a diffusion model with the others: the two integrate different equations."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from nnaug import scheduler_variants  # imports diffusers: only when a scheduler is made, not for the CLI's choices

    if name not in SAMPLERS:
        raise NnaugError(f"unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}")
    is_flow = is_flow_config(config)
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
        return scheduler_variants.NoiseFreeLastStepDDPMScheduler.from_config({**config, **clip})
    if name == "ddim":
        return scheduler_variants.ScheduledDDIMScheduler.from_config({**base, **clip, "set_alpha_to_one": True})
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config({**base, **threshold, "algorithm_type": "dpmsolver++",
                                                        "solver_order": 2})
    return UniPCMultistepScheduler.from_config({**base, **threshold, "solver_order": 2, "predict_x0": True})


def _flow_scheduler(name: str, config: dict):
    from nnaug.scheduler_variants import FlowMatchEulerTrailingScheduler, FlowMatchHeunTrailingScheduler

    kind = FlowMatchEulerTrailingScheduler if name == "euler" else FlowMatchHeunTrailingScheduler
    return kind.from_config({k: v for k, v in config.items() if k in ("num_train_timesteps", "shift")})


def network_evaluations(name: str, steps: int) -> int:
    """How often a sampler calls the network for ``steps`` steps (Heun: twice per step but the last)."""
    return 2 * steps - 1 if name == "heun" else steps
