"""New masks from real ones: random scaling, rotation, translation and flips (Siamese-Diffusion's
"random masks"). The foreground always stays inside the frame and keeps its label values
(nearest-neighbour resampling, translation limited to what keeps every foreground pixel in view).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MaskAugmentation:
    scale: tuple[float, float] = (0.75, 1.25)
    rotation_degrees: float = 180.0
    max_shift: float = 0.25  # fraction of the side length
    flip: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def augment_mask(label: np.ndarray, rng: np.random.Generator, params: MaskAugmentation = MaskAugmentation()):
    """(new label [S, S], the drawn parameters) for one integer label map."""
    size_y, size_x = label.shape
    center = np.array([(size_y - 1) / 2, (size_x - 1) / 2])
    flip_y, flip_x = (bool(rng.integers(0, 2)), bool(rng.integers(0, 2))) if params.flip else (False, False)
    angle = np.deg2rad(rng.uniform(-params.rotation_degrees, params.rotation_degrees))
    scale = rng.uniform(*params.scale)
    shift_draw = rng.uniform(-1, 1, 2)
    fg = np.argwhere(label > 0).astype(np.float64)
    if fg.size == 0:
        return label.copy(), {"empty": True}
    for attempt in range(2):
        matrix = _matrix(angle, scale, flip_y, flip_x)
        moved = (fg - center) @ matrix.T + center
        low = -moved.min(0)  # smallest shift that keeps the top/left edge in view
        high = np.array([size_y - 1, size_x - 1]) - moved.max(0)
        if np.all(low <= high):
            break
        scale = min(1.0, scale)  # too big to fit at any shift: fall back to the original size
        if attempt == 1:
            return label.copy(), {"fallback": True}
    limit = params.max_shift * np.array([size_y, size_x])
    lo, hi = np.maximum(low, -limit), np.minimum(high, limit)
    lo, hi = np.where(lo <= hi, lo, low), np.where(lo <= hi, hi, high)
    shift = lo + (shift_draw + 1) / 2 * (hi - lo)
    out = _warp(label, matrix, center, shift)
    return out, {"scale": round(float(scale), 4), "angle_deg": round(float(np.rad2deg(angle)), 2),
                 "shift": [round(float(s), 2) for s in shift], "flip_y": flip_y, "flip_x": flip_x}


def _matrix(angle: float, scale: float, flip_y: bool, flip_x: bool) -> np.ndarray:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    flip = np.diag([-1.0 if flip_y else 1.0, -1.0 if flip_x else 1.0])
    return scale * rot @ flip


def _warp(label: np.ndarray, matrix: np.ndarray, center: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling by the inverse map, so only existing label values appear."""
    size_y, size_x = label.shape
    grid = np.stack(np.meshgrid(np.arange(size_y), np.arange(size_x), indexing="ij"), -1).reshape(-1, 2).astype(np.float64)
    source = (grid - center - shift) @ np.linalg.inv(matrix).T + center
    src = np.rint(source).astype(np.int64)
    inside = (src[:, 0] >= 0) & (src[:, 0] < size_y) & (src[:, 1] >= 0) & (src[:, 1] < size_x)
    out = np.zeros(size_y * size_x, dtype=label.dtype)
    out[inside] = label[src[inside, 0], src[inside, 1]]
    return out.reshape(size_y, size_x)
