"""Gaussian-diffusion maths for the JDM (joint image+mask DDPM), in one readable place.

The JDM is a pixel-space DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
arXiv:2006.11239) with the *learned-range* variance of improved DDPM (Nichol & Dhariwal 2021,
"Improved Denoising Diffusion Probabilistic Models", arXiv:2102.09672). The network predicts
``2 * C`` channels: the first ``C`` are epsilon, the second ``C`` are ``v in [-1, 1]`` that
interpolate the reverse-process log variance between ``log beta~_t`` and ``log beta_t``. It is
trained with the hybrid loss ``L_simple + L_vlb`` where ``L_vlb`` sees the predicted mean
*detached*, so it trains only the variance (improved-diffusion's ``RESCALED_MSE``).

This module follows the structure of OpenAI's improved-diffusion (``generators/jdm/objective.py`` and
``losses.py``), written afresh. Notation (Ho et al. 2020, section 2):

* ``beta_t``            the forward noise schedule, ``alpha_t = 1 - beta_t``;
* ``abar_t``            ``prod_{s<=t} alpha_s`` ("alphas_cumprod"), ``abar_{-1} = 1``;
* ``beta~_t``           the posterior variance ``(1 - abar_{t-1}) / (1 - abar_t) * beta_t`` (eq. 7).

Timesteps are 0-based (``t = 0 .. T-1``), as in diffusers and improved-diffusion; the paper's
``t = 1 .. T`` is ours plus one.

Precision: the schedule tables are float64 torch tensors on the CPU. :meth:`GaussianDiffusion.extract`
picks the entries for a batch of timesteps and casts them to the caller's dtype and device; all
other arithmetic happens in the dtype of the inputs (float32 in training).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from nnaug import parameterisation
from nnaug.choices import PREDICTIONS

__all__ = [
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "GaussianDiffusion",
]

#: Half the width of one bin of 8-bit data mapped to [-1, 1] (256 levels, spacing 2/255).
_HALF_BIN = 1.0 / 255.0
#: Floor under probabilities before taking logs, as in improved-diffusion.
_PROB_FLOOR = 1e-12


# ----------------------------------------------------------------------------- distributions
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats.

    Closed form for univariate Gaussians (used for every ``L_{t-1}`` term of Ho et al. 2020,
    eq. 5)::

        KL = 0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2)
                    + (mean1 - mean2)**2 * exp(-logvar2) - 1)

    Arguments broadcast against each other; at least one must be a tensor.
    """
    ref = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl: at least one argument must be a torch.Tensor")
    logvar1, logvar2 = (x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
                        for x in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Fast approximation of the standard normal CDF ``Phi(x)``.

    ``Phi(x) ~= 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (the "GELU tanh"
    approximation, Hendrycks & Gimpel 2016; used by improved-diffusion). Largest absolute error
    about 1.8e-4 over the real line.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-likelihood (nats) of 8-bit data under a discretised Gaussian decoder.

    The reverse-process decoder of Ho et al. 2020, eq. 13: data are 256 levels mapped to
    ``[-1, 1]`` (spacing ``2/255``); the probability of level ``x`` is the Gaussian mass in
    ``[x - 1/255, x + 1/255]``, with the outer edges stretched to ``-inf`` (for ``x = -1``) and
    ``+inf`` (for ``x = 1``) so the 256 probabilities sum to one. ``log_scales`` is the log
    *standard deviation*. The CDF is :func:`approx_standard_normal_cdf`; probabilities are
    floored at 1e-12 before the log, as in improved-diffusion.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(f"discretized_gaussian_log_likelihood: shapes differ: x {tuple(x.shape)}, "
                         f"means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + _HALF_BIN))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - _HALF_BIN))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=_PROB_FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=_PROB_FLOOR))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=_PROB_FLOOR))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first (batch); returns shape ``[B]``."""
    return x.mean(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x


# ----------------------------------------------------------------------------- diffusion
class GaussianDiffusion:
    """Schedule tables and the DDPM / improved-DDPM formulas for one beta schedule.

    ``betas`` is a 1-D schedule of length ``T >= 2`` with values in ``(0, 1]``. Every table is a
    float64 CPU tensor of shape ``[T]``:

    ``betas``, ``alphas_cumprod`` (``abar_t``), ``alphas_cumprod_prev`` (``abar_{t-1}``, 1 at
    ``t = 0``), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``sqrt_recip_alphas_cumprod`` (``1/sqrt(abar_t)``), ``sqrt_recipm1_alphas_cumprod``
    (``sqrt(1/abar_t - 1)``), ``posterior_variance`` (``beta~_t``, eq. 7),
    ``posterior_log_variance_clipped`` (``log beta~_t`` with the ``t = 0`` entry, where
    ``beta~_0 = 0``, replaced by ``log beta~_1`` as in improved-diffusion),
    ``posterior_mean_coef1`` / ``posterior_mean_coef2`` (eq. 7), and ``log_betas``.
    """

    def __init__(self, betas) -> None:
        if isinstance(betas, Tensor):
            betas = betas.detach().to("cpu", torch.float64)
        else:
            betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if betas.dim() != 1:
            raise ValueError(f"GaussianDiffusion: betas must be 1-D, got shape {tuple(betas.shape)}")
        if betas.numel() < 2:
            raise ValueError("GaussianDiffusion: need at least 2 timesteps (the clipped posterior "
                             "log variance at t=0 borrows the t=1 entry)")
        if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("GaussianDiffusion: every beta must be finite and in (0, 1]")

        self.num_timesteps: int = int(betas.numel())
        self.betas = betas
        self.log_betas = torch.log(betas)
        alphas = 1.0 - betas
        # abar_t = prod_{s<=t} alpha_s (Ho et al. 2020, eq. 4).
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

        # improved-diffusion's tables of q(x_t | x_0) (eq. 4) and its inverse (eq. 15), kept so that the two can be
        # compared table by table; the methods below take abar_t and nnaug.parameterisation's formulas.
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)  (eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0, so log would be -inf: reuse beta~_1 at t = 0 (improved-diffusion).
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_scheduler(cls, scheduler) -> "GaussianDiffusion":
        """Build from any diffusers scheduler that has ``.betas`` (the training schedule).

        diffusers keeps its betas in float32, so the tables are float64 computations on those
        float32 values (relative difference to a float64 ``linspace`` about 1e-7).
        """
        betas = getattr(scheduler, "betas", None)
        if betas is None:
            raise TypeError(f"from_scheduler: {type(scheduler).__name__} has no .betas")
        return cls(betas)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, "
                f"beta_0={float(self.betas[0]):.3g}, beta_T={float(self.betas[-1]):.3g})")

    # ------------------------------------------------------------------ helpers
    def extract(self, table: Tensor, t: Tensor, shape, dtype: torch.dtype | None = None) -> Tensor:
        """``table[t]`` reshaped to ``[B, 1, ..., 1]`` and broadcast to ``shape``.

        ``t`` is a LongTensor ``[B]`` of timesteps in ``[0, T)``. The result is cast to ``dtype``
        and put on ``t``'s device. ``shape`` may also be a tensor, whose shape, dtype and device
        are then used. ``dtype=None`` (with a plain shape) means torch's default dtype.
        """
        device = t.device
        if isinstance(shape, Tensor):
            dtype = shape.dtype if dtype is None else dtype
            device = shape.device
            shape = shape.shape
        dtype = torch.get_default_dtype() if dtype is None else dtype
        shape = tuple(shape)
        t_cpu = self._check_t(t, shape)
        out = table[t_cpu].to(dtype=dtype).to(device=device)
        return out.reshape(out.shape[0], *([1] * (len(shape) - 1))).expand(shape)

    def _check_t(self, t: Tensor, shape: Sequence[int]) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError("t must be an integer tensor of shape [B]")
        if len(shape) < 1 or t.shape[0] != shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries but the data's batch is {tuple(shape)[:1]}")
        t_cpu = t.detach().to("cpu", torch.long)
        if t_cpu.numel() and (int(t_cpu.min()) < 0 or int(t_cpu.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got "
                             f"[{int(t_cpu.min())}, {int(t_cpu.max())}]")
        return t_cpu

    def _ex(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return self.extract(table, t, like.shape, dtype=like.dtype).to(like.device)

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        # float64 on the CPU: parameterisation takes its square roots there, then casts to like's dtype and device
        abar = self.alphas_cumprod[self._check_t(t, like.shape)]
        return abar.reshape(-1, *([1] * (like.dim() - 1)))

    def _split(self, model_output: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        c = xt.shape[1]
        if model_output.dim() != xt.dim() or model_output.shape[0] != xt.shape[0] \
                or model_output.shape[1] != 2 * c or model_output.shape[2:] != xt.shape[2:]:
            raise ValueError(f"model_output must have shape [B, 2C, ...] = "
                             f"{(xt.shape[0], 2 * c, *xt.shape[2:])}, got {tuple(model_output.shape)}")
        return model_output[:, :c], model_output[:, c:]

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (Ho et al. eq. 4)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        return parameterisation.q_sample(x0, noise, self._abar(t, x0))

    def q_posterior_mean_variance(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eq. 6-7).

        ``mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t``,
        variance ``beta~_t``. At ``t = 0`` the posterior is a point mass at ``x_0`` (variance 0);
        the log variance returned there is the clipped ``log beta~_1``.
        """
        if x0.shape != xt.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} != xt shape {tuple(xt.shape)}")
        mean = self._ex(self.posterior_mean_coef1, t, xt) * x0 + self._ex(self.posterior_mean_coef2, t, xt) * xt
        variance = self._ex(self.posterior_variance, t, xt)
        log_variance = self._ex(self.posterior_log_variance_clipped, t, xt)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert eq. 4 for ``x_0``: ``x_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps``
        (the ``x0_hat`` of Ho et al. 2020, eq. 15)."""
        if eps.shape != xt.shape:
            raise ValueError(f"eps shape {tuple(eps.shape)} != xt shape {tuple(xt.shape)}")
        return parameterisation.x0_from_eps(xt, eps, self._abar(t, xt))

    # ------------------------------------------------------------------ reverse process
    def learned_range_log_variance(self, v: Tensor, t: Tensor) -> Tensor:
        """Reverse-process log variance from the network's ``v`` (Nichol & Dhariwal 2021, eq. 15).

        ``Sigma_theta = exp(frac * log beta_t + (1 - frac) * log beta~_t)`` with ``frac = (v + 1) / 2``,
        so ``v = +1`` gives ``log beta_t`` (Ho's "fixed large") and ``v = -1`` gives the clipped
        ``log beta~_t`` ("fixed small"). ``v`` is not clamped, as in improved-diffusion.
        """
        frac = (v + 1.0) / 2.0
        max_log = self._ex(self.log_betas, t, v)
        min_log = self._ex(self.posterior_log_variance_clipped, t, v)
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_variance(self, model_output: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = False) -> dict:
        """Parameters of ``p_theta(x_{t-1} | x_t)`` from a ``[B, 2C, ...]`` network output.

        ``eps`` (first C channels) gives ``x0_hat`` by :meth:`predict_x0_from_eps` (clamped to
        ``[-1, 1]`` if ``clip_denoised``), and the mean is the posterior mean ``mu~_t(x0_hat, x_t)``
        (eq. 7); without clipping this equals Ho et al. eq. 11,
        ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``. The log variance comes from
        ``v`` (last C channels) by :meth:`learned_range_log_variance`.

        Returns ``dict(mean=, log_variance=, pred_x0=)``, each shaped like ``xt``.
        """
        eps, v = self._split(model_output, xt)
        log_variance = self.learned_range_log_variance(v, t)
        pred_x0 = self.predict_x0_from_eps(xt, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, xt, t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0}

    # ------------------------------------------------------------------ losses
    def vb_terms_bpd(self, model_output: Tensor, x0: Tensor, xt: Tensor, t: Tensor,
                     clip_denoised: bool = False) -> Tensor:
        """One term of the variational bound (Ho et al. eq. 5), per sample, in bits per dimension.

        For ``t > 0``: ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))``, the true
        posterior taken with its clipped log variance (as improved-diffusion). For ``t == 0``:
        ``L_0 = -log p_theta(x_0 | x_1)`` under the discretised Gaussian decoder (eq. 13), with
        the decoder's scale ``exp(0.5 * log_variance)``. Both are averaged over the non-batch
        dimensions and divided by ``log 2``. Returns shape ``[B]``.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, xt, t)
        out = self.p_mean_variance(model_output, xt, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"])) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl)

    def training_losses(self, model_output: Tensor, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor,
                        prediction: str = "epsilon", learned_variance: bool = True,
                        snr_gamma: float | None = None) -> dict:
        """Hybrid loss ``L_simple + lambda * L_vlb`` of Nichol & Dhariwal 2021 (section 3.1), per sample.

        The defaults are the thesis' (and improved-diffusion's) setting:

        * ``mse`` = mean over non-batch dims of ``(noise - eps)^2`` (Ho et al. eq. 14);
        * ``vb`` = :meth:`vb_terms_bpd` evaluated with ``eps`` *detached* (a stop-gradient on the
          mean, so ``L_vlb`` trains only ``v``; section 3.1), times ``T / 1000`` (improved-
          diffusion's ``RESCALED_MSE``: one sampled term stands in for the sum of ``T`` terms,
          and ``lambda = 1/1000``);
        * ``loss`` = ``mse + vb``.

        Options for faster learning: ``prediction="v"`` regresses ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
        (Salimans & Ho 2022) instead of epsilon; ``learned_variance=False`` drops ``L_vlb`` and the
        variance channels (``model_output`` is then ``[B, C, ...]``); ``snr_gamma`` weights ``mse``
        by min-SNR-gamma (Hang et al. 2023: ``min(SNR, gamma) / SNR`` for epsilon,
        ``min(SNR, gamma) / (SNR + 1)`` for v), so the easy low-noise steps stop dominating.

        ``xt`` must be ``q_sample(x0, t, noise)``. Returns ``dict(loss=, mse=, vb=)`` of shape ``[B]``.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")
        if learned_variance:
            pred, v = self._split(model_output, xt)
        else:
            if model_output.shape != xt.shape:
                raise ValueError(f"model_output must have shape {tuple(xt.shape)}, got {tuple(model_output.shape)}")
            pred, v = model_output, None
        kind = "epsilon" if prediction == "epsilon" else "v_prediction"  # diffusers' names
        abar = self._abar(t, xt)
        mse = mean_flat((parameterisation.target(kind, x0, noise, abar) - pred) ** 2)
        if snr_gamma is not None:
            abar_b = self.extract(self.alphas_cumprod, t, (t.shape[0],), dtype=torch.float64)
            mse = mse * parameterisation.min_snr_weight(kind, abar_b, snr_gamma).to(mse.device, mse.dtype)
        if v is None:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        eps = parameterisation.split_output(kind, pred, xt, abar)[1]
        frozen = torch.cat([eps.detach(), v], dim=1)
        vb = self.vb_terms_bpd(frozen, x0, xt, t, clip_denoised=False) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
