"""Pretrain on a synthetic dataset, fine-tune on the real one: the library side of nnaug's trainers.

The trainer classes live in ``trainers/nnaug_trainers.py`` (found by nnU-Net through
``nnUNet_extTrainer``, see :func:`trainers_path`); everything they need that is not a trainer
override is here:

* :func:`find_synthetic_dataset` — ``NNAUG_SYNTHETIC``, or the newest dataset in ``$nnUNet_raw``
  whose ``nnaug_provenance.json`` names the real dataset as its source;
* :func:`prepare_synthetic` — nnU-Net's documented pretraining route, through its own Python
  functions: fingerprint the synthetic dataset, move the real dataset's plans onto it under the
  plans identifier ``<plans>_nnaugFrom<ID>``, preprocess it with them. Skipped when already done
  for the same synthetic data and the same real plans;
* :func:`ensure_pretrained` — train (or resume, or reuse) the pretraining run on fold ``all`` of
  the synthetic dataset, once per synthetic dataset + plans + configuration + pretrain trainer,
  under a file lock so that folds started in parallel wait for one pretraining instead of
  running five;
* :func:`schedule_from_env` — epochs, learning rates and iterations from ``NNAUG_*`` variables.

The pretrained weights are nnU-Net's own output folder of that pretraining run::

    $nnUNet_results/<SynthDataset>/<PretrainTrainer>__<plans>_nnaugFrom<ID>__<config>/fold_all/checkpoint_final.pth

which is exactly what ``nnUNetv2_train <SynthID> <config> all -tr <PretrainTrainer> -p
<plans>_nnaugFrom<ID>`` would write, beside ``nnaug_pretrain_done.json`` (what it was made from).
"""
from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nnaug.nnunet_paths import find_raw_dataset, parse_dataset_id, preprocessed_root, raw_root, results_root
from nnaug.errors import NnaugError
from nnaug.io import file_lock, load_json_or_none, write_json_atomic
from nnaug.nnunet_results import CHECKPOINT
from nnaug.provenance import PROVENANCE_FILE, read_provenance, same_dataset, synthetic_datasets_for

PREPARED_MARKER = "nnaug_prepared_{plans}_{configuration}.json"
PRETRAIN_DONE_MARKER = "nnaug_pretrain_done.json"
TRAINING_RECORD = "nnaug_training.json"
PROGRESS_FILE = "nnaug_progress.json"  # written by nnaug's trainers after every epoch: phase, epoch, seconds
TRAINER_MODULE = "nnaug_trainers.py"

ENV_SYNTHETIC = "NNAUG_SYNTHETIC"
ENV_VARS = {
    # phase -> (epochs, learning rate, iterations per epoch)
    "pretrain": ("NNAUG_PRETRAIN_EPOCHS", "NNAUG_PRETRAIN_LR", "NNAUG_PRETRAIN_ITERATIONS"),
    "finetune": ("NNAUG_FINETUNE_EPOCHS", "NNAUG_FINETUNE_LR", "NNAUG_FINETUNE_ITERATIONS"),
}


# ----------------------------------------------------------------------------- trainers folder
def trainers_path() -> str:
    """Absolute path of the folder to put in ``nnUNet_extTrainer`` (``export nnUNet_extTrainer=$(nnaug trainers-path)``)."""
    here = Path(__file__).resolve().parent
    # an installed wheel: nnaug/nnunet_trainers/; the repository (editable install): trainers/ beside nnaug/
    for folder in (here / "nnunet_trainers", here.parent / "trainers"):
        if (folder / TRAINER_MODULE).is_file():
            return str(folder)
    raise NnaugError(f"nnaug's trainer module {TRAINER_MODULE} is missing (looked in {here / 'nnunet_trainers'} and "
                     f"{here.parent / 'trainers'}): reinstall nnaug")


# ----------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """One training phase: what nnU-Net calls num_epochs, initial_lr and the iterations per epoch."""

    num_epochs: int
    initial_lr: float
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50

    def apply(self, trainer) -> None:
        trainer.num_epochs = self.num_epochs
        trainer.initial_lr = self.initial_lr
        trainer.num_iterations_per_epoch = self.num_iterations_per_epoch
        trainer.num_val_iterations_per_epoch = self.num_val_iterations_per_epoch

    def describe(self) -> str:
        return (f"{self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations, "
                f"initial lr {self.initial_lr:g} (poly decay)")


