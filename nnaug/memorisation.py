"""Memorisation: is a synthetic image a copy of a real training image, or only similar the way real images are?

Similarity (:func:`similarity`): normalised cross-correlation (NCC) of **high-passed** grayscale images —
each image at 64x64 minus its Gaussian blur (sigma 2 px), so that brightness, colour cast and blur do
not count, only the structure a copy shares — maximised over the 4 flips and shifts of up to 1 px at
64 px (4 px at 256 px). A copy, flipped, shifted or re-encoded, scores near 1; a blurry image has
little high-frequency structure and correlates with no real image in particular.

Threshold (:func:`calibrate`): what real images the generator never saw score against the training
set — the 95th percentile of each held-out real image's similarity to its nearest training image
(Dar et al., Nat. Biomed. Eng. 2025, calibrate on held-out data). Without held-out data, cross-fitting:
the training cases are split into 5 parts, and each case is compared with the other 4 parts.

Images made for given masks (``--mode mask-conditioned``) share their mask's outline with the training
image that mask came from, by design: the generator was asked to draw an object exactly there. On such
sets both sides are compared **outside their masks** (each image's foreground, dilated by
:data:`MASK_MARGIN` px at 64 px, is left out), so the shared outline does not count and a copy still
shows in everything else. Seen on the Siamese demo: 41 of 48 images "possible copies" with the whole
image, none outside the masks.

Why this measure (``tests/test_memorisation.py`` measures it on Kvasir-SEG; docs/report.md has the
table): RMS distance at 32 px flags blurred unseen images (blur pulls an image towards every real
image); raw-image NCC flags 7-10 % of blurred unseen images; high-pass NCC flags 0-2 % and every
planted copy. InceptionV3 features are not used: their behaviour on medical images cannot be checked
offline, and the high-pass NCC needs no weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnaug.dataset_images import as_raw, load_cases, select_cases, synthetic_identifiers
from nnaug.errors import NnaugError
from nnaug.io import write_atomic

FEATURE_SIZE = 64
HIGHPASS_SIGMA = 2.0
MAX_SHIFT = 1
PERCENTILE = 95.0
CROSS_FIT_FOLDS = 5
# A single image this similar (and above every unseen real image) is flagged on its own: on Kvasir-SEG
# planted copies (flipped, shifted, re-encoded) scored >= 0.82 and blurred unseen images far below.
NEAR_COPY = 0.8
MASK_MARGIN = 4  # px at 64 px: twice the high-pass sigma, so an outline's high-passed edge is left out too
IMAGE_METRIC = f"high-pass NCC at {FEATURE_SIZE}px (flips, ±{MAX_SHIFT} px)"
VARIANTS = [(flip, dy, dx) for flip in ("none", "h-flip", "v-flip", "hv-flip")
            for dy in range(-MAX_SHIFT, MAX_SHIFT + 1) for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)]


# ----------------------------------------------------------------------------- the measure
def features(images) -> np.ndarray:
    """High-passed grayscale [N, 64, 64] (float32) of images [C, H, W] in [-1, 1] (as ``load_cases`` gives them
    at ``(64, 64)``; other sizes are resized here)."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    out = []
    for image in images:
        x = torch.as_tensor(np.asarray(image, np.float32))
        if x.ndim == 2:
            x = x[None]
        if tuple(x.shape[-2:]) != (FEATURE_SIZE, FEATURE_SIZE):
            x = F.interpolate(x[None], size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]) if x.shape[0] >= 3 else x[0]
        out.append(gray.numpy())
    gray = np.stack(out).astype(np.float32)
    return gray - ndimage.gaussian_filter(gray, (0, HIGHPASS_SIGMA, HIGHPASS_SIGMA))


