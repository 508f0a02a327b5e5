"""The images of a raw dataset as arrays the metrics take: opening a dataset, picking its (synthetic)
cases, loading them resized into [-1, 1], and converting image batches to uint8 RGB.

Shared by :mod:`nnaug.fidelity`, :mod:`nnaug.mask_consistency`, :mod:`nnaug.memorisation`,
:mod:`nnaug.frd` and :mod:`nnaug.report`; nothing here computes a metric.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nnaug.errors import NnaugError

if TYPE_CHECKING:  # only for the annotation: torch is imported where it is used, not at import
    import torch


def as_raw(dataset):
    """A :class:`nnaug.dataset.RawDataset` as it is, else the raw dataset that folder, name or ID names."""
    from nnaug.dataset import RawDataset, load_raw_dataset

    return dataset if isinstance(dataset, RawDataset) else load_raw_dataset(dataset)


def synthetic_identifiers(raw) -> list[str] | None:
    """The synthetic case identifiers from ``nnaug_provenance.json`` (a --mix dataset also holds real cases)."""
    from nnaug.provenance import read_provenance

    provenance = read_provenance(raw.folder)
    if provenance is None or not isinstance(provenance.get("cases"), list):
        return None
    return [c["case"] for c in provenance["cases"] if isinstance(c, dict) and "case" in c]


def select_cases(raw, identifiers: list[str] | None = None, max_cases: int | None = None):
    """The cases of ``raw`` named in ``identifiers`` (None: all), at most ``max_cases`` spread evenly over them."""
    cases = raw.cases
    if identifiers is not None:
        wanted = set(identifiers)
        cases = [c for c in cases if c.identifier in wanted]
    if max_cases is not None and len(cases) > max_cases:
        idx = np.linspace(0, len(cases) - 1, max_cases).round().astype(int)  # spread, deterministic
        cases = [cases[i] for i in sorted(set(idx.tolist()))]
    return cases


def load_cases(raw, cases, size: tuple[int, int] | None):
    """Images [N, C, h, w] in [-1, 1] and labels [N, h, w] of ``cases``, resized to ``size`` (None: as they are)."""
    import torch
    import torch.nn.functional as F

    from nnaug.dataset import to_model_range

    images, labels = [], []
    for case in cases:
        image, label, _ = raw.read_case(case)
        img = torch.from_numpy(to_model_range(image, raw.intensity_mode))[None]
        lab = torch.from_numpy(label)[None, None].float()
        if size is not None and tuple(img.shape[-2:]) != tuple(size):
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
            lab = F.interpolate(lab, size=size, mode="nearest")
        images.append(img[0].numpy())
        labels.append(lab[0, 0].long().numpy())
    return images, labels


def uint8_images(images: list[np.ndarray]) -> np.ndarray:
    """[-1, 1] images [C, H, W] (same size) -> uint8 RGB [N, 3, H, W] (gray replicated, extra channels dropped)."""
    from nnaug.visualize import to_uint8_rgb

    return np.stack([np.moveaxis(to_uint8_rgb(img), -1, 0) for img in images])


def to_uint8_batch(images) -> torch.Tensor:
    """uint8 RGB [N, 3, H, W] from an array/tensor [N, C, H, W] (C 1 or 3) or [N, H, W, 3] (uint8, or float in [0, 255])."""
    import torch

    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.ndim == 3:  # [N, H, W] grayscale
        x = x[:, None]
    if x.ndim != 4:
        raise NnaugError(f"images must be [N, C, H, W] or [N, H, W, C], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        x = x[:, :3]
    if x.dtype != torch.uint8:
        x = x.float().round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()
