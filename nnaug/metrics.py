"""Fidelity metrics for synthetic datasets: FID/KID, mask consistency, memorisation.

* :func:`fid_kid` — FID and KID between two image sets with torch-fidelity's InceptionV3
  (weights from torch-fidelity's usual cache, or a file given explicitly; never downloaded here).
* :func:`synthetic_fidelity` — FID/KID of a synthetic dataset against its real training images.
* :func:`make_random_inception_weights` — a fixed-seed random InceptionV3 saved as a weights file,
  a stand-in for tests and benchmarks (its numbers are only comparable with each other).
* :func:`mask_consistency` — Dice between each synthetic mask and what a real-trained nnU-Net
  predicts on the synthetic image (nnU-Net's own ``nnUNetPredictor``); :func:`segmentation_dice`
  is the same for any raw dataset (held-out test Dice).
* :func:`memorisation` — the nearest real training case of each synthetic case, by mask and by image.
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


def resolve_inception_weights(inception_weights: str | Path | None = None, required: bool = True) -> Path | None:
    """The InceptionV3 weights file to use: the explicit file, else torch-fidelity's cached download.

    With neither: a one-line :class:`NnaugError` if ``required``, else None. Nothing is downloaded.
    """
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise NnaugError(f"Inception weights file {path} not found: pass an existing file with --inception-weights")
        return path
    cached = inception_cache_path()
    if cached.is_file():
        return cached
    if required:
        raise NnaugError(
            f"no InceptionV3 weights for FID/KID (nothing is downloaded): pass --inception-weights FILE, or put "
            f"{os.path.basename(_inception_url())} (from {_inception_url()}) at {cached}"
        )
    return None


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
            batch_size: int = 32, device: str | None = None) -> dict:
    """FID and KID between two image sets with torch-fidelity (InceptionV3, 2048-d pool features).

    Images: uint8 RGB, [N, 3, H, W] or [N, H, W, 3] arrays or tensors (grayscale is replicated to 3
    channels); within one set all images have the same size (torch-fidelity resizes to 299).
    Weights: ``inception_weights`` (a file), else torch-fidelity's cache (see :func:`inception_cache_path`);
    with neither a one-line :class:`NnaugError` — the network is never tried.
    KID uses subsets of ``kid_subset_size`` (default: min(len(a), len(b), 1000)).
    Returns ``dict(fid=, kid_mean=, kid_std=, extractor=, weights=, n_a=, n_b=)``.
    """
    import torch

    weights = resolve_inception_weights(inception_weights, required=True)
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
    from nnaug.pretraining import read_provenance

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
                       max_images: int | None = None) -> dict:
    """FID/KID of a synthetic raw dataset's synthetic cases against the real dataset's training images.

    Both sets are compared at the synthetic images' size (the real images are resized to it);
    ``max_images`` spreads a deterministic subset over each set. Returns :func:`fid_kid`'s dict + ``resolution``.
    """
    real, synthetic = _as_raw(real), _as_raw(synthetic)
    syn_cases = _select_cases(synthetic, synthetic_identifiers(synthetic), max_images)
    real_cases = _select_cases(real, None, max_images)
    if not syn_cases:
        raise NnaugError(f"{synthetic.name} has no synthetic cases")
    _, first_label, _ = synthetic.read_case(syn_cases[0])
    size = tuple(first_label.shape)
    syn_images, _ = load_cases(synthetic, syn_cases, size)
    real_images, _ = load_cases(real, real_cases, size)
    result = fid_kid(uint8_images(real_images), uint8_images(syn_images), inception_weights=inception_weights)
    result["resolution"] = list(size)
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
    from nnaug.pretraining import trainers_path

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

    dev = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=dev.type == "cuda", device=dev,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints chatter on CPU
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
        metric = "inception-2048-l2"
    else:
        f_s = np.stack(syn_img).reshape(len(syn_cases), -1).astype(np.float64)
        f_r = np.stack(real_img).reshape(len(real_cases), -1).astype(np.float64)
        metric = f"rms-{size}px"
    sq = (f_s ** 2).sum(1)[:, None] + (f_r ** 2).sum(1)[None, :] - 2 * f_s @ f_r.T
    img_dist = np.sqrt(np.maximum(sq, 0.0))
    if inception_weights is None:
        img_dist = img_dist / np.sqrt(f_s.shape[1])  # RMS per pixel and channel

    rows = []
    for i, case in enumerate(syn_cases):
        jm, ji = int(np.argmin(mask_dist[i])), int(np.argmin(img_dist[i]))
        rows.append({"case": case.identifier, "nearest_by_mask": real_cases[jm].identifier,
                     "mask_distance": float(mask_dist[i, jm]), "nearest_by_image": real_cases[ji].identifier,
                     "image_distance": float(img_dist[i, ji]), "image_metric": metric, "_i": i, "_j": ji})
    rows.sort(key=lambda r: (r["image_distance"], r["mask_distance"]))
    if out_png is not None:
        full_syn = _select_cases(syn, [r["case"] for r in rows[:top]])
        order = {r["case"]: k for k, r in enumerate(rows[:top])}
        full_syn.sort(key=lambda c: order[c.identifier])
        by_id = {c.identifier: c for c in real_cases}
        pairs = [(c, by_id[rows[order[c.identifier]]["nearest_by_image"]]) for c in full_syn]
        _pairs_png(syn, real, pairs, rows[:top], Path(out_png))
    for r in rows:
        r.pop("_i"), r.pop("_j")
    return rows


def _pairs_png(syn, real, pairs, rows, path: Path, tile: int = 128) -> Path:
    """Rows of ``synthetic image | synthetic overlay || real image | real overlay``."""
    from PIL import Image

    from nnaug.visualize import overlay, to_uint8_rgb

    strips = []
    for (sc, rc), row in zip(pairs, rows):
        (si,), (sl,) = load_cases(syn, [sc], (tile, tile))
        (ri,), (rl,) = load_cases(real, [rc], (tile, tile))
        s_rgb, r_rgb = to_uint8_rgb(si), to_uint8_rgb(ri)
        gap = np.full((tile, 6, 3), 255, np.uint8)
        strips.append(np.concatenate([s_rgb, overlay(s_rgb, sl), gap, gap, r_rgb, overlay(r_rgb, rl)], axis=1))
    sheet = np.concatenate([np.concatenate([s, np.full((4, s.shape[1], 3), 255, np.uint8)]) for s in strips])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
