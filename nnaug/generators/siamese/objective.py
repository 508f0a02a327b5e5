"""The Siamese-Diffusion training objective (Qiu et al., CVPR 2025), all terms in one place.

Notation: x0 the clean sample (image in pixel space, VAE latent for sd15), eps ~ N(0, I),
t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. One ControlNet (with the DHI) serves
both branches; ``stopgrad`` is ``.detach()``.

- **Mask-Diffusion**  eps_m = UNet(x_t, t, text, control = ControlNet(x_t, hint = mask))
- **Image-Diffusion** eps_i = UNet(x_t, t, text, control = stopgrad(ControlNet(mask))
  + (step / max_steps) * ControlNet(image)), per residual level. Its UNet call gives no gradient
  to any UNet weight (and its text input is detached), so L1 trains only the ControlNet -- what
  the reference gets by deep-copying both networks every step, here without copies.
- **L0** = |eps_m - eps|^2, **L1** = |eps_i - eps|^2
- **L2** (noise consistency) = |eps_m - stopgrad(eps_i)|^2, every step and every t
- **L3** (once step > max_steps / 3, only samples with t <= 200): x0_hat from eps_i (unclipped),
  re-noised to t with the same eps, detached; Mask-Diffusion predicts eps from it:
  |eps_m(x_t_hat) - eps|^2
- **total** = batch mean of (L0 + L1 + L2 + 1[t <= 200] * L3), each term a per-sample mean.

``consistency=False`` is the "plain ControlNet" ablation: L0 only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

L3_MAX_T = 200  # L3 applies to samples with t <= 200 (of T = 1000)


def trainable_parameters(components) -> list[nn.Parameter]:
    """Set ``requires_grad`` on every parameter as Siamese-Diffusion trains them and return the trainable ones.

    Trained: the ControlNet (the DHI included) and the UNet decoder (up_blocks, conv_norm_out,
    conv_out). sd15 freezes the UNet's time embedding, conv_in, encoder and mid block, the VAE and
    the text encoder. pixel trains the whole UNet (nothing is pretrained) and the learned text embedding.
    """
    components.requires_grad_(False)
    components.controlnet.requires_grad_(True)
    unet = components.unet
    if components.backbone == "pixel":
        unet.requires_grad_(True)
        components.text_embedding.requires_grad_(True)
    else:
        for module in (unet.up_blocks, unet.conv_norm_out, unet.conv_out):
            if module is not None:
                module.requires_grad_(True)
    seen: set[int] = set()
    params = []
    for p in components.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.dim())))


def _unet_without_weight_grads(components, x_t, t, text, control) -> torch.Tensor:
    """UNet call whose output carries gradient only to its inputs (the control residuals), never to UNet weights.

    ``functional_call`` with detached parameters: same weights, same values, no deep copy, and no
    global ``requires_grad`` flipping that an exception could leave behind.
    """
    unet = components.unet
    detached = {name: p.detach() for name, p in unet.named_parameters()}
    down, mid = control
    kwargs = dict(encoder_hidden_states=text, down_block_additional_residuals=down,
                  mid_block_additional_residual=mid, return_dict=False)
    return functional_call(unet, detached, (x_t, t), kwargs)[0]


def siamese_terms(
    components,
    x0: torch.Tensor,
    mask_hint: torch.Tensor,
    image_hint: torch.Tensor,
    text: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    step: int,
    max_steps: int,
    consistency: bool = True,
) -> dict[str, torch.Tensor]:
    """The per-sample terms, each a tensor [B] (keeps the graph; L3 is 0 where it does not apply).

    Keys: ``L0``; and with ``consistency``: ``L1``, ``L2``, ``L3``, ``L3_applied`` (bool [B]);
    ``total`` = L0 + L1 + L2 + 1[t <= 200] * L3 (or L0 alone without consistency).
    """
    t = timesteps.to(device=x0.device, dtype=torch.long)
    x_t = components.noise_scheduler.add_noise(x0, noise, t)

    # Mask-Diffusion: the branch that is sampled from later.
    control_mask = components.control(x_t, t, text, mask_hint)
    eps_m = components.predict_eps(x_t, t, text, control_mask)
    L0 = _per_sample_mse(eps_m, noise)
    if not consistency:
        return {"L0": L0, "total": L0}

    # Image-Diffusion: stopgrad(mask residuals) + (step / max_steps) * image residuals, same ControlNet.
    # The mask residuals of the same ControlNet on the same input are exactly control_mask, so detach
    # them rather than running a second no_grad pass.
    weight = float(step) / float(max_steps)
    down_image, mid_image = components.control(x_t, t, text.detach(), image_hint)
    down_mask, mid_mask = control_mask
    control_mix = (
        [m.detach() + weight * i for m, i in zip(down_mask, down_image)],
        mid_mask.detach() + weight * mid_image,
    )
    eps_i = _unet_without_weight_grads(components, x_t, t, text.detach(), control_mix)
    L1 = _per_sample_mse(eps_i, noise)

    # Noise consistency: pull Mask-Diffusion towards Image-Diffusion, never the other way round.
    L2 = _per_sample_mse(eps_m, eps_i.detach())

    # L3: Mask-Diffusion must also denoise the Image-Diffusion's re-noised prediction (late, low-noise only).
    L3 = torch.zeros_like(L0)
    applied = torch.zeros_like(t, dtype=torch.bool)
    if step > max_steps / 3:
        applied = t <= L3_MAX_T
        if bool(applied.any()):
            idx = applied.nonzero().squeeze(1)
            abar = components.noise_scheduler.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t[idx]]
            abar = abar.view(-1, *([1] * (x0.dim() - 1)))
            x0_hat = (x_t[idx] - (1 - abar).sqrt() * eps_i[idx]) / abar.sqrt()  # unclipped
            x_t_hat = (abar.sqrt() * x0_hat + (1 - abar).sqrt() * noise[idx]).detach()
            control_hat = components.control(x_t_hat, t[idx], text[idx], mask_hint[idx])
            eps_m_hat = components.predict_eps(x_t_hat, t[idx], text[idx], control_hat)
            L3 = L3.index_copy(0, idx, _per_sample_mse(eps_m_hat, noise[idx]))

    total = L0 + L1 + L2 + applied.to(L3.dtype) * L3
    return {"L0": L0, "L1": L1, "L2": L2, "L3": L3, "L3_applied": applied, "total": total}


def reduce_terms(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample terms -> scalars: ``loss`` (batch mean of total) and each term's batch mean.

    Only ``loss`` keeps the graph; the named terms are detached, for logging. ``L3`` is its
    contribution to the loss (zeros where not applied count), so ``loss == L0 + L1 + L2 + L3``;
    ``L3_samples`` is how many samples had L3.
    """
    out = {"loss": terms["total"].mean()}
    for name in ("L0", "L1", "L2", "L3"):
        if name in terms:
            out[name] = terms[name].detach().mean()
    if "L3_applied" in terms:
        out["L3_samples"] = terms["L3_applied"].sum().float()
    return out


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    # Draw on the generator's device (CPU generators give the same numbers on any accelerator).
    return generator.device if generator is not None else device


