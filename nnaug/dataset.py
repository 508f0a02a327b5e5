"""nnU-Net raw datasets in and out, read and written with nnunetv2's own helpers.

One place that knows the raw-dataset layout: find a dataset the way nnU-Net does, validate it
(every problem is one :class:`NnaugError` line), hand the generators a torch ``Dataset`` of
(image, label) pairs at a square resolution, and write new datasets atomically.

nnaug works on 2D datasets only (natural images such as PNG, or 2D NIfTI/NRRD/MHA).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.io import file_sha256, one_line
from nnaug.nnunet_paths import parse_dataset_id, find_raw_dataset

REQUIRED_KEYS = ("channel_names", "labels", "file_ending")


# ----------------------------------------------------------------------------- reading
class ReadCache:
    """Arrays of case files already read, least recently used first out, at most ``max_bytes`` (2 GiB). A file
    that changed on disk (size or modification time) is a new key, so a stale array is never returned."""

    def __init__(self, max_bytes: int = 2 << 30):
        from collections import OrderedDict

        self.max_bytes, self.bytes, self.entries = max_bytes, 0, OrderedDict()

    @staticmethod
    def key(case) -> tuple | None:
        files = [*case.image_files, case.label_file]
        try:
            stats = [os.stat(f) for f in files]
        except OSError:  # missing: the reader says so in its own words
            return None
        return tuple(files) + tuple((s.st_size, s.st_mtime_ns) for s in stats)

    def get(self, key):
        if key is not None and key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key, value):
        size = sum(v.nbytes for v in value if isinstance(v, np.ndarray))
        if key is not None and size <= self.max_bytes:
            self.entries[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self.entries.popitem(last=False)
                self.bytes -= sum(v.nbytes for v in old if isinstance(v, np.ndarray))
        return value


READ_CACHE = ReadCache()


@dataclass
class Case:
    identifier: str
    image_files: list[str]
    label_file: str


@dataclass
class RawDataset:
    """A validated nnU-Net raw dataset (metadata only; pixels are read on demand)."""

    folder: Path
    dataset_json: dict
    cases: list[Case]
    reader_writer: type
    channels_per_file: list[int] = field(default_factory=list)
    intensity_mode: str = "uint8"
    """``uint8`` for natural 8-bit images (read by NaturalImage2DIO, values 0..255); ``percentile`` otherwise."""

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dataset_id(self) -> int | None:
        return parse_dataset_id(self.folder.name)

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def channel_names(self) -> list[str]:
        cn = self.dataset_json["channel_names"]
        return [cn[k] for k in sorted(cn, key=int)]

    @property
    def num_channels(self) -> int:
        return sum(self.channels_per_file)

    @property
    def labels(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.dataset_json["labels"].items()}

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())

    def read_native(self, case: Case) -> tuple[np.ndarray, dict, np.ndarray]:
        """(image, properties, label) as the dataset's nnU-Net reader/writer gives them ([C, 1, H, W] for 2D).

        Read from disk once per process and file version (:data:`READ_CACHE`): ``nnaug report`` hands the
        same arrays to FRD, FID/KID, memorisation and mask consistency. Copies, so callers may change them."""
        key = READ_CACHE.key(case)
        cached = READ_CACHE.get(key)
        if cached is None:
            rw = self.reader_writer()
            try:
                image, props = rw.read_images(case.image_files)
            except Exception as exc:  # readers raise anything from OSError to AssertionError
                raise NnaugError(f"cannot read image {_short(case.image_files)}: {one_line(exc)} — replace or remove the file") from None
            try:
                label, _ = rw.read_seg(case.label_file)
            except Exception as exc:
                raise NnaugError(f"cannot read label {case.label_file}: {one_line(exc)} — replace or remove the file") from None
            cached = READ_CACHE.put(key, (image, props, label))
        image, props, label = cached
        return image.copy(), dict(props), label.copy()

    def read_case(self, case: Case) -> tuple[np.ndarray, np.ndarray, dict]:
        """(image [C, H, W] float32, label [H, W] int64, properties) of one case, validated."""
        image, props, label = self.read_native(case)
        if image.ndim != 4 or image.shape[1] != 1:
            raise NnaugError(
                f"{_short(case.image_files)} is a 3D volume ({image.shape[1]} slices): nnaug works on 2D datasets only "
                "— convert it to 2D slices first"
            )
        if label.ndim != 4 or label.shape[1] != 1:
            raise NnaugError(
                f"{case.label_file} is a 3D volume ({label.shape[1]} slices): nnaug works on 2D datasets only "
                "— convert it to 2D slices first"
            )
        if image.shape[2:] != label.shape[2:]:
            raise NnaugError(
                f"case {case.identifier}: image is {image.shape[2]}x{image.shape[3]} but label is "
                f"{label.shape[2]}x{label.shape[3]} — image and label must have the same size"
            )
        if image.shape[0] != self.num_channels:
            raise NnaugError(
                f"case {case.identifier}: image has {image.shape[0]} channels, dataset.json channel_names has "
                f"{len(self.channel_names)} — make them agree"
            )
        label2d = label[0, 0]
        values = np.unique(label2d)
        bad = sorted(set(values.tolist()) - set(self.label_values))
        if bad:
            raise NnaugError(
                f"label {case.label_file} has values {_fmt_values(bad)} that are not in dataset.json labels "
                f"{self.label_values}: fix the label file or add them to labels"
            )
        return image[:, 0].astype(np.float32, copy=False), label2d.astype(np.int64), props


def _short(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"


def _fmt_values(values: list) -> str:
    shown = ", ".join(str(int(v)) if float(v).is_integer() else f"{v:g}" for v in values[:8])
    return "{" + shown + (", ..." if len(values) > 8 else "") + "}"


def load_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        raise NnaugError(f"{path} is missing: every nnU-Net raw dataset needs a dataset.json")
    try:
        from batchgenerators.utilities.file_and_folder_operations import load_json

        content = load_json(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NnaugError(f"{path} is not valid JSON ({one_line(exc)}): fix the file") from None
    if not isinstance(content, dict):
        raise NnaugError(f"{path} must hold a JSON object with channel_names, labels, numTraining and file_ending")
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        raise NnaugError(f"{path} lacks {', '.join(missing)}: add it as nnU-Net's dataset.json format requires")
    labels = content["labels"]
    if not isinstance(labels, dict) or not labels:
        raise NnaugError(f"{path}: labels must be an object like {{\"background\": 0, \"polyp\": 1}}")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise NnaugError(f"{path}: label '{name}' is a region ({value}); nnaug supports plain integer labels only")
        if not isinstance(value, int) or isinstance(value, bool):
            raise NnaugError(f"{path}: label '{name}' must be an integer, got {value!r}")
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise NnaugError(f"{path}: label values must be consecutive integers starting at 0 (background), got {values}")
    if not isinstance(content["channel_names"], dict) or not content["channel_names"]:
        raise NnaugError(f"{path}: channel_names must be an object like {{\"0\": \"R\", \"1\": \"G\", \"2\": \"B\"}}")
    return content


def _nnunet_training_files(folder: Path, dataset_json: dict) -> dict:
    """nnU-Net's ``get_filenames_of_train_images_and_targets``, with its file matching (``create_paths_fn``)
    but without the 12-process pool it starts for an imagesTr folder: each of those forks this whole process
    (torch loaded), 12 forks for every dataset listed, which cost more than the listing itself."""
    from batchgenerators.utilities.file_and_folder_operations import subfiles
    from nnunetv2.utilities.utils import (create_paths_fn, get_filenames_of_train_images_and_targets,
                                          get_identifiers_from_splitted_dataset_folder)

    if "dataset" in dataset_json:  # explicit file lists: nnU-Net's reader starts no pool here
        return get_filenames_of_train_images_and_targets(str(folder), dataset_json)
    images_folder, ending = str(folder / "imagesTr"), dataset_json["file_ending"]
    identifiers = get_identifiers_from_splitted_dataset_folder(images_folder, ending)
    names = subfiles(images_folder, suffix=ending, join=False, sort=True)
    return {i: {"images": create_paths_fn(images_folder, names, ending, i),
                "label": os.path.join(str(folder), "labelsTr", i + ending)} for i in identifiers}


def load_raw_dataset(name_or_id: str | int | Path) -> RawDataset:
    """Locate and open a raw dataset; checks its structure and the first case (``check_dataset`` checks all)."""
    folder = Path(name_or_id) if isinstance(name_or_id, Path) else find_raw_dataset(name_or_id)
    dataset_json = load_dataset_json(folder)
    if "dataset" not in dataset_json and not (folder / "imagesTr").is_dir():
        raise NnaugError(f"{folder} has no imagesTr folder: put the training images there (CASE_0000{dataset_json['file_ending']})")
    try:
        files = _nnunet_training_files(folder, dataset_json)
    except Exception as exc:
        raise NnaugError(f"cannot list the cases of {folder}: {one_line(exc)}") from None
    if not files:
        raise NnaugError(f"{folder} has no training cases in imagesTr: add cases or check file_ending in dataset.json")
    cases = [Case(k, list(v["images"]), v["label"]) for k, v in sorted(files.items())]
    missing_labels = [c.identifier for c in cases if not os.path.isfile(c.label_file)]
    if missing_labels:
        raise NnaugError(
            f"{len(missing_labels)} case(s) have no label in labelsTr (e.g. {', '.join(missing_labels[:3])}): "
            f"add labelsTr/CASE{dataset_json['file_ending']} for each image"
        )
    num_training = dataset_json.get("numTraining")
    if num_training is not None and num_training != len(cases):
        raise NnaugError(
            f"dataset.json says numTraining={num_training} but {len(cases)} cases were found: set numTraining to {len(cases)}"
        )
    rw = _reader_writer(dataset_json, cases[0].image_files[0])
    raw = RawDataset(folder=folder, dataset_json=dataset_json, cases=cases, reader_writer=rw)
    raw.channels_per_file, raw.intensity_mode = _inspect_first_case(raw, cases[0])
    return raw


def _reader_writer(dataset_json: dict, example_file: str):
    """nnU-Net's reader for this dataset (as nnU-Net picks it: the first one that reads ``example_file``).

    nnU-Net prints a traceback for every reader that fails; those are swallowed here and the user gets
    one line: no reader for this file ending, or what went wrong reading the file.
    """
    import contextlib
    import io

    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES, determine_reader_writer_from_dataset_json

    ending = dataset_json["file_ending"]
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    except Exception:  # nnU-Net raises RuntimeError, its readers anything
        pass
    candidates = [rw for rw in LIST_OF_IO_CLASSES if ending.lower() in rw.supported_file_endings]
    if not candidates:
        raise NnaugError(f"nnU-Net has no reader for file_ending {ending} in dataset.json: use .png for natural images "
                         "or .nii.gz/.nrrd/.mha for 2D scans") from None
    try:
        candidates[0]().read_images((example_file,))
        reason = "no reader could open it"
    except Exception as exc:  # readers raise anything from OSError to AssertionError
        reason = one_line(exc)
    raise NnaugError(f"cannot read image {example_file}: {reason} — replace or remove the file") from None


def _inspect_first_case(raw: RawDataset, case: Case) -> tuple[list[int], str]:
    """Channels per image file, and the intensity mode, from the first case."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    rw = raw.reader_writer()
    counts, maxima = [], []
    for f in case.image_files:
        try:
            data = rw.read_images((f,))[0]
        except Exception as exc:
            raise NnaugError(f"cannot read image {f}: {one_line(exc)} — replace or remove the file") from None
        counts.append(data.shape[0])
        maxima.append(float(data.max()))
    if sum(counts) != len(raw.channel_names):
        raise NnaugError(
            f"case {case.identifier}: its image files hold {sum(counts)} channels but channel_names lists "
            f"{len(raw.channel_names)} — make them agree"
        )
    natural_8bit = issubclass(raw.reader_writer, NaturalImage2DIO) and max(maxima) <= 255
    return counts, "uint8" if natural_8bit else "percentile"


