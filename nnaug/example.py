"""A small procedural 2D dataset, so every command can run on a fresh machine with no download.

24 RGB images of 64x64: smooth coloured texture in the background, and one or two blobs per image
of two classes — ``round`` (label 1, bright and reddish) and ``lobed`` (label 2, dark and
elongated). Fixed seed: the same bytes on every machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnaug.dataset import write_case
from nnaug.nnunet_paths import raw_target
from nnaug.io import atomic_output_dir
from nnaug.errors import NnaugError

LABELS = {"background": 0, "round": 1, "lobed": 2}


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((size, size)), scale, mode="wrap")
    return noise / (np.abs(noise).max() + 1e-8)


def _blob(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """Boolean mask of one blob: a radius that wobbles with the angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    angle = np.arctan2(yy - cy, xx - cx)
    base = rng.uniform(0.10, 0.17) * size
    if kind == 1:  # round: almost circular
        radius = base * (1 + 0.08 * np.sin(3 * angle + rng.uniform(0, 6.3)))
        dist = np.hypot(yy - cy, xx - cx)
    else:  # lobed: elongated, with three or four lobes
        rot = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
        v = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
        dist = np.hypot(u / 1.6, v)
        radius = base * (1 + 0.3 * np.sin(rng.integers(3, 5) * angle + rng.uniform(0, 6.3)))
    return dist < radius


def make_case(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [3, H, W], label uint8 [H, W])."""
    tint = rng.uniform([150, 90, 80], [210, 140, 120])
    texture = _smooth_noise(rng, size, 2.0) * 25 + _smooth_noise(rng, size, 6.0) * 20
    image = tint[:, None, None] + texture[None]
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 3)):
        kind = int(rng.integers(1, 3))
        blob = _blob(rng, size, kind) & (label == 0)
        label[blob] = kind
        colour = np.array([235, 120, 110]) if kind == 1 else np.array([90, 50, 60])
        shade = 1 + 0.15 * _smooth_noise(rng, size, 1.5)
        image[:, blob] = (colour[:, None] * shade[blob][None])
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_example_dataset(dataset_id: int = 999, name: str = "nnaugExample", num_cases: int = 24, size: int = 64,
                          seed: int = 0, overwrite: bool = False) -> Path:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    if num_cases < 1:
        raise NnaugError("--num-cases must be at least 1")
    target = raw_target(dataset_id, name, "--dataset-id")
    rng = np.random.default_rng(seed)
    with atomic_output_dir(target, overwrite=overwrite) as work:
        for i in range(num_cases):
            image, label = make_case(rng, size)
            write_case(work, f"example_{i:03d}", image, label, ".png", [3], NaturalImage2DIO)
        generate_dataset_json(
            str(work), channel_names={"0": "R", "1": "G", "2": "B"}, labels=LABELS, num_training_cases=num_cases,
            file_ending=".png", dataset_name=target.name, description="Procedural example dataset made by nnaug",
            license="CC0", converted_by="nnaug example-dataset",
        )
    return target
