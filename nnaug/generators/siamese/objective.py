"""The Siamese-Diffusion training objective (Qiu et al., CVPR 2025), all terms in one place.

Notation: x0 the clean sample (image in pixel space, VAE latent for sd15), eps ~ N(0, I),
t ~ U{0..T-1}, x_t = q_sample(x0, eps, abar_t). One ControlNet (with the DHI) serves both
branches; ``stopgrad`` is ``.detach()``. The UNet's output f is its prediction of eps
(``epsilon``, as published) or of v (``v_prediction``, the fast objective, Salimans & Ho 2022);
either way a prediction f at x_t determines both estimates x0^ and eps^ (:func:`split_prediction`),
and the target for a pair (x0, eps) on x_t is :func:`prediction_target` (eps, or v). The formulas
are :mod:`nnaug.parameterisation`'s.

- **Mask-Diffusion**  f_m = UNet(x_t, t, text, control = ControlNet(x_t, hint = mask))
- **Image-Diffusion** f_i = UNet(x_t, t, text, control = stopgrad(ControlNet(mask))
  + (step / max_steps) * ControlNet(image)), per residual level. Its UNet call gives no gradient
  to any UNet weight (and its text input is detached), so L1 trains only the ControlNet -- what
  the reference gets by deep-copying both networks every step, here without copies.
- **L0** = w |f_m - target(x0, eps)|^2, **L1** = w |f_i - target(x0, eps)|^2
- **L2** (noise consistency) = w |f_m - stopgrad(f_i)|^2, every step and every t
- **L3** (once step > max_steps / 3, only samples with t <= 200): x0^_i from f_i (unclipped),
  re-noised to t with the same eps, detached: x_t^ = q_sample(x0^_i, eps, abar_t).
  Mask-Diffusion must predict the pair it came from: w |f_m(x_t^) - target(x0^_i, eps)|^2
  (epsilon: the target is eps, as published; v: it is v of (x0^_i, eps), the same condition --
  the mask branch's x0 estimate on x_t^ is x0^_i).
- **total** = batch mean of (L0 + L1 + L2 + 1[t <= 200] * L3), each term a per-sample mean.

w is 1 as published, or the min-SNR-gamma weight (Hang et al. 2023; :func:`min_snr_weight`):
min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v. Because
|d eps|^2 = SNR |d x0|^2 and |d v|^2 = (SNR + 1) |d x0|^2 at a fixed x_t, every weighted term is
min(SNR, gamma) |d x0|^2 under either parameterisation: the four terms keep their published
ratios, measured in x0.

``consistency=False`` is the "plain ControlNet" ablation: L0 only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnaug import parameterisation

L3_MAX_T = 200  # L3 applies to samples with t <= 200 (of T = 1000)
PREDICTIONS = ("epsilon", "v_prediction")


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


# ---------------------------------------------------------------------------- parameterisation
def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction type must be one of {PREDICTIONS}, got {prediction!r}")


def prediction_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """What a perfect network predicts for the pair (x0, noise): noise, or v = sqrt(abar) noise - sqrt(1 - abar) x0."""
    _check_prediction(prediction)
    return parameterisation.target(prediction, x0, noise, abar)


def split_prediction(prediction: str, output: torch.Tensor, x_t: torch.Tensor,
                     abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A prediction at x_t -> (x0 estimate, eps estimate), unclipped."""
    _check_prediction(prediction)
    return parameterisation.split_output(prediction, output, x_t, abar)


def min_snr_weight(prediction: str, abar: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
    """Per-sample loss weight [B]: None (1, as published) without ``snr_gamma``, else min-SNR-gamma
    for that parameterisation (see the module docstring)."""
    _check_prediction(prediction)
    return None if snr_gamma is None else parameterisation.min_snr_weight(prediction, abar.float(), snr_gamma)


def _per_sample_mse(prediction: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    mse = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.dim())))
    return mse if weight is None else mse * weight


