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


def read_info(folder: Path) -> dict:
    path = Path(folder) / "nnaug.json"
    if not path.is_file():
        raise NnaugError(f"{folder} is not a generator folder (no nnaug.json): train one with `nnaug train-generator`")
    return json.loads(path.read_text())


def load_generator(folder: Path, device="cpu"):
    folder = Path(folder)
    info = read_info(folder)
    if info["model"] == "jdm":
        from nnaug.jdm.sampling import JDMGenerator

        return JDMGenerator.from_pretrained(folder, info, device=device)
    if info["model"] == "siamese":
        from nnaug.siamese.generator import SiameseGenerator

        return SiameseGenerator.from_pretrained(folder, info, device=device)
    raise NnaugError(f"{folder}: unknown generator model '{info['model']}'")


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
