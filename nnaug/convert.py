"""``nnaug convert``: a folder of images and masks -> an nnU-Net raw dataset.

Input: ``SRC/images`` and ``SRC/masks`` with matching file stems (JPEG, PNG or TIFF; RGB or
grayscale). Masks may be 0/255, 0..K, or RGB-encoded grayscale with JPEG noise. Output:
``$nnUNet_raw/DatasetXXX_Name`` with ``CASE_0000.png`` images (RGB or one channel), single-channel
uint8 labels 0..K and a dataset.json written by nnunetv2's ``generate_dataset_json``.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnaug.dataset import write_case
from nnaug.nnunet_paths import raw_target
from nnaug.errors import NnaugError
from nnaug.io import atomic_output_dir, write_json_atomic
from nnaug.split import SplitPart, assign_split, parse_split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MAX_CLASSES = 32  # more distinct mask values than this means noise, not classes
NOISE_BAND = (30, 225)  # a noisy binary mask has almost no pixels in this band
SPLIT_FILE = "nnaug_split.json"


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


def _resize(image: np.ndarray, label: np.ndarray, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` x ``size``: the image bicubic; the label per class (bilinear on its one-hot map, then the
    most likely class), which keeps thin structures and smooth edges that nearest-neighbour would break."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in image]
    scores = [np.asarray(Image.fromarray((label == k).astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
              for k in range(num_classes)]
    return np.stack(channels), np.argmax(np.stack(scores), axis=0).astype(np.uint8)


def _check_new_dataset(dataset_id: int, name: str, overwrite: bool) -> Path:
    """The target folder ``$nnUNet_raw/DatasetID_NAME``; refuses a bad name or an ID another dataset uses."""
    if not 1 <= dataset_id <= 999:
        raise NnaugError(f"--dataset-id must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise NnaugError(f"--name '{name}' may only hold ASCII letters (A-Z, a-z), digits and '-': nnU-Net uses '_' as "
                         "its separator, and ASCII names pass every file system and cluster script unchanged")
    target = raw_target(dataset_id, name, "--dataset-id")
    if target.exists() and not overwrite:
        raise NnaugError(f"{target} already exists: pass --overwrite to replace it, or choose another ID/name")
    return target


@dataclass
class _Source:
    """What every output dataset of one conversion shares: the cases, one label mapping, the label names."""

    folder: Path
    pairs: list[tuple[str, Path, Path]]
    ids: list[str]
    gray_masks: list[np.ndarray]
    mapping: tuple
    label_names: list[str]


def _read_source(source: Path, images: str, masks: str, threshold: float | None, label_names: list[str] | None,
                 progress: bool) -> _Source:
    from tqdm.auto import tqdm

    source = Path(source)
    if not source.is_dir():
        raise NnaugError(f"{source} is not a folder: give the folder that holds '{images}/' and '{masks}/'")
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
    return _Source(source, pairs, ids, gray_masks, mapping, label_names)


def _write_dataset(src: _Source, indices: list[int], work: Path, target: Path, size: int | None, progress: bool) -> None:
    """Cases ``indices`` of ``src`` into the folder ``work`` (to become ``target``), with dataset.json."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from tqdm.auto import tqdm

    num_channels = None
    for i in tqdm(indices, desc=f"writing {target.name}", disable=None if progress else True):
        (stem, image_path, _), gray = src.pairs[i], src.gray_masks[i]
        image = read_image(image_path)
        if num_channels is None:
            num_channels = image.shape[0]
        elif image.shape[0] != num_channels:
            raise NnaugError(f"{image_path} has {image.shape[0]} channel(s), earlier images {num_channels}: use all RGB or all grayscale")
        if image.shape[1:] != gray.shape:
            raise NnaugError(
                f"{stem}: image is {image.shape[1]}x{image.shape[2]} but mask is {gray.shape[0]}x{gray.shape[1]} — they must match"
            )
        label = apply_mapping(gray, src.mapping)
        if size is not None:
            image, label = _resize(image.astype(np.uint8), label, size, len(src.label_names))
        write_case(work, src.ids[i], image, label, ".png", [num_channels], NaturalImage2DIO)
    generate_dataset_json(
        str(work),
        channel_names={"0": "R", "1": "G", "2": "B"} if num_channels == 3 else {"0": "gray"},
        labels={n: i for i, n in enumerate(src.label_names)},
        num_training_cases=len(indices),
        file_ending=".png",
        dataset_name=target.name,
        description=f"Converted by nnaug from {src.folder.resolve()}",
        license="see the source data",
        converted_by="nnaug convert",
    )