# The one table of schedules: nnaug's trainer classes use these, and nnaug sweep's budgets are made of them.
FINETUNE_SCHEDULE = Schedule(num_epochs=150, initial_lr=1e-2)  # thesis: 150 epochs at 1e-2 (polyps)
PRETRAIN_SCHEDULE = Schedule(num_epochs=1000, initial_lr=1e-2)  # nnU-Net's default training, as its docs pretrain
SHORT_SCHEDULE = Schedule(num_epochs=5, initial_lr=1e-2, num_iterations_per_epoch=10, num_val_iterations_per_epoch=2)
"""The _5epochs trainers (tests, the example, ``--budget tiny``)."""
SHORT_MATCHED_SCHEDULE = replace(SHORT_SCHEDULE, num_epochs=2 * SHORT_SCHEDULE.num_epochs)
"""nnUNetTrainer_nnaug_10epochs: as many iterations as SHORT pretraining + SHORT fine-tuning."""
BUDGET_SCHEDULES = {  # nnaug sweep --budget: (epochs, iterations per epoch) of pretraining and of fine-tuning
    "tiny": ((SHORT_SCHEDULE.num_epochs, SHORT_SCHEDULE.num_iterations_per_epoch),) * 2,
    "small": ((15, 25), (15, 25)),
    "gpu": ((100, 250), (FINETUNE_SCHEDULE.num_epochs, 250)),
}


def _env_number(name: str, kind: type, default):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        number = float(text)
        value = (int(number) if number.is_integer() else None) if kind is int else number
    except (ValueError, OverflowError):
        value = None
    if value is None or not 0 < value < float("inf"):
        what = "a positive integer" if kind is int else "a positive number"
        raise NnaugError(f"{name} must be {what}, got '{text}': fix or unset it")
    return value


def schedule_from_env(phase: str, default: Schedule) -> Schedule:
    """``default`` with ``NNAUG_<PHASE>_EPOCHS`` / ``_LR`` / ``_ITERATIONS`` applied where set."""
    epochs_var, lr_var, iterations_var = ENV_VARS[phase]
    return replace(
        default,
        num_epochs=_env_number(epochs_var, int, default.num_epochs),
        initial_lr=_env_number(lr_var, float, default.initial_lr),
        num_iterations_per_epoch=_env_number(iterations_var, int, default.num_iterations_per_epoch),
    )


# ----------------------------------------------------------------------------- finding the synthetic dataset
def find_synthetic_dataset(source_dataset: str) -> Path:
    """The raw folder of the synthetic dataset to pretrain on for the real dataset ``source_dataset``.

    ``NNAUG_SYNTHETIC`` (an ID or name) wins; otherwise the newest folder under ``$nnUNet_raw``
    whose ``nnaug_provenance.json`` has ``source_dataset`` equal to ``source_dataset``.
    """
    root = raw_root()
    chosen = os.environ.get(ENV_SYNTHETIC, "").strip()
    if chosen:
        folder = find_raw_dataset(chosen)
        if folder.name == source_dataset:
            raise NnaugError(f"{ENV_SYNTHETIC}={chosen} is the real dataset itself: point it at the synthetic dataset")
        provenance = read_provenance(folder)
        if provenance is not None and not same_dataset(provenance.get("source_dataset"), source_dataset):
            print(f"nnaug: warning: {folder.name} was synthesized from {provenance.get('source_dataset')}, "
                  f"not from {source_dataset}; using it because {ENV_SYNTHETIC}={chosen}", file=sys.stderr)
        return folder
    candidates = [((folder / PROVENANCE_FILE).stat().st_mtime, parse_dataset_id(folder.name) or 0, folder)
                  for folder in synthetic_datasets_for(source_dataset)]
    if not candidates:
        raise NnaugError(
            f"no synthetic dataset for {source_dataset} in nnUNet_raw={root} (none has an {PROVENANCE_FILE} naming it "
            f"as source): make one with `nnaug synthesize`, or set {ENV_SYNTHETIC}=<ID or name of the dataset to pretrain on>"
        )
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def check_compatible(real_json: dict, synthetic_json: dict, real_name: str, synthetic_name: str) -> None:
    """Pretrained weights only transfer between datasets with the same inputs and labels."""
    from nnaug.dataset import check_same_kind

    check_same_kind(real_json, synthetic_json, f"{synthetic_name} cannot be used to pretrain for {real_name}",
                    f"synthesize it from {real_name}")


