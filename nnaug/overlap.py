"""Held-out cases that are training cases: exact duplicates by content, near-duplicates by a thumbnail correlation.

A held-out set measures a model only if none of its cases is one the model trained on. Files can repeat
under another name (a dataset converted twice under two IDs), and real polyp data holds frames of the same
scene (CVC-ClinicDB's 612 frames come from 31 videos). Two checks, on the images as nnU-Net's reader gives them:

* **exact**: the sha256 of the decoded pixels (shape, dtype and values; not the file bytes, so a PNG and a
  TIFF of the same pixels match). An exact duplicate is refused in one line unless ``--allow-overlap``.
* **near**: the Pearson correlation of two grey :data:`THUMBNAIL` x :data:`THUMBNAIL` thumbnails (area
  averages of the channel mean) at or above :data:`NEAR_THRESHOLD`, listed as a warning. Measured on the 1000
  images of Kvasir-SEG (docs/convert.md, "Overlap check"): 5 pairs reach 0.97, each the same frame re-encoded
  or the same scene moved a little; the highest pair of unrelated frames scores 0.962, level with the next
  same-scene pairs (0.958, 0.962), so a lower threshold lists unrelated frames and a higher one misses shifts.

``nnaug sweep --test``, ``nnaug convert --split`` and ``nnaug report`` (its held-out calibration set) call
:func:`check_held_out` or :func:`find_overlap`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from nnaug.errors import NnaugError

THUMBNAIL = 16  # side of the grey thumbnail the near-duplicate check correlates
NEAR_THRESHOLD = 0.97  # Pearson correlation of two thumbnails from which a pair is listed (Kvasir-SEG: 5 pairs)
SHOWN = 5  # pairs named in one message


@dataclass
class Fingerprints:
    """Per case of one set: its name, the hash of its pixels and its normalised thumbnail (zero for a flat image)."""

    names: list[str]
    hashes: list[str]
    thumbnails: np.ndarray  # [N, THUMBNAIL**2], each zero-mean and unit-norm


def image_hash(image: np.ndarray) -> str:
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}|{image.dtype.str}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def thumbnail(image: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """The grey thumbnail of an image ([C, H, W] with ``channel_axis`` 0, or [H, W]), zero-mean and unit-norm."""
    from PIL import Image

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=channel_axis)
    grey = np.squeeze(grey)
    small = np.asarray(Image.fromarray(grey, mode="F").resize((THUMBNAIL, THUMBNAIL), Image.BOX), dtype=np.float64).ravel()
    small -= small.mean()
    norm = np.linalg.norm(small)
    return small / norm if norm > 1e-9 * max(1.0, float(np.abs(grey).max())) else np.zeros_like(small)


def fingerprints(named_images: Iterable[tuple[str, np.ndarray]]) -> Fingerprints:
    """:class:`Fingerprints` of (name, image [C, H, W]) pairs."""
    names, hashes, thumbs = [], [], []
    for name, image in named_images:
        names.append(str(name))
        hashes.append(image_hash(image))
        thumbs.append(thumbnail(image))
    return Fingerprints(names, hashes, np.stack(thumbs) if thumbs else np.zeros((0, THUMBNAIL * THUMBNAIL)))


def dataset_fingerprints(raw) -> Fingerprints:
    """The fingerprints of every case of a raw dataset, as nnU-Net's reader decodes its images."""
    def images():
        for case in raw.cases:
            yield case.identifier, raw.read_native(case)[0][:, 0]  # [C, 1, H, W] -> [C, H, W]

    return fingerprints(images())


@dataclass
class Overlap:
    """Pairs (case of ``a``, case of ``b``): identical pixels, and near-duplicates with their correlation."""

    exact: list[tuple[str, str]] = field(default_factory=list)
    near: list[tuple[str, str, float]] = field(default_factory=list)


def find_overlap(a: Fingerprints, b: Fingerprints, threshold: float = NEAR_THRESHOLD, block: int = 2048) -> Overlap:
    """Every pair of a case of ``a`` and a case of ``b`` that is identical, or near (correlation >= ``threshold``,
    highest first); a pair that is identical is not listed as near."""
    out = Overlap()
    by_hash: dict[str, list[str]] = {}
    for name, digest in zip(a.names, a.hashes):
        by_hash.setdefault(digest, []).append(name)
    out.exact = [(x, y) for y, digest in zip(b.names, b.hashes) for x in by_hash.get(digest, [])]
    identical = set(out.exact)
    for start in range(0, len(a.names), block):  # blocks of a: memory stays block x len(b)
        scores = a.thumbnails[start:start + block] @ b.thumbnails.T
        for i, j in zip(*np.nonzero(scores >= threshold)):
            pair = (a.names[start + i], b.names[j])
            if pair not in identical:
                out.near.append((*pair, float(scores[i, j])))
    out.near.sort(key=lambda p: -p[2])
    return out


def _pairs(pairs, join: str) -> str:
    shown = [f"{x} {join} {y}" + (f" ({rest[0]:.3f})" if rest else "") for x, y, *rest in pairs[:SHOWN]]
    return ", ".join(shown) + (f", ... ({len(pairs) - SHOWN} more)" if len(pairs) > SHOWN else "")


def exact_message(overlap: Overlap, a: str, b: str) -> str:
    return f"{len(overlap.exact)} case(s) of {b} have the very pixels of cases of {a}: {_pairs(overlap.exact, '=')}"


def overlap_warnings(overlap: Overlap, a: str, b: str) -> list[str]:
    """What ``overlap`` between the sets named ``a`` and ``b`` is worth a warning line: identical pixels (let
    through with ``--allow-overlap``) and near-duplicates."""
    out = [exact_message(overlap, a, b)] if overlap.exact else []
    if overlap.near:
        out.append(f"{len(overlap.near)} near-duplicate pair(s) between {a} and {b} (grey {THUMBNAIL}x{THUMBNAIL} "
                   f"thumbnails correlated >= {NEAR_THRESHOLD}): {_pairs(overlap.near, '~')} — if these are frames of "
                   "one scene, keep them in one set")
    return out


def check_held_out(training, held_out, allow_overlap: bool = False, what: str = "--test",
                   warn: Callable[[str], None] | None = None) -> Overlap:
    """Refuse (one line) a held-out raw dataset holding a training case's exact pixels, unless ``allow_overlap``;
    hand its near-duplicates, and with ``allow_overlap`` the identical ones, to ``warn`` (default: stderr)."""
    overlap = find_overlap(dataset_fingerprints(training), dataset_fingerprints(held_out))
    if overlap.exact and not allow_overlap:
        raise NnaugError(f"{what} {held_out.name} is not held out: {exact_message(overlap, training.name, held_out.name)} "
                         "— give a held-out set of other cases (nnaug convert --split makes one), or pass "
                         "--allow-overlap if you know")
    for message in overlap_warnings(overlap, training.name, held_out.name):
        (warn or _stderr)(message)
    return overlap


def _stderr(message: str) -> None:
    import sys

    print(f"nnaug: warning: {message}", file=sys.stderr, flush=True)
