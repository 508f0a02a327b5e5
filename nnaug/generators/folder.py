"""Finding, checking and loading generator folders, whatever their model (through the registry).

A generator folder holds ``nnaug.json`` (model type, channels, labels, resolution, source
dataset and its fingerprint, steps trained) beside the diffusers files. A loaded generator is a
:class:`~nnaug.generators.registry.SampleableGenerator`.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.generators.registry import generator_names, get_spec


# What every generator folder's nnaug.json must hold, and of which type.
REQUIRED_INFO = {"model": str, "image_channels": int, "mask_channels": int, "channel_names": list, "labels": dict,
                 "label_values": list, "resolution": int, "intensity_mode": str, "source_dataset": str}
INTENSITY_MODES = ("uint8", "percentile")  # nnaug.dataset.to_model_range / from_model_range


def read_info(folder: Path) -> dict:
    """The folder's nnaug.json, checked: one error line for a missing, corrupt or incomplete generator folder."""
    folder = Path(folder)
    path = folder / "nnaug.json"
    if not folder.is_dir():
        raise NnaugError(f"{folder} is not a folder: give a generator folder written by `nnaug train-generator`")
    if not path.is_file():
        raise NnaugError(f"{folder} is not a generator folder (no nnaug.json): train one with `nnaug train-generator`")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NnaugError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): restore it or "
                         "train the generator again") from None
    if not isinstance(info, dict):
        raise NnaugError(f"{path} must hold a JSON object: restore it or train the generator again")
    missing = [key for key in REQUIRED_INFO if key not in info]
    if missing:
        raise NnaugError(f"{path} lacks {', '.join(missing)}: it was not written by `nnaug train-generator` or was "
                         "edited; restore it or train the generator again")
    wrong = [f"{key} ({type(info[key]).__name__}, expected {kind.__name__})" for key, kind in REQUIRED_INFO.items()
             if not isinstance(info[key], kind) or isinstance(info[key], bool)]
    if wrong:
        raise NnaugError(f"{path}: wrong type for {', '.join(wrong)}: restore it or train the generator again")
    if info["intensity_mode"] not in INTENSITY_MODES:
        raise NnaugError(f"{path}: intensity_mode '{info['intensity_mode']}' is not one of {', '.join(INTENSITY_MODES)}: "
                         "restore it or train the generator again")
    if info["intensity_mode"] == "percentile" and not all(
            isinstance(info.get(key), list) and len(info[key]) == info["image_channels"] for key in ("intensity_low", "intensity_high")):
        raise NnaugError(f"{path}: a percentile-scaled generator needs intensity_low and intensity_high (one number per "
                         "channel) to write its images: restore it or train the generator again")
    if info["model"] not in generator_names():
        raise NnaugError(f"{path}: unknown generator model '{info['model']}' (nnaug knows {', '.join(generator_names())})")
    absent = [name for name in get_spec(info["model"]).required_files if not (folder / name).is_file()]
    if absent:
        raise NnaugError(f"the generator in {folder} is incomplete: missing {', '.join(absent)} — train it again, "
                         "or finish the run with `nnaug train-generator ... --resume`")
    return info


def load_generator(folder: Path, device="cpu"):
    folder = Path(folder)
    info = read_info(folder)
    try:
        return get_spec(info["model"]).load(folder, info, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # truncated safetensors, a config that lies, ...
        from nnaug.io import one_line

        raise NnaugError(f"cannot load the generator weights in {folder}: {one_line(exc)} — train it again") from None


def generators_root(dataset_name: str, results: Path | None = None) -> Path:
    """``$nnUNet_results/nnaug/<Dataset>/generators`` (or under ``results`` for another nnUNet_results)."""
    from nnaug.nnunet_results import nnaug_folder

    return nnaug_folder(dataset_name, results) / "generators"


def find_latest_generator(dataset_name: str) -> Path:
    """The most recently updated generator trained on ``dataset_name``."""
    root = generators_root(dataset_name)
    found = sorted((p.parent for p in root.glob("*/nnaug.json")), key=lambda p: (p / "nnaug.json").stat().st_mtime)
    if not found:
        raise NnaugError(f"no generator trained on {dataset_name} under {root}: run `nnaug train-generator` first or pass --generator DIR")
    return found[-1]


def checkpoint_sha256(folder: Path) -> str:
    """sha256 over the weight files of a generator folder (what the provenance records)."""
    import hashlib

    from nnaug.io import file_sha256

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if "checkpoints" in path.relative_to(folder).parts:
            continue
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