@dataclass
class DatasetSummary:
    num_cases: int
    shapes: list[tuple[int, int]]
    label_pixels: dict[int, int]
    intensity_low: list[float]
    intensity_high: list[float]

    @property
    def median_shape(self) -> tuple[int, int]:
        arr = np.array(self.shapes)
        return int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))


def check_dataset(raw: RawDataset, progress: bool = False) -> DatasetSummary:
    """Read every case exactly as the generators will; first problem -> NnaugError."""
    from tqdm.auto import tqdm

    shapes, lows, highs = [], [], []
    pixels = {v: 0 for v in raw.label_values}
    for case in tqdm(raw.cases, desc="checking cases", disable=None if progress else True, leave=False):
        image, label, _ = raw.read_case(case)
        shapes.append(tuple(label.shape))
        values, counts = np.unique(label, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            pixels[int(v)] += int(c)
        flat = image.reshape(image.shape[0], -1)
        lows.append(np.percentile(flat, 0.5, axis=1))
        highs.append(np.percentile(flat, 99.5, axis=1))
    return DatasetSummary(
        num_cases=len(raw.cases),
        shapes=shapes,
        label_pixels=pixels,
        intensity_low=np.median(np.array(lows), axis=0).tolist(),
        intensity_high=np.median(np.array(highs), axis=0).tolist(),
    )


def fingerprint(raw: RawDataset) -> str:
    """sha256 over dataset.json and every case file (names and bytes): tells generators which data they saw."""
    digest = hashlib.sha256()
    files = [raw.folder / "dataset.json"] + [Path(f) for c in raw.cases for f in (*c.image_files, c.label_file)]
    for path in files:
        digest.update(str(path.relative_to(raw.folder) if path.is_relative_to(raw.folder) else path).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- intensities
def to_model_range(image: np.ndarray, mode: str) -> np.ndarray:
    """Image [C, H, W] -> float32 in [-1, 1].

    ``uint8`` (natural 8-bit images): x / 127.5 - 1.
    ``percentile`` (other modalities): per case and channel, clip to the [0.5, 99.5] percentiles
    and scale that range to [-1, 1].
    """
    image = image.astype(np.float32, copy=False)
    if mode == "uint8":
        return np.clip(image / 127.5 - 1.0, -1.0, 1.0)
    flat = image.reshape(image.shape[0], -1)
    low = np.percentile(flat, 0.5, axis=1)[:, None, None]
    high = np.percentile(flat, 99.5, axis=1)[:, None, None]
    scale = np.maximum(high - low, 1e-8)
    return (np.clip((image - low) / scale, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def from_model_range(image: np.ndarray, mode: str, low: list[float] | None = None, high: list[float] | None = None) -> np.ndarray:
    """Inverse of :func:`to_model_range` for writing: uint8 for natural images, else the dataset's typical range."""
    image = np.clip(image, -1.0, 1.0)
    if mode == "uint8":
        return np.round((image + 1.0) * 127.5).astype(np.uint8)
    low_a = np.asarray(low, dtype=np.float32)[:, None, None]
    high_a = np.asarray(high, dtype=np.float32)[:, None, None]
    return ((image + 1.0) / 2.0 * (high_a - low_a) + low_a).astype(np.float32)


# ----------------------------------------------------------------------------- torch dataset
class PairDataset:
    """(image, label) pairs at a square resolution for the generators (a ``torch.utils.data.Dataset``).

    image: float32 tensor [C, S, S] in [-1, 1] (see :func:`to_model_range`; bilinear, antialiased resize).
    label: int64 tensor [S, S] holding the dataset's label values 0..K (nearest-neighbour resize).
    Non-square images are resized to the square (aspect ratio is not kept).
    All cases are read once and kept in memory at resolution S.
    """

    def __init__(self, raw: RawDataset, resolution: int, progress: bool = True):
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        self.raw = raw
        self.resolution = resolution
        images, labels = [], []
        for case in tqdm(raw.cases, desc="loading cases", disable=None if progress else True, leave=False):
            image, label, _ = raw.read_case(case)
            img = torch.from_numpy(to_model_range(image, raw.intensity_mode))[None]
            lab = torch.from_numpy(label)[None, None].float()
            images.append(F.interpolate(img, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)[0].clamp_(-1, 1))
            labels.append(F.interpolate(lab, size=(resolution, resolution), mode="nearest-exact")[0, 0].long())
        self.images = torch.stack(images)
        self.labels = torch.stack(labels)
        self.identifiers = [c.identifier for c in raw.cases]

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


# ----------------------------------------------------------------------------- writing
def write_case(
    folder: Path,
    identifier: str,
    image: np.ndarray,
    label: np.ndarray,
    file_ending: str,
    channels_per_file: list[int],
    reader_writer: type,
    properties: dict | None = None,
) -> None:
    """Write one case into ``folder/imagesTr`` and ``folder/labelsTr`` in the source's layout.

    ``image`` [C, H, W] (uint8 for natural images, float otherwise), ``label`` [H, W] integers.
    Labels go through the reader/writer's own ``write_seg``; images are split into files as in the
    source (e.g. one RGB PNG, or one NIfTI per channel) and written with the same libraries nnU-Net
    reads them with (scikit-image for natural images, SimpleITK otherwise).
    """
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    props = properties or {"sitk_stuff": {"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}}
    start = 0
    for file_index, count in enumerate(channels_per_file):
        part = image[start : start + count]
        start += count
        path = folder / "imagesTr" / f"{identifier}_{file_index:04d}{file_ending}"
        if issubclass(reader_writer, NaturalImage2DIO):
            from skimage import io

            io.imsave(str(path), part[0] if count == 1 else np.moveaxis(part, 0, -1), check_contrast=False)
        else:
            import SimpleITK as sitk

            itk = sitk.GetImageFromArray(part[0].astype(np.float32))
            stuff = props["sitk_stuff"]
            itk.SetSpacing(tuple(stuff["spacing"])[-2:])
            itk.SetOrigin(tuple(stuff["origin"])[-2:])
            itk.SetDirection(tuple(stuff["direction"])[-4:] if len(stuff["direction"]) >= 4 else (1.0, 0.0, 0.0, 1.0))
            sitk.WriteImage(itk, str(path), True)
    seg_props = props if not issubclass(reader_writer, NaturalImage2DIO) else {}
    if not issubclass(reader_writer, NaturalImage2DIO) and len(props["sitk_stuff"]["spacing"]) != 2:
        seg_props = {"sitk_stuff": {**props["sitk_stuff"], "spacing": tuple(props["sitk_stuff"]["spacing"])[-2:]}}
    reader_writer().write_seg(label[None].astype(np.uint8), str(folder / "labelsTr" / f"{identifier}{file_ending}"), seg_props)


def write_dataset_json(folder: Path, dataset_json: dict, num_training: int, **updates) -> None:
    """dataset.json copied from the source with numTraining (and any ``updates``) set."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    content = {k: v for k, v in dataset_json.items() if k != "dataset"}
    content.update(updates)
    content["numTraining"] = int(num_training)
    save_json(content, str(folder / "dataset.json"), sort_keys=False)


def check_same_kind(reference_json: dict, other_json: dict, what: str, fix: str) -> None:
    """Two datasets nnaug uses together (pretraining and fine-tuning, training and held-out) need the same
    inputs and labels: the same dataset.json channel_names, labels and file_ending. ``what``: the clause
    that starts the one-line error; ``fix``: what to do about it."""
    for key in ("channel_names", "labels", "file_ending"):
        if reference_json.get(key) != other_json.get(key):
            raise NnaugError(f"{what}: its dataset.json {key} {other_json.get(key)!r} differs from "
                             f"{reference_json.get(key)!r}; {fix}")
