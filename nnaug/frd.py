"""FRD (Fréchet Radiomics Distance) between two image sets, computed by the ``frd-score`` package.

FRD (Konz, Osuala et al., Medical Image Analysis 110, 103943, 2026) fits a Gaussian to
standardised radiomic features (PyRadiomics: first-order statistics and texture matrices, on
the original image and on LoG- and wavelet-filtered versions of it) of each image set and
compares the two Gaussians. It needs no network weights. nnaug does not re-implement any of it:
:func:`frd` writes the images (and masks) as 8-bit PNGs into a temporary folder — RGB images as
RGB, grayscale ones as grayscale, exactly the pixels it was given — and calls
``frd_score.compute_frd`` on them with the package's defaults (FRDv1: ~464 features, z-scored with
the first set's statistics). frd-score reads each PNG itself (SimpleITK, float luminance for RGB),
so the number equals what ``frd_score.compute_frd`` (or ``python -m frd_score``) gives on a folder
of the same PNGs (``tests/test_frd.py`` checks it to 1e-6).

The number is frd-score's default ``log(d²)``, the natural log of the *squared* Fréchet distance
(:data:`LOG_CONVENTION`); the paper's Eq. 3, ``log(d)`` (frd-score's ``use_paper_log``), is half of
it. Lower is better; the value is a log, so it can be negative, and identical feature statistics
give -inf. FRD depends on the number of images per set (the covariance estimates), so values are
comparable only between runs with the same set sizes, image types, feature classes, ROI and
resolution.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.io import one_line

FRD_VERSION = "v1"
ROI_CHOICES = ("image", "mask")
DEFAULT_IMAGE_TYPES = ("Original", "LoG", "Wavelet")
LOG_CONVENTION = "log(d²)"
LOG_CONVENTION_NOTE = ("log(d²): natural log of the squared Fréchet distance, frd-score's default; the FRD paper's "
                       "Eq. 3 log(d) (frd-score --use_paper_log) is half of it")
MIN_ROI_PIXELS = 16
"""A mask ROI with fewer foreground pixels (at the compared resolution) is left out: PyRadiomics
resamples to 2 px spacing first, and a ROI of a few pixels has no texture to measure."""
MIN_ROI_EXTENT = 4
"""A mask ROI narrower than this (bounding box, pixels, in either direction) is left out too: at FRDv1's
2 px spacing it becomes one pixel wide, and PyRadiomics then refuses it as one-dimensional, which fails
the whole set (a 16 x 3 px polyp of Kvasir at 64 px did)."""

INSTALL_HINT = ('install it with: pip install -c constraints.txt frd-score pyradiomics-bhklab '
                '(or pip install -c constraints.txt -e . in the nnaug checkout)')


def frd_available() -> str | None:
    """None when ``frd-score`` and its PyRadiomics backend import, else a one-line reason."""
    try:
        import frd_score  # noqa: F401
        import radiomics  # noqa: F401
        from radiomics import featureextractor  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build of the C extension
        return f"frd-score/pyradiomics not importable ({type(exc).__name__}: {one_line(exc)})"
    return None


def frd_package_version() -> str:
    from importlib import metadata

    try:
        return f"frd-score {metadata.version('frd-score')}, pyradiomics {metadata.version('pyradiomics-bhklab')}"
    except metadata.PackageNotFoundError:
        try:
            return f"frd-score {metadata.version('frd-score')}"
        except metadata.PackageNotFoundError:
            return "frd-score"


def _known(kind: str) -> list[str]:
    import radiomics

    if kind == "image_types":
        return sorted(radiomics.getImageTypes())
    return sorted(radiomics.getFeatureClasses())


def parse_list(text, what: str, option: str) -> list[str] | None:
    """``"Original,LoG"`` (or a list) -> a checked list of PyRadiomics names; None/"" -> None (the FRDv1 default)."""
    if text is None:
        return None
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        return None
    reason = frd_available()
    if reason is not None:
        raise NnaugError(f"{option} needs FRD, but {reason}: {INSTALL_HINT}")
    known = _known(what)
    lower = {k.lower(): k for k in known}
    out = []
    for item in items:
        if item.lower() not in lower:
            singular = "image type" if what == "image_types" else "feature class"
            raise NnaugError(f"{option} {item!r} is not a PyRadiomics {singular}: use some of "
                             + ", ".join(known))
        out.append(lower[item.lower()])
    return out


def to_frd_uint8(images) -> np.ndarray:
    """The 8-bit pixels frd-score will read: [N, H, W] when the images are grayscale (one channel, or three
    equal ones, as :func:`nnaug.dataset_images.uint8_images` replicates gray), else RGB [N, H, W, 3].

    Images as :func:`nnaug.dataset_images.to_uint8_batch` takes them. No colour conversion here:
    frd-score converts RGB to luminance itself when it reads the files, as it does for a user's folder.
    """
    from nnaug.dataset_images import to_uint8_batch

    x = to_uint8_batch(images).numpy()  # [N, 3, H, W]; grayscale was replicated
    if np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2]):
        return np.ascontiguousarray(x[:, 0])
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _write_set(folder: Path, pixels: np.ndarray, masks: np.ndarray | None) -> tuple[list[str], list[str] | None, int]:
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    images, mask_files, skipped = [], ([] if masks is not None else None), 0
    for i, image in enumerate(pixels):
        if masks is not None:
            roi = (np.asarray(masks[i]) > 0).astype(np.uint8)
            if roi.shape != image.shape[:2]:
                raise NnaugError(f"FRD: mask {i} has shape {roi.shape}, its image {image.shape[:2]}")
            if roi.sum() < MIN_ROI_PIXELS or min(np.ptp(np.nonzero(roi), axis=1)) + 1 < MIN_ROI_EXTENT:
                skipped += 1
                continue
            if not (folder / "msk").is_dir():
                (folder / "msk").mkdir()
            Image.fromarray(roi).save(folder / "msk" / f"{i:05d}.png")
            mask_files.append(str(folder / "msk" / f"{i:05d}.png"))
        Image.fromarray(image).save(folder / "img" / f"{i:05d}.png")
        images.append(str(folder / "img" / f"{i:05d}.png"))
    return images, mask_files, skipped


@contextlib.contextmanager
def _quiet():
    """frd-score prints its result and logs through the root logger (which would install a stderr
    handler for good); PyRadiomics logs per image. Keep all of it out of nnaug's output."""
    root = logging.getLogger()
    null = logging.NullHandler()
    radiomics_logger = logging.getLogger("radiomics")
    old_level = radiomics_logger.level
    root.addHandler(null)
    radiomics_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(null)
        radiomics_logger.setLevel(old_level)


