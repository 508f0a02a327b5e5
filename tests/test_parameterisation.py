"""nnaug.parameterisation: the x0 / eps / v / flow algebra every objective, sampler and the distillation uses."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from nnaug import parameterisation as P


def _pair(batch=4):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 2, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(batch, 2, 5, 5, generator=g, dtype=torch.float64)
    abar = torch.tensor([0.999, 0.7, 0.2, 4e-5], dtype=torch.float64)[:batch]
    return x0, noise, abar


def test_q_sample_matches_diffusers_add_noise():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0, noise, _ = _pair()
    t = torch.tensor([0, 250, 600, 999])
    expected = scheduler.add_noise(x0, noise, t)
    got = P.q_sample(x0, noise, scheduler.alphas_cumprod.double()[t])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", P.PREDICTION_TYPES)
def test_a_perfect_prediction_splits_back_into_its_pair(kind):
    x0, noise, abar = _pair()
    x_t = P.q_sample(x0, noise, abar)
    got_x0, got_eps = P.split_output(kind, P.target(kind, x0, noise, abar), x_t, abar)
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(got_eps, noise, rtol=0, atol=1e-8)
    # a wrong prediction does not
    assert not torch.allclose(P.split_output(kind, P.target(kind, x0, noise, abar) + 0.1, x_t, abar)[0], x0, atol=1e-3)


def test_v_is_diffusers_velocity_and_the_inverses_agree():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    x0, noise, _ = _pair()
    t = torch.tensor([3, 100, 500, 990])
    abar = scheduler.alphas_cumprod.double()[t]
    torch.testing.assert_close(P.target("v_prediction", x0, noise, abar), scheduler.get_velocity(x0, noise, t),
                               rtol=1e-6, atol=1e-6)
    x_t = P.q_sample(x0, noise, abar)
    torch.testing.assert_close(P.eps_from_x0(x_t, x0, abar), noise, rtol=0, atol=1e-8)
    torch.testing.assert_close(P.x0_from_eps(x_t, noise, abar), x0, rtol=0, atol=1e-8)


def test_min_snr_weight_equalises_the_terms_in_x0():
    """|d eps|^2 = SNR |d x0|^2 and |d v|^2 = (SNR + 1) |d x0|^2 at fixed x_t: both weights give min(SNR, gamma)."""
    x0, noise, abar = _pair()
    x_t = P.q_sample(x0, noise, abar)
    dx0 = torch.full_like(x0, 0.01)
    snr = P.snr(abar)
    for kind in ("epsilon", "v_prediction"):
        # the output error that a clean-sample error dx0 corresponds to at the same x_t
        wrong = P.target(kind, x0 + dx0, P.eps_from_x0(x_t, x0 + dx0, abar), abar)
        err = ((wrong - P.target(kind, x0, noise, abar)) ** 2).mean(dim=(1, 2, 3))
        weighted = P.min_snr_weight(kind, abar, 5.0) * err
        torch.testing.assert_close(weighted, torch.clamp(snr, max=5.0) * 1e-4, rtol=1e-6, atol=0)
    with pytest.raises(ValueError):
        P.min_snr_weight("sample", abar, 5.0)


def test_flow_path_is_straight_with_the_velocity_as_its_slope():
    x0, noise, _ = _pair()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    assert torch.equal(P.flow_interpolate(x0, noise, torch.tensor(0.0, dtype=torch.float64)), x0)
    torch.testing.assert_close(P.flow_interpolate(x0, noise, torch.tensor(1.0, dtype=torch.float64)), noise)
    slope = (P.flow_interpolate(x0, noise, t + 1e-3) - P.flow_interpolate(x0, noise, t)) / 1e-3
    torch.testing.assert_close(slope, P.target("flow", x0, noise), rtol=1e-6, atol=1e-6)
