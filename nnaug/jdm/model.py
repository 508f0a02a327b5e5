"""The JDM network (a diffusers ``UNet2DModel``), its presets, and its training objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnaug.gaussian_diffusion import GaussianDiffusion
from nnaug.masks import decode_channels, encode_labels

# Widths are block_out_channels (one per resolution level); attention is put on the levels whose
# feature map is in ``attention_resolutions``.
#
# ``paper`` is the thesis' setting (reference §1 / thesis Table 4.1): linear betas, epsilon
# prediction with learned-range variance and the hybrid loss, constant-ish lr 1e-4, EMA 0.9999.
# ``tiny`` and ``small`` use what measured faster here (docs/train-generator.md, "Recipe"):
# v-prediction on a cosine schedule with min-SNR-5 weighting, no learned variance (the few-step
# solvers do not use it), a higher lr with warm-up, and an EMA whose decay warms up with the step
# count so that a short run's EMA is not dominated by its first, random weights.
OBJECTIVE_PAPER = dict(prediction="epsilon", learned_variance=True, snr_gamma=None, noise_schedule="linear")
OBJECTIVE_FAST = dict(prediction="v", learned_variance=False, snr_gamma=5.0, noise_schedule="cosine")
PRESETS = {
    "tiny": dict(resolution=32, channels=(32, 64, 64), layers_per_block=1, attention_resolutions=(8,),
                 attention_head_dim=32, steps=700, batch_size=16, lr=2e-3, warmup_steps=50, ema_decay=0.999,
                 ema_warmup=True, checkpoint_every=350, **OBJECTIVE_FAST),
    "small": dict(resolution=128, channels=(64, 64, 128, 256, 256), layers_per_block=2, attention_resolutions=(16, 8),
                  attention_head_dim=64, steps=20000, batch_size=16, lr=5e-4, warmup_steps=500, ema_decay=0.9995,
                  ema_warmup=True, checkpoint_every=1000, **OBJECTIVE_FAST),
    "paper": dict(resolution=256, channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
                  attention_resolutions=(16, 8), attention_head_dim=128, steps=60000, batch_size=10, lr=1e-4,
                  ema_decay=0.9999, checkpoint_every=5000, **OBJECTIVE_PAPER),
}
PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}

# T = 1000, linear betas 1e-4 -> 0.02, epsilon prediction, learned-range variance (the paper setting).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                        clip_sample_range=1.0, timestep_spacing="trailing")


def scheduler_config(prediction: str = "epsilon", learned_variance: bool = True, noise_schedule: str = "linear",
                     **_) -> dict:
    """The diffusers noise-schedule config saved with a JDM (what every sampler is built from)."""
    return {**SCHEDULER_CONFIG, "prediction_type": PREDICTION_TYPES[prediction],
            "variance_type": "learned_range" if learned_variance else "fixed_small",
            "beta_schedule": BETA_SCHEDULES[noise_schedule]}


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
    """UNet over ``[image ; mask channels]`` trained with the improved-DDPM hybrid loss."""

    def __init__(self, unet, image_channels: int, mask_channels: int, scheduler_config: dict | None = None,
                 snr_gamma: float | None = None):
        super().__init__()
        self.unet = unet
        self.image_channels, self.mask_channels = image_channels, mask_channels
        self.scheduler_config = dict(scheduler_config or SCHEDULER_CONFIG)
        self.prediction = {v: k for k, v in PREDICTION_TYPES.items()}[self.scheduler_config["prediction_type"]]
        self.learned_variance = self.scheduler_config["variance_type"] in ("learned", "learned_range")
        self.snr_gamma = snr_gamma
        from diffusers import DDPMScheduler

        self.diffusion = GaussianDiffusion.from_scheduler(DDPMScheduler.from_config(self.scheduler_config))

    def joint(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, encode_labels(label, self.mask_channels).to(image.dtype)], dim=1)

    def forward(self, batch: dict, step: int, max_steps: int, generator: torch.Generator):
        x0 = self.joint(batch["image"], batch["label"])
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        xt = self.diffusion.q_sample(x0, t, noise)
        out = self.unet(xt, t).sample
        terms = self.diffusion.training_losses(out.float(), x0, xt, t, noise, prediction=self.prediction,
                                               learned_variance=self.learned_variance, snr_gamma=self.snr_gamma)
        loss = terms["loss"].mean()
        return loss, {"loss": loss.item(), "mse": terms["mse"].mean().item(), "vb": terms["vb"].mean().item()}

    def export(self, folder: Path) -> None:
        from diffusers import DDPMScheduler

        self.unet.save_pretrained(folder)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels: torch.Tensor, seeds: list[int]):
        """Joint samples (image and mask together) for the training contact sheet."""
        from nnaug.jdm.sampling import sample
        from nnaug.samplers import make_scheduler

        scheduler = make_scheduler("ddim", self.scheduler_config)
        was_training = self.unet.training
        self.unet.eval()
        try:
            x = sample(self.unet, scheduler, seeds, 25, self.image_channels, self.mask_channels)
        finally:
            self.unet.train(was_training)
        return x[:, : self.image_channels], decode_channels(x[:, self.image_channels:])
