"""nnaug.generators.jdm.objective against independent float64 references written out here.

The references are numpy/scipy computations from the equations (closed-form Gaussian KL with
standard deviations, the exact normal CDF, the posterior by multiplying the two Gaussians of
Bayes' rule, Ho et al.'s eq. 11 for the reverse mean), never calls back into the module.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from nnaug.generators.jdm.objective import (
    GaussianDiffusion,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)

T = 1000
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def gd() -> GaussianDiffusion:
    return GaussianDiffusion(BETAS)


def ref_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Schedule quantities straight from the definitions, float64."""
    alphas = 1.0 - betas
    abar = np.array([np.prod(alphas[: i + 1]) for i in range(len(betas))])  # deliberately not cumprod
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {"betas": betas, "alphas": alphas, "abar": abar, "abar_prev": abar_prev}


def bayes_posterior(x0, xt, t, R):
    """q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) * N(x_{t-1}; sqrt(abar_{t-1}) x0, 1-abar_{t-1}).

    Product of two Gaussians in x_{t-1}: precision adds, mean is the precision-weighted average.
    Valid for t >= 1 (at t = 0 the prior on x_{-1} is a point mass).
    """
    a, b = R["alphas"][t], R["betas"][t]
    ap = R["abar_prev"][t]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, b, ap = a.reshape(shape), b.reshape(shape), ap.reshape(shape)
    # likelihood as a function of x_{t-1}: N(x_{t-1}; x_t / sqrt(a), b / a)
    prec = 1.0 / (1.0 - ap) + a / b
    var = 1.0 / prec
    mean = var * (np.sqrt(ap) * x0 / (1.0 - ap) + np.sqrt(a) * xt / b)
    return mean, np.broadcast_to(var, x0.shape)


