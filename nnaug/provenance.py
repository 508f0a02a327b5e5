"""``nnaug_provenance.json``: what a synthetic dataset was made from (written by ``nnaug synthesize``).

It names the real source dataset, the generator (folder, model, weights hash), the sampler, seeds and
every synthetic case. The nnU-Net trainers find their synthetic dataset through it, and ``nnaug report``
lists the synthetic datasets of a real one by it.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.nnunet_paths import parse_dataset_id, raw_root
from nnaug.io import write_json_atomic

PROVENANCE_FILE = "nnaug_provenance.json"
REAL_COPY_KIND = "real-copy"  # the sweep's copy of the real cases (nnaug.experiment.real_copy): not synthetic


def write_provenance(folder: Path, content: dict) -> None:
    write_json_atomic(Path(folder) / PROVENANCE_FILE, content, indent=1)


def read_provenance(folder: Path) -> dict | None:
    """The folder's provenance, or None when it has none (or an unreadable one: then it is not nnaug's)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def same_dataset(reference: object, dataset_name: str) -> bool:
    """Does ``reference`` (a name like Dataset501_Kvasir, or an ID) mean ``dataset_name``?"""
    if reference is None:
        return False
    text = str(reference)
    if text == dataset_name:
        return True
    if text.startswith("Dataset") and "_" in text:
        return False  # a full name that differs
    ref_id = parse_dataset_id(text)
    return ref_id is not None and ref_id == parse_dataset_id(dataset_name)


def synthetic_datasets_for(real_name: str) -> list[Path]:
    """Every synthetic raw dataset whose provenance names ``real_name`` as its source, by dataset ID."""
    found = []
    for folder in raw_root().glob("Dataset*_*"):
        if not folder.is_dir() or folder.name == real_name:
            continue
        provenance = read_provenance(folder)
        if provenance is not None and provenance.get("kind") != REAL_COPY_KIND \
                and same_dataset(provenance.get("source_dataset"), real_name):
            found.append(folder)
    return sorted(found, key=lambda p: (parse_dataset_id(p.name) or 0, p.name))
