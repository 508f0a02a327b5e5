"""Label maps <-> network channels, shared by the generators.

Labels hold the dataset's values 0..K (0 = background). K foreground classes become K one-hot
channels (binary: one channel); decoding picks the strongest channel above the midpoint, so a
decoded map holds only valid label values.
"""
from __future__ import annotations

import torch


def num_mask_channels(label_values: list[int]) -> int:
    return max(1, len(label_values) - 1)


def one_hot(labels: torch.Tensor, num_channels: int) -> torch.Tensor:
    """[B, S, S] integers 0..K -> [B, K, S, S] float in {0, 1} (channel k-1 is label k)."""
    classes = torch.arange(1, num_channels + 1, device=labels.device).view(1, -1, 1, 1)
    return (labels.unsqueeze(1) == classes).float()


def encode_labels(labels: torch.Tensor, num_channels: int) -> torch.Tensor:
    """[B, S, S] -> [B, K, S, S] in {-1, 1}, the range the diffusion model works in."""
    return one_hot(labels, num_channels) * 2.0 - 1.0


def decode_channels(channels: torch.Tensor) -> torch.Tensor:
    """[B, K, S, S] in [-1, 1] -> [B, S, S] labels: argmax over classes, background where all are < 0."""
    background = torch.zeros_like(channels[:, :1])
    return torch.cat([background, channels], dim=1).argmax(dim=1)
