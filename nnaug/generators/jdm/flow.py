"""Rectified flow for the JDM: the same UNet, a straight path from data to noise, velocity prediction.

Rectified flow (Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003; flow matching, Lipman
et al. 2022, arXiv:2210.02747), in the convention of Stable Diffusion 3 (Esser et al. 2024) and
diffusers' ``FlowMatch*`` schedulers:

* ``x_t = (1 - t) x_0 + t eps`` for ``t in [0, 1]`` (t = 1 is pure noise, as a diffusion's T);
* the network sees ``t * 1000`` as its timestep and predicts the velocity ``u = dx_t/dt = eps - x_0``;
* the loss is ``|| u - net(x_t, 1000 t) ||^2`` per sample, with ``t`` drawn from a logit-normal
  (``sigmoid(N(0, 1))``: SD3's choice, most weight in the middle where the task is hardest) or a
  uniform distribution.

Sampling integrates ``dx/dt = u`` from t = 1 to 0 with diffusers' ``FlowMatchEulerDiscreteScheduler``
(``euler``) or ``FlowMatchHeunDiscreteScheduler`` (``heun``); their sigmas are the ``t`` above.
For a known mask ``m`` with one noise draw ``z``, the mask channels' exact velocity is ``z - m`` at
every ``t``; any explicit Runge-Kutta step then moves them along ``(1 - t) m + t z`` exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from nnaug.choices import FLOW_T as T_DISTRIBUTIONS
from nnaug.parameterisation import flow_velocity

TIME_SCALE = 1000.0  # the network's timestep input is t * 1000, as diffusers' FlowMatch timesteps
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}


def sample_t(batch: int, distribution: str, generator: torch.Generator | None, device) -> Tensor:
    """``t`` in (0, 1) per sample: ``sigmoid(N(0, 1))`` (logit-normal) or ``U(0, 1)``."""
    if distribution == "logit-normal":
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    if distribution == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown t distribution {distribution!r}: choose one of {', '.join(T_DISTRIBUTIONS)}")


def training_loss(model_output: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """Per-sample mean squared error between the predicted and the true velocity; shape ``[B]``."""
    if model_output.shape != x0.shape:
        raise ValueError(f"model_output must have shape {tuple(x0.shape)}, got {tuple(model_output.shape)}")
    return ((flow_velocity(x0, noise) - model_output) ** 2).mean(dim=tuple(range(1, x0.dim())))
