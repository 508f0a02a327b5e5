"""The networks of the Siamese-Diffusion generator, how they are built, saved and loaded.

Two backbones share one code path (:class:`SiameseComponents`):

``pixel`` (:func:`~nnaug.generators.siamese.building.build_pixel`, default, CPU-friendly)
    A ``UNet2DConditionModel`` and a ``ControlNetModel`` working directly on the image in [-1, 1],
    trained from scratch. Instead of CLIP, a learned constant "text" embedding
    (``nn.Parameter`` of shape [1, L, cross_attention_dim]) feeds the cross-attention layers.
    Noise schedule (:func:`~nnaug.generators.siamese.building.pixel_scheduler_config`): T = 1000, linear betas 1e-4 -> 0.02 with
    epsilon prediction (as published), or the fast objective's cosine schedule with v-prediction.

``sd15`` (:func:`~nnaug.generators.siamese.building.load_sd15`)
    A local diffusers-format Stable Diffusion 1.5 folder (unet/, vae/, text_encoder/,
    tokenizer/, scheduler/); latents are ``VAE.encode(image) * scaling_factor`` (0.18215);
    the prompt goes through the frozen CLIP text encoder. The ControlNet is
    ``ControlNetModel.from_unet(unet)``. Nothing is fetched from a hub.

In both, the ControlNet's hint encoder is replaced by the DHI (:mod:`nnaug.generators.siamese.dhi`).

Hints
    Both branches use the same ControlNet + DHI, so the mask hint and the image hint must have
    the same number of channels, ``hint_channels = max(image hint channels, K)`` where the image
    hint has the image's channels (pixel) or 3 (sd15: the RGB image the VAE sees) and K is the
    number of foreground classes. A hint with fewer channels is fitted by one rule
    (:meth:`SiameseComponents.fit_hint`): a single channel is replicated (the paper's binary mask
    -> 3 channels, a grey image -> 3 channels), several channels are zero-padded (K one-hot
    channels stay one-hot; a padded channel is always 0). Mask hint = labels 1..K one-hot in
    [0, 1]; image hint = (image + 1) / 2 in [0, 1].

Saved layout (:meth:`SiameseComponents.save_pretrained`)::

    siamese.json                 backbone, channels, resolution, prompt, base model path
    unet/                        UNet2DConditionModel.save_pretrained
    controlnet/                  ControlNetModel.save_pretrained, hint encoder = zero placeholder
    dhi/                         DenseHintInput.save_pretrained (config.json + safetensors)
    scheduler/scheduler_config.json
    text_embedding.safetensors   pixel only
    vae/ text_encoder/ tokenizer/  sd15, only with include_frozen=True (else read from base_model)

The DHI is saved on its own and the ControlNet is saved with a stock
``ControlNetConditioningEmbedding`` in its place (all weights zero, so its output is zero, and
with ``num_merges`` stride-2 convs so it takes the same hint size). That keeps ``controlnet/``
loadable as it is by ``ControlNetModel.from_pretrained`` (a DHI state dict there would give
missing/unexpected keys); :meth:`SiameseComponents.from_pretrained` puts the DHI back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnaug.errors import NnaugError
from nnaug.choices import BACKBONES
from nnaug.generators.siamese.dhi import DenseHintInput
from nnaug.generators.siamese.presets import DEFAULT_PROMPT, PROMPT_DROPOUT
from nnaug.io import one_line
from nnaug.masks import one_hot

SD15_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
FORMAT_NAME = "nnaug-siamese"
FORMAT_VERSION = 1

class SiameseComponents(nn.Module):
    """Everything the objective and the sampler need, as one module (``.to(device)`` moves all).

    Attributes:
        backbone: ``"pixel"`` or ``"sd15"``.
        unet: ``UNet2DConditionModel``.
        controlnet: ``ControlNetModel`` whose ``controlnet_cond_embedding`` is a :class:`DenseHintInput`.
        text_embedding: pixel only, ``nn.Parameter`` [1, L, cross_attention_dim]; ``None`` for sd15.
        vae, text_encoder, tokenizer: sd15 only (frozen); ``None`` for pixel.
        scheduler_config: the training noise schedule (a diffusers scheduler config dict).
        image_channels, mask_channels (K foreground classes), resolution (image side S).
        prompt, prompt_dropout: sd15 text conditioning.
        base_model: sd15, path of the Stable Diffusion folder the frozen parts come from.
    """

    def __init__(
        self,
        *,
        backbone: str,
        unet: nn.Module,
        controlnet: nn.Module,
        image_channels: int,
        mask_channels: int,
        resolution: int,
        scheduler_config: dict[str, Any],
        text_embedding: torch.Tensor | None = None,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        prompt: str = DEFAULT_PROMPT,
        prompt_dropout: float = PROMPT_DROPOUT,
        base_model: str | None = None,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}")
        if mask_channels < 1 or image_channels < 1:
            raise ValueError(f"need at least one image channel and one mask class, got {image_channels} and {mask_channels}")
        if not isinstance(controlnet.controlnet_cond_embedding, DenseHintInput):
            raise ValueError("the ControlNet needs the DHI installed (see install_dhi)")
        self.backbone = backbone
        self.unet = unet
        self.controlnet = controlnet
        if text_embedding is not None:
            self.text_embedding = nn.Parameter(text_embedding.detach().clone())
        else:
            self.register_parameter("text_embedding", None)
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_channels = int(image_channels)
        self.mask_channels = int(mask_channels)
        self.resolution = int(resolution)
        self.scheduler_config = dict(scheduler_config)
        self.prompt = prompt
        self.prompt_dropout = float(prompt_dropout)
        self.base_model = base_model
        self._text_cache: dict[tuple, torch.Tensor] = {}
        self._noise_scheduler = None
        if backbone == "pixel" and self.text_embedding is None:
            raise ValueError("the pixel backbone needs a learned text embedding")
        if backbone == "sd15" and (vae is None or text_encoder is None or tokenizer is None):
            raise ValueError("the sd15 backbone needs vae, text_encoder and tokenizer")
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval()

    # ------------------------------------------------------------------ basic facts
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def dhi(self) -> DenseHintInput:
        return self.controlnet.controlnet_cond_embedding

    @property
    def hint_channels(self) -> int:
        return int(self.dhi.config.hint_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Image side / latent side (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def default_guidance_scale(self) -> float:
        """The paper's classifier-free guidance 9 for sd15; off for pixel (no unconditional embedding)."""
        return 9.0 if self.backbone == "sd15" else 1.0

    @property
    def noise_scheduler(self):
        """A ``DDPMScheduler`` for the forward process (``add_noise``, ``alphas_cumprod``)."""
        if self._noise_scheduler is None:
            from diffusers import DDPMScheduler

            self._noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        return self._noise_scheduler

    def make_scheduler(self, sampler: str = "ddim"):
        """One of nnaug's samplers (:mod:`nnaug.samplers`) on the training schedule; x0 is clipped to
        [-1, 1] in pixel space only (latents are not)."""
        from nnaug.samplers import make_scheduler

        return make_scheduler(sampler, self.scheduler_config, clip_x0=self.backbone == "pixel")

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.eval()  # frozen parts never leave eval mode (e.g. CLIP dropout)
        return self

    # ------------------------------------------------------------------ hints
    def fit_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """[B, c, S, S] -> [B, hint_channels, S, S]: replicate a single channel, zero-pad several."""
        c, target = hint.shape[1], self.hint_channels
        if c == target:
            return hint
        if c > target:
            raise ValueError(f"a hint with {c} channels does not fit the DHI's {target}")
        if c == 1:
            return hint.expand(-1, target, -1, -1)
        pad = hint.new_zeros(hint.shape[0], target - c, *hint.shape[2:])
        return torch.cat([hint, pad], dim=1)

    def mask_onehot(self, label: torch.Tensor) -> torch.Tensor:
        """Labels [B, S, S] with values 0..K -> one-hot of the K foreground classes, float [B, K, S, S]."""
        label = label.long()
        k = self.mask_channels
        if label.numel() and (int(label.min()) < 0 or int(label.max()) > k):
            raise ValueError(f"labels must lie in 0..{k}, got {int(label.min())}..{int(label.max())}")
        return one_hot(label, k).to(self.dtype)

    def mask_hint(self, label: torch.Tensor) -> torch.Tensor:
        """The Mask-Diffusion hint from labels [B, S, S]: [B, hint_channels, S, S] in [0, 1]."""
        return self.fit_hint(self.mask_onehot(label))

    def image_hint(self, image: torch.Tensor) -> torch.Tensor:
        """The Image-Diffusion hint from the image in [-1, 1] [B, C_img, S, S]: [B, hint_channels, S, S] in [0, 1]."""
        return self.fit_hint(((image.to(self.dtype) + 1.0) / 2.0).clamp(0.0, 1.0))

    def as_mask_hint(self, masks: torch.Tensor) -> torch.Tensor:
        """Accept labels [B, S, S] (integer/bool), one-hot [B, K, S, S] or a ready hint [B, hint_channels, S, S]."""
        if masks.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            if masks.dim() != 3:
                raise ValueError(f"integer masks must be labels [B, S, S], got shape {tuple(masks.shape)}")
            return self.mask_hint(masks)
        if masks.dim() != 4 or masks.shape[1] not in (self.mask_channels, self.hint_channels):
            raise ValueError(
                f"mask hint must be [B, {self.mask_channels} or {self.hint_channels}, S, S], got {tuple(masks.shape)}"
            )
        return self.fit_hint(masks.to(self.dtype))

    # ------------------------------------------------------------------ image <-> model space
    @torch.no_grad()
    def encode_images(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image [-1, 1] -> the tensor that is diffused (pixel: itself; sd15: VAE latent * scaling factor)."""
        image = image.to(device=self.device, dtype=self.dtype)
        if self.vae is None:
            return image
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        latent = self.vae.encode(image.to(self.vae.dtype)).latent_dist.sample(generator=generator)
        return (latent * self._vae_scaling).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_images`: image in [-1, 1] with ``image_channels`` channels."""
        if self.vae is None:
            return latents.clamp(-1.0, 1.0)
        image = self.vae.decode((latents / self._vae_scaling).to(self.vae.dtype)).sample.to(latents.dtype)
        if self.image_channels == 1:
            image = image.mean(dim=1, keepdim=True)
        return image.clamp(-1.0, 1.0)

    @property
    def _vae_scaling(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", None) or 0.18215)

    # ------------------------------------------------------------------ text
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        # The text encoder is frozen, so a prompt's embedding is a constant: cache it.
        key = (prompt, self.device, self.dtype)
        if key not in self._text_cache:
            ids = self.tokenizer(
                [prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(self.text_encoder.device)
            with torch.no_grad():
                self._text_cache[key] = self.text_encoder(ids)[0].to(device=self.device, dtype=self.dtype)
        return self._text_cache[key]

    def text_embeddings(
        self,
        batch_size: int,
        drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
        unconditional: bool = False,
    ) -> torch.Tensor:
        """Cross-attention input [B, L, D].

        pixel: the learned embedding (``drop_prob``/``unconditional`` do not apply; there is no
        unconditional embedding). sd15: the CLIP embedding of ``prompt``; with ``drop_prob`` each
        sample gets the empty prompt's embedding with that probability (for classifier-free guidance);
        ``unconditional`` gives the empty prompt for all.
        """
        if self.backbone == "pixel":
            if unconditional:
                raise NnaugError("the pixel backbone has no unconditional text embedding: use guidance scale 1")
            return self.text_embedding.expand(batch_size, -1, -1)
        if unconditional:
            return self._encode_prompt("").expand(batch_size, -1, -1)
        cond = self._encode_prompt(self.prompt).expand(batch_size, -1, -1)
        if drop_prob <= 0:
            return cond
        rand_device = generator.device if generator is not None else torch.device("cpu")
        drop = torch.rand(batch_size, generator=generator, device=rand_device).lt(drop_prob).to(self.device)
        return torch.where(drop[:, None, None], self._encode_prompt("").expand(batch_size, -1, -1), cond)

    # ------------------------------------------------------------------ network calls
    def control(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, hint: torch.Tensor):
        """ControlNet(x_t, hint) -> (list of down-block residuals, mid-block residual)."""
        down, mid = self.controlnet(x_t, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
        return list(down), mid

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``"epsilon"`` or ``"v_prediction"`` (the diffusers name)."""
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control,
                weight_grads: bool = True) -> torch.Tensor:
        """UNet(x_t, t, text, control residuals) -> the raw prediction (epsilon or v, see
        :attr:`prediction_type`). ``weight_grads=False``: the output carries gradient to its inputs
        (the control residuals) only, never to a UNet weight."""
        down, mid = control
        kwargs = dict(encoder_hidden_states=text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid, return_dict=False)
        if weight_grads:
            return self.unet(x_t, t, **kwargs)[0]
        # functional_call with detached parameters: same weights and values, no deep copy, and no
        # global requires_grad flipping that an exception could leave behind
        from torch.func import functional_call

        detached = {name: p.detach() for name, p in self.unet.named_parameters()}
        return functional_call(self.unet, detached, (x_t, t), kwargs)[0]

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control) -> torch.Tensor:
        """UNet(x_t, t, text, control residuals) -> predicted noise (converted from v when it predicts v)."""
        from nnaug.generators.siamese.objective import split_prediction

        out = self.predict(x_t, t, text, control)
        abar = self.noise_scheduler.alphas_cumprod.to(device=x_t.device, dtype=x_t.dtype)[t.long()]
        return split_prediction(self.prediction_type, out, x_t, abar)[1]

    # ------------------------------------------------------------------ saving / loading
    def _config(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "backbone": self.backbone,
            "image_channels": self.image_channels,
            "mask_channels": self.mask_channels,
            "hint_channels": self.hint_channels,
            "resolution": self.resolution,
            "prompt": self.prompt,
            "prompt_dropout": self.prompt_dropout,
            "base_model": self.base_model,
        }

    def save_pretrained(self, directory: str | Path, include_frozen: bool = False) -> Path:
        """Write the layout described in the module docstring. ``include_frozen`` (sd15) also copies
        vae/, text_encoder/, tokenizer/ so the folder no longer needs the base model."""
        from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.dhi.save_pretrained(directory / "dhi")

        cfg = self.controlnet.config
        placeholder = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=cfg.block_out_channels[0],
            conditioning_channels=cfg.conditioning_channels,
            block_out_channels=tuple(cfg.conditioning_embedding_out_channels),
        ).to(device=self.device, dtype=self.dtype)
        for p in placeholder.parameters():
            nn.init.zeros_(p)  # zero output: a plain load ignores the hint instead of adding noise
        dhi = self.controlnet.controlnet_cond_embedding
        self.controlnet.controlnet_cond_embedding = placeholder
        try:
            self.controlnet.save_pretrained(directory / "controlnet")
        finally:
            self.controlnet.controlnet_cond_embedding = dhi

        (directory / "scheduler").mkdir(exist_ok=True)
        (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.scheduler_config, indent=2))
        if self.text_embedding is not None:
            save_file({"text_embedding": self.text_embedding.detach().cpu().contiguous()},
                      str(directory / "text_embedding.safetensors"))
        if include_frozen and self.backbone == "sd15":
            self.vae.save_pretrained(directory / "vae")
            self.text_encoder.save_pretrained(directory / "text_encoder")
            self.tokenizer.save_pretrained(directory / "tokenizer")
        (directory / "siamese.json").write_text(json.dumps(self._config(), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, base_model: str | Path | None = None) -> "SiameseComponents":
        """Load what :meth:`save_pretrained` wrote. sd15: the frozen parts come from the folder itself
        when it holds them, else from ``base_model`` (default: the path recorded at training time)."""
        from diffusers import ControlNetModel, UNet2DConditionModel

        directory = Path(directory)
        meta_path = directory / "siamese.json"
        if not meta_path.is_file():
            raise NnaugError(f"{directory} is not a saved Siamese-Diffusion generator (no siamese.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_NAME:
            raise NnaugError(f"{meta_path} is not an nnaug Siamese-Diffusion config")
        needed = ["unet/config.json", "controlnet/config.json", "dhi/config.json", "scheduler/scheduler_config.json"]
        if meta.get("backbone") == "pixel":
            needed.append("text_embedding.safetensors")
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise NnaugError(f"the generator in {directory} is incomplete: missing {', '.join(missing)}")
        try:
            unet = UNet2DConditionModel.from_pretrained(directory / "unet", local_files_only=True)
            controlnet = ControlNetModel.from_pretrained(directory / "controlnet", local_files_only=True)
            dhi = DenseHintInput.from_pretrained(directory / "dhi", local_files_only=True)
        except Exception as exc:  # library errors vary; the user gets one line
            raise NnaugError(f"cannot load the generator in {directory}: {one_line(exc)}") from exc
        install_dhi(controlnet, dhi)
        scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        common = dict(
            unet=unet, controlnet=controlnet, image_channels=meta["image_channels"],
            mask_channels=meta["mask_channels"], resolution=meta["resolution"],
            scheduler_config=scheduler_config, prompt=meta.get("prompt", DEFAULT_PROMPT),
            prompt_dropout=meta.get("prompt_dropout", PROMPT_DROPOUT),
        )
        if meta["backbone"] == "pixel":
            from safetensors.torch import load_file

            text = load_file(str(directory / "text_embedding.safetensors"))["text_embedding"]
            return cls(backbone="pixel", text_embedding=text, **common)

        base = Path(base_model) if base_model is not None else (Path(meta["base_model"]) if meta.get("base_model") else None)
        frozen = {}
        for sub in ("vae", "text_encoder", "tokenizer"):
            source = directory if (directory / sub).is_dir() else base
            if source is None or not (source / sub).is_dir():
                raise NnaugError(
                    f"the generator in {directory} needs the Stable Diffusion folder for {sub}/: "
                    f"{'pass its path as base model' if source is None else f'{source} has no {sub}/'}"
                )
            frozen[sub] = source / sub
        vae, text_encoder, tokenizer = load_frozen_sd_parts(frozen["vae"], frozen["text_encoder"], frozen["tokenizer"])
        return cls(
            backbone="sd15", vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            base_model=str(base) if base is not None else meta.get("base_model"), **common,
        )


# ---------------------------------------------------------------------------- shared with building


def install_dhi(controlnet: nn.Module, dhi: DenseHintInput) -> None:
    """Replace the ControlNet's hint encoder by the DHI (checks that the channels fit)."""
    cfg = controlnet.config
    if dhi.config.hint_channels != cfg.conditioning_channels or dhi.config.out_channels != cfg.block_out_channels[0]:
        raise ValueError(
            f"DHI ({dhi.config.hint_channels} -> {dhi.config.out_channels}) does not fit the ControlNet "
            f"({cfg.conditioning_channels} -> {cfg.block_out_channels[0]})"
        )
    dhi = dhi.to(controlnet.device)
    if dhi.dtype != controlnet.dtype:  # (diffusers warns on every dtype cast, so only cast when needed)
        dhi = dhi.to(controlnet.dtype)
    controlnet.controlnet_cond_embedding = dhi


def load_frozen_sd_parts(vae_path: Path, text_encoder_path: Path, tokenizer_path: Path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    loaders = (
        ("vae", vae_path, lambda: AutoencoderKL.from_pretrained(vae_path, local_files_only=True)),
        ("text_encoder", text_encoder_path, lambda: CLIPTextModel.from_pretrained(text_encoder_path, local_files_only=True)),
        ("tokenizer", tokenizer_path, lambda: CLIPTokenizer.from_pretrained(tokenizer_path, local_files_only=True)),
    )
    out = []
    for name, where, load in loaders:
        try:
            out.append(load())
        except Exception as exc:  # library errors vary (OSError, ValueError, TypeError...); report one line
            raise NnaugError(f"cannot load {name} from {where}: {one_line(exc)}") from exc
    return tuple(out)


