"""What exists already, read and never trained: nnU-Net's validation Dice (summary.json of every model folder
and fold under ``$nnUNet_results/<Dataset>``) and the latest finished sweep."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.nnunet_results import (cv_summary_path, metric_label_names, model_folders, nnaug_folder, parse_fold,
                                  trainer_kind)


def report_folder(dataset_name: str) -> Path:
    """Where report.{md,json,html,png} and their pictures go: ``$nnUNet_results/nnaug/<Dataset>``."""
    return nnaug_folder(dataset_name)


def warn(message: str) -> None:
    print(f"nnaug: warning: {message}", file=sys.stderr, flush=True)


def collect_dice(dataset_name: str, folds: list[int] | None = None, dataset_json: dict | None = None) -> list[dict]:
    """One row per ``<Trainer>__<Plans>__<config>/fold_<f>/validation/summary.json`` under ``$nnUNet_results/<dataset>``."""
    from nnaug.nnunet_paths import results_root
    from nnaug.io import load_json_or_none
    from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config

    from nnaug.nnunet_pretraining import TRAINING_RECORD

    root = results_root() / dataset_name
    names = metric_label_names(dataset_json or {})
    rows = []
    if not root.is_dir():
        return rows
    for model_dir in model_folders(root):
        trainer, plans, configuration = convert_identifier_to_trainer_plans_config(model_dir.name)
        for fold_dir in sorted(model_dir.glob("fold_*")):
            fold = parse_fold(fold_dir.name[len("fold_"):])
            if folds is not None and fold not in folds:
                continue
            summary_path = cv_summary_path(model_dir, fold)
            summary = load_json_or_none(summary_path)
            if summary is None:
                continue
            try:
                foreground = float(summary["foreground_mean"]["Dice"])
                per_label = {names.get(k, k): float(v["Dice"]) for k, v in summary.get("mean", {}).items()}
            except (KeyError, TypeError, ValueError):
                raise NnaugError(f"{summary_path} is not an nnU-Net validation summary (no foreground_mean.Dice): "
                                 "re-run the validation (nnUNetv2_train ... --val) or delete the file") from None
            record = load_json_or_none(fold_dir / TRAINING_RECORD) or {}
            pretrained_on = (record.get("pretraining") or {}).get("synthetic_dataset")
            if pretrained_on is None and record.get("pretrained_weights"):
                pretrained_on = record["pretrained_weights"]
            rows.append({"trainer": trainer, "plans": plans, "configuration": configuration, "fold": fold,
                         "kind": trainer_kind(trainer), "foreground_dice": foreground, "dice": per_label,
                         "pretrained_on": pretrained_on, "summary": str(summary_path)})
    return rows


def summarise_dice(rows: list[dict]) -> list[dict]:
    """Mean foreground Dice per model (trainer, plans, configuration) over its folds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["trainer"], row["plans"], row["configuration"]), []).append(row)
    out = []
    for (trainer, plans, configuration), items in sorted(groups.items()):
        labels = sorted({k for r in items for k in r["dice"]})
        out.append({"trainer": trainer, "plans": plans, "configuration": configuration, "kind": trainer_kind(trainer),
                    "folds": [r["fold"] for r in items],
                    "foreground_dice": float(np.mean([r["foreground_dice"] for r in items])),
                    "dice": {k: float(np.mean([r["dice"][k] for r in items if k in r["dice"]])) for k in labels}})
    return out


def real_only_validation_dice(model_dir: Path, folds: list) -> dict:
    """Mean validation foreground Dice (nnU-Net's summary.json) of a model over ``folds``: ``dict(dice=, folds=)``,
    ``dice`` None when none of those folds has a summary.json."""
    from nnaug.io import load_json_or_none

    values, used = [], []
    for fold in folds:
        summary = load_json_or_none(cv_summary_path(model_dir, fold))
        try:
            values.append(float(summary["foreground_mean"]["Dice"]))
            used.append(fold)
        except (TypeError, KeyError, ValueError):
            continue
    return {"dice": float(np.mean(values)) if values else None, "folds": used}


def check_folds(dataset_name: str, folds, dice_rows: list[dict], warnings_: list) -> None:
    """--folds that no run has: one warning line naming the folds there are."""
    missing = [f for f in folds or [] if f not in {r["fold"] for r in dice_rows}]
    if missing:
        message = (f"--folds: no validation summary.json for fold {', '.join(map(str, missing))} under "
                   f"$nnUNet_results/{dataset_name} (folds found: {folds_found(dataset_name)})")
        warn(message)
        warnings_.append(message)


def folds_found(dataset_name: str) -> str:
    found = sorted({r["fold"] for r in collect_dice(dataset_name)}, key=str)
    return ", ".join(map(str, found)) or "none"


def latest_sweep(dataset_name: str) -> dict | None:
    """The latest finished sweep (markdown, picture, and its paired differences) or None."""
    import json

    from nnaug.nnunet_results import latest_outputs, latest_sweep_markdown

    markdown = latest_sweep_markdown(dataset_name)
    if markdown is None:
        return None
    paths = latest_outputs(dataset_name)
    try:
        result = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        result = {}
    return {"markdown": markdown, "png": str(paths["png"]) if paths["png"].is_file() else None,
            "seeds": result.get("seeds"), "evaluation": result.get("evaluation"),
            "differences": [d for d in result.get("differences", []) if d.get("reference") == "real-only"]}


def sweep_test_dataset(sweep: dict | None):
    """The held-out test dataset of a sweep (:func:`latest_sweep`; real cases no generator saw), to calibrate
    memorisation, or None."""
    from nnaug.dataset import load_raw_dataset

    name = ((sweep or {}).get("evaluation") or {}).get("test_dataset")
    if not name:
        return None
    try:
        return load_raw_dataset(name)
    except NnaugError:
        return None

