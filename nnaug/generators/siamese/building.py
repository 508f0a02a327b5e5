"""Building the Siamese-Diffusion networks (:class:`~nnaug.generators.siamese.backbone.SiameseComponents`):
``pixel`` from scratch (:func:`build_pixel`), ``sd15`` from a local diffusers Stable Diffusion 1.5 folder
(:func:`load_sd15`). Both put the DHI in place of the ControlNet's hint encoder."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nnaug.errors import NnaugError
from nnaug.generators.siamese.backbone import SD15_SUBFOLDERS, SiameseComponents, install_dhi, load_frozen_sd_parts
from nnaug.generators.siamese.dhi import DenseHintInput
from nnaug.generators.siamese.presets import DEFAULT_PROMPT, PROMPT_DROPOUT
from nnaug.io import one_line


PIXEL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "steps_offset": 0,
}
# the names users give (--prediction, --noise-schedule) -> diffusers' config values (as the JDM's)
PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def pixel_scheduler_config(prediction: str = "epsilon", noise_schedule: str = "linear") -> dict[str, Any]:
    """The pixel backbone's training schedule: the published one by default (linear betas, epsilon),
    or the fast objective's (``prediction="v"``, ``noise_schedule="cosine"``)."""
    if prediction not in PREDICTION_TYPES or noise_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown prediction {prediction!r} or noise schedule {noise_schedule!r}")
    return {**PIXEL_SCHEDULER_CONFIG, "prediction_type": PREDICTION_TYPES[prediction],
            "beta_schedule": BETA_SCHEDULES[noise_schedule]}



def _placeholder_embedding_channels(num_merges: int) -> tuple[int, ...]:
    # Stock ControlNet hint encoder with num_merges stride-2 convs: same hint size as the DHI.
    return (16,) * (num_merges + 1)


def _make_controlnet(unet: nn.Module, hint_channels: int, num_merges: int, dhi_channels: Sequence[int] | None):
    from diffusers import ControlNetModel

    # from_unet copies the UNet's encoder into the ControlNet (the ControlNet recipe; a random copy in pixel mode).
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=hint_channels,
        conditioning_embedding_out_channels=_placeholder_embedding_channels(num_merges),
    )
    dhi = DenseHintInput(
        hint_channels=hint_channels, out_channels=unet.config.block_out_channels[0],
        num_merges=num_merges, channels=tuple(dhi_channels) if dhi_channels is not None else None,
    )
    install_dhi(controlnet, dhi)
    return controlnet


def build_pixel(
    image_channels: int,
    mask_channels: int,
    resolution: int,
    block_out_channels: Sequence[int] = (32, 64, 64, 128),
    layers_per_block: int = 1,
    cross_attention_dim: int = 64,
    attention_head_dim: int = 8,
    attention_levels: int = 2,
    text_length: int = 4,
    norm_num_groups: int | None = None,
    dhi_channels: Sequence[int] = (16, 32),
    seed: int | None = None,
    scheduler_config: dict[str, Any] | None = None,
) -> SiameseComponents:
    """A pixel-space generator trained from scratch.

    Args:
        image_channels, mask_channels: C_img and K (foreground classes).
        resolution: image side S; must be divisible by 2 ** (len(block_out_channels) - 1).
        block_out_channels, layers_per_block: UNet widths and depth (the ControlNet copies them).
        cross_attention_dim, text_length: shape of the learned text embedding [1, L, D].
        attention_head_dim: diffusers' (mis)named number of heads per attention layer.
        attention_levels: how many of the lowest-resolution levels get (self + cross) attention
            blocks; the mid block always has them.
        norm_num_groups: GroupNorm groups; default gcd(32, widths) so narrow test widths work.
        dhi_channels: the DHI's two full-resolution widths (no PatchMerge in pixel space).
        seed: seeds the initialisation when given (the global RNG is left as it was).
        scheduler_config: the training noise schedule; default the published one
            (:func:`pixel_scheduler_config`).
    """
    block_out_channels = tuple(int(c) for c in block_out_channels)
    levels = len(block_out_channels)
    if resolution % (2 ** (levels - 1)):
        raise NnaugError(f"resolution {resolution} must be divisible by {2 ** (levels - 1)} for {levels} UNet levels")
    attention_levels = max(0, min(attention_levels, levels))
    if norm_num_groups is None:
        norm_num_groups = math.gcd(32, *block_out_channels)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):  # seed without touching the global RNG
        if seed is not None:
            torch.manual_seed(seed)
        return _build_pixel(image_channels, mask_channels, resolution, block_out_channels, layers_per_block,
                            cross_attention_dim, attention_head_dim, attention_levels, text_length,
                            norm_num_groups, dhi_channels, scheduler_config or pixel_scheduler_config())


