"""The JDM network (a diffusers ``UNet2DModel``), its presets, and its training objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnaug.gaussian_diffusion import GaussianDiffusion
from nnaug.masks import decode_channels, encode_labels

# Reference §1 / thesis Table 4.1. Widths are block_out_channels (one per resolution level);
# attention is put on the levels whose feature map is in ``attention_resolutions``.
PRESETS = {
    "tiny": dict(resolution=32, channels=(32, 64, 64), layers_per_block=1, attention_resolutions=(8,),
                 attention_head_dim=32, steps=300, batch_size=8, lr=5e-4, ema_decay=0.995, checkpoint_every=50),
    "small": dict(resolution=128, channels=(64, 64, 128, 256, 256), layers_per_block=2, attention_resolutions=(16, 8),
                  attention_head_dim=64, steps=20000, batch_size=16, lr=1e-4, ema_decay=0.9995, checkpoint_every=1000),
    "paper": dict(resolution=256, channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
                  attention_resolutions=(16, 8), attention_head_dim=128, steps=60000, batch_size=10, lr=1e-4,
                  ema_decay=0.9999, checkpoint_every=5000),
}

# T = 1000, linear betas 1e-4 -> 0.02, epsilon prediction, learned-range variance.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                        clip_sample_range=1.0, timestep_spacing="trailing")


@dataclass
class JDMArchitecture:
    resolution: int
    image_channels: int
    mask_channels: int
    channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    attention_resolutions: tuple = (8,)
    attention_head_dim: int = 32
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
            sample_size=self.resolution, in_channels=total, out_channels=2 * total,  # eps and variance interpolation v
            block_out_channels=tuple(self.channels), layers_per_block=self.layers_per_block,
            down_block_types=down, up_block_types=up, attention_head_dim=self.attention_head_dim,
            resnet_time_scale_shift="scale_shift", norm_num_groups=min(32, min(self.channels)),
        )


class JDMModel(torch.nn.Module):
    """UNet over ``[image ; mask channels]`` trained with the improved-DDPM hybrid loss."""

    def __init__(self, unet, image_channels: int, mask_channels: int, scheduler_config: dict | None = None):
        super().__init__()
        self.unet = unet
        self.image_channels, self.mask_channels = image_channels, mask_channels
        self.scheduler_config = dict(scheduler_config or SCHEDULER_CONFIG)
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
        terms = self.diffusion.training_losses(out.float(), x0, xt, t, noise)
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
            x = sample(self.unet, scheduler, seeds, 20, self.image_channels, self.mask_channels)
        finally:
            self.unet.train(was_training)
        return x[:, : self.image_channels], decode_channels(x[:, self.image_channels:])