# ----------------------------------------------------------------------------- small file helpers
# ----------------------------------------------------------------------------- preprocessing with the real plans
def pretrain_plans_identifier(plans_identifier: str, source_dataset: str) -> str:
    """Plans name of the real plans moved onto the synthetic dataset (custom, as nnU-Net's docs advise)."""
    source_id = parse_dataset_id(source_dataset)
    suffix = f"{source_id:03d}" if source_id is not None else source_dataset
    return f"{plans_identifier}_nnaugFrom{suffix}"


def raw_signature(folder: Path) -> str:
    """Cheap identity of a raw dataset: dataset.json, provenance, and every case file's name and size."""
    digest = hashlib.sha256()
    for name in ("dataset.json", PROVENANCE_FILE):
        path = folder / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((folder / sub).iterdir()) if (folder / sub).is_dir() else []:
            digest.update(f"{sub}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


@dataclass
class Prepared:
    synthetic_dataset: str
    plans_identifier: str
    configuration: str
    raw_signature: str
    plans_sha256: str
    identifiers: list[str]

    @property
    def signature(self) -> dict:
        return {"raw_signature": self.raw_signature, "plans_sha256": self.plans_sha256}


def _num_processes() -> int:
    """nnU-Net's default process count (``nnUNet_def_n_proc``, else 8), at most the CPU count."""
    try:
        wanted = int(os.environ.get("nnUNet_def_n_proc", "8"))
    except ValueError:
        wanted = 8
    return max(1, min(wanted, os.cpu_count() or 1))


def prepare_synthetic(source_dataset: str, synthetic_folder: Path, plans_identifier: str, configuration: str,
                      log=print) -> Prepared:
    """Fingerprint, move plans, preprocess — the steps of nnU-Net's pretraining docs, each only when needed.

    Call with the lock of :func:`ensure_pretrained` held (or in a single process).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    synthetic = synthetic_folder.name
    synthetic_id = parse_dataset_id(synthetic)
    pre = preprocessed_root()
    source_plans_file = pre / source_dataset / f"{plans_identifier}.json"
    if not source_plans_file.is_file():
        raise NnaugError(f"{source_plans_file} not found: run nnUNetv2_plan_and_preprocess -d {source_dataset} first")
    target_plans = pretrain_plans_identifier(plans_identifier, source_dataset)
    dataset_json = load_json(str(synthetic_folder / "dataset.json"))
    identifiers = sorted(get_filenames_of_train_images_and_targets(str(synthetic_folder), dataset_json))
    prepared = Prepared(synthetic, target_plans, configuration, raw_signature(synthetic_folder),
                        hashlib.sha256(source_plans_file.read_bytes()).hexdigest(), identifiers)

    target_folder = pre / synthetic
    marker = target_folder / PREPARED_MARKER.format(plans=target_plans, configuration=configuration)
    done = load_json_or_none(marker)
    if done is not None and done.get("signature") == prepared.signature:
        plans = load_json_or_none(target_folder / f"{target_plans}.json") or {}
        data_identifier = plans.get("configurations", {}).get(configuration, {}).get("data_identifier")
        data_folder = target_folder / str(data_identifier)
        if data_identifier and data_folder.is_dir() and \
                sorted(p.name[:-len(".pkl")] for p in data_folder.glob("*.pkl")) == identifiers:
            log(f"nnaug: {synthetic} is already preprocessed with {target_plans} ({configuration}), "
                f"{len(identifiers)} cases")
            return prepared

    n = _num_processes()
    old_fingerprint = target_folder / "dataset_fingerprint.json"
    stale = done is None or done.get("signature", {}).get("raw_signature") != prepared.raw_signature
    log(f"nnaug: preparing {synthetic} for pretraining ({len(identifiers)} cases): fingerprint -> move plans "
        f"{source_dataset}/{plans_identifier} -> {target_plans} -> preprocess {configuration}")
    if stale or not old_fingerprint.is_file():
        extract_fingerprint_dataset(synthetic_id, num_processes=n, clean=True, verbose=False)
    move_plans_between_datasets(source_dataset, synthetic, plans_identifier, target_plans)
    # nnU-Net's preprocessor reads dataset.json from nnUNet_preprocessed/<dataset>, which only the
    # experiment planner copies there; the documented pretraining route never runs the planner.
    shutil.copy(synthetic_folder / "dataset.json", target_folder / "dataset.json")
    preprocess_dataset(synthetic_id, target_plans, configurations=[configuration], num_processes=[n], verbose=False)
    write_json_atomic(marker, {"source_dataset": source_dataset, "source_plans": plans_identifier,
                               "signature": prepared.signature, "num_cases": len(identifiers)})
    return prepared


def prepare_synthetic_for(trainer, synthetic_folder: Path) -> Prepared:
    """``synthetic_folder`` checked against ``trainer``'s real dataset and preprocessed with its plans, under the
    lock that every seed's and fold's run shares."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    source = trainer.plans_manager.dataset_name
    plans_identifier, configuration = trainer.plans_manager.plans_name, trainer.configuration_name
    check_compatible(trainer.dataset_json, load_json(str(synthetic_folder / "dataset.json")), source,
                     synthetic_folder.name)
    target_plans = pretrain_plans_identifier(plans_identifier, source)
    lock = preprocessed_root() / synthetic_folder.name / f".nnaug_{target_plans}_{configuration}.lock"
    with file_lock(lock, f"waiting for another process preparing {synthetic_folder.name}"):
        return prepare_synthetic(source, synthetic_folder, plans_identifier, configuration,
                                 log=trainer.print_to_log_file)


def preprocessed_data_folder(prepared: Prepared) -> Path:
    """Where nnU-Net put the cases of a prepared synthetic dataset."""
    plans = load_json_or_none(preprocessed_root() / prepared.synthetic_dataset / f"{prepared.plans_identifier}.json")
    return preprocessed_root() / prepared.synthetic_dataset / plans["configurations"][prepared.configuration]["data_identifier"]


# ----------------------------------------------------------------------------- the pretraining run
def pretrain_output_folder(synthetic_dataset: str, trainer_class_name: str, plans_identifier: str,
                           configuration: str) -> Path:
    """Where nnU-Net puts the pretraining run (fold ``all``); its checkpoint_final.pth is the cache."""
    return results_root() / synthetic_dataset / f"{trainer_class_name}__{plans_identifier}__{configuration}" / "fold_all"


def ensure_pretrained(finetune_trainer, pretrain_class) -> tuple[Path, dict]:
    """Checkpoint of the synthetic pretraining for ``finetune_trainer``'s dataset, plans and configuration.

    Finds the synthetic dataset, prepares it, then reuses a finished pretraining (same data, plans
    and schedule), resumes an unfinished one from its checkpoint, or runs it — all in this process,
    with ``pretrain_class`` on fold ``all``. Returns (checkpoint path, what it was made from).
    """
    log = finetune_trainer.print_to_log_file
    source = finetune_trainer.plans_manager.dataset_name
    plans_identifier = finetune_trainer.plans_manager.plans_name
    configuration = finetune_trainer.configuration_name
    synthetic_folder = find_synthetic_dataset(source)
    synthetic = synthetic_folder.name
    target_plans = pretrain_plans_identifier(plans_identifier, source)
    schedule = pretrain_class.nnaug_schedule()
    out = pretrain_output_folder(synthetic, pretrain_class.__name__, target_plans, configuration)
    final = out / CHECKPOINT
    log(f"nnaug: phase 1/2: pretraining on {synthetic} with {pretrain_class.__name__} ({schedule.describe()}), "
        f"plans {target_plans}, output {out}")
    prepared = prepare_synthetic_for(finetune_trainer, synthetic_folder)
    wanted = {
        "source_dataset": source, "source_plans": plans_identifier, "synthetic_dataset": synthetic,
        "plans": target_plans, "configuration": configuration, "trainer": pretrain_class.__name__,
        "schedule": asdict(schedule), "signature": prepared.signature,
    }
    with file_lock(out.parent / f".{out.name}.lock", f"waiting for another process pretraining into {out}"):
        done = load_json_or_none(out / PRETRAIN_DONE_MARKER)
        if done is not None and final.is_file():
            made = {k: done.get(k) for k in wanted}
            if made != wanted:
                changed = sorted(k for k in wanted if made[k] != wanted[k])
                raise NnaugError(
                    f"the pretrained weights in {out} were made with a different {', '.join(changed)} "
                    f"(made: {', '.join(f'{k}={made[k]}' for k in changed)}; now: "
                    f"{', '.join(f'{k}={wanted[k]}' for k in changed)}): delete that folder to pretrain again, "
                    f"or restore the settings it was made with"
                )
            log(f"nnaug: reusing pretrained weights {final} ({len(done.get('identifiers', []))} synthetic cases)")
            return final, done
        _run_pretraining(finetune_trainer, pretrain_class, synthetic, target_plans, configuration, out, log)
        record = {**wanted, "identifiers": prepared.identifiers, "checkpoint": str(final),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(out / PRETRAIN_DONE_MARKER, record)
        return final, record


def _run_pretraining(finetune_trainer, pretrain_class, synthetic: str, plans_identifier: str, configuration: str,
                     out: Path, log) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.helpers import empty_cache

    final = out / CHECKPOINT
    if final.is_file():  # finished, but killed before the marker was written (or run by hand with nnUNetv2_train)
        epochs = torch.load(final, map_location="cpu", weights_only=False).get("current_epoch")
        wanted = pretrain_class.nnaug_schedule().num_epochs
        if epochs != wanted:
            raise NnaugError(f"{final} was trained for {epochs} epochs, not the {wanted} asked for: delete {out} "
                             "to pretrain again, or set NNAUG_PRETRAIN_EPOCHS to match it")
        log(f"nnaug: pretraining in {out} had finished (checkpoint_final.pth); recording it")
        return
    checkpoint = out / "checkpoint_latest.pth"
    resume = checkpoint.is_file()
    pre = preprocessed_root() / synthetic
    plans = load_json(str(pre / f"{plans_identifier}.json"))
    plans["continue_training"] = resume
    dataset_json = load_json(str(pre / "dataset.json"))
    trainer = pretrain_class(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json,
                             device=finetune_trainer.device)
    if resume:
        log(f"nnaug: resuming the pretraining from {checkpoint}")
        trainer.load_checkpoint(str(checkpoint))
    trainer.run_training()  # nnU-Net's own loop: logs, progress.png, checkpoints in `out`
    # No final validation: fold 'all' would only predict its own training cases.
    del trainer
    gc.collect()
    empty_cache(finetune_trainer.device)
    log(f"nnaug: pretraining finished: {out / 'checkpoint_final.pth'}")


def refuse_changed_schedule(output_folder: str | Path, schedule: Schedule, phase: str) -> None:
    """``--c`` continues a run with the schedule it started with (recorded in its nnaug_training.json):
    a schedule the NNAUG_* variables have changed since is refused, not silently switched to."""
    recorded = (load_json_or_none(Path(output_folder) / TRAINING_RECORD) or {}).get("schedule")
    if not isinstance(recorded, dict):
        return  # no record (started before nnaug recorded it): nothing to hold it to
    now = asdict(schedule)
    changed = [f"{key} {recorded.get(key)} -> {value}" for key, value in now.items() if recorded.get(key) != value]
    if changed:
        names = " / ".join(ENV_VARS.get(phase, ()))
        raise NnaugError(f"--c continues {output_folder} with the schedule it started with, but now {', '.join(changed)}: "
                         f"set {names} back as they were (the record is {TRAINING_RECORD}), or train afresh without --c")


def training_record(trainer, train_identifiers: list[str], val_identifiers: list[str], schedule: Schedule,
                    extra: dict | None = None) -> dict:
    """What one nnaug trainer run trained on (written as nnaug_training.json in its fold folder)."""
    record = {
        "trainer": trainer.__class__.__name__,
        "dataset": trainer.plans_manager.dataset_name,
        "plans": trainer.plans_manager.plans_name,
        "configuration": trainer.configuration_name,
        "fold": trainer.fold,
        "schedule": asdict(schedule),
        "train_identifiers": sorted(train_identifiers),
    }
    if trainer.fold != "all":
        record["val_identifiers"] = sorted(val_identifiers)
    record.update(extra or {})
    return record
