"""The diffusion parameterisations in one place: x0, epsilon, v and the flow velocity, and how each
follows from the others. Every objective, sampler and the distillation calls these; nothing else
writes the formulas.

Variance-preserving diffusion (Ho et al. 2020, eq. 4 and 15; v: Salimans & Ho 2022), with
``abar = alphas_cumprod[t]``::

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps                       (q_sample)
    v   = sqrt(abar) eps - sqrt(1 - abar) x0                       (the v target)
    x0  = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  = sqrt(abar) x_t - sqrt(1 - abar) v
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)   = sqrt(abar) v + sqrt(1 - abar) x_t
    SNR = abar / (1 - abar)

Rectified flow (Liu et al. 2022; the convention of SD3 and diffusers' ``FlowMatch*``), ``t in [0, 1]``::

    x_t = (1 - t) x0 + t eps,        u = dx_t/dt = eps - x0

Prediction types use diffusers' names: ``epsilon``, ``v_prediction``, ``sample`` (x0) and, for
rectified flow, ``flow`` (the velocity). ``abar`` (and flow's ``t``) may be a number, a 0-d tensor,
one value per sample (``[B]``) or already broadcastable (``[B, 1, ..., 1]``). The coefficients
``sqrt(abar)`` and ``sqrt(1 - abar)`` are computed in ``abar``'s own precision and device and only
then cast to the data's: pass a float64 ``abar`` (as :class:`GaussianDiffusion` does) and
``1 - abar`` near ``t = 0`` keeps its digits in a float32 model.
"""
from __future__ import annotations

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def per_sample(value, like: Tensor) -> Tensor:
    """``value`` in ``like``'s dtype and device, shaped to broadcast per sample: ``[B]`` -> ``[B, 1, ..., 1]``."""
    value = torch.as_tensor(value).to(device=like.device, dtype=like.dtype)
    return value.view(-1, *([1] * (like.dim() - 1))) if value.dim() == 1 and like.dim() > 1 else value


def _roots(abar, like: Tensor) -> tuple[Tensor, Tensor]:
    """``sqrt(abar)`` and ``sqrt(1 - abar)``, computed in abar's precision, shaped and cast like ``like``."""
    a = torch.as_tensor(abar)
    return per_sample(a.sqrt(), like), per_sample((1 - a).sqrt(), like)


def q_sample(x0: Tensor, noise: Tensor, abar) -> Tensor:
    """``x_t ~ q(x_t | x0)`` for a given noise draw: ``sqrt(abar) x0 + sqrt(1 - abar) noise``."""
    signal, sigma = _roots(abar, x0)
    return signal * x0 + sigma * noise


def eps_from_x0(x_t: Tensor, x0: Tensor, abar) -> Tensor:
    """The noise that puts ``x0`` at ``x_t``: ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
    signal, sigma = _roots(abar, x_t)
    return (x_t - signal * x0) / sigma


def x0_from_eps(x_t: Tensor, eps: Tensor, abar) -> Tensor:
    """The clean sample under ``x_t`` for the noise ``eps``: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    signal, sigma = _roots(abar, x_t)
    return (x_t - sigma * eps) / signal


def target(prediction_type: str, x0: Tensor, noise: Tensor, abar=None) -> Tensor:
    """What a perfect network predicts for the pair (x0, noise): noise, v, x0, or the flow velocity."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        signal, sigma = _roots(abar, x0)
        return signal * noise - sigma * x0
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return flow_velocity(x0, noise)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def split_output(prediction_type: str, output: Tensor, x_t: Tensor, abar) -> tuple[Tensor, Tensor]:
    """A network output at ``x_t`` -> its (x0, eps) estimates, unclipped."""
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, output, abar), output
    if prediction_type == "v_prediction":
        signal, sigma = _roots(abar, x_t)
        return signal * x_t - sigma * output, signal * output + sigma * x_t
    if prediction_type == "sample":
        return output, eps_from_x0(x_t, output, abar)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def snr(abar) -> Tensor:
    """Signal-to-noise ratio ``abar / (1 - abar)``."""
    abar = torch.as_tensor(abar)
    return abar / (1 - abar)


def min_snr_weight(prediction_type: str, abar, gamma: float) -> Tensor:
    """min-SNR-gamma loss weight (Hang et al. 2023), per ``abar``: ``min(SNR, gamma) / SNR`` for an epsilon
    target, ``min(SNR, gamma) / (SNR + 1)`` for v (the same weighting expressed on x0)."""
    s = snr(abar)
    clipped = torch.clamp(s, max=float(gamma))
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    raise ValueError(f"min-SNR weighting needs an epsilon or v prediction, not {prediction_type!r}")


def flow_interpolate(x0: Tensor, noise: Tensor, t) -> Tensor:
    """The straight path of rectified flow: ``x_t = (1 - t) x0 + t noise``."""
    t = per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def flow_velocity(x0: Tensor, noise: Tensor) -> Tensor:
    """The rectified-flow target ``u = noise - x0`` (the same everywhere on the straight path)."""
    return noise - x0