def outside_masks(feats: np.ndarray, labels) -> np.ndarray:
    """``feats`` [N, 64, 64] with each image's foreground (dilated by :data:`MASK_MARGIN` px) set to 0."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    out = feats.copy()
    for i, label in enumerate(labels):
        fg = torch.as_tensor(np.asarray(label) > 0, dtype=torch.float32)[None, None]
        fg = F.interpolate(fg, size=feats.shape[-2:], mode="nearest")[0, 0].numpy() > 0
        out[i][ndimage.binary_dilation(fg, iterations=MASK_MARGIN)] = 0.0
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def _variant(f: np.ndarray, flip: str, dy: int, dx: int) -> np.ndarray:
    if flip in ("h-flip", "hv-flip"):
        f = f[:, :, ::-1]
    if flip in ("v-flip", "hv-flip"):
        f = f[:, ::-1, :]
    m, n = MAX_SHIFT, FEATURE_SIZE
    return f[:, m + dy: n - m + dy, m + dx: n - m + dx]


def similarity(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NCC [Nq, Nr] maximised over flips and shifts of the query, index into :data:`VARIANTS` of the best one)
    between :func:`features` of two image sets."""
    m, n = MAX_SHIFT, FEATURE_SIZE
    ref = _unit(reference[:, m: n - m, m: n - m])
    best = np.full((len(query), len(reference)), -np.inf)
    which = np.zeros(best.shape, np.int64)
    for k, variant in enumerate(VARIANTS):
        s = _unit(_variant(query, *variant)) @ ref.T
        better = s > best
        best = np.where(better, s, best)
        which[better] = k
    return best, which


