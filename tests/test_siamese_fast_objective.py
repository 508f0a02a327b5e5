"""Siamese-Diffusion's fast objective (v-prediction, cosine schedule, min-SNR): oracle tests, as for the JDM.

An oracle network knows the data is one point x*: from x_t it computes exactly the epsilon or v of
(x*, the noise that made x_t). Every loss term must then be 0, and every sampler must return x*.
An oracle that believes in a shifted point x* + d must give the terms in closed form: each is
min(SNR, gamma) |d x0|^2 under either parameterisation (objective.py's docstring).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nnaug.generators.siamese.building import build_pixel, pixel_scheduler_config
from nnaug.generators.siamese.objective import (L3_MAX_T, min_snr_weight, prediction_target, siamese_terms,
                                                split_prediction)
from nnaug.generators.siamese.sampling import sample_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S, B = 8, 4
OBJECTIVES = {"epsilon": ("epsilon", "linear"), "v": ("v", "cosine")}


class OracleUNet(torch.nn.Module):
    """Predicts the target of the point ``x* + mid residual`` (the residual is the ControlNet's output;
    with ``use_control=False`` the point is x* itself) for the noise that makes x_t from it."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor, prediction: str, use_control: bool):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # device and dtype for SiameseComponents
        self.config = SimpleNamespace(in_channels=target.shape[1])
        self.target, self.alphas_cumprod = target, alphas_cumprod
        self.prediction, self.use_control = prediction, use_control

    def forward(self, x_t, t, encoder_hidden_states=None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, return_dict=False):
        t = torch.as_tensor(t).long().expand(x_t.shape[0])
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        point = self.target + (mid_block_additional_residual if self.use_control else 0) + 0 * self.anchor
        eps = (x_t - abar.sqrt() * point) / (1 - abar).sqrt()
        return (prediction_target(self.prediction, point, eps, abar),)


class HintAsResidual(torch.nn.Module):
    """A ControlNet stand-in whose residual is the hint itself (so the oracle's point is x* + hint)."""

    def forward(self, x_t, t, encoder_hidden_states=None, controlnet_cond=None, return_dict=False):
        return (controlnet_cond,), controlnet_cond


def oracle_components(name: str, use_control: bool, target: torch.Tensor):
    prediction, schedule = OBJECTIVES[name]
    comp = build_pixel(3, 1, S, block_out_channels=(8, 16), cross_attention_dim=8, attention_head_dim=2,
                       text_length=2, dhi_channels=(4, 8), seed=0,
                       scheduler_config=pixel_scheduler_config(prediction, schedule))
    comp.unet = OracleUNet(target, comp.noise_scheduler.alphas_cumprod, comp.prediction_type, use_control)
    if use_control:
        comp.controlnet = HintAsResidual()
    return comp


def point(seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, S, S, generator=g) * 1.6 - 0.8


@pytest.mark.parametrize("name", ["epsilon", "v"])
def test_target_and_split_are_inverse(name):
    prediction = {"epsilon": "epsilon", "v": "v_prediction"}[name]
    x0, noise = point(1, B), torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(2))
    abar = torch.tensor([0.999, 0.7, 0.2, 0.01])
    x_t = abar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar).sqrt().view(-1, 1, 1, 1) * noise
    x0_hat, eps_hat = split_prediction(prediction, prediction_target(prediction, x0, noise, abar), x_t, abar)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
@pytest.mark.parametrize("name", ["epsilon", "v"])
def test_every_term_is_zero_for_the_oracle_and_the_x0_error_otherwise(name, snr_gamma):
    x_star = point()
    comp = oracle_components(name, use_control=True, target=x_star)
    t = torch.tensor([5, 150, 400, 900])
    noise = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(3))
    d_m, d_i = 0.3 * torch.randn(2, B, 3, S, S, generator=torch.Generator().manual_seed(4))
    step, max_steps = 70, 100
    w = step / max_steps
    text = torch.zeros(B, 2, 8)
    x0 = x_star.expand(B, -1, -1, -1)
    with torch.no_grad():
        exact = siamese_terms(comp, x0, torch.zeros_like(d_m), torch.zeros_like(d_i), text, t, noise, step, max_steps,
                              snr_gamma=snr_gamma)
        shifted = siamese_terms(comp, x0, d_m, d_i, text, t, noise, step, max_steps, snr_gamma=snr_gamma)
    assert exact["L3_applied"].tolist() == [True, True, False, False]
    for key in ("L0", "L1", "L2", "L3", "total"):
        assert exact[key].abs().max() < 1e-6, (key, exact[key])

    # believing x* + d_m (mask branch) and x* + d_m + w d_i (image branch): each term is an x0 error
    abar = comp.noise_scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)
    factor = torch.clamp(snr, max=snr_gamma) if snr_gamma else (snr if name == "epsilon" else snr + 1)
    sq = lambda d: d.pow(2).mean(dim=(1, 2, 3))  # noqa: E731
    expected = {"L0": factor * sq(d_m), "L1": factor * sq(d_m + w * d_i), "L2": factor * sq(w * d_i),
                "L3": torch.where(t <= L3_MAX_T, factor * sq(w * d_i), torch.zeros(B))}
    for key, value in expected.items():
        assert torch.allclose(shifted[key], value, rtol=2e-3, atol=1e-6), (key, shifted[key], value)
    assert torch.allclose(shifted["total"], sum(expected.values()), rtol=2e-3)


def test_min_snr_weight_matches_the_published_loss_without_gamma():
    abar = torch.tensor([0.99, 0.5, 0.01])
    assert min_snr_weight("epsilon", abar, None) is None and min_snr_weight("v_prediction", abar, None) is None
    snr = abar / (1 - abar)
    assert torch.allclose(min_snr_weight("epsilon", abar, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert torch.allclose(min_snr_weight("v_prediction", abar, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))
    with pytest.raises(ValueError):
        min_snr_weight("sample", abar, 5.0)


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("dpmsolver++", 20), ("unipc", 15), ("ddpm", 50)])
@pytest.mark.parametrize("name", ["epsilon", "v"])
def test_samplers_recover_a_point_mass(name, sampler, steps):
    x_star = point(5)
    comp = oracle_components(name, use_control=False, target=x_star).eval()
    labels = torch.zeros(2, S, S, dtype=torch.long)
    labels[:, 2:5, 2:6] = 1
    images = sample_images(comp, labels, [1, 2], comp.make_scheduler(sampler), num_inference_steps=steps)
    assert images.shape == (2, 3, S, S)
    assert (images - x_star).abs().max() < 0.05, (name, sampler, (images - x_star).abs().max())


def test_presets_pick_the_objective():
    from nnaug.generators.siamese.model import build_siamese_model
    from nnaug.generators.siamese.presets import PRESETS

    small = dict(resolution=16, channels=(8, 16), attention_resolutions=(8,), dhi_channels=(4, 8))
    tiny = build_siamese_model({**PRESETS["tiny"], **small}, None, 3, 1)
    assert tiny.components.scheduler_config["prediction_type"] == "v_prediction"
    assert tiny.components.scheduler_config["beta_schedule"] == "squaredcos_cap_v2" and tiny.snr_gamma == 5.0
    published = build_siamese_model({**PRESETS["tiny"], **small, "prediction": "epsilon", "noise_schedule": "linear",
                                     "snr_gamma": None}, None, 3, 1)
    assert published.components.scheduler_config == pixel_scheduler_config()
    assert published.components.prediction_type == "epsilon" and published.snr_gamma is None
    assert PRESETS["paper"]["prediction"] == "epsilon" and PRESETS["paper"]["snr_gamma"] is None