def _note_threshold(src: _Source, threshold: float | None) -> None:
    if src.mapping[0] == "threshold" and threshold is None:
        print(f"note: masks looked like noisy binary masks; binarised at > {src.mapping[1]:g} (pass --threshold to change)")


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
    size: int | None = None,
) -> Path:
    """Convert ``source`` into ``$nnUNet_raw/Dataset{id:03d}_{name}``; returns the new folder. The source is only read.

    ``size``: resize every case to ``size`` x ``size`` (image bicubic, labels per class)."""
    target = _check_new_dataset(dataset_id, name, overwrite)
    src = _read_source(source, images, masks, threshold, label_names, progress)
    _write_datasets(src, [(target, list(range(len(src.pairs))), None)], overwrite, size, progress)
    _note_threshold(src, threshold)
    return target


def _write_datasets(src: _Source, jobs: list[tuple[Path, list[int], dict | None]], overwrite: bool,
                    size: int | None, progress: bool) -> None:
    """Each (target, case indices, split record or None) built in its hidden partial folder; every target is
    renamed into place only after all were written, so a failure leaves none of them."""
    with contextlib.ExitStack() as stack:
        for target, indices, record in jobs:
            work = stack.enter_context(atomic_output_dir(target, overwrite=overwrite))
            _write_dataset(src, indices, work, target, size, progress)
            if record is not None:
                write_json_atomic(work / SPLIT_FILE, record)


def split_dataset_names(name: str, parts: list[SplitPart]) -> list[str]:
    """``Kvasir64`` + parts train, val, test -> ``Kvasir64Train``, ``Kvasir64Val``, ``Kvasir64Test``."""
    return [name + part.name[0].upper() + part.name[1:] for part in parts]


def convert_split(
    source: Path,
    first_id: int,
    name: str,
    split: str,
    seed: int = 0,
    images: str = "images",
    masks: str = "masks",
    threshold: float | None = None,
    label_names: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    size: int | None = None,
    allow_overlap: bool = False,
) -> list[Path]:
    """Convert ``source`` into one raw dataset per part of ``split`` (``train=40,val=200,test=rest``):
    IDs ``first_id``, ``first_id + 1``, ... named ``<name><Part>``. The parts are disjoint, drawn with
    ``seed`` (nnaug.split); all datasets share one label mapping and appear together, or not at all.
    Two parts that share an image's exact pixels are refused unless ``allow_overlap``; near-duplicates across
    parts are listed as a warning (:mod:`nnaug.overlap`). Each gets ``nnaug_split.json`` (source, seed, the
    split, its cases, the overlap found) so the split can be traced."""
    parts = parse_split(split)
    names = split_dataset_names(name, parts)
    targets = [_check_new_dataset(first_id + k, n, overwrite) for k, n in enumerate(names)]
    src = _read_source(source, images, masks, threshold, label_names, progress)
    assignment = assign_split(src.ids, parts, seed)
    index = {identifier: i for i, identifier in enumerate(src.ids)}
    overlap = _check_parts_overlap(src, assignment, index, allow_overlap, progress)
    record = {"source": str(src.folder.resolve()), "seed": seed, "split": split, "size": size,
              "datasets": {p.name: t.name for p, t in zip(parts, targets)}, "cases": assignment, "overlap": overlap}
    _write_datasets(src, [(target, [index[c] for c in assignment[part.name]], {**record, "part": part.name})
                          for part, target in zip(parts, targets)], overwrite, size, progress)
    _note_threshold(src, threshold)
    return targets


def _check_parts_overlap(src: _Source, assignment: dict[str, list[str]], index: dict[str, int], allow_overlap: bool,
                         progress: bool) -> dict:
    """Every two parts compared (:mod:`nnaug.overlap`, on the source pixels): identical images in two parts are
    refused unless ``allow_overlap``, near-duplicates printed as a warning; returns the record for nnaug_split.json."""
    from tqdm.auto import tqdm

    from nnaug.overlap import NEAR_THRESHOLD, THUMBNAIL, exact_message, find_overlap, fingerprints, overlap_warnings

    bar = tqdm(total=sum(map(len, assignment.values())), desc="comparing the parts", disable=None if progress else True,
               leave=False)

    def images(names: list[str]):
        for name in names:
            bar.update(1)
            yield name, read_image(src.pairs[index[name]][1])

    prints = {part: fingerprints(images(names)) for part, names in assignment.items()}
    bar.close()
    record = {"near_threshold": NEAR_THRESHOLD, "thumbnail": THUMBNAIL, "exact": [], "near": []}
    parts = list(assignment)
    for k, a in enumerate(parts):
        for b in parts[k + 1:]:
            found = find_overlap(prints[a], prints[b])
            record["exact"] += [[a, x, b, y] for x, y in found.exact]
            record["near"] += [[a, x, b, y, round(r, 4)] for x, y, r in found.near]
            if found.exact and not allow_overlap:
                raise NnaugError(f"--split: {exact_message(found, f'part {a}', f'part {b}')} — remove one image of each "
                                 "pair from the source (or keep them in one part), or pass --allow-overlap if you know")
            for message in overlap_warnings(found, f"part {a}", f"part {b}"):
                print(f"nnaug: warning: {message}", flush=True)
    return record
