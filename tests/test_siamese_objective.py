"""Siamese-Diffusion objective: which term trains what, when L3 applies, the ablation."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
import torch

from nnaug.generators.siamese.building import build_pixel
from nnaug.generators.siamese.objective import siamese_loss, siamese_terms, trainable_parameters

S, B = 16, 4


@pytest.fixture
def comp():
    c = build_pixel(3, 1, S, block_out_channels=(8, 16), cross_attention_dim=16, attention_head_dim=2,
                    text_length=2, dhi_channels=(4, 8), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero convs non-zero, so that no gradient path is hidden behind a zero
        for p in c.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    trainable_parameters(c)
    return c


def inputs(comp, t=(10, 150, 400, 900), seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, S, S, generator=g) * 2 - 1
    label = (torch.rand(B, S, S, generator=g) > 0.5).long()
    mask_hint = comp.mask_hint(label).clone().requires_grad_(True)
    image_hint = comp.image_hint(image).clone().requires_grad_(True)
    return dict(x0=image, mask_hint=mask_hint, image_hint=image_hint, text=comp.text_embeddings(B),
                timesteps=torch.tensor(t), noise=torch.randn(B, 3, S, S, generator=g))


def grads(module):
    return [p.grad for p in module.parameters()]


def nonzero(gs) -> bool:
    return any(g is not None and torch.count_nonzero(g) > 0 for g in gs)


def clear(comp, x):
    comp.zero_grad(set_to_none=True)
    for name in ("mask_hint", "image_hint"):
        x[name].grad = None


def test_gradient_routing(comp):
    x = inputs(comp)
    terms = siamese_terms(comp, **x, step=50, max_steps=100)

    # L0 (Mask-Diffusion) trains the UNet, the ControlNet and the text embedding; it never sees the image hint.
    terms["L0"].sum().backward(retain_graph=True)
    assert nonzero(grads(comp.unet)) and nonzero(grads(comp.controlnet)) and nonzero([comp.text_embedding.grad])
    assert x["image_hint"].grad is None and nonzero([x["mask_hint"].grad])
    clear(comp, x)

    # L1 (Image-Diffusion) trains only the ControlNet: no UNet weight, no text embedding, no mask residuals.
    terms["L1"].sum().backward(retain_graph=True)
    assert not nonzero(grads(comp.unet))
    assert all(g is None for g in grads(comp.unet))
    assert comp.text_embedding.grad is None
    assert nonzero(grads(comp.controlnet)) and nonzero(grads(comp.dhi))
    assert nonzero([x["image_hint"].grad]) and x["mask_hint"].grad is None
    clear(comp, x)

    # L2 pulls Mask-Diffusion towards stopgrad(eps_i): its gradient comes only via the mask branch.
    terms["L2"].sum().backward(retain_graph=True)
    assert x["image_hint"].grad is None
    assert nonzero([x["mask_hint"].grad]) and nonzero(grads(comp.controlnet)) and nonzero(grads(comp.unet))
    clear(comp, x)

    # L3 is computed on a detached re-noised input: nothing flows back into the Image-Diffusion branch.
    assert bool(terms["L3_applied"].any())
    terms["L3"].sum().backward()
    assert x["image_hint"].grad is None
    assert nonzero([x["mask_hint"].grad]) and nonzero(grads(comp.unet)) and nonzero(grads(comp.controlnet))


def test_image_branch_weight_is_step_over_max_steps(comp):
    x = inputs(comp)
    # At step 0 the image residuals have weight 0, so both branches give the same eps: L2 = 0, L1 = L0.
    with torch.no_grad():
        early = siamese_terms(comp, **x, step=0, max_steps=100)
        mid = siamese_terms(comp, **x, step=50, max_steps=100)
    assert torch.allclose(early["L2"], torch.zeros(B), atol=1e-10) and torch.allclose(early["L1"], early["L0"])
    assert bool((mid["L2"] > 1e-6).all()) and torch.allclose(mid["L0"], early["L0"])

    # eps_i is UNet(x_t, stopgrad(mask residuals) + w * image residuals): rebuild it for w = 0.5.
    with torch.no_grad():
        t = x["timesteps"]
        x_t = comp.noise_scheduler.add_noise(x["x0"], x["noise"], t)
        dm, mm = comp.control(x_t, t, x["text"], x["mask_hint"])
        di, mi = comp.control(x_t, t, x["text"], x["image_hint"])
        eps_i = comp.predict_eps(x_t, t, x["text"], ([a + 0.5 * b for a, b in zip(dm, di)], mm + 0.5 * mi))
    expected_l1 = (eps_i - x["noise"]).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(mid["L1"], expected_l1, atol=1e-6)


def test_l3_switches_on_after_a_third_and_only_for_small_t(comp):
    t = (100, 900, 200, 201)
    x = inputs(comp, t=t)
    with torch.no_grad():
        before = siamese_terms(comp, **x, step=33, max_steps=99)  # 33 > 99/3 is False
        after = siamese_terms(comp, **x, step=34, max_steps=99)
        all_large_t = siamese_terms(comp, **inputs(comp, t=(300, 400, 500, 999)), step=90, max_steps=99)
    assert not bool(before["L3_applied"].any()) and torch.equal(before["L3"], torch.zeros(B))
    assert after["L3_applied"].tolist() == [True, False, True, False]
    assert after["L3"][0] > 0 and after["L3"][2] > 0
    assert after["L3"][1] == 0 and after["L3"][3] == 0
    assert not bool(all_large_t["L3_applied"].any()) and torch.equal(all_large_t["L3"], torch.zeros(B))
    for terms in (before, after):
        expected = terms["L0"] + terms["L1"] + terms["L2"] + terms["L3_applied"].float() * terms["L3"]
        assert torch.allclose(terms["total"], expected)
    assert torch.allclose(after["total"] - before["total"], after["L3"] + after["L1"] - before["L1"]
                          + after["L2"] - before["L2"], atol=1e-5)

    # L3's value: Mask-Diffusion on x0_hat(eps_i) re-noised with the same eps,
    # i.e. x_t + sqrt(1 - abar) (eps - eps_i), has to predict eps.
    with torch.no_grad():
        i = torch.tensor([0, 2])
        tt = x["timesteps"][i]
        x_t = comp.noise_scheduler.add_noise(x["x0"], x["noise"], x["timesteps"])[i]
        dm, mm = comp.control(x_t, tt, x["text"][i], x["mask_hint"][i])
        di, mi = comp.control(x_t, tt, x["text"][i], x["image_hint"][i])
        w = 34 / 99
        eps_i = comp.predict_eps(x_t, tt, x["text"][i], ([a + w * b for a, b in zip(dm, di)], mm + w * mi))
        abar = comp.noise_scheduler.alphas_cumprod[tt].view(-1, 1, 1, 1)
        x_hat = x_t + (1 - abar).sqrt() * (x["noise"][i] - eps_i)
        eps_hat = comp.predict_eps(x_hat, tt, x["text"][i], comp.control(x_hat, tt, x["text"][i], x["mask_hint"][i]))
    assert torch.allclose(after["L3"][i], (eps_hat - x["noise"][i]).pow(2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(B, 3, S, S, generator=g) * 2 - 1, "label": (torch.rand(B, S, S, generator=g) > 0.5).long()}


def test_consistency_false_is_plain_controlnet(comp):
    out = siamese_loss(comp, batch(), step=90, max_steps=100, consistency=False, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "L0"}
    assert torch.allclose(out["loss"], out["L0"])
    terms = siamese_terms(comp, **inputs(comp), step=90, max_steps=100, consistency=False)
    assert set(terms) == {"L0", "total"} and torch.equal(terms["total"], terms["L0"])


def test_siamese_loss_on_a_batch(comp):
    params = trainable_parameters(comp)
    assert {id(p) for p in params} == {id(p) for p in comp.parameters()}  # pixel: everything trains
    out = siamese_loss(comp, batch(), step=90, max_steps=100, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "L0", "L1", "L2", "L3", "L3_samples"}
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert not any(out[k].requires_grad for k in ("L0", "L1", "L2", "L3"))
    assert torch.allclose(out["loss"], out["L0"] + out["L1"] + out["L2"] + out["L3"], atol=1e-5)
    again = siamese_loss(comp, batch(), step=90, max_steps=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["loss"], again["loss"])
    other = siamese_loss(comp, batch(), step=90, max_steps=100, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out["loss"], other["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in comp.controlnet.parameters())
