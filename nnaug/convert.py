"""``nnaug convert``: a folder of images and masks -> an nnU-Net raw dataset.

Input: ``SRC/images`` and ``SRC/masks`` with matching file stems (JPEG, PNG or TIFF; RGB or
grayscale). Masks may be 0/255, 0..K, or RGB-encoded grayscale with JPEG noise. Output:
``$nnUNet_raw/DatasetXXX_Name`` with ``CASE_0000.png`` images (RGB or one channel), single-channel
uint8 labels 0..K and a dataset.json written by nnunetv2's ``generate_dataset_json``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nnaug.dataset import raw_root, write_case
from nnaug.io import atomic_output_dir
from nnaug.errors import NnaugError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MAX_CLASSES = 32  # more distinct mask values than this means noise, not classes
NOISE_BAND = (30, 225)  # a noisy binary mask has almost no pixels in this band


def _list_images(folder: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise NnaugError(f"two files in {folder} share the stem '{p.stem}' ({files[p.stem].name}, {p.name}): keep one")
            files[p.stem] = p
    return files


def pair_files(source: Path, images: str = "images", masks: str = "masks") -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) for every stem present in both folders; unpaired stems are an error."""
    image_dir, mask_dir = source / images, source / masks
    for d, opt in ((image_dir, "--images"), (mask_dir, "--masks")):
        if not d.is_dir():
            raise NnaugError(f"{d} is not a folder: {source} needs sub-folders '{images}' and '{masks}' (or pass {opt} NAME)")
    image_files, mask_files = _list_images(image_dir), _list_images(mask_dir)
    if not image_files:
        raise NnaugError(f"{image_dir} holds no JPEG, PNG or TIFF images")
    only_images = sorted(set(image_files) - set(mask_files))
    only_masks = sorted(set(mask_files) - set(image_files))
    if only_images or only_masks:
        parts = []
        if only_images:
            parts.append(f"{len(only_images)} image(s) without a mask (e.g. {', '.join(only_images[:3])})")
        if only_masks:
            parts.append(f"{len(only_masks)} mask(s) without an image (e.g. {', '.join(only_masks[:3])})")
        raise NnaugError(f"images and masks do not pair up by file stem: {'; '.join(parts)} — give each image a mask with the same stem")
    return [(stem, image_files[stem], mask_files[stem]) for stem in sorted(image_files)]


def _read(path: Path) -> np.ndarray:
    from skimage import io

    try:
        return np.asarray(io.imread(str(path)))
    except Exception as exc:
        raise NnaugError(f"cannot read {path}: {' '.join(str(exc).split())[:160]} — replace or remove the file") from None


def read_image(path: Path) -> np.ndarray:
    """Image as [C, H, W] (C = 3 for colour, 1 for grayscale; alpha dropped)."""
    image = _read(path)
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return np.moveaxis(image[..., :3], -1, 0)
    raise NnaugError(f"{path} has shape {image.shape}: expected a 2D grayscale or RGB image")


def read_mask_gray(path: Path) -> np.ndarray:
    """Mask as one [H, W] channel; RGB masks must be gray in disguise (all channels about equal)."""
    mask = _read(path)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        rgb = mask[..., :3].astype(np.int32)
        spread = np.abs(rgb - rgb.mean(-1, keepdims=True)).max(-1)
        if np.mean(spread > 40) > 0.01:
            raise NnaugError(
                f"{path} is a colour-coded mask: nnaug convert needs grayscale masks (0/255 or 0..K) — map colours to class values first"
            )
        mask = np.round(rgb.mean(-1))
    elif mask.ndim != 2:
        raise NnaugError(f"{path} has shape {mask.shape}: expected a 2D mask")
    return mask.astype(np.int64)


def decide_label_mapping(masks: list[np.ndarray], threshold: float | None) -> tuple[str, dict[int, int] | float]:
    """How gray mask values become labels 0..K.

    ``("threshold", t)`` for noisy binary masks (explicit ``--threshold``, or detected JPEG noise:
    almost no pixels in the mid-gray band, where t = 127); ``("map", {value: label})`` for a small
    set of clean values such as {0, 255} or {0, 1, 2}, mapped in sorted order.
    """
    if threshold is not None:
        return "threshold", float(threshold)
    values = np.unique(np.concatenate([np.unique(m) for m in masks]))
    if len(values) <= MAX_CLASSES:
        return "map", {int(v): i for i, v in enumerate(values)}
    total = sum(m.size for m in masks)
    mid = sum(int(np.count_nonzero((m > NOISE_BAND[0]) & (m < NOISE_BAND[1]))) for m in masks)
    if values.max() <= 255 and mid / total < 0.02:
        return "threshold", 127.0
    raise NnaugError(
        f"masks hold {len(values)} distinct values, too many for classes and too many mid-gray pixels for noisy binary "
        "masks: pass --threshold T to binarise them"
    )