def siamese_loss(
    components,
    batch: dict[str, Any],
    step: int,
    max_steps: int,
    consistency: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One training step's loss.

    Args:
        batch: ``image`` float [B, C_img, S, S] in [-1, 1]; ``label`` long [B, S, S] with values 0..K.
        step, max_steps: the current optimisation step (0-based) and the total; they set the image
            branch's weight step / max_steps and switch L3 on after max_steps / 3.
        consistency: False for the plain-ControlNet ablation (L0 only).
        generator: optional, for t, eps, the VAE posterior sample and the sd15 prompt dropout.

    Returns:
        ``loss`` (to backpropagate) and the named terms (detached scalars, for logging), see
        :func:`reduce_terms`; :func:`siamese_terms` gives the per-sample terms with their graph.
    """
    device = components.device
    image = batch["image"].to(device=device, dtype=components.dtype)
    label = batch["label"].to(device=device)
    b = image.shape[0]

    x0 = components.encode_images(image, generator=generator)
    mask_hint = components.mask_hint(label)
    image_hint = components.image_hint(image)
    text = components.text_embeddings(b, drop_prob=components.prompt_dropout, generator=generator)

    draw = _draw_device(generator, device)
    num_t = int(components.noise_scheduler.config.num_train_timesteps)
    t = torch.randint(0, num_t, (b,), generator=generator, device=draw).to(device)
    noise = torch.randn(x0.shape, generator=generator, device=draw, dtype=x0.dtype).to(device)

    terms = siamese_terms(components, x0, mask_hint, image_hint, text, t, noise, step, max_steps, consistency)
    return reduce_terms(terms)
