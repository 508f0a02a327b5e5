"""Memorisation: how close each synthetic case is to its nearest real training case, by mask and by
image (:func:`memorisation`), what counts as close given how near real images are to each other
(:func:`memorisation_summary`), and the picture of the closest pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnaug.dataset_images import as_raw, load_cases, select_cases, synthetic_identifiers, uint8_images
from nnaug.errors import NnaugError
from nnaug.fidelity import inception_features
from nnaug.io import write_atomic


def memorisation(synthetic_raw, real_raw, top: int = 8, out_png=None, size: int = 32,
                 inception_weights: str | Path | None = None, max_cases: int | None = None) -> list[dict]:
    """Nearest real training case of each synthetic case, by mask and by image.

    Mask distance: 1 - mean Dice over the labels present (label maps resized nearest to ``size``²;
    0 when both are empty). Image distance: RMS difference of the images in [-1, 1] at ``size``²
    (``image_metric`` = ``"rms-<size>px"``), or, when ``inception_weights`` is given, the L2 distance
    of the 2048-d InceptionV3 features (``"inception-2048-l2"``).
    Returns one dict per synthetic case — ``case, nearest_by_mask, mask_distance, nearest_by_image,
    image_distance, image_metric`` — sorted by image distance (the most copy-like first). ``out_png``:
    the ``top`` closest pairs as rows ``synthetic | nearest real`` (image and mask overlay each).
    """
    return _memorisation(synthetic_raw, real_raw, top, out_png, size, inception_weights, max_cases)[0]


def memorisation_summary(synthetic_raw, real_raw, top: int = 8, out_png=None, size: int = 32,
                         inception_weights: str | Path | None = None, max_cases: int | None = None,
                         percentile: float = 5.0) -> dict:
    """:func:`memorisation`, plus what it means: how close real images are to each other.

    For every real training case the distance (same metric) to its nearest *other* real case; the
    ``percentile``-th percentile of those is the threshold: a synthetic image closer to a real one
    than that is closer than 95 % (for 5) of real images are to any other real image — a likely copy.
    Returns ``dict(rows=memorisation rows, image_metric=, threshold=, percentile=, n_synthetic=,
    n_below=, below=[cases], synthetic_quantiles={min,p5,p25,median,p75,max}, real_quantiles={...},
    synthetic_nearest=[distance per synthetic case], real_nearest=[per real case])``.
    With fewer than 2 real cases there is no real–real distance: threshold None.
    """
    rows, real_nn, n_real = _memorisation(synthetic_raw, real_raw, top, out_png, size, inception_weights, max_cases)
    syn_d = np.array([r["image_distance"] for r in rows], np.float64)
    threshold = float(np.percentile(real_nn, percentile)) if len(real_nn) else None
    below = [r["case"] for r in rows if threshold is not None and r["image_distance"] < threshold]

    def quantiles(values: np.ndarray) -> dict | None:
        if not len(values):
            return None
        q = np.percentile(values, [0, 5, 25, 50, 75, 100])
        return dict(zip(("min", "p5", "p25", "median", "p75", "max"), (float(v) for v in q)))

    return {"rows": rows, "image_metric": rows[0]["image_metric"], "threshold": threshold, "percentile": percentile,
            "n_synthetic": len(rows), "n_real": n_real,
            "n_below": len(below), "below": below, "synthetic_quantiles": quantiles(syn_d),
            "real_quantiles": quantiles(real_nn), "synthetic_nearest": syn_d.tolist(), "real_nearest": real_nn.tolist()}


def _pairwise_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _memorisation(synthetic_raw, real_raw, top, out_png, size, inception_weights, max_cases):
    """(memorisation rows, nearest-other-real distance of every real case in the same metric, number of real cases)."""
    syn = as_raw(synthetic_raw)
    real = as_raw(real_raw)
    syn_cases = select_cases(syn, synthetic_identifiers(syn), max_cases)
    real_cases = list(real.cases)
    if not syn_cases or not real_cases:
        raise NnaugError(f"memorisation needs cases in both {syn.name} and {real.name}")
    syn_img, syn_lab = load_cases(syn, syn_cases, (size, size))
    real_img, real_lab = load_cases(real, real_cases, (size, size))
    s_lab, r_lab = np.stack(syn_lab), np.stack(real_lab)

    # mask distance: 1 - mean Dice over the labels present in either mask
    values = sorted((set(np.unique(s_lab).tolist()) | set(np.unique(r_lab).tolist())) - {0})
    inter = np.zeros((len(syn_cases), len(real_cases)))
    present = np.zeros_like(inter)
    for v in values:
        s = (s_lab == v).reshape(len(syn_cases), -1).astype(np.float64)
        r = (r_lab == v).reshape(len(real_cases), -1).astype(np.float64)
        denom = s.sum(1)[:, None] + r.sum(1)[None, :]
        dice = np.where(denom > 0, 2 * (s @ r.T) / np.maximum(denom, 1), 0.0)
        inter += dice
        present += denom > 0
    mask_dist = np.where(present > 0, 1.0 - inter / np.maximum(present, 1), 0.0)

    if inception_weights is not None:
        f_s = inception_features(uint8_images(syn_img), inception_weights)
        f_r = inception_features(uint8_images(real_img), inception_weights)
        metric, scale = "inception-2048-l2", 1.0
    else:
        f_s = np.stack(syn_img).reshape(len(syn_cases), -1).astype(np.float64)
        f_r = np.stack(real_img).reshape(len(real_cases), -1).astype(np.float64)
        metric, scale = f"rms-{size}px", 1.0 / np.sqrt(f_s.shape[1])  # RMS per pixel and channel
    img_dist = _pairwise_l2(f_s, f_r) * scale
    if len(real_cases) > 1:
        real_real = _pairwise_l2(f_r, f_r) * scale
        np.fill_diagonal(real_real, np.inf)
        real_nn = real_real.min(1)
    else:
        real_nn = np.zeros(0)

    rows = []
    for i, case in enumerate(syn_cases):
        jm, ji = int(np.argmin(mask_dist[i])), int(np.argmin(img_dist[i]))
        rows.append({"case": case.identifier, "nearest_by_mask": real_cases[jm].identifier,
                     "mask_distance": float(mask_dist[i, jm]), "nearest_by_image": real_cases[ji].identifier,
                     "image_distance": float(img_dist[i, ji]), "image_metric": metric})
    rows.sort(key=lambda r: (r["image_distance"], r["mask_distance"]))
    if out_png is not None:
        full_syn = select_cases(syn, [r["case"] for r in rows[:top]])
        order = {r["case"]: k for k, r in enumerate(rows[:top])}
        full_syn.sort(key=lambda c: order[c.identifier])
        by_id = {c.identifier: c for c in real_cases}
        pairs = [(c, by_id[rows[order[c.identifier]]["nearest_by_image"]]) for c in full_syn]
        _pairs_png(syn, real, pairs, rows[:top], Path(out_png))
    return rows, real_nn, len(real_cases)


def _pairs_png(syn, real, pairs, rows, path: Path, tile: int = 128) -> Path:
    """Rows of ``synthetic image | synthetic overlay || real image | real overlay``, under a header, each
    row labelled with its rank and image distance."""
    from PIL import Image, ImageDraw, ImageFont

    from nnaug.visualize import overlay, to_uint8_rgb

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    thin, wide = np.full((tile, 2, 3), 255, np.uint8), np.full((tile, 14, 3), 255, np.uint8)
    strips = []
    for k, ((sc, rc), row) in enumerate(zip(pairs, rows)):
        (si,), (sl,) = load_cases(syn, [sc], (tile, tile))
        (ri,), (rl,) = load_cases(real, [rc], (tile, tile))
        s_rgb, r_rgb = to_uint8_rgb(si), to_uint8_rgb(ri)
        strip = Image.fromarray(np.concatenate([s_rgb, thin, overlay(s_rgb, sl), wide, r_rgb, thin, overlay(r_rgb, rl)], 1))
        draw = ImageDraw.Draw(strip)
        label = f"#{k + 1}  d={row['image_distance']:.4f}"
        box = draw.textbbox((4, 3), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(255, 255, 255))
        draw.text((4, 3), label, fill=(20, 20, 20), font=font)
        strips.append(np.asarray(strip))
    width = strips[0].shape[1]
    header = Image.new("RGB", (width, 22), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    draw.text((4, 4), "synthetic: image | mask", fill=(20, 20, 20), font=font)
    draw.text((2 * tile + 2 + 14 + 4, 4), "nearest real: image | mask", fill=(20, 20, 20), font=font)
    gap = np.full((4, width, 3), 255, np.uint8)
    sheet = np.concatenate([np.asarray(header)] + [np.concatenate([gap, s]) for s in strips])
    write_atomic(path, Image.fromarray(sheet).save)
    return path
