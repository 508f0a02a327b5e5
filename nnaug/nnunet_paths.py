"""Where nnU-Net keeps things, as nnU-Net finds them: the three roots (``$nnUNet_raw``, ``$nnUNet_preprocessed``,
``$nnUNet_results``), a dataset by ID or name, and the dataset IDs in use (so two runs never claim one)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.io import PARTIAL_SUFFIX


def raw_root() -> Path:
    """``$nnUNet_raw`` as a Path, or a one-line error saying how to set it."""
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise NnaugError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (as for nnU-Net itself)")
    root = Path(value)
    if not root.is_dir():
        raise NnaugError(f"nnUNet_raw points to {root}, which is not a folder: create it or fix the variable")
    return root


def results_root() -> Path:
    value = os.environ.get("nnUNet_results")
    if not value:
        raise NnaugError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results (as for nnU-Net itself)")
    return Path(value)


def preprocessed_root() -> Path:
    value = os.environ.get("nnUNet_preprocessed")
    if not value:
        raise NnaugError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed (as for nnU-Net itself)")
    return Path(value)


def parse_dataset_id(name_or_id: str | int) -> int | None:
    """``501``, ``"501"``, ``"Dataset501"`` or ``"Dataset501_Kvasir"`` -> 501; anything else -> None."""
    text = str(name_or_id)
    match = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", text)
    return int(match.group(1)) if match else None


def find_raw_dataset(name_or_id: str | int) -> Path:
    """The raw folder of a dataset given by ID or name, searched under ``$nnUNet_raw`` as nnU-Net does."""
    root = raw_root()
    text = str(name_or_id)
    if text.startswith("Dataset") and "_" in text:
        folder = root / text
        if folder.is_dir():
            return folder
        raise NnaugError(f"dataset {text} not found in nnUNet_raw={root}: check the name or run `nnaug convert` first")
    dataset_id = parse_dataset_id(text)
    if dataset_id is None:
        raise NnaugError(f"'{text}' is neither a dataset ID (e.g. 501) nor a dataset name (e.g. Dataset501_Kvasir)")
    candidates = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if not candidates:
        raise NnaugError(f"no dataset with ID {dataset_id} in nnUNet_raw={root}: check the ID or run `nnaug convert` first")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise NnaugError(f"more than one dataset has ID {dataset_id} ({names}): rename one of them, as nnU-Net requires")
    return candidates[0]


def used_dataset_ids() -> set[int]:
    """IDs taken in nnUNet_raw, nnUNet_preprocessed or nnUNet_results (as nnU-Net checks all three), and by
    the unfinished outputs nnaug is writing (``.DatasetNNN_name.partial``), so two runs never pick one ID."""
    ids = set()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = os.environ.get(var)
        if folder and Path(folder).is_dir():
            for p in Path(folder).iterdir():
                match = re.fullmatch(rf"\.?Dataset(\d{{3}})_.+?({re.escape(PARTIAL_SUFFIX)})?", p.name)
                if match and p.is_dir() and (p.name[0] != "." or match.group(2)):
                    ids.add(int(match.group(1)))
    return ids


def raw_target(dataset_id: int, name: str, option: str) -> Path:
    """``$nnUNet_raw/DatasetNNN_name``; refuses an ID that another dataset uses (``option``: what to change)."""
    root = raw_root()
    clash = [p.name for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.name != f"Dataset{dataset_id:03d}_{name}"]
    if clash:
        raise NnaugError(f"dataset ID {dataset_id} is already used by {clash[0]}: choose another {option}")
    return root / f"Dataset{dataset_id:03d}_{name}"


def next_free_dataset_id(start: int = 500) -> int:
    used = used_dataset_ids()
    candidate = max([start - 1, *used]) + 1  # above every ID in use, as users expect
    if candidate < 1000:
        return candidate
    for candidate in range(start, 1000):
        if candidate not in used:
            return candidate
    raise NnaugError("no free dataset ID below 1000: pass --output-id explicitly")
