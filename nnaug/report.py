"""``nnaug report``: fidelity of each synthetic dataset made from a real dataset, and the Dice it bought.

Reads only what exists: the raw datasets under ``$nnUNet_raw`` (the real one and every dataset
whose ``nnaug_provenance.json`` names it as source) and nnU-Net's validation ``summary.json`` files
under ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_<f>/``. Never trains.
Writes ``$nnUNet_results/nnaug/<Dataset>/report.{md,json,png}``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError

NO_WEIGHTS_NOTE = "n/a (no Inception weights: --inception-weights FILE)"
REAL_ONLY_PREFERENCE = ("nnUNetTrainer_nnaug", "nnUNetTrainer")


# ----------------------------------------------------------------------------- discovering
def find_synthetic_datasets(real_name: str) -> list[Path]:
    """Every raw dataset whose ``nnaug_provenance.json`` names ``real_name`` as its source (by ID order)."""
    from nnaug.dataset import parse_dataset_id, raw_root
    from nnaug.pretraining import _same_dataset, read_provenance

    found = []
    for folder in raw_root().glob("Dataset*_*"):
        if not folder.is_dir() or folder.name == real_name:
            continue
        provenance = read_provenance(folder)
        if provenance is not None and _same_dataset(provenance.get("source_dataset"), real_name):
            found.append(folder)
    return sorted(found, key=lambda p: (parse_dataset_id(p.name) or 0, p.name))


def trainer_kind(trainer: str) -> str:
    """``pretrain→fine-tune`` for nnaug's (Pretrain)Finetune trainers, ``pretrain`` for the pretraining phase, else ``real-only``."""
    if "Finetune" in trainer:
        return "pretrain→fine-tune"
    if "nnaugPretrain" in trainer:
        return "pretrain"
    return "real-only"