def frd(images_a, images_b, masks_a=None, masks_b=None, image_types=None, features=None,
        num_workers: int | None = None, keep_features: bool = False) -> dict:
    """FRD between image set A (the reference, e.g. the real images) and set B (e.g. synthetic).

    Images: as :func:`nnaug.fidelity.fid_kid` takes them (uint8 RGB or grayscale, [N, C, H, W] or
    [N, H, W, C]); they are written as 8-bit RGB or grayscale PNGs (:func:`to_frd_uint8`) for frd-score to
    read. Sizes may differ between the sets.
    ``masks_a``/``masks_b`` ([N, H, W] label maps, both or neither): the foreground (label > 0) is the
    region of interest, and cases with fewer than :data:`MIN_ROI_PIXELS` foreground pixels, or narrower
    than :data:`MIN_ROI_EXTENT`, are left out; without masks the whole image is the ROI. ``image_types``
    (PyRadiomics filter images, default Original + LoG + Wavelet) and ``features`` (feature classes, default
    FRDv1's firstorder, glcm, glrlm, glszm, ngtdm) select frd-score's feature subset. ``num_workers``: frd-score's process pool
    (default: its own, CPU count − 2, at least 1).
    Returns ``dict(frd=, roi=, n_a=, n_b=, skipped_a=, skipped_b=, image_types=, features=, version=,
    package=, log=, colour=, seconds=)``; ``frd`` (:data:`LOG_CONVENTION`) is -inf when the two feature
    distributions are identical; ``colour``: "rgb" or "gray", what frd-score read.
    ``keep_features``: also return the features the distance was computed from, as frd-score normalised them
    (z-scored with set A's statistics, NaN/Inf columns dropped): ``features_a`` [n_a, F], ``features_b``
    [n_b, F] and ``feature_names``. They come from the same ``compute_frd`` call (its ``save_features``
    CSVs, read back), so keeping them costs no second extraction and leaves the number as it is.
    """
    reason = frd_available()
    if reason is not None:
        raise NnaugError(f"FRD needs the frd-score package, but {reason}: {INSTALL_HINT}")
    if (masks_a is None) != (masks_b is None):
        raise NnaugError("FRD: give masks for both image sets or for neither")
    from frd_score import compute_frd

    start = time.time()
    pixels_a, pixels_b = to_frd_uint8(images_a), to_frd_uint8(images_b)
    roi = "image" if masks_a is None else "mask"
    with tempfile.TemporaryDirectory(prefix="nnaug-frd-") as tmp:
        files_a, mask_files_a, skipped_a = _write_set(Path(tmp) / "a", pixels_a, masks_a)
        files_b, mask_files_b, skipped_b = _write_set(Path(tmp) / "b", pixels_b, masks_b)
        for name, files, skipped in (("reference", files_a, skipped_a), ("compared", files_b, skipped_b)):
            if len(files) < 2:
                extra = (f" ({skipped} left out: mask ROI under {MIN_ROI_PIXELS} pixels or narrower than "
                         f"{MIN_ROI_EXTENT})" if skipped else "")
                raise NnaugError(f"FRD needs at least 2 images per set; the {name} set has {len(files)}{extra}")
        try:
            with _quiet():
                value = compute_frd([files_a, files_b], frd_version=FRD_VERSION,
                                    paths_masks=[mask_files_a, mask_files_b] if roi == "mask" else None,
                                    image_types=list(image_types) if image_types else None,
                                    features=list(features) if features else None, num_workers=num_workers,
                                    save_features=keep_features)
            kept = _saved_features(Path(tmp)) if keep_features else {}
        except NnaugError:
            raise
        except Exception as exc:
            raise NnaugError(f"FRD (frd-score) failed: {one_line(exc)}") from None
    value = float(value)
    if np.isnan(value):
        raise NnaugError("FRD came out NaN: the radiomic features of one set are constant or undefined "
                         "(e.g. blank images); check the images")
    return {"frd": value, "roi": roi, "n_a": len(files_a), "n_b": len(files_b), "skipped_a": skipped_a,
            "skipped_b": skipped_b, "image_types": list(image_types) if image_types else list(DEFAULT_IMAGE_TYPES),
            "features": list(features) if features else ["firstorder", "glcm", "glrlm", "glszm", "ngtdm"],
            "version": FRD_VERSION, "package": frd_package_version(), "log": LOG_CONVENTION,
            "colour": "rgb" if pixels_a.ndim == 4 or pixels_b.ndim == 4 else "gray",
            "seconds": round(time.time() - start, 2), **kept}


def _saved_features(tmp: Path) -> dict:
    """The normalised features frd-score's ``save_features`` wrote beside each set's image folder
    (``<set>/radiomics_set<i>_results_normalized_*.csv``: a header, one row per image, then a blank row and
    its min/max rows) as ``features_a``, ``features_b`` and ``feature_names``."""
    import csv

    out = {}
    for index, (name, key) in enumerate((("a", "features_a"), ("b", "features_b"))):
        found = sorted((tmp / name).glob(f"radiomics_set{index}_results_normalized_*.csv"))
        if not found:
            raise NnaugError(f"FRD: frd-score wrote no normalised features for set {name} (save_features)")
        with open(found[-1], newline="") as handle:
            rows = list(csv.reader(handle))
        header, body = rows[0], []
        for row in rows[1:]:
            if not any(cell.strip() for cell in row):
                break
            body.append([float(v) for v in row[2:]])
        out[key] = np.asarray(body, dtype=np.float64).reshape(len(body), len(header) - 2)
        out["feature_names"] = header[2:]
    return out