def calibrate(train: np.ndarray, heldout: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Null similarities: each held-out image's similarity to its nearest training image, or without held-out
    images (cross-fit) each training image's similarity to its nearest one in the other
    :data:`CROSS_FIT_FOLDS` - 1 parts. (The other *half* alone would compare with N/2 images instead of N,
    and make a lower threshold.)"""
    if heldout is not None and len(heldout):
        return similarity(heldout, train)[0].max(1)
    if len(train) < 2:
        return np.zeros(0)
    folds = np.random.default_rng(seed).permutation(len(train)) % min(CROSS_FIT_FOLDS, len(train))
    null = np.empty(len(train))
    for k in np.unique(folds):
        inside = folds == k
        null[inside] = similarity(train[inside], train[~inside])[0].max(1)
    return null


def copy_threshold(null: np.ndarray, percentile: float = PERCENTILE) -> float | None:
    """The ``percentile``-th percentile of the null similarities, taken as the ceil(p (n + 1))-th smallest of the
    n values (the conformal quantile): an unseen real image exceeds it with probability at most 1 - p also for
    small n (fewer than 19 values: their maximum). None without values."""
    values = np.sort(np.asarray(null, np.float64))
    if not len(values):
        return None
    k = int(np.ceil(percentile / 100.0 * (len(values) + 1)))
    return float(values[min(k, len(values)) - 1])


# ----------------------------------------------------------------------------- datasets
def _describe_variant(index: int) -> str:
    flip, dy, dx = VARIANTS[index]
    parts = [] if flip == "none" else [flip]
    if dy or dx:
        parts.append(f"shift {dy:+d},{dx:+d} px at {FEATURE_SIZE}")
    return ", ".join(parts) or "as is"


def _mask_distance(s_lab: np.ndarray, r_lab: np.ndarray) -> np.ndarray:
    """1 - mean Dice over the labels present in either mask, [Ns, Nr] (0 when both are empty)."""
    values = sorted((set(np.unique(s_lab).tolist()) | set(np.unique(r_lab).tolist())) - {0})
    total = np.zeros((len(s_lab), len(r_lab)))
    present = np.zeros_like(total)
    for v in values:
        s = (s_lab == v).reshape(len(s_lab), -1).astype(np.float64)
        r = (r_lab == v).reshape(len(r_lab), -1).astype(np.float64)
        denom = s.sum(1)[:, None] + r.sum(1)[None, :]
        total += np.where(denom > 0, 2 * (s @ r.T) / np.maximum(denom, 1), 0.0)
        present += denom > 0
    return np.where(present > 0, 1.0 - total / np.maximum(present, 1), 0.0)


def _quantiles(values: np.ndarray) -> dict | None:
    if not len(values):
        return None
    q = np.percentile(values, [0, 50, 95, 100])
    return dict(zip(("min", "median", "p95", "max"), (float(v) for v in q)))


def memorisation_summary(synthetic_raw, real_raw, heldout_raw=None, top: int = 8, out_png=None,
                         max_cases: int | None = None, percentile: float = PERCENTILE) -> dict:
    """Nearest real training case of each synthetic case, by image (:func:`similarity`) and by mask, and
    which synthetic cases are closer to a training image than ``percentile`` % of unseen real images are.

    ``heldout_raw``: real cases the generator never saw (e.g. the sweep's test set) for :func:`calibrate`;
    None: cross-fit on the training cases. ``out_png``: the ``top`` most similar pairs as a picture.
    Returns ``dict(rows=[{case, nearest_by_image, image_similarity, match, flagged, nearest_by_mask,
    mask_distance}] most similar first, image_metric=, threshold=, percentile=, calibration=, n_synthetic=,
    n_real=, n_flagged=, flagged=[cases], expected_by_chance=, alarm=, synthetic_quantiles=, null_quantiles=,
    synthetic_similarity=[], null_similarity=[])``; threshold None when fewer than 2 real cases give no
    calibration. ``alarm`` (:func:`_alarm`): the flags are more than chance.
    """
    syn, real = as_raw(synthetic_raw), as_raw(real_raw)
    syn_cases = select_cases(syn, synthetic_identifiers(syn), max_cases)
    real_cases = list(real.cases)
    if not syn_cases or not real_cases:
        raise NnaugError(f"memorisation needs cases in both {syn.name} and {real.name}")
    size = (FEATURE_SIZE, FEATURE_SIZE)
    syn_img, syn_lab = load_cases(syn, syn_cases, size)
    real_img, real_lab = load_cases(real, real_cases, size)
    f_syn, f_real = features(syn_img), features(real_img)
    held = as_raw(heldout_raw) if heldout_raw is not None else None
    f_held = None
    if held is not None and held.cases:
        held_img, held_lab = load_cases(held, list(held.cases), size)
        f_held = features(held_img)
    given_masks = _made_for_given_masks(syn)
    if given_masks:  # compare outside the masks, the calibration too (see the module docstring)
        f_syn, f_real = outside_masks(f_syn, syn_lab), outside_masks(f_real, real_lab)
        f_held = outside_masks(f_held, held_lab) if f_held is not None else None
    null = calibrate(f_real, f_held)
    threshold = copy_threshold(null, percentile)
    calibration = (f"{len(f_held)} held-out real cases of {held.name} vs the training set" if f_held is not None
                   else f"cross-fit: each of the {len(real_cases)} training cases vs the other "
                        f"{CROSS_FIT_FOLDS - 1} of {CROSS_FIT_FOLDS} parts")
    sim, which = similarity(f_syn, f_real)
    mask_dist = _mask_distance(np.stack(syn_lab), np.stack(real_lab))
    rows = []
    for i, case in enumerate(syn_cases):
        ji, jm = int(np.argmax(sim[i])), int(np.argmin(mask_dist[i]))
        rows.append({"case": case.identifier, "nearest_by_image": real_cases[ji].identifier,
                     "image_similarity": float(sim[i, ji]), "match": _describe_variant(int(which[i, ji])),
                     "flagged": bool(threshold is not None and sim[i, ji] > threshold),
                     "nearest_by_mask": real_cases[jm].identifier, "mask_distance": float(mask_dist[i, jm])})
    rows.sort(key=lambda r: (-r["image_similarity"], r["mask_distance"]))
    if out_png is not None:
        by_id = {c.identifier: c for c in real_cases}
        top_syn = {c.identifier: c for c in select_cases(syn, [r["case"] for r in rows[:top]])}
        pairs = [(top_syn[r["case"]], by_id[r["nearest_by_image"]]) for r in rows[:top]]
        _pairs_png(syn, real, pairs, rows[:top], Path(out_png), threshold)
    syn_best = np.array([r["image_similarity"] for r in rows])
    flagged = [r["case"] for r in rows if r["flagged"]]
    metric = IMAGE_METRIC + (", outside the masks (images made for given masks)" if given_masks else "")
    return {"rows": rows, "image_metric": metric, "threshold": threshold, "percentile": percentile,
            "calibration": calibration, "n_synthetic": len(rows), "n_real": len(real_cases),
            "n_flagged": len(flagged), "flagged": flagged, "expected_by_chance": len(rows) * (1 - percentile / 100),
            "alarm": _alarm(len(flagged), syn_best, null, percentile), "synthetic_quantiles": _quantiles(syn_best),
            "null_quantiles": _quantiles(null), "synthetic_similarity": syn_best.tolist(),
            "null_similarity": np.asarray(null).tolist()}


def _made_for_given_masks(raw) -> bool:
    """Whether nnaug made this synthetic set for given masks (its provenance says mask-conditioned)."""
    from nnaug.provenance import read_provenance

    return (read_provenance(raw.folder) or {}).get("mode") == "mask-conditioned"


def _alarm(n_flagged: int, synthetic: np.ndarray, null: np.ndarray, percentile: float) -> bool:
    """Possible copies: more images above the threshold than chance gives (one-sided binomial p < 0.05: an
    unseen real image is above it with probability 1 - p), or one near-duplicate: at least :data:`NEAR_COPY`
    and more similar than every unseen real image. A good generator's images, as novel as unseen real ones,
    are above the threshold 5 % of the time; and the most similar of N of them beats all M calibration images
    with probability N / (N + M) (2/3 for 48 images and 24 cases), so that alone says nothing."""
    from scipy.stats import binom

    if not n_flagged or not len(null):
        return False
    chance = float(binom.sf(n_flagged - 1, len(synthetic), 1 - percentile / 100))
    return bool(chance < 0.05 or synthetic.max() > max(NEAR_COPY, float(np.max(null))))


def memorisation(synthetic_raw, real_raw, heldout_raw=None, top: int = 8, out_png=None,
                 max_cases: int | None = None) -> list[dict]:
    """The rows of :func:`memorisation_summary`: one per synthetic case, the most copy-like first."""
    return memorisation_summary(synthetic_raw, real_raw, heldout_raw, top, out_png, max_cases)["rows"]


def _pairs_png(syn, real, pairs, rows, path: Path, threshold: float | None, tile: int = 128) -> Path:
    """Rows of ``synthetic image | synthetic overlay || real image | real overlay``, under a header, each
    row labelled with its rank, similarity and the flip/shift that matched (red when above the threshold)."""
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
        label = f"#{k + 1}  NCC {row['image_similarity']:.3f}" + (f"  ({row['match']})" if row["match"] != "as is" else "")
        box = draw.textbbox((4, 3), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(255, 255, 255))
        draw.text((4, 3), label, fill=(190, 20, 20) if row["flagged"] else (20, 20, 20), font=font)
        strips.append(np.asarray(strip))
    width = strips[0].shape[1]
    header = Image.new("RGB", (width, 40), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    draw.text((4, 4), "synthetic: image | mask", fill=(20, 20, 20), font=font)
    draw.text((2 * tile + 2 + 14 + 4, 4), "nearest real: image | mask", fill=(20, 20, 20), font=font)
    if threshold is not None:
        draw.text((4, 22), f"red label: NCC above the copy threshold {threshold:.3f}", fill=(190, 20, 20), font=font)
    gap = np.full((4, width, 3), 255, np.uint8)
    sheet = np.concatenate([np.asarray(header)] + [np.concatenate([gap, s]) for s in strips])
    write_atomic(path, Image.fromarray(sheet).save)
    return path
