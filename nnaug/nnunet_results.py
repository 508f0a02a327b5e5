"""The nnU-Net results tree as nnaug reads it: trained model folders and their folds.

A model folder (nnU-Net's "training output folder") is ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Config>``
and holds what nnU-Net's predictor reads: ``dataset.json``, ``plans.json`` and one ``fold_<f>/checkpoint_final.pth``
per trained fold (``fold_all`` for a model trained on every case). :func:`check_model_folder` is the one check of
such a folder for every command that takes one (``synthesize --filter-model``, the report's and the sweep's mask
consistency through :func:`nnaug.mask_consistency.load_predictor`): a folder nnU-Net cannot load is one error line
before any work, not a traceback from inside nnU-Net.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nnaug.errors import NnaugError

CHECKPOINT = "checkpoint_final.pth"
FOLD_PREFIX = "fold_"
LAYOUT = "$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Config>"


def nnaug_folder(dataset_name: str, results: Path | None = None) -> Path:
    """``$nnUNet_results/nnaug/<Dataset>``: what nnaug writes next to nnU-Net's own results (generators/, sweep/,
    the report and the latest sweep's copies); ``results``: another nnUNet_results than the environment's."""
    from nnaug.nnunet_paths import results_root

    return Path(results or results_root()) / "nnaug" / dataset_name


SWEEP_OUTPUTS = ("sweep.md", "sweep.json", "sweep.png")


def latest_outputs(dataset_name: str) -> dict[str, Path]:
    """``$nnUNet_results/nnaug/<Dataset>/sweep.{md,json,png}``: copies of the latest finished sweep."""
    folder = nnaug_folder(dataset_name)
    return {name.split(".")[1]: folder / name for name in SWEEP_OUTPUTS}


def latest_sweep_markdown(dataset_name: str) -> str | None:
    """The markdown of the latest finished sweep of ``dataset_name`` (for ``nnaug report``), or None."""
    try:
        path = latest_outputs(dataset_name)["md"]
    except NnaugError:
        return None
    try:
        return path.read_text()
    except OSError:
        return None


def metric_label_names(dataset_json: dict) -> dict[str, str]:
    """nnU-Net's metric key in summary.json ('1', or '(1, 2)' for a region) -> the label's name in dataset.json;
    background and nnU-Net's ``ignore`` label (never scored) are left out."""
    names = {}
    for name, value in (dataset_json or {}).get("labels", {}).items():
        key = str(tuple(value)) if isinstance(value, (list, tuple)) else str(int(value))
        if key != "0" and name != "ignore":
            names[key] = name
    return names


def parse_fold(text: str) -> int | str:
    """A fold as nnU-Net names it: ``"3"`` -> 3, ``"all"`` -> ``"all"``."""
    return int(text) if text.isdigit() else text


def fold_folder(model_dir: Path | str, fold: int | str) -> Path:
    return Path(model_dir) / f"{FOLD_PREFIX}{fold}"