# ---------------------------------------------------------------------------- the loss
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
    snr_gamma: float | None = None,
) -> dict[str, torch.Tensor]:
    """The per-sample terms, each a tensor [B] (keeps the graph; L3 is 0 where it does not apply).

    Keys: ``L0``; and with ``consistency``: ``L1``, ``L2``, ``L3``, ``L3_applied`` (bool [B]);
    ``total`` = L0 + L1 + L2 + 1[t <= 200] * L3 (or L0 alone without consistency). The
    parameterisation is ``components.prediction_type``; ``snr_gamma`` turns on min-SNR weighting.
    """
    t = timesteps.to(device=x0.device, dtype=torch.long)
    kind = components.prediction_type
    abar = components.noise_scheduler.alphas_cumprod.to(device=x0.device)[t]
    weight = min_snr_weight(kind, abar, snr_gamma)
    x_t = components.noise_scheduler.add_noise(x0, noise, t)
    target = prediction_target(kind, x0, noise, abar)

    # Mask-Diffusion: the branch that is sampled from later.
    control_mask = components.control(x_t, t, text, mask_hint)
    f_m = components.predict(x_t, t, text, control_mask)
    L0 = _per_sample_mse(f_m, target, weight)
    if not consistency:
        return {"L0": L0, "total": L0}

    # Image-Diffusion: stopgrad(mask residuals) + (step / max_steps) * image residuals, same ControlNet.
    # The mask residuals of the same ControlNet on the same input are exactly control_mask, so detach
    # them rather than running a second no_grad pass.
    w = float(step) / float(max_steps)
    down_image, mid_image = components.control(x_t, t, text.detach(), image_hint)
    down_mask, mid_mask = control_mask
    control_mix = ([m.detach() + w * i for m, i in zip(down_mask, down_image)], mid_mask.detach() + w * mid_image)
    f_i = components.predict(x_t, t, text.detach(), control_mix, weight_grads=False)
    L1 = _per_sample_mse(f_i, target, weight)

    # Noise consistency: pull Mask-Diffusion towards Image-Diffusion, never the other way round.
    L2 = _per_sample_mse(f_m, f_i.detach(), weight)

    L3, applied = _renoised_term(components, x_t, t, abar, text, mask_hint, noise, f_i, weight, step, max_steps)
    total = L0 + L1 + L2 + applied.to(L3.dtype) * L3
    return {"L0": L0, "L1": L1, "L2": L2, "L3": L3, "L3_applied": applied, "total": total}


def _renoised_term(components, x_t, t, abar, text, mask_hint, noise, f_i, weight, step, max_steps):
    """L3: Mask-Diffusion must also denoise the Image-Diffusion's re-noised prediction (late, low-noise only).
    Returns (L3 [B], zero where not applied; applied, bool [B])."""
    L3 = torch.zeros(x_t.shape[0], device=x_t.device, dtype=torch.float32)
    applied = torch.zeros_like(t, dtype=torch.bool)
    if step <= max_steps / 3:
        return L3, applied
    applied = t <= L3_MAX_T
    if not bool(applied.any()):
        return L3, applied
    kind = components.prediction_type
    idx = applied.nonzero().squeeze(1)
    x0_hat = split_prediction(kind, f_i[idx], x_t[idx], abar[idx])[0].detach()  # unclipped
    x_t_hat = parameterisation.q_sample(x0_hat, noise[idx], abar[idx])
    control_hat = components.control(x_t_hat, t[idx], text[idx], mask_hint[idx])
    f_m_hat = components.predict(x_t_hat, t[idx], text[idx], control_hat)
    target_hat = prediction_target(kind, x0_hat, noise[idx], abar[idx])
    L3 = L3.index_copy(0, idx, _per_sample_mse(f_m_hat, target_hat, None if weight is None else weight[idx]))
    return L3, applied


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
    snr_gamma: float | None = None,
) -> dict[str, torch.Tensor]:
    """One training step's loss.

    Args:
        batch: ``image`` float [B, C_img, S, S] in [-1, 1]; ``label`` long [B, S, S] with values 0..K.
        step, max_steps: the current optimisation step (0-based) and the total; they set the image
            branch's weight step / max_steps and switch L3 on after max_steps / 3.
        consistency: False for the plain-ControlNet ablation (L0 only).
        generator: optional, for t, eps, the VAE posterior sample and the sd15 prompt dropout.
        snr_gamma: min-SNR-gamma loss weighting (None: unweighted, as published).

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

    terms = siamese_terms(components, x0, mask_hint, image_hint, text, t, noise, step, max_steps, consistency,
                          snr_gamma=snr_gamma)
    return reduce_terms(terms)
