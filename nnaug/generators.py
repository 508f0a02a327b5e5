"""Finding and loading trained generators, whatever their model type.

A generator folder holds ``nnaug.json`` (model type, channels, labels, resolution, source
dataset and its fingerprint, steps trained) beside the diffusers files. Every loaded generator
offers ``sample(seeds, labels=None, sampler=..., steps=...) -> (images, labels)`` and says
whether it can sample pairs jointly (``supports_joint``).
"""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.errors import NnaugError


# What every generator folder's nnaug.json must hold, and of which type.
REQUIRED_INFO = {"model": str, "image_channels": int, "mask_channels": int, "channel_names": list, "labels": dict,
                 "label_values": list, "resolution": int, "intensity_mode": str, "source_dataset": str}
# The weight files each model type needs besides nnaug.json (siamese checks its own in SiameseComponents).
REQUIRED_FILES = {"jdm": ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"),
                  "siamese": ("siamese.json",)}


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
    if info["model"] not in REQUIRED_FILES:
        raise NnaugError(f"{path}: unknown generator model '{info['model']}' (nnaug knows {', '.join(REQUIRED_FILES)})")
    absent = [name for name in REQUIRED_FILES[info["model"]] if not (folder / name).is_file()]
    if absent:
        raise NnaugError(f"the generator in {folder} is incomplete: missing {', '.join(absent)} — train it again, "
                         "or finish the run with `nnaug train-generator ... --resume`")
    return info


def load_generator(folder: Path, device="cpu"):
    folder = Path(folder)
    info = read_info(folder)
    try:
        if info["model"] == "jdm":
            from nnaug.jdm.sampling import JDMGenerator

            return JDMGenerator.from_pretrained(folder, info, device=device)
        from nnaug.siamese.generator import SiameseGenerator

        return SiameseGenerator.from_pretrained(folder, info, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # truncated safetensors, a config that lies, ...
        from nnaug.dataset import _one_line

        raise NnaugError(f"cannot load the generator weights in {folder}: {_one_line(exc)} — train it again") from None


def find_latest_generator(dataset_name: str) -> Path:
    """The most recently updated generator trained on ``dataset_name``."""
    from nnaug.train_generator import generators_root

    root = generators_root(dataset_name)
    found = sorted((p.parent for p in root.glob("*/nnaug.json")), key=lambda p: (p / "nnaug.json").stat().st_mtime)
    if not found:
        raise NnaugError(f"no generator trained on {dataset_name} under {root}: run `nnaug train-generator` first or pass --generator DIR")
    return found[-1]


def checkpoint_sha256(folder: Path) -> str:
    """sha256 over the weight files of a generator folder (what the provenance records)."""
    import hashlib

    from nnaug.dataset import file_sha256

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if "checkpoints" in path.relative_to(folder).parts:
            continue
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