def kl_std_form(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2)) written with standard deviations."""
    return np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2.0 * s2 ** 2) - 0.5


def exact_discretized_loglik(x, m, s):
    """Exact 8-bit discretised Gaussian log-probability (Ho et al. eq. 13) with the true Phi."""
    hi = np.where(x > 0.999, np.inf, x + 1.0 / 255.0)
    lo = np.where(x < -0.999, -np.inf, x - 1.0 / 255.0)
    return np.log(ndtr((hi - m) / s) - ndtr((lo - m) / s))


def t64(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# ----------------------------------------------------------------------------- free functions
def test_normal_kl_matches_closed_form_and_keeps_dtype():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 4, 3, 5))
    lv1, lv2 = rng.uniform(-6, 2, size=(2, 4, 3, 5))
    ref = kl_std_form(m1, np.exp(0.5 * lv1), m2, np.exp(0.5 * lv2))
    got = normal_kl(t64(m1), t64(lv1), t64(m2), t64(lv2))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    got32 = normal_kl(*(t64(a).float() for a in (m1, lv1, m2, lv2)))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, rtol=1e-4, atol=1e-5)
    # KL(p||p) = 0, KL >= 0, and it is not symmetric
    assert torch.allclose(normal_kl(t64(m1), t64(lv1), t64(m1), t64(lv1)), torch.zeros(()).double(), atol=1e-12)
    assert (got >= 0).all()
    assert not torch.allclose(got, normal_kl(t64(m2), t64(lv2), t64(m1), t64(lv1)))


def test_approx_standard_normal_cdf_close_to_exact():
    x = np.linspace(-7, 7, 2001)
    got = approx_standard_normal_cdf(t64(x)).numpy()
    err = np.abs(got - ndtr(x))
    assert err.max() < 2.5e-4
    assert err.max() > 0  # it is the tanh approximation, not an exact CDF
    assert approx_standard_normal_cdf(torch.zeros(3)).dtype == torch.float32


def test_discretized_log_likelihood_matches_exact_cdf():
    rng = np.random.default_rng(1)
    levels = -1.0 + 2.0 * np.arange(256) / 255.0
    x = rng.choice(levels, size=(6, 64))
    x[:, 0], x[:, 1] = -1.0, 1.0  # both edge bins on every row
    m = np.clip(x + rng.normal(scale=0.02, size=x.shape), -1, 1)
    s = rng.uniform(0.01, 0.1, size=x.shape)
    got = discretized_gaussian_log_likelihood(t64(x), t64(m), t64(np.log(s))).numpy()
    ref = exact_discretized_loglik(x, m, s)
    # the probabilities agree to the CDF approximation's accuracy (two CDF evaluations)
    np.testing.assert_allclose(np.exp(got), np.exp(ref), atol=5e-4)
    big = np.exp(ref) > 0.05
    assert big.sum() > 100
    np.testing.assert_allclose(got[big], ref[big], atol=1e-2)
    # float32 in, float32 out
    got32 = discretized_gaussian_log_likelihood(*(t64(a).float() for a in (x, m, np.log(s))))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), got, atol=1e-3)


def test_discretized_log_likelihood_is_normalised_over_256_levels():
    levels = -1.0 + 2.0 * np.arange(256) / 255.0
    for mean, scale in ((0.3, 0.05), (-0.97, 0.2), (0.999, 0.004)):
        x = t64(levels)
        lp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
        total = lp.exp().sum().item()
        assert abs(total - 1.0) < 1e-6, (mean, scale, total)


# ----------------------------------------------------------------------------- tables
def test_tables_match_definitions(gd):
    R = ref_tables(BETAS)
    abar, abar_prev, betas = R["abar"], R["abar_prev"], R["betas"]
    post_var = betas * (1 - abar_prev) / (1 - abar)
    expected = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "sqrt_recip_alphas_cumprod": 1 / np.sqrt(abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / abar - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
    }
    assert gd.num_timesteps == T
    for name, ref in expected.items():
        table = getattr(gd, name)
        assert table.dtype == torch.float64 and table.device.type == "cpu" and table.shape == (T,), name
        np.testing.assert_allclose(table.numpy(), ref, rtol=1e-12, atol=0, err_msg=name)


def test_posterior_coefficients_equal_bayes(gd):
    """mu~ and beta~ from the tables equal the product-of-Gaussians posterior for every t >= 1."""
    R = ref_tables(BETAS)
    rng = np.random.default_rng(2)
    t = np.arange(1, T)
    x0, xt = rng.normal(size=(2, T - 1, 3))
    ref_mean, ref_var = bayes_posterior(x0, xt, t, R)
    mean, var, logvar = gd.q_posterior_mean_variance(t64(x0), t64(xt), torch.as_tensor(t))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-9)
    np.testing.assert_allclose(logvar.numpy(), np.log(ref_var), rtol=1e-9)
    # t = 0: the posterior is the point mass at x0 (abar_{-1} = 1); log variance is clipped to t = 1's
    x0, xt = rng.normal(size=(2, 2, 3))
    mean0, var0, logvar0 = gd.q_posterior_mean_variance(t64(x0), t64(xt), torch.zeros(2, dtype=torch.long))
    np.testing.assert_allclose(mean0.numpy(), x0, rtol=1e-12, atol=1e-12)
    assert (var0 == 0).all()
    np.testing.assert_allclose(logvar0.numpy(), np.log(R["betas"][1] * (1 - R["abar"][0]) / (1 - R["abar"][1])),
                               rtol=1e-12)


def test_extract_casts_and_broadcasts(gd):
    t = torch.tensor([0, 7, 999])
    out = gd.extract(gd.betas, t, (3, 2, 4, 4), dtype=torch.float32)
    assert out.shape == (3, 2, 4, 4) and out.dtype == torch.float32
    for i, ti in enumerate((0, 7, 999)):
        assert torch.all(out[i] == torch.tensor(BETAS[ti], dtype=torch.float32))
    like = torch.zeros(3, 1, 2, dtype=torch.float64)
    out64 = gd.extract(gd.alphas_cumprod, t, like)
    assert out64.dtype == torch.float64 and out64.shape == like.shape
    assert out64[2, 0, 1].item() == gd.alphas_cumprod[999].item()
    with pytest.raises(ValueError):
        gd.extract(gd.betas, torch.tensor([0, 1000]), (2, 1))
    with pytest.raises(ValueError):
        gd.extract(gd.betas, torch.tensor([0, 1]), (3, 1))
    with pytest.raises(ValueError):
        gd.extract(gd.betas, torch.tensor([0.0, 1.0]), (2, 1))


def test_constructor_rejects_bad_betas():
    for bad in ([0.1], [[0.1, 0.2]], [0.0, 0.1], [0.1, 1.5], [0.1, float("nan")]):
        with pytest.raises(ValueError):
            GaussianDiffusion(bad)


# ----------------------------------------------------------------------------- forward process
def test_q_sample_formula_and_moments(gd):
    R = ref_tables(BETAS)
    rng = np.random.default_rng(3)
    t = np.array([0, 10, 250, 999])
    x0 = rng.uniform(-1, 1, size=(4, 2, 3, 3))
    noise = rng.normal(size=x0.shape)
    got = gd.q_sample(t64(x0), torch.as_tensor(t), t64(noise))
    ab = R["abar"][t].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(got.numpy(), np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-12, atol=1e-14)
    got32 = gd.q_sample(t64(x0).float(), torch.as_tensor(t), t64(noise).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), got.numpy(), atol=1e-6)

    # moments of x_t | x_0 by sampling: mean sqrt(abar_t) x0, variance 1 - abar_t
    n = 20000
    g = torch.Generator().manual_seed(0)
    for ti, x0v in ((1, 0.8), (300, -0.5), (999, 1.0)):
        xs = gd.q_sample(torch.full((n, 1), x0v, dtype=torch.float64), torch.full((n,), ti),
                         torch.randn(n, 1, generator=g, dtype=torch.float64))
        mu, var = math.sqrt(R["abar"][ti]) * x0v, 1 - R["abar"][ti]
        assert abs(xs.mean().item() - mu) < 5 * math.sqrt(var / n)
        assert abs(xs.var().item() / var - 1) < 5 * math.sqrt(2 / n)


def test_one_step_chain_agrees_with_closed_form(gd):
    """x_{t-1} ~ q(.|x0), then one forward step with beta_t, has the moments of q(x_t|x0)."""
    R = ref_tables(BETAS)
    n, ti, x0v = 40000, 500, 0.7
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((n, 1), x0v, dtype=torch.float64)
    xprev = gd.q_sample(x0, torch.full((n,), ti - 1), torch.randn(n, 1, generator=g, dtype=torch.float64))
    b = BETAS[ti]
    xt = math.sqrt(1 - b) * xprev + math.sqrt(b) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mu, var = math.sqrt(R["abar"][ti]) * x0v, 1 - R["abar"][ti]
    assert abs(xt.mean().item() - mu) < 5 * math.sqrt(var / n)
    assert abs(xt.var().item() / var - 1) < 5 * math.sqrt(2 / n)


def test_predict_x0_from_eps_inverts_q_sample(gd):
    rng = np.random.default_rng(4)
    t = torch.tensor([0, 1, 500, 999])
    x0 = rng.uniform(-1, 1, size=(4, 3, 5))
    eps = rng.normal(size=x0.shape)
    xt = gd.q_sample(t64(x0), t, t64(eps))
    np.testing.assert_allclose(gd.predict_x0_from_eps(xt, t, t64(eps)).numpy(), x0, atol=1e-10)
    rec32 = gd.predict_x0_from_eps(xt.float(), t, t64(eps).float())
    assert rec32.dtype == torch.float32
    np.testing.assert_allclose(rec32.numpy(), x0, atol=2e-4)  # 1/sqrt(abar_999) ~ 160 amplifies rounding
    # a wrong eps does not give x0 back
    assert not np.allclose(gd.predict_x0_from_eps(xt, t, t64(eps) + 0.1).numpy(), x0, atol=1e-3)


# ----------------------------------------------------------------------------- reverse process
def ref_learned_range(v, t, R):
    post_var = R["betas"] * (1 - R["abar_prev"]) / (1 - R["abar"])
    min_log = np.log(np.where(np.arange(len(post_var)) == 0, post_var[1], post_var))[t]
    max_log = np.log(R["betas"])[t]
    shape = (-1,) + (1,) * (v.ndim - 1)
    frac = (v + 1) / 2
    return frac * max_log.reshape(shape) + (1 - frac) * min_log.reshape(shape)


def test_learned_range_endpoints_and_interpolation(gd):
    R = ref_tables(BETAS)
    t = torch.tensor([0, 1, 2, 123, 999])
    shape = (5, 2, 3)
    hi = gd.learned_range_log_variance(torch.ones(shape), t)
    lo = gd.learned_range_log_variance(-torch.ones(shape), t)
    assert hi.dtype == torch.float32 and hi.shape == shape
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(hi[i], torch.tensor(math.log(BETAS[ti]), dtype=torch.float32), rtol=1e-6)
        expected_lo = gd.posterior_log_variance_clipped[ti].float()
        assert torch.allclose(lo[i], expected_lo, rtol=1e-6)
    pv = BETAS * (1 - R["abar_prev"]) / (1 - R["abar"])
    assert lo[0, 0, 0].item() == pytest.approx(math.log(pv[1]), rel=1e-6)  # clipped at t = 0
    assert lo[3, 0, 0].item() == pytest.approx(math.log(pv[123]), rel=1e-6)
    assert lo[3, 0, 0].item() < hi[3, 0, 0].item()  # beta~_t < beta_t
    rng = np.random.default_rng(5)
    v = rng.uniform(-1, 1, size=shape)
    got = gd.learned_range_log_variance(t64(v), t).numpy()
    np.testing.assert_allclose(got, ref_learned_range(v, t.numpy(), R), rtol=1e-12)


def test_p_mean_variance_matches_ho_eq11(gd):
    R = ref_tables(BETAS)
    rng = np.random.default_rng(6)
    B, C = 6, 3
    t = np.array([0, 1, 5, 400, 800, 999])
    xt = rng.normal(size=(B, C, 4, 4))
    eps, v = rng.normal(size=(B, C, 4, 4)), rng.uniform(-1, 1, size=(B, C, 4, 4))
    out = gd.p_mean_variance(t64(np.concatenate([eps, v], 1)), t64(xt), torch.as_tensor(t))
    a, b, ab = (R[k][t].reshape(-1, 1, 1, 1) for k in ("alphas", "betas", "abar"))
    ref_mean = (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(a)  # Ho et al. eq. 11
    ref_x0 = (xt - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    np.testing.assert_allclose(out["mean"].numpy(), ref_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out["pred_x0"].numpy(), ref_x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out["log_variance"].numpy(), ref_learned_range(v, t, R), rtol=1e-12)

    clipped = gd.p_mean_variance(t64(np.concatenate([eps, v], 1)), t64(xt), torch.as_tensor(t), clip_denoised=True)
    x0c = np.clip(ref_x0, -1, 1)
    assert (np.abs(ref_x0) > 1).any()
    np.testing.assert_allclose(clipped["pred_x0"].numpy(), x0c, rtol=1e-12)
    ref_mean_c, _ = bayes_posterior(x0c[1:], xt[1:], t[1:], R)
    np.testing.assert_allclose(clipped["mean"][1:].numpy(), ref_mean_c, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(clipped["mean"][0].numpy(), x0c[0], rtol=1e-12)  # t = 0: mean is x0_hat

    out32 = gd.p_mean_variance(t64(np.concatenate([eps, v], 1)).float(), t64(xt).float(), torch.as_tensor(t))
    assert all(o.dtype == torch.float32 for o in out32.values())
    np.testing.assert_allclose(out32["mean"].numpy(), ref_mean, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        gd.p_mean_variance(t64(eps), t64(xt), torch.as_tensor(t))  # C channels, not 2C


def ref_vb_bpd(x0, xt, eps, v, t, R):
    """Per-sample L_{t-1} (KL, t > 0) or L_0 (decoder NLL with exact Phi, t == 0), bits/dim."""
    a, b, ab = (R[k][t].reshape(-1, 1, 1, 1) for k in ("alphas", "betas", "abar"))
    p_mean = (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(a)
    p_std = np.exp(0.5 * ref_learned_range(v, t, R))
    out = np.empty(len(t))
    for i, ti in enumerate(t):
        if ti == 0:
            out[i] = -exact_discretized_loglik(x0[i], p_mean[i], p_std[i]).mean() / LN2
        else:
            q_mean, q_var = bayes_posterior(x0[i:i + 1], xt[i:i + 1], t[i:i + 1], R)
            out[i] = kl_std_form(q_mean, np.sqrt(q_var), p_mean[i:i + 1], p_std[i:i + 1]).mean() / LN2
    return out


def make_batch(rng, t, C=2, S=4):
    B = len(t)
    levels = -1.0 + 2.0 * np.arange(256) / 255.0
    x0 = rng.choice(levels, size=(B, C, S, S))
    noise = rng.normal(size=x0.shape)
    return x0, noise


def test_vb_terms_bpd_matches_reference(gd):
    R = ref_tables(BETAS)
    rng = np.random.default_rng(7)
    t = np.array([0, 0, 1, 50, 999])
    x0, noise = make_batch(rng, t)
    xt = gd.q_sample(t64(x0), torch.as_tensor(t), t64(noise)).numpy()
    eps = noise + rng.normal(scale=0.05, size=noise.shape)  # a decent but imperfect network
    v = rng.uniform(-1, 1, size=x0.shape)
    got = gd.vb_terms_bpd(t64(np.concatenate([eps, v], 1)), t64(x0), t64(xt), torch.as_tensor(t))
    assert got.shape == (len(t),)
    ref = ref_vb_bpd(x0, xt, eps, v, t, R)
    np.testing.assert_allclose(got[t > 0].numpy(), ref[t > 0], rtol=1e-8)
    # t = 0 uses the tanh CDF: within its accuracy of the exact-Phi NLL
    np.testing.assert_allclose(got[t == 0].numpy(), ref[t == 0], rtol=2e-2)
    got32 = gd.vb_terms_bpd(t64(np.concatenate([eps, v], 1)).float(), t64(x0).float(), t64(xt).float(),
                            torch.as_tensor(t))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), got.numpy(), rtol=2e-3, atol=1e-4)


def test_vb_is_zero_for_the_true_posterior(gd):
    """eps = the true noise and v = -1 reproduce q(x_{t-1}|x_t,x0) exactly, so every KL is 0."""
    rng = np.random.default_rng(8)
    t = np.array([1, 2, 300, 999])
    x0, noise = make_batch(rng, t)
    xt = gd.q_sample(t64(x0), torch.as_tensor(t), t64(noise))
    perfect = torch.cat([t64(noise), -torch.ones_like(xt)], 1)
    assert gd.vb_terms_bpd(perfect, t64(x0), xt, torch.as_tensor(t)).abs().max().item() < 1e-9
    # right mean, variance beta_t instead of beta~_t: KL = (r - 1 - log r) / 2 with r = beta~_t / beta_t
    wrong_var = torch.cat([t64(noise), torch.ones_like(xt)], 1)
    got = gd.vb_terms_bpd(wrong_var, t64(x0), xt, torch.as_tensor(t)).numpy()
    R = ref_tables(BETAS)
    r = R["betas"][t] * (1 - R["abar_prev"][t]) / (1 - R["abar"][t]) / R["betas"][t]
    np.testing.assert_allclose(got, 0.5 * (r - 1 - np.log(r)) / LN2, rtol=1e-6, atol=1e-15)
    assert got[0] > 0.1  # at t = 1, beta~ is about half of beta


# ----------------------------------------------------------------------------- training loss
def test_training_losses_values_and_rescaling():
    rng = np.random.default_rng(9)
    betas = np.linspace(2e-4, 0.04, 500)  # T = 500, so vb is scaled by 0.5
    gd = GaussianDiffusion(betas)
    R = ref_tables(betas)
    t = np.array([0, 3, 250, 499])
    x0, noise = make_batch(rng, t)
    xt = gd.q_sample(t64(x0), torch.as_tensor(t), t64(noise)).numpy()
    eps = noise + rng.normal(scale=0.1, size=noise.shape)
    v = rng.uniform(-1, 1, size=x0.shape)
    losses = gd.training_losses(t64(np.concatenate([eps, v], 1)).float(), t64(x0).float(), t64(xt).float(),
                                torch.as_tensor(t), t64(noise).float())
    assert set(losses) == {"loss", "mse", "vb"}
    assert all(val.shape == (4,) and val.dtype == torch.float32 for val in losses.values())
    ref_mse = ((noise - eps) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(losses["mse"].numpy(), ref_mse, rtol=1e-5)
    ref_vb = ref_vb_bpd(x0, xt, eps, v, t, R) * 0.5
    np.testing.assert_allclose(losses["vb"].numpy(), ref_vb, rtol=2e-2)
    np.testing.assert_allclose(losses["vb"][1:].numpy(), ref_vb[1:], rtol=2e-3)
    np.testing.assert_allclose(losses["loss"].numpy(), (losses["mse"] + losses["vb"]).numpy(), rtol=1e-6)


def test_training_losses_gradient_routing(gd):
    rng = np.random.default_rng(10)
    t = torch.tensor([0, 1, 200, 999])
    x0, noise = (t64(a).float() for a in make_batch(rng, t.numpy(), C=3))
    xt = gd.q_sample(x0, t, noise)
    out = torch.cat([noise + 0.1 * torch.randn_like(noise), 0.5 * torch.rand_like(noise) - 0.25], 1)
    C = x0.shape[1]

    mo = out.clone().requires_grad_(True)
    gd.training_losses(mo, x0, xt, t, noise)["vb"].sum().backward()
    assert torch.all(mo.grad[:, :C] == 0), "vb must not train the mean (eps half)"
    assert (mo.grad[:, C:].abs().sum(dim=(1, 2, 3)) > 0).all(), "vb must train v at every t"

    mo = out.clone().requires_grad_(True)
    gd.training_losses(mo, x0, xt, t, noise)["mse"].sum().backward()
    assert (mo.grad[:, :C].abs().sum(dim=(1, 2, 3)) > 0).all()
    assert torch.all(mo.grad[:, C:] == 0), "mse must not reach v"

    # the stop-gradient matters: the undetached bound does depend on eps
    mo = out.clone().requires_grad_(True)
    gd.vb_terms_bpd(mo, x0, xt, t).sum().backward()
    assert mo.grad[:, :C].abs().sum() > 0

    # and the total loss reaches both halves
    mo = out.clone().requires_grad_(True)
    gd.training_losses(mo, x0, xt, t, noise)["loss"].sum().backward()
    assert mo.grad[:, :C].abs().sum() > 0 and mo.grad[:, C:].abs().sum() > 0


# ----------------------------------------------------------------------------- diffusers
def test_from_scheduler_agrees_with_ddpm_scheduler():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          variance_type="learned_range")
    gd = GaussianDiffusion.from_scheduler(sched)
    assert gd.num_timesteps == 1000
    assert torch.equal(gd.betas, sched.betas.double())
    np.testing.assert_allclose(gd.betas.numpy(), BETAS, rtol=1e-6)  # diffusers keeps float32 betas
    np.testing.assert_allclose(gd.alphas_cumprod.numpy(), sched.alphas_cumprod.double().numpy(), rtol=1e-5)

    g = torch.Generator().manual_seed(0)
    # t = 0 is left out: there diffusers' min_log is log(clamp(0, 1e-20)) = -46 where improved-
    # diffusion (and this module) uses the clipped log beta~_1; diffusers' step() adds no noise at t = 0.
    for ti in (1, 2, 10, 500, 998, 999):
        v = torch.rand(2, 3, 3, generator=g) * 2 - 1
        ref = sched._get_variance(ti, predicted_variance=v)
        got = gd.learned_range_log_variance(v.unsqueeze(0), torch.tensor([ti]))[0]
        # diffusers recovers beta_t as 1 - abar_t / abar_{t-1} in float32: ~1e-3 relative error at
        # small t, i.e. ~1e-3 absolute in log space (the two endpoints differ by ~0.7 at t = 1)
        torch.testing.assert_close(got, ref.float(), rtol=0, atol=2e-3)
        # v = +-1 endpoints through diffusers, too
        for end, table in ((1.0, gd.log_betas), (-1.0, gd.posterior_log_variance_clipped)):
            ref_end = sched._get_variance(ti, predicted_variance=torch.full((1,), end))
            assert ref_end.item() == pytest.approx(table[ti].item(), abs=2e-3)
