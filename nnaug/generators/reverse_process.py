"""The reverse process every generator samples with: per-sample seeds, a diffusers scheduler, hooks.

Each sample has its own ``torch.Generator`` (on the CPU) for its initial noise and for any noise
drawn later (the scheduler's, a hook's), so a seed gives the same sample whatever batch it is in
(up to float rounding of batched kernels). A generator conditions the process through three hooks:

* ``predict(x_in, t)``: the network output the scheduler steps with (classifier-free guidance, or
  overwriting known channels with what a perfect model would predict, happen here);
* ``start(x, timesteps, generators)``: the initial state (e.g. known channels put on their noising path);
* ``after_step(i, t, x, generators)``: the state after step ``i`` (e.g. RePaint-style replacement).
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch


def per_sample_noise(shape, generators: list[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """One standard-normal draw of ``shape`` per generator, stacked, on ``device``."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(device, dtype)


def _step_kwargs(scheduler, generators: list[torch.Generator], eta: float | None) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generators  # diffusers' randn_tensor draws per sample from a list
    if eta is not None and "eta" in params:
        kwargs["eta"] = eta
    return kwargs


@torch.no_grad()
def reverse_process(scheduler, seeds: Sequence[int], shape: tuple, num_steps: int, device,
                    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, start: Callable | None = None,
                    after_step: Callable | None = None, eta: float | None = None, dtype=torch.float32,
                    progress: bool = False) -> torch.Tensor:
    """Run ``scheduler`` for ``num_steps`` from noise seeded per sample; returns the final state [B, *shape]."""
    from tqdm.auto import tqdm

    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    # flow-matching schedulers start at unit noise and take the state as it is (no scaling hooks)
    x = (per_sample_noise(shape, generators, device) * getattr(scheduler, "init_noise_sigma", 1.0)).to(dtype)
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    if start is not None:
        x = start(x, timesteps, generators)
    extra = _step_kwargs(scheduler, generators, eta)
    for i, t in enumerate(tqdm(timesteps, desc="sampling", leave=False, disable=not progress)):
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = predict(x_in, t)
        x = scheduler.step(out, t, x, **extra, return_dict=True).prev_sample
        if after_step is not None:
            x = after_step(i, t, x, generators)
    return x
