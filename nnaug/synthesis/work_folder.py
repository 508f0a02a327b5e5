"""The hidden ``.DatasetXXX_Name.partial`` folder a synthesis writes into, beside its target.

The work is cut into fixed batches, each with its own per-case seeds. A batch counts as done when its marker
exists, so a killed run (``--resume``), several shards (``--shard i/n`` or ``accelerate launch``) and one
uninterrupted process compute the same batches and write the same bytes. :func:`finalize` renames the
folder into place; both kinds of run (:mod:`~nnaug.synthesis.plain`, :mod:`~nnaug.synthesis.filtered`) end there.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnaug.dataset import RawDataset, write_case, write_dataset_json
from nnaug.errors import NnaugError
from nnaug.io import replace_dir, write_json_atomic
from nnaug.provenance import write_provenance
from nnaug.synthesis.options import SynthesisOptions

PROGRESS = ".nnaug_batches"  # done markers (and per-batch records) of the batches written so far
PLAN = ".nnaug_plan.json"  # the plan the folder was started with; a resumed run must bring the same


@dataclass
class SynthesisRun:
    """What one synthesis process carries from the checks to the last rename."""

    raw: RawDataset
    info: dict  # the generator's nnaug_generator.json
    generator_dir: Path
    plan: dict
    work: Path  # the partial folder
    target: Path  # where it is renamed to when done
    opts: SynthesisOptions
    out_shape: tuple  # the dataset's median shape: every case is written at it
    shard: tuple[int, int]  # (index, count)
    device: str
    progress: bool


def open_work_folder(work: Path, plan: dict, resume: bool) -> None:
    plan_file = work / PLAN
    if work.exists() and resume and plan_file.is_file():
        if json.loads(plan_file.read_text()) != plan:
            raise NnaugError(f"{work} was started with other settings (generator, sampler, seed, ratio...): "
                             "rerun with the same options, or without --resume to start over")
        return
    if work.exists() and not resume:
        shutil.rmtree(work)
    (work / PROGRESS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan, indent=1)  # temp names carry the pid: shards may write the plan at once


def batch_done(work: Path, batch_index: int) -> bool:
    return (work / PROGRESS / f"batch_{batch_index:06d}.done").exists()


def mark_batch_done(work: Path, batch_index: int) -> None:
    """The last write of a batch: everything it wrote before is on disk."""
    (work / PROGRESS / f"batch_{batch_index:06d}.done").touch()


def any_batch_done(work: Path) -> bool:
    return bool(list((work / PROGRESS).glob("*.done")))


def batch_record_path(work: Path, batch_index: int, kind: str) -> Path:
    """A batch's own record beside its marker (``kind``: batch for augmentations, scores for a filter)."""
    return work / PROGRESS / f"{kind}_{batch_index:06d}.json"


def write_pair(raw: RawDataset, work: Path, name: str, pixels: np.ndarray, label: np.ndarray, props: dict) -> None:
    write_case(work, name, pixels, label, raw.file_ending, raw.channels_per_file, raw.reader_writer, props)


def finalize(run: SynthesisRun, select=None) -> Path | None:
    """Provenance, dataset.json, contact sheet (and for --mix the real cases and splits); then rename.

    ``select(work)``, when given (a filtered run), names the kept cases inside the lock and returns
    (provenance cases, extra provenance keys).
    """
    raw, plan, work, target, opts = run.raw, run.plan, run.work, run.target, run.opts
    lock = work / ".finalizing"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        if not opts.resume and not opts.merge:
            return None  # another shard is assembling right now
    provenance = dict(plan)
    if select is not None:
        cases, extra = select(work)
        provenance.update(extra, cases=cases)
    augmentations = {}
    for extra in sorted((work / PROGRESS).glob("batch_*.json")):
        augmentations.update(json.loads(extra.read_text()))
    for case in provenance["cases"]:
        if case["case"] in augmentations:
            case["augmentation"] = augmentations[case["case"]]
    num_total = plan["num_cases"]
    if opts.mix:
        num_total += _copy_real_cases(raw, work)
    write_dataset_json(work, raw.dataset_json, num_total, name=target.name,
                       description=f"Synthetic pairs from {raw.name} made by nnaug ({plan['generator_model']}, {plan['mode']})")
    write_provenance(work, provenance)
    _contact_sheet(raw, work, [c["case"] for c in provenance["cases"][:16]])
    shutil.rmtree(work / PROGRESS)
    for name in (PLAN, ".finalizing"):
        (work / name).unlink(missing_ok=True)
    replace_dir(work, target)
    if opts.mix:
        write_mix_splits(target, [c.identifier for c in raw.cases], [c["case"] for c in provenance["cases"]])
    return target


def _copy_real_cases(raw: RawDataset, work: Path) -> int:
    for case in raw.cases:
        for f in case.image_files:
            shutil.copy2(f, work / "imagesTr" / Path(f).name)
        shutil.copy2(case.label_file, work / "labelsTr" / Path(case.label_file).name)
    return len(raw.cases)


def write_mix_splits(target: Path, real_ids: list[str], synthetic_ids: list[str]) -> Path:
    """5 folds over the real cases (nnU-Net's own split); synthetic cases only ever in ``train``."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnaug.nnunet_paths import preprocessed_root

    splits = generate_crossval_split(sorted(real_ids), seed=12345, n_splits=5)
    for fold in splits:
        fold["train"] = list(fold["train"]) + list(synthetic_ids)
    folder = preprocessed_root() / target.name
    folder.mkdir(parents=True, exist_ok=True)
    save_json(splits, str(folder / "splits_final.json"), sort_keys=False)
    return folder / "splits_final.json"


def _contact_sheet(raw: RawDataset, work: Path, identifiers: list[str]) -> None:
    from nnaug.dataset import Case, to_model_range
    from nnaug.visualize import contact_sheet

    images, labels = [], []
    for identifier in identifiers:
        files = [str(work / "imagesTr" / f"{identifier}_{k:04d}{raw.file_ending}") for k in range(len(raw.channels_per_file))]
        image, label, _ = raw.read_case(Case(identifier, files, str(work / "labelsTr" / f"{identifier}{raw.file_ending}")))
        images.append(to_model_range(image, raw.intensity_mode))
        labels.append(label)
    contact_sheet(np.stack(images), np.stack(labels), work / "contact_sheet.png")
