"""Fidelity of synthetic images: FID/KID through torch-fidelity's InceptionV3, the Inception weights
(an explicit file, torch-fidelity's cache, a download into it; offline a one-line message saying
where to put the file), 2048-d Inception features, and :func:`synthetic_fidelity`, which scores a
synthetic dataset against its real training images with FRD (:mod:`nnaug.frd`) and FID/KID.
:func:`make_random_inception_weights` writes a fixed-seed random InceptionV3 as a weights file,
the stand-in the benchmarks use offline (its numbers are only comparable with each other).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from nnaug.dataset_images import as_raw, load_cases, select_cases, synthetic_identifiers, to_uint8_batch, uint8_images
from nnaug.errors import NnaugError
from nnaug.io import one_line, write_atomic

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
"""What torch-fidelity (0.4) downloads on first use; kept in sync with feature_extractor_inceptionv3.URL_INCEPTION_V3."""


# ----------------------------------------------------------------------------- Inception weights
def _inception_url() -> str:
    try:
        from torch_fidelity import feature_extractor_inceptionv3 as fe

        return getattr(fe, "URL_INCEPTION_V3", INCEPTION_URL)
    except Exception:  # torch-fidelity not importable: the known URL still names the file
        return INCEPTION_URL


def inception_cache_path() -> Path:
    """Where torch-fidelity's download would land: ``<torch hub dir>/checkpoints/<file name of the URL>``.

    The hub dir is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``), read at call time.
    """
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_inception_url())


INCEPTION_URL_ENV = "NNAUG_INCEPTION_URL"
"""Environment variable: download the InceptionV3 weights from this URL instead (a mirror, or a
``file://`` URL); the file still lands at :func:`inception_cache_path`."""


def inception_download_url() -> str:
    return os.environ.get(INCEPTION_URL_ENV) or _inception_url()


def inception_unavailable_message(reason: str) -> str:
    """One line: why there are no InceptionV3 weights, and the two ways to provide them."""
    return (f"no InceptionV3 weights for FID/KID ({reason}): pass --inception-weights FILE, or copy "
            f"{os.path.basename(_inception_url())} (from {_inception_url()}) to {inception_cache_path()}")


def download_inception_weights(url: str | None = None, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download torch-fidelity's InceptionV3 weights into its cache (:func:`inception_cache_path`), as
    torch-fidelity itself does on first use. Written to a temp file and renamed: an interrupted
    download never leaves a broken file in the cache. Raises a one-line :class:`NnaugError` on failure
    (e.g. offline) that says how to provide the file instead.
    """
    import shutil
    import sys
    import urllib.error
    import urllib.request

    url = url or inception_download_url()
    target = inception_cache_path()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            if progress:  # only once the server answered: offline, the caller's one line is all there is
                print(f"nnaug: downloading the InceptionV3 weights for FID/KID from {url} to {target} ...",
                      file=sys.stderr, flush=True)
            shutil.copyfileobj(response, out, 1 << 20)
        if tmp.stat().st_size == 0:
            raise OSError("the download was empty")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise NnaugError(inception_unavailable_message(f"download from {url} failed: {reason}")) from None
    return target


def inception_weights_or_reason(inception_weights: str | Path | None = None,
                                download: bool = True) -> tuple[Path | None, str | None]:
    """(weights file, None), or (None, one-line message) when there are none.

    Order: the explicit file (a missing one is an error, not a fallback), torch-fidelity's cached
    download, then — with ``download`` — a download into that cache.
    """
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise NnaugError(f"Inception weights file {path} not found: pass an existing file with --inception-weights")
        return path, None
    cached = inception_cache_path()
    if cached.is_file():
        return cached, None
    if not download:
        return None, inception_unavailable_message(f"none cached at {cached}, and downloading is off")
    try:
        return download_inception_weights(), None
    except NnaugError as exc:
        return None, str(exc)


def resolve_inception_weights(inception_weights: str | Path | None = None, required: bool = True,
                              download: bool = True) -> Path | None:
    """The InceptionV3 weights file to use: the explicit file, else torch-fidelity's cache (downloaded
    there on first use when ``download`` and the network is there).

    With none: a one-line :class:`NnaugError` that names ``--inception-weights`` and the cache path
    if ``required``, else None.
    """
    path, reason = inception_weights_or_reason(inception_weights, download=download)
    if path is None and required:
        raise NnaugError(reason)
    return path


def make_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised torch-fidelity InceptionV3 as a weights file (``feature_extractor_weights_path``).

    Conv2d/Linear weights are re-initialised Kaiming-normal (ReLU) with zero bias: with PyTorch's
    default init the deep features vanish and FID/KID come out 0. BatchNorm keeps its identity
    statistics. Numbers from such an extractor are comparable only with numbers from the same file.
    The global torch RNG is left as it was, and nothing of torch-fidelity is patched.
    """
    import torch
    from torch import nn
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Uninitialised(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # skip the load in __init__
            if state_dict is None:
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # __init__ loads a state dict from a file when given one (else downloads it): a file holding
    # None keeps it off the network, and _Uninitialised skips loading that None
    empty = path.with_name(f".{path.name}.{os.getpid()}.none")
    try:
        torch.save(None, empty)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _Uninitialised("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        write_atomic(path, lambda tmp: torch.save(model.state_dict(), tmp))
    finally:
        empty.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- FID / KID
def _tensor_dataset(images):
    """A torch ``Dataset`` over a uint8 tensor [N, 3, H, W], as torch-fidelity wants its inputs."""
    from torch.utils.data import Dataset

    class _TensorImages(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return images[index]

    return _TensorImages()


def fid_kid(images_a, images_b, inception_weights: str | Path | None = None, kid_subset_size: int | None = None,
            batch_size: int = 32, device: str | None = None, download: bool = True) -> dict:
    """FID and KID between two image sets with torch-fidelity (InceptionV3, 2048-d pool features).

    Images: uint8 RGB, [N, 3, H, W] or [N, H, W, 3] arrays or tensors (grayscale is replicated to 3
    channels); within one set all images have the same size (torch-fidelity resizes to 299).
    Weights: ``inception_weights`` (a file), else torch-fidelity's cache (see :func:`inception_cache_path`),
    downloaded there first when missing and ``download``; with none a one-line :class:`NnaugError`.
    KID uses subsets of ``kid_subset_size`` (default: min(len(a), len(b), 1000)).
    Returns ``dict(fid=, kid_mean=, kid_std=, extractor=, weights=, n_a=, n_b=)``.
    """
    import torch

    weights = resolve_inception_weights(inception_weights, required=True, download=download)
    a, b = to_uint8_batch(images_a), to_uint8_batch(images_b)
    if len(a) < 2 or len(b) < 2:
        raise NnaugError(f"FID/KID need at least 2 images per set (got {len(a)} and {len(b)})")
    subset = int(kid_subset_size or min(len(a), len(b), 1000))
    subset = max(2, min(subset, len(a), len(b)))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    import torch_fidelity

    try:
        out = torch_fidelity.calculate_metrics(
            input1=_tensor_dataset(a), input2=_tensor_dataset(b), fid=True, kid=True, kid_subset_size=subset,
            feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
            cuda=cuda, batch_size=batch_size, cache=False, save_cpu_ram=True, verbose=False, samples_shuffle=False,
        )
    except NnaugError:
        raise
    except Exception as exc:
        raise NnaugError(f"FID/KID failed with weights {weights}: {one_line(exc)}") from None
    return {
        "fid": float(out["frechet_inception_distance"]),
        "kid_mean": float(out["kernel_inception_distance_mean"]),
        "kid_std": float(out["kernel_inception_distance_std"]),
        "extractor": f"torch-fidelity inception-v3-compat ({weights.name})",
        "weights": str(weights),
        "n_a": len(a), "n_b": len(b), "kid_subset_size": subset,
    }


def inception_features(images, inception_weights: str | Path, batch_size: int = 32) -> np.ndarray:
    """2048-d InceptionV3 pool features [N, 2048] (float64) of uint8 images, with an explicit weights file."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = resolve_inception_weights(inception_weights, required=True)
    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    x = to_uint8_batch(images)
    feats = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            feats.append(model(x[i:i + batch_size])[0].double().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 2048))


# ----------------------------------------------------------------------------- a synthetic dataset
def synthetic_fidelity(real, synthetic, inception_weights: str | Path | None = None,
                       max_images: int | None = None, *, fid: bool | None = None, frd: bool | None = None,
                       frd_roi=("image", "mask"), frd_image_types=None, frd_features=None,
                       download: bool = True, progress: bool = False, keep_features: bool = False) -> dict:
    """FRD and FID/KID of a synthetic raw dataset's synthetic cases against the real dataset's training images.

    Both sets are compared at the synthetic images' size (the real images and masks are resized to
    it); ``max_images`` spreads a deterministic subset over each set. For a ``--mix`` dataset only
    the synthetic cases (listed in its provenance) are used.

    FRD (:func:`nnaug.frd.frd`, real images as the reference set): ``frd`` is the whole image as ROI,
    ``frd_roi`` the masks' foreground as ROI (which of the two: ``frd_roi``, a subset of
    ``("image", "mask")``); ``frd_image_types`` / ``frd_features``: frd-score's feature subset.
    FID/KID (:func:`fid_kid`): weights as :func:`resolve_inception_weights` finds them (downloaded into
    torch-fidelity's cache when ``download`` and online).
    ``fid`` / ``frd``: None computes the metric when it can and otherwise leaves it None with a
    one-line ``fid_note`` / ``frd_note``; True makes that a one-line :class:`NnaugError`; False skips it.
    Returns ``dict(frd=, frd_roi=, frd_details={roi: frd()'s dict}, fid=, kid_mean=, kid_std=, extractor=,
    weights=, kid_subset_size=, n_real=, n_synthetic=, resolution=)`` (+ ``*_note`` for what is missing).
    ``keep_features``: also ``radiomics_features`` = ``dict(real=, synthetic=, names=)``, the whole-image FRD's
    normalised radiomic features (:func:`nnaug.frd.frd`'s ``keep_features``; arrays, not for JSON).
    """
    from nnaug.frd import ROI_CHOICES

    real, synthetic = as_raw(real), as_raw(synthetic)
    syn_cases = select_cases(synthetic, synthetic_identifiers(synthetic), max_images)
    real_cases = select_cases(real, None, max_images)
    if not syn_cases:
        raise NnaugError(f"{synthetic.name} has no synthetic cases")
    rois = [frd_roi] if isinstance(frd_roi, str) else list(frd_roi)
    bad = [r for r in rois if r not in ROI_CHOICES]
    if bad:
        raise NnaugError(f"FRD ROI {bad[0]!r}: use {' or '.join(ROI_CHOICES)}")
    _, first_label, _ = synthetic.read_case(syn_cases[0])
    size = tuple(first_label.shape)
    syn_images, syn_labels = load_cases(synthetic, syn_cases, size)
    real_images, real_labels = load_cases(real, real_cases, size)
    real_u8, syn_u8 = uint8_images(real_images), uint8_images(syn_images)
    result = {"frd": None, "frd_roi": None, "frd_details": {}, "fid": None, "kid_mean": None, "kid_std": None,
              "n_real": len(real_cases), "n_synthetic": len(syn_cases), "resolution": list(size)}

    say = (lambda text: print(f"nnaug: {text} {real.name} vs {synthetic.name}: {len(real_cases)} vs {len(syn_cases)} "
                              f"images at {size[0]}x{size[1]} ...", file=sys.stderr, flush=True)) if progress else None
    if frd is not False:
        _add_frd(result, real_u8, syn_u8, (np.stack(real_labels), np.stack(syn_labels)), rois, frd,
                 frd_image_types, frd_features, say, keep_features)
    else:
        result["frd_note"] = "skipped (--no-frd)"
    if fid is not False:
        weights, reason = inception_weights_or_reason(inception_weights, download=download)
        if weights is None:
            if fid:
                raise NnaugError(reason)
            result["fid_note"] = reason
        else:
            if say:
                say("FID/KID")
            result.update(fid_kid(real_u8, syn_u8, inception_weights=weights))
    else:
        result["fid_note"] = "skipped (--no-fidelity)"
    return result


def _add_frd(result: dict, real_u8, syn_u8, masks, rois: list, required: bool | None, image_types, features,
             say, keep_features: bool = False) -> None:
    """FRD per ROI into ``result`` (``frd`` whole image, ``frd_roi`` the masks' foreground); a note when not."""
    from nnaug.frd import INSTALL_HINT, frd_available
    from nnaug.frd import frd as frd_distance

    missing = frd_available()
    if missing is not None:
        if required:
            raise NnaugError(f"FRD needs the frd-score package, but {missing}: {INSTALL_HINT}")
        result["frd_note"] = f"n/a ({missing})"
        return
    for roi in rois:
        if say:
            say(f"FRD ({roi} ROI)")
        real_masks, syn_masks = masks if roi == "mask" else (None, None)
        try:
            details = frd_distance(real_u8, syn_u8, real_masks, syn_masks, image_types=image_types, features=features,
                                   keep_features=keep_features and roi == "image")
        except NnaugError as exc:
            if required:
                raise
            result[f"frd_{roi}_note" if roi == "mask" else "frd_note"] = f"n/a ({exc})"
            continue
        if "features_a" in details:  # arrays for the coverage measures, not for report.json
            result["radiomics_features"] = {"real": details.pop("features_a"), "synthetic": details.pop("features_b"),
                                            "names": details.pop("feature_names")}
        result["frd_details"][roi] = details
        result["frd" if roi == "image" else "frd_roi"] = details["frd"]