def _label_names(dataset_json: dict) -> dict[str, str]:
    """summary.json label key ('1', or '(1, 2)' for regions) -> dataset.json label name."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        key = str(tuple(value)) if isinstance(value, (list, tuple)) else str(int(value))
        if name != "background" and key != "0":
            names[key] = name
    return names


def collect_dice(dataset_name: str, folds: list[int] | None = None, dataset_json: dict | None = None) -> list[dict]:
    """One row per ``<Trainer>__<Plans>__<config>/fold_<f>/validation/summary.json`` under ``$nnUNet_results/<dataset>``."""
    from nnaug.dataset import results_root
    from nnaug.pretraining import TRAINING_RECORD, load_json_or_none

    root = results_root() / dataset_name
    names = _label_names(dataset_json or {})
    rows = []
    if not root.is_dir():
        return rows
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.count("__") == 2):
        trainer, plans, configuration = model_dir.name.split("__")
        for fold_dir in sorted(model_dir.glob("fold_*")):
            fold_text = fold_dir.name[len("fold_"):]
            fold = int(fold_text) if fold_text.isdigit() else fold_text
            if folds is not None and fold not in folds:
                continue
            summary_path = fold_dir / "validation" / "summary.json"
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


def find_real_only_model(dataset_name: str, folds: list[int] | None = None) -> tuple[Path, list] | None:
    """(model folder, folds with checkpoint_final.pth) of a real-only model: nnUNetTrainer_nnaug* first, then nnUNetTrainer."""
    from nnaug.dataset import results_root

    root = results_root() / dataset_name
    if not root.is_dir():
        return None
    candidates = []
    for model_dir in root.iterdir():
        if not model_dir.is_dir() or model_dir.name.count("__") != 2:
            continue
        trainer = model_dir.name.split("__")[0]
        if trainer_kind(trainer) != "real-only":
            continue
        available = []
        for fold_dir in sorted(model_dir.glob("fold_*")):
            text = fold_dir.name[len("fold_"):]
            fold = int(text) if text.isdigit() else text
            if (fold_dir / "checkpoint_final.pth").is_file() and (folds is None or fold in folds):
                available.append(fold)
        if not available:
            continue
        if trainer.startswith("nnUNetTrainer_nnaug"):
            rank = 0
        elif trainer == "nnUNetTrainer":
            rank = 1
        else:
            rank = 2
        candidates.append((rank, model_dir.name, model_dir, available))
    if not candidates:
        return None
    _, _, model_dir, available = min(candidates, key=lambda c: (c[0], c[1]))
    return model_dir, available


# ----------------------------------------------------------------------------- the report
def build_report(dataset: str, inception_weights: str | Path | None = None, folds: list[int] | None = None,
                 max_images: int | None = None, fidelity: bool | None = None, mask_check: bool = True,
                 device: str = "cpu", progress: bool = True) -> dict:
    """Compute the report (a JSON-able dict); :func:`write_report` writes it.

    ``fidelity``: None computes FID/KID when weights exist (``inception_weights`` or torch-fidelity's
    cache) and notes 'n/a' otherwise; True requires them (one-line error without); False skips.
    """
    from nnaug.dataset import load_raw_dataset
    from nnaug.metrics import mask_consistency, resolve_inception_weights, synthetic_fidelity
    from nnaug.pretraining import read_provenance

    real = load_raw_dataset(dataset)
    weights = None
    if fidelity is not False:
        weights = resolve_inception_weights(inception_weights, required=bool(fidelity) or inception_weights is not None)
    model = find_real_only_model(real.name, folds) if mask_check else None
    synthetic_rows = []
    for folder in find_synthetic_datasets(real.name):
        provenance = read_provenance(folder) or {}
        syn = load_raw_dataset(folder)
        row = {
            "dataset": folder.name, "ratio": provenance.get("ratio"), "num_cases": provenance.get("num_cases"),
            "generator": provenance.get("generator_model"), "generator_folder": provenance.get("generator"),
            "mode": provenance.get("mode"), "sampler": provenance.get("sampler"), "steps": provenance.get("steps"),
        }
        if weights is not None:
            if progress:
                print(f"nnaug: FID/KID {real.name} vs {folder.name} ...", file=sys.stderr, flush=True)
            row["fidelity"] = synthetic_fidelity(real, syn, weights, max_images)
            row["fid"], row["kid_mean"], row["kid_std"] = (row["fidelity"][k] for k in ("fid", "kid_mean", "kid_std"))
        else:
            row["fid"] = row["kid_mean"] = row["kid_std"] = None
            row["fidelity_note"] = "skipped (--no-fidelity)" if fidelity is False else NO_WEIGHTS_NOTE
        if model is not None:
            if progress:
                print(f"nnaug: mask consistency of {folder.name} with {model[0].name} folds {model[1]} ...", file=sys.stderr, flush=True)
            mc = mask_consistency(folder, model[0], folds=model[1], device=device, max_cases=max_images)
            row["mask_consistency_dice"] = mc["mean_dice"]
            row["mask_consistency"] = mc
        else:
            row["mask_consistency_dice"] = None
            row["mask_consistency_note"] = ("skipped" if not mask_check else
                                            f"n/a (no trained real-only model under $nnUNet_results/{real.name})")
        synthetic_rows.append(row)
    dice_rows = collect_dice(real.name, folds, real.dataset_json)
    return {
        "dataset": real.name, "num_real_cases": len(real.cases),
        "inception_weights": str(weights) if weights is not None else None,
        "mask_consistency_model": {"folder": str(model[0]), "folds": model[1]} if model is not None else None,
        "synthetic": synthetic_rows, "dice": dice_rows, "dice_summary": summarise_dice(dice_rows),
    }


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


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: dict) -> str:
    lines = [f"# nnaug report: {report['dataset']}", ""]
    lines += [f"Real dataset: {report['dataset']} ({report['num_real_cases']} cases). "
              f"Inception weights: {report['inception_weights'] or 'none'}.", ""]
    lines += ["## Synthetic datasets", ""]
    if report["synthetic"]:
        lines += ["| synthetic dataset | ratio | cases | generator | FID | KID (mean ± std) | mask-consistency Dice |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["synthetic"]:
            if r["fid"] is not None:
                fid, kid = f"{r['fid']:.2f}", f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
            else:
                fid, kid = r["fidelity_note"], "n/a"
            mc = _fmt(r["mask_consistency_dice"]) if r["mask_consistency_dice"] is not None else r["mask_consistency_note"]
            lines.append(f"| {r['dataset']} | {_fmt(r['ratio'], 2)} | {_fmt(r['num_cases'])} | {_fmt(r['generator'])} "
                         f"| {fid} | {kid} | {mc} |")
        fidelity = [r["fidelity"] for r in report["synthetic"] if "fidelity" in r]
        if fidelity:
            f0 = fidelity[0]
            lines += ["", f"FID/KID: {f0['extractor']}, real vs synthetic images at {f0['resolution'][0]}x"
                          f"{f0['resolution'][1]} (real resized to the synthetic size), KID subset size "
                          f"{f0['kid_subset_size']}."]
        if report["mask_consistency_model"]:
            m = report["mask_consistency_model"]
            lines += ["", f"Mask consistency: Dice of each synthetic mask with the prediction of "
                          f"{Path(m['folder']).name} (folds {', '.join(map(str, m['folds']))}) on its image."]
    else:
        lines.append(f"No synthetic dataset in $nnUNet_raw names {report['dataset']} as its source "
                     "(make one with `nnaug synthesize`).")
    lines += ["", "## Segmentation Dice (nnU-Net validation, summary.json)", ""]
    if report["dice"]:
        labels = sorted({k for r in report["dice"] for k in r["dice"]})
        lines += ["| trainer | kind | plans | config | fold | foreground Dice | " + " | ".join(labels) + " | pretrained on |",
                  "|---|---|---|---|---|---|" + "---|" * len(labels) + "---|"]
        for r in report["dice"]:
            lines.append(f"| {r['trainer']} | {r['kind']} | {r['plans']} | {r['configuration']} | {r['fold']} | "
                         f"{r['foreground_dice']:.4f} | " + " | ".join(_fmt(r['dice'].get(k)) for k in labels)
                         + f" | {_fmt(r['pretrained_on'])} |")
        lines += ["", "Mean over folds:", "",
                  "| trainer | kind | folds | foreground Dice | " + " | ".join(labels) + " |",
                  "|---|---|---|---|" + "---|" * len(labels)]
        for s in report["dice_summary"]:
            lines.append(f"| {s['trainer']} | {s['kind']} | {','.join(map(str, s['folds']))} | {s['foreground_dice']:.4f} | "
                         + " | ".join(_fmt(s['dice'].get(k)) for k in labels) + " |")
    else:
        lines.append(f"No validation summary.json under $nnUNet_results/{report['dataset']} yet "
                     "(train with nnUNetv2_train, e.g. -tr nnUNetTrainer_nnaug and -tr nnUNetTrainer_nnaugPretrainFinetune).")
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, path: Path) -> Path | None:
    """Foreground Dice per fold, one bar per trainer (real-only vs pretrain→fine-tune)."""
    if not report["dice"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({(r["trainer"], r["plans"], r["configuration"]) for r in report["dice"]},
                    key=lambda m: (trainer_kind(m[0]) != "real-only", m))
    folds = sorted({r["fold"] for r in report["dice"]}, key=str)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(folds) * len(models) + 2), 4), dpi=100)
    for i, model in enumerate(models):
        values = {r["fold"]: r["foreground_dice"] for r in report["dice"]
                  if (r["trainer"], r["plans"], r["configuration"]) == model}
        xs = [k + i * width for k, f in enumerate(folds) if f in values]
        ax.bar(xs, [values[f] for f in folds if f in values], width, label=f"{model[0]} ({trainer_kind(model[0])})")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(folds))])
    ax.set_xticklabels([f"fold {f}" for f in folds])
    ax.set_ylabel("foreground Dice (validation)")
    ax.set_ylim(0, 1)
    ax.set_title(report["dataset"])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_folder(dataset_name: str) -> Path:
    from nnaug.dataset import results_root

    return results_root() / "nnaug" / dataset_name


def write_report(report: dict) -> dict[str, Path]:
    from nnaug.dataset import write_json_atomic

    folder = report_folder(report["dataset"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md"}
    write_json_atomic(paths["json"], report)
    (folder / ".report.md.tmp").write_text(to_markdown(report))
    (folder / ".report.md.tmp").replace(paths["md"])
    png = bar_chart(report, folder / "report.png")
    if png is not None:
        paths["png"] = png
    return paths


def parse_folds(text: str | None) -> list | None:
    if text is None or not text.strip():
        return None
    folds = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            folds.append(int(part))
        elif part == "all":
            folds.append("all")
        else:
            raise NnaugError(f"--folds {text}: use fold numbers separated by commas, e.g. 0,1,2")
    return folds


def json_dumps(report: dict) -> str:
    return json.dumps(report, indent=2)
