"""The real-twice control's pretraining set: a copy of the real training cases as a raw dataset of its own.

nnaug's pretrain trainer pretrains on whatever dataset ``NNAUG_SYNTHETIC`` names, with the real plans, then
fine-tunes on the real fold. Pointed at this copy it gives the pretrain arms' exact schedule and restart with
no synthetic image. The copy's ``nnaug_provenance.json`` says ``"kind": "real-copy"``, so it is never taken
for a synthetic set (``synthetic_datasets_for``) and ``nnaug report`` does not list it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from nnaug.provenance import REAL_COPY_KIND

SUFFIX = "RealCopy"


def copy_name(raw) -> str:
    return raw.name.split("_", 1)[1] + SUFFIX


def _identity(raw) -> dict:
    from nnaug.nnunet_pretraining import raw_signature

    return {"kind": REAL_COPY_KIND, "source_dataset": raw.name, "source_signature": raw_signature(raw.folder),
            "num_cases": len(raw.cases)}


def find_real_copy(raw) -> Path | None:
    """A finished copy of ``raw``'s current cases in ``$nnUNet_raw`` (the newest ID), or None."""
    from nnaug.nnunet_paths import parse_dataset_id, raw_root
    from nnaug.provenance import read_provenance

    wanted = _identity(raw)
    found = [folder for folder in raw_root().glob(f"Dataset*_{copy_name(raw)}")
             if folder.is_dir() and read_provenance(folder) == wanted]
    return max(found, key=lambda f: parse_dataset_id(f.name) or 0) if found else None


def ensure_real_copy(raw, lock_folder: Path, log=print) -> Path:
    """The copy of ``raw``'s training cases: reused, or written into a hidden partial folder and renamed."""
    from nnaug.dataset import write_dataset_json
    from nnaug.nnunet_paths import next_free_dataset_id, raw_root
    from nnaug.io import file_lock, partial_dir
    from nnaug.provenance import write_provenance

    existing = find_real_copy(raw)
    if existing is not None:
        return existing
    with file_lock(Path(lock_folder) / ".real_copy.lock", "waiting for another worker copying the real cases"):
        existing = find_real_copy(raw)
        if existing is not None:
            return existing
        for stale in raw_root().glob(f".Dataset*_{copy_name(raw)}.partial"):
            shutil.rmtree(stale)  # an interrupted copy (held by this lock, so nobody else's): start it again
        while True:  # claim a free ID by making its work folder (mkdir is atomic)
            target = raw_root() / f"Dataset{next_free_dataset_id():03d}_{copy_name(raw)}"
            work = partial_dir(target)
            try:
                work.mkdir()
                break
            except FileExistsError:
                continue
        log(f"nnaug sweep: real-twice: copying the {len(raw.cases)} real training cases of {raw.name} to {target.name}")
        for sub in ("imagesTr", "labelsTr"):
            (work / sub).mkdir()
        ending = raw.file_ending
        for case in raw.cases:  # by case, not by folder: a dataset.json may list its files anywhere
            for channel, image in enumerate(case.image_files):
                shutil.copy2(image, work / "imagesTr" / f"{case.identifier}_{channel:04d}{ending}")
            shutil.copy2(case.label_file, work / "labelsTr" / f"{case.identifier}{ending}")
        write_dataset_json(work, raw.dataset_json, len(raw.cases))
        write_provenance(work, _identity(raw))
        work.rename(target)
    return target
