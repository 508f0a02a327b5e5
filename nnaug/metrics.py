"""Fidelity metrics for synthetic datasets: FRD, FID/KID, mask consistency, memorisation.

* :func:`fid_kid` — FID and KID between two image sets with torch-fidelity's InceptionV3
  (weights from a file given explicitly, else torch-fidelity's cache, downloaded there on first
  use as torch-fidelity does; offline, a one-line error says where to put the file).
* :func:`synthetic_fidelity` — FRD (:mod:`nnaug.frd`, no weights needed) and FID/KID of a synthetic
  dataset against its real training images.
* :func:`make_random_inception_weights` — a fixed-seed random InceptionV3 saved as a weights file,
  a stand-in for tests and benchmarks (its numbers are only comparable with each other).
* :func:`mask_consistency` — Dice between each synthetic mask and what a real-trained nnU-Net
  predicts on the synthetic image (nnU-Net's own ``nnUNetPredictor``); :func:`segmentation_dice`
  is the same for any raw dataset (held-out test Dice).
* :func:`memorisation` — the nearest real training case of each synthetic case, by mask and by image;
  :func:`memorisation_summary` adds the real–real nearest distances and the copy warning threshold.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError

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
    """
    import torch
    from torch import nn
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Uninitialised(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # skip the load in __init__
            if state_dict is None:
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    original = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: None  # never touch the network
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _Uninitialised("inception-v3-compat", ["2048"])
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
    finally:
        fe.load_state_dict_from_url = original
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- FID / KID
def to_uint8_batch(images) -> "torch.Tensor":
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
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NnaugError(f"FID/KID failed with weights {weights}: {message}") from None
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


# ----------------------------------------------------------------------------- dataset helpers
def _as_raw(dataset):
    from nnaug.dataset import RawDataset, load_raw_dataset

    return dataset if isinstance(dataset, RawDataset) else load_raw_dataset(dataset)


def synthetic_identifiers(raw) -> list[str] | None:
    """The synthetic case identifiers from ``nnaug_provenance.json`` (a --mix dataset also holds real cases)."""
    from nnaug.provenance import read_provenance

    provenance = read_provenance(raw.folder)
    if provenance is None or not isinstance(provenance.get("cases"), list):
        return None
    return [c["case"] for c in provenance["cases"] if isinstance(c, dict) and "case" in c]


def _select_cases(raw, identifiers: list[str] | None = None, max_cases: int | None = None):
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


def synthetic_fidelity(real, synthetic, inception_weights: str | Path | None = None,
                       max_images: int | None = None, *, fid: bool | None = None, frd: bool | None = None,
                       frd_roi=("image", "mask"), frd_image_types=None, frd_features=None,
                       download: bool = True, progress: bool = False) -> dict:
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
    """
    import sys

    from nnaug.frd import ROI_CHOICES, frd_available
    from nnaug.frd import frd as frd_distance

    real, synthetic = _as_raw(real), _as_raw(synthetic)
    syn_cases = _select_cases(synthetic, synthetic_identifiers(synthetic), max_images)
    real_cases = _select_cases(real, None, max_images)
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

    if frd is not False:
        missing = frd_available()
        if missing is not None:
            from nnaug.frd import INSTALL_HINT

            if frd:
                raise NnaugError(f"FRD needs the frd-score package, but {missing}: {INSTALL_HINT}")
            result["frd_note"] = f"n/a ({missing})"
        else:
            for roi in rois:
                if progress:
                    print(f"nnaug: FRD ({roi} ROI) {real.name} vs {synthetic.name}: {len(real_cases)} vs "
                          f"{len(syn_cases)} images at {size[0]}x{size[1]} ...", file=sys.stderr, flush=True)
                masks = (np.stack(real_labels), np.stack(syn_labels)) if roi == "mask" else (None, None)
                try:
                    details = frd_distance(real_u8, syn_u8, masks[0], masks[1], image_types=frd_image_types,
                                           features=frd_features)
                except NnaugError as exc:
                    if frd:
                        raise
                    result[f"frd_{roi}_note" if roi == "mask" else "frd_note"] = f"n/a ({exc})"
                    continue
                result["frd_details"][roi] = details
                result["frd" if roi == "image" else "frd_roi"] = details["frd"]
    else:
        result["frd_note"] = "skipped (--no-frd)"

    if fid is not False:
        weights, reason = inception_weights_or_reason(inception_weights, download=download)
        if weights is None:
            if fid:
                raise NnaugError(reason)
            result["fid_note"] = reason
        else:
            if progress:
                print(f"nnaug: FID/KID {real.name} vs {synthetic.name} ...", file=sys.stderr, flush=True)
            result.update(fid_kid(real_u8, syn_u8, inception_weights=weights))
    else:
        result["fid_note"] = "skipped (--no-fidelity)"
    return result


# ----------------------------------------------------------------------------- mask consistency
def dice_per_label(reference: np.ndarray, prediction: np.ndarray, labels: list[int] | None = None) -> dict[int, float]:
    """Dice per foreground label present in either map (both empty for a label: not counted)."""
    values = labels if labels is not None else sorted(set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist()))
    out = {}
    for value in values:
        if value == 0:
            continue
        r, p = reference == value, prediction == value
        denom = r.sum() + p.sum()
        if denom == 0:
            continue
        out[int(value)] = float(2.0 * np.logical_and(r, p).sum() / denom)
    return out


def mask_consistency(synthetic_folder, model_training_output_dir, folds=(0,), device: str = "cpu",
                     max_cases: int | None = None, checkpoint_name: str = "checkpoint_final.pth",
                     progress: bool = False) -> dict:
    """Dice between each synthetic mask and a real-trained nnU-Net's prediction on the synthetic image.

    ``synthetic_folder``: the synthetic raw dataset (folder, name or ID); ``model_training_output_dir``:
    ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>``. Only the synthetic cases of a
    ``--mix`` dataset are checked. See :func:`segmentation_dice` for the prediction and the Dice.
    """
    raw = _as_raw(synthetic_folder)
    return segmentation_dice(raw, model_training_output_dir, folds, device, synthetic_identifiers(raw), max_cases,
                             checkpoint_name, progress, desc=f"mask consistency {raw.name}")


def segmentation_dice(dataset, model_training_output_dir, folds=(0,), device: str = "cpu",
                      identifiers: list[str] | None = None, max_cases: int | None = None,
                      checkpoint_name: str = "checkpoint_final.pth", progress: bool = False, desc: str = "Dice") -> dict:
    """Dice between the labels of a raw dataset's cases and a trained nnU-Net's predictions on their images.

    Prediction is nnU-Net's own ``nnUNetPredictor`` (no mirroring, tile step 0.5, the ensemble of
    ``folds``; ``"all"`` for fold_all). Per case: mean foreground Dice over the labels present in the
    label or the prediction (1.0 when both are empty). Used for mask consistency (synthetic cases)
    and for held-out test Dice (benchmarks/downstream.py).
    Returns ``dict(mean_dice=, per_case={case: dice}, folds=, model=)``.
    """
    import torch

    from nnaug.dataset import raw_root  # noqa: F401  (a clear error if nnU-Net's variables are missing)
    from nnaug.nnunet_pretraining import trainers_path

    model_dir = Path(model_training_output_dir)
    folds = tuple(folds)
    missing = [f for f in folds if not (model_dir / f"fold_{f}" / checkpoint_name).is_file()]
    if not folds or missing:
        raise NnaugError(f"no {checkpoint_name} for fold(s) {missing or '(none given)'} in {model_dir}: "
                         "train those folds first or choose others with --folds")
    if not os.environ.get("nnUNet_extTrainer"):  # nnaug's trainer classes must resolve by name
        os.environ["nnUNet_extTrainer"] = trainers_path()
    raw = _as_raw(dataset)
    cases = _select_cases(raw, identifiers, max_cases)
    if not cases:
        raise NnaugError(f"{raw.name} has no cases to check")

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    import contextlib
    import io

    dev = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints chatter on CPU (into nnaug report's tables)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=dev.type == "cuda", device=dev,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name=checkpoint_name)
    rw = raw.reader_writer()
    per_case = {}
    from tqdm.auto import tqdm

    for case in tqdm(cases, desc=desc, disable=None if progress else True, leave=False):
        image, props = rw.read_images(case.image_files)
        label, _ = rw.read_seg(case.label_file)
        with contextlib.redirect_stdout(io.StringIO()):
            seg = predictor.predict_single_npy_array(image, props, None, None, False)
        seg = np.asarray(seg).reshape(label.shape)
        dices = dice_per_label(label, seg)
        per_case[case.identifier] = float(np.mean(list(dices.values()))) if dices else 1.0
    return {"mean_dice": float(np.mean(list(per_case.values()))), "per_case": per_case,
            "folds": list(folds), "model": str(model_dir)}


# ----------------------------------------------------------------------------- memorisation
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
    syn = _as_raw(synthetic_raw)
    real = _as_raw(real_raw)
    syn_cases = _select_cases(syn, synthetic_identifiers(syn), max_cases)
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
        full_syn = _select_cases(syn, [r["case"] for r in rows[:top]])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(sheet).save(tmp)
    os.replace(tmp, path)
    return path
