"""Mask realism: do the synthetic masks look like real masks, one mask at a time?

FRD and mask consistency score images; nothing there says that a generator draws three small blobs
where every real mask holds one compact polyp, or puts masks where no real mask ever is. This module
measures each mask of a set, per label, and compares the real and the synthetic distribution of every
statistic with the 1-D Wasserstein distance (:func:`scipy.stats.wasserstein_distance`, in the statistic's
own unit). Region properties come from scikit-image (:func:`skimage.measure.label`, ``regionprops``).

Everything here takes label maps already loaded (``[N, H, W]`` integer arrays of one size); nothing is
read from disk and nothing is drawn (:mod:`nnaug.report.realism` makes the pictures and the text).
"""
from __future__ import annotations

import numpy as np

from nnaug.errors import NnaugError

STATISTICS = {
    "components": ("connected components", "8-connected regions of the label per mask (0: label absent)"),
    "area_fraction": ("area fraction", "label pixels ÷ image pixels"),
    "centroid_y": ("centroid row", "centre of mass of the label, 0 = top, 1 = bottom (masks with the label)"),
    "centroid_x": ("centroid column", "centre of mass of the label, 0 = left, 1 = right (masks with the label)"),
    "solidity": ("solidity", "area of the largest component ÷ area of its convex hull (1: convex)"),
    "touches_border": ("touches the border", "1 when a label pixel lies on the outermost row or column"),
    "outside_real": ("outside real support", "share of the label's pixels where no real mask has the label "
                                             "(a real mask: no other real mask)"),
}
"""statistic key -> (name, what one value is)."""

SPLITS = 20
"""Random half/half splits of the real set for the real-vs-real Wasserstein distances (the scale of noise)."""


def _labels_array(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3 or len(arr) == 0:
        raise NnaugError(f"mask realism needs label maps [N, H, W] with N >= 1, got shape {tuple(arr.shape)}")
    return arr.astype(np.int64, copy=False)


def support(labels, label: int) -> np.ndarray:
    """How many masks of ``labels`` have ``label`` at each pixel ([H, W] counts)."""
    return (_labels_array(labels) == label).sum(axis=0)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Regions of a boolean mask, numbered 1.. (8-connected in 2-D): the one meaning of "a component" here."""
    from skimage.measure import label as connected

    return connected(mask, connectivity=mask.ndim)


def most_components(label_map, label_values) -> int:
    """The most connected components any of ``label_values`` has in one label map (``--max-components``)."""
    arr = np.asarray(label_map)
    return max((int(connected_components(arr == int(v)).max()) for v in label_values), default=0)


def mask_statistics(labels, label_values, reference_support: dict | None = None) -> dict:
    """Per label, every statistic of :data:`STATISTICS` for each mask: ``{label: {stat: 1-D array}}``.

    ``reference_support``: ``{label: [H, W] counts}`` of the real masks (:func:`support`) for
    ``outside_real``; None means ``labels`` are the real masks themselves, and each mask is compared
    with the support of the *other* masks (leave one out), so that the real values show how much of a
    real mask unseen real masks leave uncovered. Masks without the label give components, area and
    border 0 and no value for the centroid, solidity and ``outside_real``.
    """
    from skimage.measure import regionprops

    arr = _labels_array(labels)
    n, h, w = arr.shape
    out = {}
    for value in label_values:
        value = int(value)
        own = support(arr, value)
        ref = reference_support.get(value) if reference_support is not None else None
        if ref is not None and ref.shape != (h, w):
            raise NnaugError(f"mask realism: the real support is {ref.shape}, the masks {(h, w)}")
        stats = {k: [] for k in STATISTICS}
        for mask in arr == value:
            area = int(mask.sum())
            components = connected_components(mask)
            count = int(components.max())
            stats["components"].append(count)
            stats["area_fraction"].append(area / (h * w))
            border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            stats["touches_border"].append(float(border))
            if area == 0:
                continue
            ys, xs = np.nonzero(mask)
            stats["centroid_y"].append((ys.mean() + 0.5) / h)
            stats["centroid_x"].append((xs.mean() + 0.5) / w)
            largest = max(regionprops(components), key=lambda r: r.area)
            stats["solidity"].append(float(largest.solidity))
            covered = (own - mask) if ref is None else ref  # leave one out for the real masks
            stats["outside_real"].append(float((mask & (covered == 0)).sum()) / area)
        out[value] = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    return out


def wasserstein(a, b) -> float | None:
    """1-D Wasserstein distance of two samples (None when either is empty)."""
    from scipy.stats import wasserstein_distance

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    return float(wasserstein_distance(a, b))


def _split_half(values: np.ndarray, rng) -> float | None:
    if len(values) < 4:
        return None
    order = rng.permutation(len(values))
    half = len(values) // 2
    return wasserstein(values[order[:half]], values[order[half:2 * half]])


def compare(real_labels, synthetic_labels, label_values=None, seed: int = 0) -> dict:
    """Mask realism of a synthetic set against the real one (both ``[N, H, W]`` label maps of one size).

    ``label_values``: the foreground labels (default: every value > 0 found in either set).
    Returns ``dict(labels=[...], rows=[{label, statistic, name, real_mean, synthetic_mean, n_real, n_synthetic,
    wasserstein, real_split_wasserstein}], real={label: {stat: values}}, synthetic={...}, support={label: [H, W]
    counts of the real masks}, synthetic_support={...}, n_real=, n_synthetic=, resolution=[H, W])``. ``real_split_wasserstein`` is the
    mean Wasserstein distance between two random halves of the real set (:data:`SPLITS` splits): how far
    apart two real samples of half the size already are.
    """
    real, syn = _labels_array(real_labels), _labels_array(synthetic_labels)
    if real.shape[1:] != syn.shape[1:]:
        raise NnaugError(f"mask realism: real masks are {real.shape[1:]}, synthetic {syn.shape[1:]}: resize one set")
    if label_values is None:
        label_values = sorted(int(v) for v in set(np.unique(real)) | set(np.unique(syn)) if v > 0)
    supports = {int(v): support(real, v) for v in label_values}
    real_stats = mask_statistics(real, label_values)
    syn_stats = mask_statistics(syn, label_values, supports)
    rng = np.random.default_rng(seed)
    rows = []
    for value in label_values:
        for key, (name, _) in STATISTICS.items():
            r, s = real_stats[value][key], syn_stats[value][key]
            splits = [d for d in (_split_half(r, rng) for _ in range(SPLITS)) if d is not None]
            rows.append({"label": int(value), "statistic": key, "name": name,
                         "real_mean": float(r.mean()) if len(r) else None,
                         "synthetic_mean": float(s.mean()) if len(s) else None,
                         "n_real": int(len(r)), "n_synthetic": int(len(s)), "wasserstein": wasserstein(r, s),
                         "real_split_wasserstein": float(np.mean(splits)) if splits else None})
    return {"labels": [int(v) for v in label_values], "rows": rows, "real": real_stats, "synthetic": syn_stats,
            "support": supports, "synthetic_support": {int(v): support(syn, v) for v in label_values},
            "n_real": len(real), "n_synthetic": len(syn), "resolution": list(real.shape[1:])}


def summary(result: dict) -> dict:
    """``result`` without the per-mask arrays and the support maps (what report.json keeps)."""
    return {k: v for k, v in result.items() if k not in ("real", "synthetic", "support", "synthetic_support")}