def _build_pixel(image_channels, mask_channels, resolution, block_out_channels, layers_per_block,
                 cross_attention_dim, attention_head_dim, attention_levels, text_length, norm_num_groups,
                 dhi_channels, scheduler_config) -> SiameseComponents:
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=image_channels,
        out_channels=image_channels,
        down_block_types=("DownBlock2D",) * (levels - attention_levels) + ("CrossAttnDownBlock2D",) * attention_levels,
        up_block_types=("CrossAttnUpBlock2D",) * attention_levels + ("UpBlock2D",) * (levels - attention_levels),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
    )
    hint_channels = max(image_channels, mask_channels)
    controlnet = _make_controlnet(unet, hint_channels, num_merges=0, dhi_channels=dhi_channels)
    text = torch.randn(1, text_length, cross_attention_dim)  # unit scale, like CLIP's layer-normed output
    return SiameseComponents(
        backbone="pixel", unet=unet, controlnet=controlnet, image_channels=image_channels,
        mask_channels=mask_channels, resolution=resolution, scheduler_config=scheduler_config,
        text_embedding=text,
    )


def _check_sd_folder(path: Path) -> None:
    if not path.is_dir():
        raise NnaugError(f"Stable Diffusion folder not found: {path}")
    missing = [sub for sub in SD15_SUBFOLDERS if not (path / sub).is_dir()]
    if missing:
        raise NnaugError(
            f"{path} is not a complete diffusers Stable Diffusion 1.5 folder: missing {', '.join(s + '/' for s in missing)}"
        )
    config_files = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                    "scheduler": "scheduler_config.json"}
    for sub, name in config_files.items():
        if not (path / sub / name).is_file():
            raise NnaugError(f"{path} is not a complete diffusers Stable Diffusion 1.5 folder: missing {sub}/{name}")


def load_sd15(
    base_model_path: str | Path,
    mask_channels: int,
    image_channels: int = 3,
    resolution: int = 384,
    prompt: str = DEFAULT_PROMPT,
    prompt_dropout: float = PROMPT_DROPOUT,
    dhi_channels: Sequence[int] | None = None,
) -> SiameseComponents:
    """A generator on a local diffusers-format Stable Diffusion 1.5 folder (nothing is downloaded).

    The DHI gets ``log2(VAE downsampling)`` PatchMerges (3 for SD 1.5: 384 px hint -> 48 px latent).
    ``image_channels`` must be 3, or 1 (a grey image is replicated to RGB for the VAE and the
    decoded RGB is averaged back). Raises :class:`NnaugError` (one line) for a missing or
    incomplete folder.
    """
    from diffusers import UNet2DConditionModel

    path = Path(base_model_path).expanduser()
    _check_sd_folder(path)
    if image_channels not in (1, 3):
        raise NnaugError(f"the sd15 backbone needs RGB or grey images, got {image_channels} channels")
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
    except Exception as exc:
        raise NnaugError(f"cannot load unet from {path}: {one_line(exc)}") from exc
    vae, text_encoder, tokenizer = load_frozen_sd_parts(path / "vae", path / "text_encoder", path / "tokenizer")
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise NnaugError(f"{path}: only epsilon-prediction models are supported, "
                         f"got prediction_type={scheduler_config['prediction_type']!r}")

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % (factor * unet_factor):
        raise NnaugError(f"resolution {resolution} must be divisible by {factor * unet_factor} for this Stable Diffusion model")
    hint_channels = max(3, mask_channels)
    controlnet = _make_controlnet(unet, hint_channels, num_merges=int(math.log2(factor)), dhi_channels=dhi_channels)
    return SiameseComponents(
        backbone="sd15", unet=unet, controlnet=controlnet, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, image_channels=image_channels, mask_channels=mask_channels,
        resolution=resolution, scheduler_config=scheduler_config, prompt=prompt,
        prompt_dropout=prompt_dropout, base_model=str(path.resolve()),
    )