def apply_mapping(mask: np.ndarray, mapping: tuple[str, dict[int, int] | float]) -> np.ndarray:
    kind, how = mapping
    if kind == "threshold":
        return (mask > how).astype(np.uint8)
    lut_keys = np.array(sorted(how), dtype=np.int64)
    return np.searchsorted(lut_keys, mask).astype(np.uint8)


def _identifier(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-") or "case"


def convert_folder(
    source: Path,
    dataset_id: int,
    name: str,
    images: str = "images",
    masks: str = "masks",
    threshold: float | None = None,
    label_names: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert ``source`` into ``$nnUNet_raw/Dataset{id:03d}_{name}``; returns the new folder. The source is only read."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from tqdm.auto import tqdm

    if not 1 <= dataset_id <= 999:
        raise NnaugError(f"--dataset-id must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise NnaugError(f"--name '{name}' may only hold letters, digits and '-' (nnU-Net uses '_' as separator)")
    source = Path(source)
    if not source.is_dir():
        raise NnaugError(f"{source} is not a folder: give the folder that holds '{images}/' and '{masks}/'")
    root = raw_root()
    clash = [p.name for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.name != f"Dataset{dataset_id:03d}_{name}"]
    if clash:
        raise NnaugError(f"dataset ID {dataset_id} is already used by {clash[0]}: choose another --dataset-id")
    target = root / f"Dataset{dataset_id:03d}_{name}"
    if target.exists() and not overwrite:
        raise NnaugError(f"{target} already exists: pass --overwrite to replace it, or choose another ID/name")

    pairs = pair_files(source, images, masks)
    ids = [_identifier(stem) for stem, _, _ in pairs]
    if len(set(ids)) != len(ids):
        raise NnaugError("some file stems become the same case name after removing special characters: rename them")
    gray_masks = [read_mask_gray(m) for _, _, m in tqdm(pairs, desc="reading masks", disable=None if progress else True, leave=False)]
    mapping = decide_label_mapping(gray_masks, threshold)
    num_classes = 2 if mapping[0] == "threshold" else len(mapping[1])
    if num_classes < 2:
        raise NnaugError("every mask is empty (one value only): there is nothing to segment")
    if label_names is None:
        label_names = ["background"] + (["foreground"] if num_classes == 2 else [f"class_{i}" for i in range(1, num_classes)])
    if len(label_names) != num_classes:
        raise NnaugError(f"--labels names {len(label_names)} labels but the masks hold {num_classes} (background included)")

    num_channels = None
    with atomic_output_dir(target, overwrite=overwrite) as work:
        for identifier, (stem, image_path, _), gray in tqdm(
            list(zip(ids, pairs, gray_masks)), desc=f"writing {target.name}", disable=None if progress else True
        ):
            image = read_image(image_path)
            if num_channels is None:
                num_channels = image.shape[0]
            elif image.shape[0] != num_channels:
                raise NnaugError(f"{image_path} has {image.shape[0]} channel(s), earlier images {num_channels}: use all RGB or all grayscale")
            if image.shape[1:] != gray.shape:
                raise NnaugError(
                    f"{stem}: image is {image.shape[1]}x{image.shape[2]} but mask is {gray.shape[0]}x{gray.shape[1]} — they must match"
                )
            write_case(work, identifier, image, apply_mapping(gray, mapping), ".png", [num_channels], NaturalImage2DIO)
        channel_names = {"0": "R", "1": "G", "2": "B"} if num_channels == 3 else {"0": "gray"}
        generate_dataset_json(
            str(work),
            channel_names=channel_names,
            labels={n: i for i, n in enumerate(label_names)},
            num_training_cases=len(pairs),
            file_ending=".png",
            dataset_name=target.name,
            description=f"Converted by nnaug from {source.resolve()}",
            license="see the source data",
            converted_by="nnaug convert",
        )
    if mapping[0] == "threshold" and threshold is None:
        print(f"note: masks looked like noisy binary masks; binarised at > {mapping[1]:g} (pass --threshold to change)")
    return target
