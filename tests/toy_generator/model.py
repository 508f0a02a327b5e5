"""The toy generator's network (a diffusers ModelMixin: its config and weights are the folder), its
trainable module and its sampler."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from nnaug.masks import one_hot


class ToyNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, image_channels: int = 3, mask_channels: int = 1):
        super().__init__()
        self.paint = torch.nn.Conv2d(mask_channels, image_channels, 1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.paint(one_hot(labels, self.config.mask_channels))


class ToyModel(torch.nn.Module):
    """The TrainableGenerator: learns the colour of every class."""

    def __init__(self, net: ToyNet, noise: float):
        super().__init__()
        self.net, self.noise = net, noise

    def forward(self, batch, step, max_steps, generator):
        loss = torch.nn.functional.mse_loss(self.net(batch["label"]), batch["image"])
        return loss, {"loss": loss.item()}

    def export(self, folder: Path) -> None:
        self.net.save_pretrained(folder)

    @torch.no_grad()
    def preview(self, labels, seeds):
        return ToyGenerator(self.net, self.noise).sample(seeds, labels)


class ToyGenerator:
    """The SampleableGenerator: images for given masks only."""

    supports_joint = False

    def __init__(self, net: ToyNet, noise: float, resolution: int = 16):
        self.net, self.noise, self.resolution = net, noise, resolution
        self.image_channels, self.mask_channels = net.config.image_channels, net.config.mask_channels

    @classmethod
    def from_pretrained(cls, folder, info, device="cpu"):
        return cls(ToyNet.from_pretrained(str(folder)).to(device).eval(), info["settings"]["noise"], info["resolution"])

    @torch.no_grad()
    def sample(self, seeds, labels=None, sampler="none", steps=1, guidance_scale=None):
        noise = torch.stack([torch.randn(self.image_channels, *labels.shape[-2:], generator=torch.Generator().manual_seed(s))
                             for s in seeds])
        images = self.net(labels.to(self.net.device)).cpu() + self.noise * noise
        return images.clamp(-1, 1), labels.cpu()


def build(settings, raw, image_channels, mask_channels) -> ToyModel:
    return ToyModel(ToyNet(image_channels=image_channels, mask_channels=mask_channels), noise=settings["noise"])
