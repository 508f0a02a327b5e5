"""Dense Hint Input (DHI): Siamese-Diffusion's replacement for ControlNet's small hint encoder.

Layout (reference widths 16, 32, 64, 128, 256 with three PatchMerges)::

    conv3x3(hint -> c0) -> Res(c0)
    conv3x3(c0 -> c1)   -> Res(c1)
    for each further width c_i:  PatchMerge(c_{i-1} -> c_i, /2) -> conv3x3(c_i -> c_i) -> Res(c_i)
    zero-initialised conv3x3(c_last -> out_channels)

The number of PatchMerges is ``log2(hint resolution / resolution of the UNet's first level)``:

- Stable Diffusion 1.5: the hint is the 384 px image-space mask, the UNet's first level works
  on the 48 px latent, so 3 merges (8x down) -- the paper's setting.
- Pixel space: the UNet's ``conv_in`` keeps the full image resolution, so the hint must stay at
  full resolution too: 0 merges (only the two full-resolution stages remain).

The DHI's output is added to the ControlNet's ``conv_in`` output, so ``out_channels`` is the
model width (``block_out_channels[0]``). It is a diffusers ``ModelMixin`` so that it can be
saved and loaded on its own (``dhi/config.json`` + ``dhi/diffusion_pytorch_model.safetensors``);
see :mod:`nnaug.generators.siamese.backbone` for why it is not saved inside the ControlNet.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def default_dhi_channels(num_merges: int, first: int = 16, second: int = 32) -> tuple[int, ...]:
    """The reference widths: ``first, second`` at full resolution, then doubling at every merge."""
    return (first, second) + tuple(second * 2 ** (i + 1) for i in range(num_merges))


class ResBlock(nn.Module):
    """conv3x3, SiLU, conv3x3, + skip (1x1 conv if the width changes), SiLU. No normalisation (as in the paper)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.conv1(x)))
        return F.silu(h + self.skip(x))


class PatchMerge(nn.Module):
    """Swin-style patch merging on NCHW tensors: 2x2 space-to-depth, LayerNorm(4C), Linear(4C -> C_out)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerge needs an even height and width, got {h}x{w}")
        x = x.permute(0, 2, 3, 1)  # NHWC: LayerNorm/Linear act on the channel axis
        # Same concatenation order as Swin: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = self.reduction(self.norm(x))
        return x.permute(0, 3, 1, 2).contiguous()


class DenseHintInput(ModelMixin, ConfigMixin):
    """The DHI hint encoder (see module docstring).

    Args:
        hint_channels: channels of the hint tensor (the same for the mask and the image hint).
        out_channels: the ControlNet's first block width (``block_out_channels[0]``).
        num_merges: number of 2x PatchMerges, ``log2(hint resolution / UNet first-level resolution)``.
        channels: widths, ``num_merges + 2`` of them; default :func:`default_dhi_channels`.
    """

    @register_to_config
    def __init__(
        self,
        hint_channels: int = 3,
        out_channels: int = 320,
        num_merges: int = 3,
        channels: Sequence[int] | None = None,
    ):
        super().__init__()
        channels = tuple(channels) if channels is not None else default_dhi_channels(num_merges)
        if num_merges < 0 or len(channels) != num_merges + 2:
            raise ValueError(f"DHI needs num_merges + 2 widths, got num_merges={num_merges} and channels={channels}")
        self.conv_in = nn.Conv2d(hint_channels, channels[0], 3, padding=1)
        self.res_in = ResBlock(channels[0], channels[0])
        stages = [nn.Sequential(nn.Conv2d(channels[0], channels[1], 3, padding=1), ResBlock(channels[1], channels[1]))]
        for c_prev, c in zip(channels[1:-1], channels[2:]):
            stages.append(nn.Sequential(PatchMerge(c_prev, c), nn.Conv2d(c, c, 3, padding=1), ResBlock(c, c)))
        self.stages = nn.ModuleList(stages)
        # Zero-initialised so that a fresh ControlNet leaves the UNet's behaviour unchanged.
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** self.config.num_merges

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        h = self.res_in(self.conv_in(hint))
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(h)
