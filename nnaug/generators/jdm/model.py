"""The JDM network (a diffusers ``UNet2DModel``) and the module the generator training optimises."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnaug.generators.jdm import flow
from nnaug.parameterisation import flow_interpolate
from nnaug.generators.jdm.objective import GaussianDiffusion
from nnaug.generators.jdm.presets import OBJECTIVE_PAPER, PREDICTION_TYPES, SCHEDULER_CONFIG, scheduler_config
from nnaug.masks import decode_channels, encode_labels
from nnaug.samplers import is_flow_config

@dataclass
class JDMArchitecture:
    resolution: int
    image_channels: int
    mask_channels: int
    channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    attention_resolutions: tuple = (8,)
    attention_head_dim: int = 32
    learned_variance: bool = True
    extra: dict = field(default_factory=dict)

    def build_unet(self):
        from diffusers import UNet2DModel

        if self.resolution % 2 ** (len(self.channels) - 1):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^{len(self.channels) - 1}")
        levels = [self.resolution // 2**i for i in range(len(self.channels))]
        down = tuple("AttnDownBlock2D" if r in self.attention_resolutions else "DownBlock2D" for r in levels)
        up = tuple("AttnUpBlock2D" if r in self.attention_resolutions else "UpBlock2D" for r in reversed(levels))
        total = self.image_channels + self.mask_channels
        return UNet2DModel(
            # the prediction, and with learned variance its interpolation v between beta~ and beta
            sample_size=self.resolution, in_channels=total, out_channels=(2 if self.learned_variance else 1) * total,
            block_out_channels=tuple(self.channels), layers_per_block=self.layers_per_block,
            down_block_types=down, up_block_types=up, attention_head_dim=self.attention_head_dim,
            resnet_time_scale_shift="scale_shift", norm_num_groups=min(32, min(self.channels)),
        )


class JDMModel(torch.nn.Module):
    """UNet over ``[image ; mask channels]`` trained with the improved-DDPM hybrid loss, or, for a
    flow-matching scheduler config, with rectified flow (:mod:`nnaug.generators.jdm.flow`)."""

    def __init__(self, unet, image_channels: int, mask_channels: int, scheduler_config: dict | None = None,
                 snr_gamma: float | None = None, flow_t: str = "logit-normal"):
        super().__init__()
        self.unet = unet
        self.image_channels, self.mask_channels = image_channels, mask_channels
        self.scheduler_config = dict(scheduler_config or SCHEDULER_CONFIG)
        self.flow_t = flow_t
        if is_flow_config(self.scheduler_config):
            self.diffusion = None
            return
        self.prediction = {v: k for k, v in PREDICTION_TYPES.items()}[self.scheduler_config["prediction_type"]]
        self.learned_variance = self.scheduler_config["variance_type"] in ("learned", "learned_range")
        self.snr_gamma = snr_gamma
        from diffusers import DDPMScheduler

        self.diffusion = GaussianDiffusion.from_scheduler(DDPMScheduler.from_config(self.scheduler_config))

    def joint(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, encode_labels(label, self.mask_channels).to(image.dtype)], dim=1)

    def forward(self, batch: dict, step: int, max_steps: int, generator: torch.Generator):
        x0 = self.joint(batch["image"], batch["label"])
        if self.diffusion is None:
            return self._flow_forward(x0, generator)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        xt = self.diffusion.q_sample(x0, t, noise)
        out = self.unet(xt, t).sample
        terms = self.diffusion.training_losses(out.float(), x0, xt, t, noise, prediction=self.prediction,
                                               learned_variance=self.learned_variance, snr_gamma=self.snr_gamma)
        loss = terms["loss"].mean()
        return loss, {"loss": loss.item(), "mse": terms["mse"].mean().item(), "vb": terms["vb"].mean().item()}

    def _flow_forward(self, x0: torch.Tensor, generator: torch.Generator):
        t = flow.sample_t(x0.shape[0], self.flow_t, generator, x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        out = self.unet(flow_interpolate(x0, noise, t), t * flow.TIME_SCALE).sample
        loss = flow.training_loss(out.float(), x0, noise).mean()
        return loss, {"loss": loss.item()}

    def export(self, folder: Path) -> None:
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        self.unet.save_pretrained(folder)
        kind = FlowMatchEulerDiscreteScheduler if self.diffusion is None else DDPMScheduler
        kind.from_config(self.scheduler_config).save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels: torch.Tensor, seeds: list[int]):
        """Joint samples (image and mask together) for the training contact sheet."""
        from nnaug.generators.jdm.sampling import sample
        from nnaug.samplers import make_scheduler

        scheduler = make_scheduler("ddim" if self.diffusion is not None else "euler", self.scheduler_config)
        was_training = self.unet.training
        self.unet.eval()
        try:
            x = sample(self.unet, scheduler, seeds, 25, self.image_channels, self.mask_channels)
        finally:
            self.unet.train(was_training)
        return x[:, : self.image_channels], decode_channels(x[:, self.image_channels:])


def build_jdm_model(settings: dict, raw, image_channels: int, mask_channels: int) -> JDMModel:
    """The trainable JDM for ``settings`` (a preset updated with the command-line overrides); with
    ``settings["distill"]`` the few-step student of a trained teacher (:mod:`nnaug.generators.jdm.distill`)."""
    if settings.get("distill"):
        from nnaug.generators.jdm.distill import build_distillation

        return build_distillation(settings, image_channels, mask_channels)
    objective = {**OBJECTIVE_PAPER, **{k: settings[k] for k in OBJECTIVE_PAPER if k in settings}}
    is_flow = settings.get("objective", "diffusion") == "flow"
    if is_flow:  # rectified flow: velocity only (no variance to learn), no noise schedule
        objective["learned_variance"] = False
    arch = JDMArchitecture(resolution=int(settings["resolution"]), image_channels=image_channels,
                           mask_channels=mask_channels, channels=tuple(settings["channels"]),
                           layers_per_block=int(settings["layers_per_block"]),
                           attention_resolutions=tuple(settings["attention_resolutions"]),
                           attention_head_dim=int(settings["attention_head_dim"]),
                           learned_variance=bool(objective["learned_variance"]))
    config = dict(flow.SCHEDULER_CONFIG) if is_flow else scheduler_config(**objective)
    return JDMModel(arch.build_unet(), image_channels, mask_channels, config, snr_gamma=objective["snr_gamma"],
                    flow_t=settings.get("flow_t", "logit-normal"))