def model_folder(root: Path | str, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """``<root>/<Dataset>/<Trainer>__<Plans>__<Config>``: where ``nnUNetv2_train`` writes (``root`` is an
    ``nnUNet_results``)."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    return Path(root) / dataset_name / convert_trainer_plans_config_to_identifier(trainer, plans, configuration)


def checkpoint_path(model_dir: Path | str, fold: int | str, checkpoint_name: str = CHECKPOINT) -> Path:
    return fold_folder(model_dir, fold) / checkpoint_name


def cv_summary_path(model_dir: Path | str, fold: int | str) -> Path:
    """nnU-Net's validation of a fold (written when its training ends): ``fold_<f>/validation/summary.json``."""
    return fold_folder(model_dir, fold) / "validation" / "summary.json"


def fold_done(model_dir: Path | str, fold: int | str, cross_validation: bool) -> bool:
    """The fold has its final checkpoint (and, for cross-validation, nnU-Net's validation summary)."""
    if not checkpoint_path(model_dir, fold).is_file():
        return False
    return not cross_validation or cv_summary_path(model_dir, fold).is_file()


def trained_folds(model_dir: Path | str, checkpoint_name: str = CHECKPOINT) -> list:
    """The folds of a model folder that have ``checkpoint_name`` (``fold_all`` as ``"all"``), in name order."""
    folds = []
    for folder in sorted(Path(model_dir).glob(f"{FOLD_PREFIX}*")):
        if (folder / checkpoint_name).is_file():
            folds.append(parse_fold(folder.name[len(FOLD_PREFIX):]))
    return folds


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder: where it is, its trained folds (or the ones asked for) and its dataset.json."""

    folder: Path
    folds: list
    dataset_json: dict

    @property
    def labels(self) -> dict:
        return self.dataset_json["labels"]


def _read_json(path: Path, what: str, fix: str) -> dict:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise NnaugError(f"{what} {path.parent} has no {path.name}: {fix}") from None
    except (OSError, ValueError) as exc:
        raise NnaugError(f"{what} {path.parent}: {path.name} is not readable JSON ({type(exc).__name__}): {fix}") from None
    if not isinstance(content, dict):
        raise NnaugError(f"{what} {path.parent}: {path.name} does not hold a JSON object: {fix}")
    return content


def check_model_folder(model_dir: Path | str, what: str = "the nnU-Net model", folds=None,
                       checkpoint_name: str = CHECKPOINT) -> ModelFolder:
    """The model folder ``model_dir`` as nnU-Net's predictor will read it, or one error line naming ``what``
    (an option such as ``--filter-model``) and what to fix. ``folds``: these must be trained (default: every
    trained fold, at least one)."""
    model_dir = Path(model_dir)
    fix = f"give the training output folder of a trained nnU-Net ({LAYOUT})"
    if not model_dir.is_dir():
        raise NnaugError(f"{what} {model_dir} is not a folder: {fix}")
    trained = trained_folds(model_dir, checkpoint_name)
    if folds is None and not trained:
        raise NnaugError(f"{what} {model_dir} has no {FOLD_PREFIX}*/{checkpoint_name}: train a fold first "
                         f"(nnUNetv2_train), or {fix}")
    folds = trained if folds is None else list(folds)
    missing = [f for f in folds if f not in trained and parse_fold(str(f)) not in trained]
    if not folds or missing:
        raise NnaugError(f"{what} {model_dir}: no {checkpoint_name} for fold(s) "
                         f"{', '.join(map(str, missing)) or '(none given)'}: train those folds first or choose others "
                         f"with --folds (trained: {', '.join(map(str, trained)) or 'none'})")
    dataset_json = _read_json(model_dir / "dataset.json", what, fix)
    if not isinstance(dataset_json.get("labels"), dict):
        raise NnaugError(f"{what} {model_dir}: dataset.json has no labels: {fix}")
    plans = _read_json(model_dir / "plans.json", what, fix)
    if not isinstance(plans.get("configurations"), dict):
        raise NnaugError(f"{what} {model_dir}: plans.json has no configurations, it is not nnU-Net's plans: {fix}")
    return ModelFolder(model_dir, folds, dataset_json)


def model_folders(dataset_results: Path | str) -> list[Path]:
    """The ``<Trainer>__<Plans>__<Config>`` folders of one dataset's results (``$nnUNet_results/<Dataset>``)."""
    root = Path(dataset_results)
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.count("__") == 2) if root.is_dir() else []


def trainer_kind(trainer: str) -> str:
    """``pretrain→fine-tune`` for nnaug's (Pretrain)Finetune trainers, ``pretrain`` for the pretraining phase,
    ``real + synthetic`` for nnaugMixed (never a real-only model: it has seen synthetic cases), else ``real-only``."""
    if "Finetune" in trainer:
        return "pretrain→fine-tune"
    if "nnaugMixed" in trainer:
        return "real + synthetic"
    if "nnaugPretrain" in trainer:
        return "pretrain"
    return "real-only"


def find_real_only_model(dataset_name: str, folds: list | None = None) -> tuple[Path, list] | None:
    """(model folder, trained folds) of a real-only model of ``$nnUNet_results/<dataset_name>``:
    ``nnUNetTrainer_nnaug*`` first, then ``nnUNetTrainer``, then any other; None when there is none."""
    from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config

    from nnaug.nnunet_paths import results_root

    candidates = []
    for model_dir in model_folders(results_root() / dataset_name):
        trainer = convert_identifier_to_trainer_plans_config(model_dir.name)[0]
        if trainer_kind(trainer) != "real-only":
            continue
        available = [f for f in trained_folds(model_dir) if folds is None or f in folds]
        if not available:
            continue
        rank = 0 if trainer.startswith("nnUNetTrainer_nnaug") else 1 if trainer == "nnUNetTrainer" else 2
        candidates.append((rank, model_dir.name, model_dir, available))
    if not candidates:
        return None
    _, _, model_dir, available = min(candidates, key=lambda c: (c[0], c[1]))
    return model_dir, available
