"""``nnaug report``: fidelity of each synthetic dataset made from a real dataset, and the Dice it bought.

Reads only what exists: the raw datasets under ``$nnUNet_raw`` (the real one and every dataset
whose ``nnaug_provenance.json`` names it as source) and nnU-Net's validation ``summary.json`` files
under ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_<f>/``. Never trains.
Writes ``$nnUNet_results/nnaug/<Dataset>/report.{md,json,html,png}`` and the pictures report.html embeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.nnunet_results import cv_summary_path, find_real_only_model, model_folders, parse_fold, trainer_kind

NO_WEIGHTS_NOTE = "n/a (no Inception weights: --inception-weights FILE)"


# ----------------------------------------------------------------------------- discovering
def collect_dice(dataset_name: str, folds: list[int] | None = None, dataset_json: dict | None = None) -> list[dict]:
    """One row per ``<Trainer>__<Plans>__<config>/fold_<f>/validation/summary.json`` under ``$nnUNet_results/<dataset>``."""
    from nnaug.dataset import results_root
    from nnaug.io import load_json_or_none
    from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config

    from nnaug.nnunet_pretraining import TRAINING_RECORD

    root = results_root() / dataset_name
    from nnaug.experiment.evaluate import label_names

    names = label_names(dataset_json or {})
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


# ----------------------------------------------------------------------------- the report
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


def _warn(message: str) -> None:
    print(f"nnaug: warning: {message}", file=sys.stderr, flush=True)


def build_report(dataset: str, inception_weights: str | Path | None = None, folds: list[int] | None = None,
                 max_images: int | None = None, fidelity: bool | None = None, mask_check: bool = True,
                 device: str = "cpu", progress: bool = True, frd: bool | None = None,
                 frd_roi=("image", "mask"), frd_image_types=None, frd_features=None,
                 memorisation: bool = True, download: bool = True) -> dict:
    """Compute the report (a JSON-able dict); :func:`write_report` writes it.

    ``fidelity`` (FID/KID): None computes them when InceptionV3 weights can be had
    (``inception_weights``, torch-fidelity's cache, or a download into it) and otherwise prints one
    warning line and goes on; True requires them (one-line error without); False skips them.
    ``frd``: the same for FRD (needs the frd-score package, no weights); ``frd_roi``,
    ``frd_image_types``, ``frd_features`` as for :func:`nnaug.fidelity.synthetic_fidelity`.
    ``memorisation``: nearest-real distances of every synthetic case (:func:`nnaug.memorisation.memorisation_summary`).
    Mask realism and coverage (:mod:`nnaug.realism_report`) are computed for every synthetic set.
    The pictures (contact sheets, closest pairs) are written into :func:`report_folder` as they are made.
    """
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.provenance import synthetic_datasets_for
    from nnaug.realism_report import add_realism

    real = load_raw_dataset(dataset)
    warnings_: list[str] = []
    synthetic_folders = synthetic_datasets_for(real.name)
    weights, fid_note = _inception_weights(fidelity, inception_weights, download, bool(synthetic_folders), warnings_)
    out = report_folder(real.name)
    files = {}
    if synthetic_folders:
        sheet = _contact_sheet_png(real, None, out / "real_contact_sheet.png")
        files["real_contact_sheet"] = str(sheet) if sheet else None
    model = find_real_only_model(real.name, folds) if mask_check else None
    heldout = _sweep_test_dataset(real.name) if memorisation and synthetic_folders else None
    if heldout is not None:  # the sweep refused identical pixels unless --allow-overlap: say what it let through
        from nnaug.overlap import check_held_out

        check_held_out(real, heldout, allow_overlap=True, what="the held-out set", warn=lambda m: warnings_.append(
            f"memorisation's held-out set {heldout.name}: {m}"))
    validation = real_only_validation_dice(*model) if model is not None else None
    synthetic_rows = []
    for folder in synthetic_folders:
        syn = load_raw_dataset(folder)
        row = _synthetic_row(folder, syn, out)
        fidelity_result = synthetic_fidelity(
            real, syn, weights, max_images, fid=weights is not None, frd=frd, frd_roi=frd_roi,
            frd_image_types=frd_image_types, frd_features=frd_features, download=False, progress=progress,
            keep_features=True)
        add_realism(row, real, syn, fidelity_result, weights, out, max_images, progress, warnings_, _warn)
        _add_fidelity(row, fidelity_result, weights, fid_note, fidelity)
        if memorisation:
            _add_memorisation(row, syn, real, heldout, out, max_images, progress, warnings_)
        _add_mask_consistency(row, folder, real, model, validation, mask_check, device, max_images, progress)
        synthetic_rows.append(row)
    dice_rows = collect_dice(real.name, folds, real.dataset_json)
    _check_folds(real.name, folds, dice_rows, warnings_)
    sweep = _latest_sweep(real.name)
    model_info = None
    if model is not None:
        model_info = {"folder": str(model[0]), "folds": model[1], "validation_dice": validation["dice"],
                      "validation_folds": validation["folds"]}
    return {
        "dataset": real.name, "num_real_cases": len(real.cases),
        "inception_weights": str(weights) if weights is not None else None, "fid_note": fid_note,
        "mask_consistency_model": model_info, "warnings": warnings_, "files": files,
        "synthetic": synthetic_rows, "dice": dice_rows, "dice_summary": summarise_dice(dice_rows),
        "sweep": sweep,
    }


def _synthetic_row(folder: Path, syn, out: Path) -> dict:
    """A synthetic dataset's row: what its provenance says (filter record included) and its contact sheet."""
    from nnaug.dataset_images import synthetic_identifiers
    from nnaug.provenance import read_provenance

    provenance = read_provenance(folder) or {}
    row = {
        "dataset": folder.name, "ratio": provenance.get("ratio"), "num_cases": provenance.get("num_cases"),
        "generator": provenance.get("generator_model"), "generator_folder": provenance.get("generator"),
        "mode": provenance.get("mode"), "sampler": provenance.get("sampler"), "steps": provenance.get("steps"),
        "filter": provenance.get("filter"), "filter_consistency": provenance.get("consistency"),
    }
    sheet = folder / "contact_sheet.png"  # what nnaug synthesize wrote; made here for older datasets
    if not sheet.is_file():
        sheet = _contact_sheet_png(syn, synthetic_identifiers(syn), out / f"{folder.name}_contact_sheet.png")
    row["files"] = {"contact_sheet": str(sheet) if sheet else None}
    return row


def _check_folds(dataset_name: str, folds, dice_rows: list[dict], warnings_: list) -> None:
    """--folds that no run has: one warning line naming the folds there are."""
    missing = [f for f in folds or [] if f not in {r["fold"] for r in dice_rows}]
    if missing:
        message = (f"--folds: no validation summary.json for fold {', '.join(map(str, missing))} under "
                   f"$nnUNet_results/{dataset_name} (folds found: {_folds_found(dataset_name)})")
        _warn(message)
        warnings_.append(message)


def _inception_weights(fidelity, inception_weights, download: bool, needed: bool, warnings_: list):
    """(weights or None, why not): demanded or given weights must resolve (else an error); otherwise, when a
    synthetic set needs them, one warning line without them."""
    from nnaug.fidelity import inception_weights_or_reason

    if fidelity is False:
        return None, "skipped (--no-fidelity)"
    if fidelity or inception_weights is not None:  # demanded, or a file given: resolve now, errors are errors
        weights, reason = inception_weights_or_reason(inception_weights, download=download)
        if weights is None:
            raise NnaugError(reason + " (--fidelity demands FID/KID)")
        return weights, None
    if not needed:
        return None, None
    weights, reason = inception_weights_or_reason(None, download=download)
    if weights is None:
        message = ("FID/KID skipped: " + reason.replace("no InceptionV3 weights for FID/KID", "no InceptionV3 weights", 1)
                   + "; the other metrics go on (--fidelity makes this an error)")
        _warn(message)
        warnings_.append(message)
        return None, reason
    return weights, None


def _add_fidelity(row: dict, result: dict, weights, fid_note, fidelity) -> None:
    if weights is None:
        result["fid_note"] = fid_note or result.get("fid_note")
    row["fidelity"] = result
    row["frd"], row["frd_roi"] = result["frd"], result["frd_roi"]
    row["fid"], row["kid_mean"], row["kid_std"] = (result[k] for k in ("fid", "kid_mean", "kid_std"))
    if row["fid"] is None:
        row["fidelity_note"] = "skipped (--no-fidelity)" if fidelity is False else NO_WEIGHTS_NOTE
    for key in ("frd_note", "frd_mask_note"):
        if key in result:
            row[key] = result[key]


def _add_memorisation(row: dict, syn, real, heldout, out: Path, max_images, progress: bool, warnings_: list) -> None:
    from nnaug.memorisation import memorisation_summary

    if progress:
        print(f"nnaug: memorisation {syn.name} vs {real.name} ...", file=sys.stderr, flush=True)
    pairs_png = out / f"{syn.name}_memorisation.png"
    mem = memorisation_summary(syn, real, heldout_raw=heldout, top=8, max_cases=max_images, out_png=pairs_png)
    row["memorisation"] = mem
    row["files"]["memorisation"] = str(pairs_png)
    if mem["alarm"]:
        message = (f"{mem['n_flagged']} of {mem['n_synthetic']} synthetic images of {syn.name} are more "
                   f"similar to a real training image than {mem['percentile']:g} % of {_null_name(mem)} are "
                   f"({mem['image_metric']} > {mem['threshold']:.3f}; {mem['calibration']}; "
                   f"chance alone: about {mem['expected_by_chance']:.1f}): possible copies, see the memorisation pairs")
        _warn(message)
        warnings_.append(message)


def _add_mask_consistency(row: dict, folder: Path, real, model, validation, mask_check: bool, device: str,
                          max_images, progress: bool) -> None:
    from nnaug.mask_consistency import mask_consistency

    if model is None:
        row["mask_consistency_dice"] = row["mask_consistency_ratio"] = None
        row["mask_consistency_note"] = ("skipped" if not mask_check else
                                        f"n/a (no trained real-only model under $nnUNet_results/{real.name})")
        return
    if progress:
        print(f"nnaug: mask consistency of {folder.name} with {model[0].name} folds {model[1]} ...", file=sys.stderr,
              flush=True)
    mc = mask_consistency(folder, model[0], folds=model[1], device=device, max_cases=max_images)
    row["mask_consistency_dice"] = mc["mean_dice"]
    row["mask_consistency"] = mc
    if validation["dice"]:
        row["mask_consistency_ratio"] = mc["mean_dice"] / validation["dice"]
    else:
        row["mask_consistency_ratio"] = None
        row["mask_consistency_ratio_note"] = f"n/a (no validation summary.json for {model[0].name} folds {model[1]})"


def _folds_found(dataset_name: str) -> str:
    found = sorted({r["fold"] for r in collect_dice(dataset_name)}, key=str)
    return ", ".join(map(str, found)) or "none"


def _latest_sweep(dataset_name: str) -> dict | None:
    """The latest finished sweep (markdown, picture, and its paired differences) or None."""
    import json

    from nnaug.experiment.render import latest_outputs, latest_sweep_markdown

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


def _sweep_test_dataset(dataset_name: str):
    """The latest sweep's held-out test dataset (real cases no generator saw), to calibrate memorisation, or None."""
    from nnaug.dataset import load_raw_dataset

    sweep = _latest_sweep(dataset_name) or {}
    name = (sweep.get("evaluation") or {}).get("test_dataset")
    if not name:
        return None
    try:
        return load_raw_dataset(name)
    except NnaugError:
        return None


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


# ----------------------------------------------------------------------------- text
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_frd(value, note: str | None = None) -> str:
    if value is None:
        return note or "n/a"
    if value == float("-inf"):
        return "−∞ (identical features)"
    return f"{value:.2f}"


def _fid_cells(r: dict) -> tuple[str, str]:
    if r["fid"] is not None:
        return f"{r['fid']:.2f}", f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
    return r.get("fidelity_note") or "n/a", "n/a"


def _mc_cells(r: dict) -> tuple[str, str]:
    """(mask consistency, its ratio to the real-only model's validation Dice) as table cells; the long
    reasons stay in report.json and the notes under the table."""
    if r["mask_consistency_dice"] is None:
        note = r.get("mask_consistency_note", "n/a")
        return ("n/a (no real-only model)" if "no trained real-only model" in note else note), "n/a"
    ratio = r.get("mask_consistency_ratio")
    return f"{r['mask_consistency_dice']:.4f}", f"{ratio:.2f}" if ratio is not None else "n/a (no validation Dice)"


def memorisation_line(r: dict) -> str:
    m = r.get("memorisation")
    if not m:
        return "not computed"
    q = m["synthetic_quantiles"]
    text = f"similarity to the nearest real training image ({m['image_metric']}): max {q['max']:.3f}, median {q['median']:.3f}; "
    if m["threshold"] is None:
        return text + "threshold n/a (fewer than 2 real cases)"
    nq = m["null_quantiles"]
    chance = f"about {m['expected_by_chance']:.1f} expected by chance"
    verdict = (f"**{m['n_flagged']} of {m['n_synthetic']} above the threshold ({chance}) — possible copies**"
               if m["alarm"] else f"{m['n_flagged']} of {m['n_synthetic']} above the threshold ({chance}): no more "
               "than chance, no sign of copies")
    return (text + f"{_null_name(m)} ({m['calibration']}): {m['percentile']:g}th percentile "
            f"{m['threshold']:.3f} (the threshold), median {nq['median']:.3f}; {verdict}")


def _consistency_values(r: dict) -> tuple[list[float], str] | None:
    """Per-case mask consistency of a synthetic set: the report's own (real-only model), else what the
    filtering of ``nnaug synthesize --min-consistency`` recorded in the provenance."""
    mc = r.get("mask_consistency")
    if isinstance(mc, dict) and mc.get("per_case"):
        return [float(v) for v in mc["per_case"].values()], f"Dice with {Path(mc.get('model') or 'the real-only model').name}"
    if r.get("filter_consistency"):
        model = (r.get("filter") or {}).get("model")
        return ([float(v) for v in r["filter_consistency"].values()],
                "recorded by the filter" + (f" ({Path(str(model)).name})" if model else ""))
    return None


def consistency_line(r: dict) -> str | None:
    """Mean and spread of per-case mask consistency, and the acceptance rate when the set was filtered."""
    parts = []
    values = _consistency_values(r)
    if values:
        v = np.asarray(values[0])
        parts.append(f"{len(v)} cases, median {np.median(v):.3f}, 10th percentile {np.percentile(v, 10):.3f} "
                     f"({values[1]})")
    f = r.get("filter")
    if isinstance(f, dict):
        try:
            parts.append(f"filtered with --min-consistency {float(f['min_consistency']):g}: kept {f['kept']} of "
                         f"{f['candidates_tried']} candidates, acceptance rate {100 * float(f['acceptance_rate']):.1f} %")
        except (KeyError, TypeError, ValueError):
            parts.append("filtered (the provenance's filter record is incomplete)")
    return "; ".join(parts) or None


def _null_name(m: dict) -> str:
    """What the threshold was calibrated on, in words."""
    return ("held-out real images the generator never saw" if "held-out" in m.get("calibration", "")
            else "real training images against the parts of the training set they are not in")


def _mem_cell(m: dict | None) -> str:
    if not m:
        return "—"
    return (f"{m['synthetic_quantiles']['max']:.3f} / {_fmt(m['threshold'], 3)}"
            + (f" ({m['n_flagged']} above)" if m["n_flagged"] else ""))


def dice_difference_line(report: dict) -> tuple[str, str] | None:
    """(label, value) of the pretrain→fine-tune − real-only Dice difference: the latest sweep's paired difference
    with its 95 % CI when there is one, else the best models' difference, marked as runs without an interval."""
    sweep = report.get("sweep") or {}
    diffs = [d for d in sweep.get("differences") or [] if d.get("foreground", {}).get("mean") is not None]
    if diffs:
        best = max(diffs, key=lambda d: d["foreground"]["mean"])
        fg = best["foreground"]
        return (f"Dice difference {best['arm']} − real-only (latest sweep, {len(sweep.get('seeds') or [])} seeds, "
                f"paired 95 % CI)", f"{fg['mean']:+.4f} [{fg['low']:+.4f}, {fg['high']:+.4f}]")
    real_only = [s for s in report["dice_summary"] if s["kind"] == "real-only"]
    tuned = [s for s in report["dice_summary"] if s["kind"] == "pretrain→fine-tune"]
    if not (real_only and tuned):
        return None
    a, b = max(tuned, key=lambda s: s["foreground_dice"]), max(real_only, key=lambda s: s["foreground_dice"])
    runs = min(len(a["folds"]), len(b["folds"]))
    return (f"Dice difference pretrain→fine-tune − real-only: {runs} run{'s' if runs > 1 else ''} per arm, no interval "
            f"(run `nnaug sweep` for one)", f"{a['foreground_dice'] - b['foreground_dice']:+.4f}")


def _md_synthetic_notes(report: dict) -> list[str]:
    """report.md's memorisation and mask consistency lines (and picture links) per synthetic dataset."""
    lines = []
    for r in report["synthetic"]:
        if r.get("memorisation"):
            lines += ["", f"Memorisation of {r['dataset']}: {memorisation_line(r)}."]
            if r.get("files", {}).get("memorisation"):
                lines += ["", f"![closest pairs of {r['dataset']}]({Path(r['files']['memorisation']).name}) "
                              f"![nearest-real similarities of {r['dataset']}]({Path(r['files']['nearest']).name})"]
    for r in report["synthetic"]:
        line = consistency_line(r)
        if line:
            lines += ["", f"Mask consistency of {r['dataset']}: {line}."]
            if r.get("files", {}).get("consistency"):
                lines += ["", f"![mask consistency of {r['dataset']}]({Path(r['files']['consistency']).name})"]
    return lines


def to_markdown(report: dict) -> str:
    from nnaug.realism_report import markdown_lines as realism_markdown

    lines = [f"# nnaug report: {report['dataset']}", ""]
    lines += [f"Real dataset: {report['dataset']} ({report['num_real_cases']} cases). "
              f"Inception weights: {report['inception_weights'] or 'none'}.", ""]
    for w in report.get("warnings", []):
        lines += [f"> **warning:** {w}", ""]
    lines += ["## Synthetic datasets", ""]
    if report["synthetic"]:
        lines += ["| synthetic dataset | ratio | cases | generator | FRD (image) | FRD (mask ROI) | FID | KID (mean ± std) "
                  "| mask consistency | MC ÷ real-only val. Dice | max similarity to real / copy threshold |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["synthetic"]:
            fid, kid = _fid_cells(r)
            mc, ratio = _mc_cells(r)
            mem = _mem_cell(r.get("memorisation"))
            lines.append(f"| {r['dataset']} | {_fmt(r['ratio'], 2)} | {_fmt(r['num_cases'])} | {_fmt(r['generator'])} "
                         f"| {fmt_frd(r.get('frd'), r.get('frd_note'))} | {fmt_frd(r.get('frd_roi'), r.get('frd_mask_note'))} "
                         f"| {fid} | {kid} | {mc} | {ratio} | {mem} |")
        lines += [""] + _method_notes(report)
        lines += _md_synthetic_notes(report)
        lines += realism_markdown(report)
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
        difference = dice_difference_line(report)
        if difference:
            lines += ["", f"{difference[0]}: {difference[1]}."]
    else:
        lines.append(f"No validation summary.json under $nnUNet_results/{report['dataset']} yet "
                     "(train with nnUNetv2_train, e.g. -tr nnUNetTrainer_nnaug and -tr nnUNetTrainer_nnaugPretrainFinetune).")
    lines += ["", "## Latest sweep (`nnaug sweep`)", ""]
    sweep = report.get("sweep")
    if sweep:
        # The sweep's own sweep.md, one heading level down; its picture sits next to report.md.
        body = sweep["markdown"].splitlines()
        lines += [("#" + line) if line.startswith("#") and not line.startswith("# nnaug sweep") else line
                  for line in body if not line.startswith("# nnaug sweep")]
        if sweep.get("png"):  # sweep.png lies in the report's own folder
            lines += ["", f"![sweep: Dice vs ratio]({Path(sweep['png']).name})"]
    else:
        lines.append(f"No finished sweep of {report['dataset']} yet (`nnaug sweep {report['dataset']} --ratios 1,5 --seeds 3`).")
    return "\n".join(lines) + "\n"


def markdown_to_html(text: str) -> str:
    """Markdown nnaug wrote (the sweep's sweep.md) as HTML, by Python-Markdown with its tables extension;
    headings one level down (they sit under the report's own), pictures left out (the page embeds them)."""
    import markdown

    lines = [("#" + line) if line.startswith("#") else line for line in text.splitlines() if not line.startswith("![")]
    body = markdown.markdown("\n".join(lines), extensions=["tables"], output_format="html")
    return body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def _method_notes(report: dict) -> list[str]:
    """One paragraph per metric: how it was computed here (shared by report.md and report.html)."""
    notes = []
    frd = next((r["fidelity"]["frd_details"] for r in report["synthetic"] if r.get("fidelity", {}).get("frd_details")), None)
    if frd:
        d = next(iter(frd.values()))
        res = next(r["fidelity"]["resolution"] for r in report["synthetic"] if r.get("fidelity", {}).get("frd_details"))
        colour = {"rgb": "8-bit RGB PNGs (frd-score reads them as luminance)", "gray": "8-bit grayscale PNGs"}
        notes.append(f"FRD: Fréchet Radiomics Distance ({d['package']}, FRD{d['version']}, computed by frd_score.compute_frd "
                     f"with its defaults on {colour.get(d.get('colour'), '8-bit PNGs')} at {res[0]}x{res[1]}: "
                     f"the same number frd-score gives on a folder of those files). The value is "
                     f"{d.get('log', 'log(d²)')}, the natural log of the squared Fréchet distance of z-scored radiomic "
                     f"features (frd-score's default; the paper's log(d) is half of it); image types "
                     f"{', '.join(d['image_types'])}, feature classes {', '.join(d['features'])}; real training images "
                     f"as reference, {d['n_a']} real vs {d['n_b']} synthetic images (FRD depends on the set sizes); "
                     "*image*: the whole image is the ROI, *mask ROI*: the mask's foreground. Lower is better; compare "
                     "only values made with the same settings and set sizes.")
    fidelity = [r["fidelity"] for r in report["synthetic"] if r.get("fid") is not None]
    if fidelity:
        f0 = fidelity[0]
        notes.append(f"FID/KID: {f0['extractor']}, real vs synthetic images at {f0['resolution'][0]}x"
                     f"{f0['resolution'][1]} (real resized to the synthetic size), KID subset size {f0['kid_subset_size']}.")
    elif report.get("fid_note"):
        warned = any(w.startswith("FID/KID skipped") for w in report.get("warnings", []))
        notes.append("FID/KID: not computed, no InceptionV3 weights (see the warning above for where to put them)."
                     if warned else f"FID/KID: {report['fid_note']}.")
    m = report.get("mask_consistency_model")
    if m:
        val = (f"; its own validation foreground Dice is {m['validation_dice']:.4f} (folds "
               f"{', '.join(map(str, m['validation_folds']))}), and `MC ÷ real-only val. Dice` is mask consistency divided by it "
               "(about 1: the synthetic pairs are as consistent as real held-out pairs are for this model; below 1: "
               "the images show their masks less clearly; above 1: easier for this model than its real validation "
               "cases, e.g. less varied images, or few validation cases)"
               if m.get("validation_dice") else "")
        notes.append(f"Mask consistency (MC): Dice of each synthetic mask with the prediction of {Path(m['folder']).name} "
                     f"(folds {', '.join(map(str, m['folds']))}) on its image{val}.")
    else:
        missing = next((r["mask_consistency_note"] for r in report["synthetic"] if r.get("mask_consistency_note")), None)
        if missing:
            notes.append(f"Mask consistency: {missing}.")
    mem = next((r["memorisation"] for r in report["synthetic"] if r.get("memorisation")), None)
    if mem:
        notes.append(f"Memorisation: similarity of each synthetic image to its most similar real training image "
                     f"({mem['image_metric']}: normalised cross-correlation of the grayscale images minus their blur, "
                     "best over flips and small shifts; blur does not make images similar, copies score near 1); "
                     f"copy threshold = the {mem['percentile']:g}th percentile of the same similarity for "
                     f"{_null_name(mem)} ({mem['calibration']}).")
    return [n for note in notes for n in (note, "")][:-1]


# ----------------------------------------------------------------------------- pictures
def _figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas directly: no pyplot, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(save, path: Path) -> Path:
    """``save(tmp_path)`` then rename onto ``path``: a reader never sees half a PNG."""
    from nnaug.io import write_atomic

    write_atomic(path, save)
    return Path(path)


def bar_chart(report: dict, path: Path) -> Path | None:
    """Foreground Dice per fold, one bar per trainer (real-only vs pretrain→fine-tune)."""
    if not report["dice"]:
        return None
    models = sorted({(r["trainer"], r["plans"], r["configuration"]) for r in report["dice"]},
                    key=lambda m: (trainer_kind(m[0]) != "real-only", m))
    folds = sorted({r["fold"] for r in report["dice"]}, key=str)
    width = 0.8 / len(models)
    fig = _figure(max(6.0, 1.1 * len(folds) * len(models) + 2), 4.6)
    ax = fig.add_subplot()
    for i, model in enumerate(models):
        values = {r["fold"]: r["foreground_dice"] for r in report["dice"]
                  if (r["trainer"], r["plans"], r["configuration"]) == model}
        xs = [k + i * width for k, f in enumerate(folds) if f in values]
        bars = ax.bar(xs, [values[f] for f in folds if f in values], width, label=f"{model[0]} ({trainer_kind(model[0])})")
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(folds))])
    ax.set_xticklabels([f"fold {f}" for f in folds])
    ax.set_ylabel("foreground Dice (validation)")
    ax.set_ylim(0, 1.08)
    ax.set_title(f"{report['dataset']}: validation foreground Dice", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save_atomic(fig.savefig, path)


def nearest_histogram(memorisation: dict, title: str, path: Path) -> Path:
    """Histograms of synthetic→most-similar-real and unseen-real→most-similar-training similarities, with the threshold."""
    syn = np.asarray(memorisation["synthetic_similarity"], np.float64)
    null = np.asarray(memorisation["null_similarity"], np.float64)
    fig = _figure(5.2, 3.9)
    ax = fig.add_subplot()
    both = np.concatenate([syn, null]) if len(null) else syn
    bins = np.linspace(min(0.0, float(both.min())), 1.0, 34)
    if len(null):
        unseen = ("held-out real" if "held-out" in memorisation.get("calibration", "")
                  else "training, cross-fit (each vs the other parts)")
        ax.hist(null, bins=bins, alpha=0.55, color="#4c72b0", label=f"{unseen} ({len(null)})")
    ax.hist(syn, bins=bins, alpha=0.55, color="#dd8452", label=f"synthetic ({len(syn)})")
    if memorisation["threshold"] is not None:
        ax.axvline(memorisation["threshold"], color="#c44e52", ls="--", lw=1.2,
                   label=f"copy threshold ({memorisation['percentile']:g}th percentile of the blue) "
                         f"{memorisation['threshold']:.3f}")
    ax.set_xlabel(f"similarity to the most similar training image\n({memorisation['image_metric']})", fontsize=9)
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=1, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save_atomic(fig.savefig, path)


def consistency_histogram(r: dict, path: Path) -> Path | None:
    """Per-case mask consistency of one synthetic set (and the filter's threshold when it was filtered)."""
    found = _consistency_values(r)
    if not found:
        return None
    values, source = np.asarray(found[0]), found[1]
    fig = _figure(5.2, 3.4)
    ax = fig.add_subplot()
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#55a868", alpha=0.8)
    ax.axvline(float(np.median(values)), color="#333333", lw=1.2, label=f"median {np.median(values):.3f}")
    f = r.get("filter") if isinstance(r.get("filter"), dict) else {}
    if f.get("min_consistency") is not None:
        rate = f.get("acceptance_rate")
        ax.axvline(float(f["min_consistency"]), color="#c44e52", ls="--", lw=1.2,
                   label=f"--min-consistency {float(f['min_consistency']):g}"
                         + (f" (acceptance {100 * float(rate):.1f} %)" if rate is not None else ""))
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("mask consistency per case (Dice)", fontsize=9)
    ax.set_ylabel("cases")
    ax.set_title(f"{r['dataset']}: {len(values)} cases\n{source}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save_atomic(fig.savefig, path)


def _contact_sheet_png(raw, identifiers: list[str] | None, path: Path, max_cases: int = 16) -> Path | None:
    from nnaug.dataset_images import load_cases, select_cases
    from nnaug.visualize import contact_sheet

    cases = select_cases(raw, identifiers)[:max_cases]
    if not cases:
        return None
    _, first_label, _ = raw.read_case(cases[0])
    side = min(128, int(max(first_label.shape)))
    images, labels = load_cases(raw, cases, (side, side))
    return _save_atomic(lambda tmp: contact_sheet(np.stack(images), np.stack(labels), tmp), path)


def report_folder(dataset_name: str) -> Path:
    from nnaug.dataset import results_root

    return results_root() / "nnaug" / dataset_name


def write_report(report: dict) -> dict[str, Path]:
    """Write report.{json,md,html,png} and the per-dataset pictures into ``$nnUNet_results/nnaug/<Dataset>/``."""
    from nnaug.io import json_safe, write_json_atomic, write_text_atomic

    folder = report_folder(report["dataset"])
    folder.mkdir(parents=True, exist_ok=True)
    for row in report["synthetic"]:
        files = row.setdefault("files", {})
        if row.get("memorisation"):
            files["nearest"] = str(nearest_histogram(row["memorisation"], "similarity to the training images",
                                                     folder / f"{row['dataset']}_nearest.png"))
        histogram = consistency_histogram(row, folder / f"{row['dataset']}_mask_consistency.png")
        if histogram is not None:
            files["consistency"] = str(histogram)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    png = bar_chart(report, folder / "report.png")
    if png is not None:
        paths["png"] = png
        report["files"] = {**report.get("files", {}), "bar_chart": str(png)}
    write_json_atomic(paths["json"], json_safe(report))
    for key, text in (("md", to_markdown(report)), ("html", to_html(report))):
        write_text_atomic(paths[key], text)
    return paths


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:32px 0 10px;border-bottom:2px solid #d9dde5;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 8px}
.sub{color:#5b6475;margin:0 0 16px;font-size:14px}
.warn{background:#fff4d6;border-left:5px solid #e0a100;padding:8px 12px;margin:8px 0;font-size:14px;border-radius:3px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px 18px;margin:14px 0}
table{border-collapse:collapse;font-size:13px;width:100%;background:#fff}
th,td{border:1px solid #dfe3ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.real-only td:first-child{border-left:4px solid #4c72b0} tr.finetune td:first-child{border-left:4px solid #dd8452}
.note{color:#5b6475;font-size:12.5px;margin:6px 0}
.na{color:#8a92a3;font-size:12px}
.bad{color:#b3261e;font-weight:600} .good{color:#1e7b34}
img{max-width:100%;height:auto;image-rendering:pixelated;border:1px solid #dfe3ea;border-radius:4px;background:#fff}
.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start} .row>div{flex:1 1 300px;min-width:0}
.cap{font-size:12px;color:#5b6475;margin:2px 0 8px}
.scroll{overflow-x:auto} .chart{max-width:640px;margin:14px 0}
.alert{border-left:5px solid #b3261e;background:#fdecea;padding:6px 10px;font-size:14px;border-radius:3px}
.glance{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.kpi{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:10px 16px;min-width:150px}
.kpi .v{font-size:22px;font-weight:650} .kpi .k{font-size:12px;color:#5b6475}
"""


def _img_tag(path, alt: str) -> str:
    import base64
    import html

    if not path or not Path(path).is_file():
        return f'<p class="na">({html.escape(alt)}: no picture)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _at_a_glance(report: dict) -> list[tuple[str, str]]:
    """A few headline numbers: Dice real-only vs pretrain→fine-tune, and each synthetic dataset's FRD and MC."""
    items = []
    real_only = [s["foreground_dice"] for s in report["dice_summary"] if s["kind"] == "real-only"]
    tuned = [s["foreground_dice"] for s in report["dice_summary"] if s["kind"] == "pretrain→fine-tune"]
    if real_only:
        items.append(("real-only validation Dice (best model)", f"{max(real_only):.4f}"))
    if tuned:
        items.append(("pretrain→fine-tune validation Dice (best model)", f"{max(tuned):.4f}"))
    difference = dice_difference_line(report)
    if difference:
        items.append((difference[0].replace("`", ""), difference[1]))
    for r in report["synthetic"][:3]:
        if r.get("frd") is not None:
            items.append((f"FRD (image) {r['dataset']}", fmt_frd(r["frd"])))
        if r.get("mask_consistency_dice") is not None:
            items.append((f"mask consistency {r['dataset']}", f"{r['mask_consistency_dice']:.3f}"))
        if isinstance(r.get("filter"), dict) and r["filter"].get("acceptance_rate") is not None:
            items.append((f"acceptance rate of the consistency filter {r['dataset']}",
                          f"{100 * float(r['filter']['acceptance_rate']):.1f} %"))
    return items


def to_html(report: dict) -> str:
    """report.html: one self-contained page (CSS inline, pictures embedded as base64 PNG)."""
    import datetime
    import html

    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>nnaug report: {e(report['dataset'])}</title>", f"<style>{_CSS}</style></head><body><main>",
           f"<h1>nnaug report: {e(report['dataset'])}</h1>",
           f'<p class="sub">{report["num_real_cases"]} real training cases · {len(report["synthetic"])} synthetic '
           f'dataset(s) · {len(report["dice"])} validation summaries · written '
           f'{datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}</p>']
    for w in report.get("warnings", []):
        out.append(f'<div class="warn"><b>warning:</b> {e(w)}</div>')

    glance = _at_a_glance(report)
    if glance:
        out.append('<div class="glance">' + "".join(
            f'<div class="kpi"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>' for k, v in glance) + "</div>")
    out += _html_synthetic_table(report) + _html_dice(report) + _html_sweep(report)
    for r in report["synthetic"]:
        out += _html_synthetic_section(r, report)
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _cell(text: str, num: bool = False) -> str:
    import html

    cls = "na" if text.startswith(("n/a", "skipped", "—")) else ("num" if num else "")
    return f'<td class="{cls}">{html.escape(text)}</td>'


def _html_synthetic_table(report: dict) -> list[str]:
    import html

    e, cell = html.escape, _cell
    out = ["<h2>Synthetic datasets</h2>"]
    if report["synthetic"]:
        out.append('<div class="card"><div class="scroll"><table><tr><th>synthetic dataset</th><th>ratio</th><th>cases</th>'
                   "<th>generator</th><th>FRD<br>(image)</th><th>FRD<br>(mask ROI)</th><th>FID</th><th>KID<br>(mean ± std)</th>"
                   "<th>mask<br>consistency</th><th>MC ÷ real-only<br>val. Dice</th><th>max similarity to real<br>/ copy threshold</th></tr>")
        for r in report["synthetic"]:
            fid, kid = _fid_cells(r)
            if r["fid"] is None:
                fid = "n/a (no weights)" if fid.startswith("n/a") else fid
            mc, ratio = _mc_cells(r)
            m = r.get("memorisation")
            if m:
                mem = f"{m['synthetic_quantiles']['max']:.3f} / {_fmt(m['threshold'], 3)}"
                mem_cell = (f'<td class="num {"bad" if m["alarm"] else "good"}">{e(mem)}'
                            + (f"<br>{m['n_flagged']} above" if m["n_flagged"] else "<br>none above") + "</td>")
            else:
                mem_cell = cell("—")
            gen = f"{_fmt(r['generator'])}" + (f", {r['sampler']} {r['steps']}" if r.get("sampler") else "")
            out.append("<tr>" + cell(r["dataset"]) + cell(_fmt(r["ratio"], 2), True) + cell(_fmt(r["num_cases"]), True)
                       + cell(gen) + cell(fmt_frd(r.get("frd"), r.get("frd_note")), True)
                       + cell(fmt_frd(r.get("frd_roi"), r.get("frd_mask_note")), True) + cell(fid, True)
                       + cell(kid, True) + cell(mc, True) + cell(ratio, True) + mem_cell + "</tr>")
        out.append("</table></div>")
        out += [f'<p class="note">{e(n).replace("*image*", "<i>image</i>").replace("*mask ROI*", "<i>mask ROI</i>").replace("`", "")}</p>'
                for n in _method_notes(report) if n]
        out.append("</div>")
    else:
        out.append(f'<p class="note">No synthetic dataset in $nnUNet_raw names {e(report["dataset"])} as its source '
                   "(make one with <code>nnaug synthesize</code>).</p>")
    return out


def _html_dice(report: dict) -> list[str]:
    import html

    e, cell = html.escape, _cell
    out = ["<h2>Segmentation Dice (nnU-Net validation)</h2>"]
    if report["dice"]:
        labels = sorted({k for r in report["dice"] for k in r["dice"]})
        out.append('<div class="card">')
        out.append("<h3>Mean over folds</h3><div class=\"scroll\"><table><tr><th>trainer</th><th>kind</th><th>folds</th>"
                   "<th>foreground Dice</th>" + "".join(f"<th>{e(k)}</th>" for k in labels) + "</tr>")
        for s_ in report["dice_summary"]:
            klass = "finetune" if s_["kind"] != "real-only" else "real-only"
            out.append(f'<tr class="{klass}">' + cell(s_["trainer"]) + cell(s_["kind"]) + cell(",".join(map(str, s_["folds"])))
                       + cell(f"{s_['foreground_dice']:.4f}", True)
                       + "".join(cell(_fmt(s_["dice"].get(k)), True) for k in labels) + "</tr>")
        out.append('</table></div><div class="chart">')
        out.append(_img_tag(report.get("files", {}).get("bar_chart"), "foreground Dice per fold"))
        out.append('<p class="cap">Validation foreground Dice per fold (nnU-Net summary.json).</p></div>')
        out.append("<h3>Per fold</h3><div class=\"scroll\"><table><tr><th>trainer</th><th>kind</th><th>plans, config</th>"
                   "<th>fold</th><th>foreground Dice</th>" + "".join(f"<th>{e(k)}</th>" for k in labels)
                   + "<th>pretrained on</th></tr>")
        for r in report["dice"]:
            klass = "finetune" if r["kind"] != "real-only" else "real-only"
            out.append(f'<tr class="{klass}">' + cell(r["trainer"]) + cell(r["kind"]) + cell(f"{r['plans']}, {r['configuration']}")
                       + cell(str(r["fold"]), True) + cell(f"{r['foreground_dice']:.4f}", True)
                       + "".join(cell(_fmt(r["dice"].get(k)), True) for k in labels)
                       + cell(_fmt(r["pretrained_on"])) + "</tr>")
        out.append('</table></div><p class="cap">Rows edged blue: real-only; orange: pretrain→fine-tune.</p></div>')
    else:
        out.append(f'<p class="note">No validation summary.json under $nnUNet_results/{e(report["dataset"])} yet.</p>')
    return out


def _html_sweep(report: dict) -> list[str]:
    import html

    e = html.escape
    out = ["<h2>Latest sweep (<code>nnaug sweep</code>)</h2>"]
    sweep = report.get("sweep")
    if sweep:
        body = "\n".join(line for line in sweep["markdown"].splitlines() if not line.startswith("# nnaug sweep"))
        out.append('<div class="card">' + markdown_to_html(body))
        if sweep.get("png"):
            out.append('<div class="chart">' + _img_tag(sweep["png"], "sweep: Dice vs ratio") + "</div>")
        out.append("</div>")
    else:
        out.append(f'<p class="note">No finished sweep of {e(report["dataset"])} yet '
                   f"(<code>nnaug sweep {e(report['dataset'])} --ratios 1,5 --seeds 3</code>).</p>")
    return out


def _html_synthetic_section(r: dict, report: dict) -> list[str]:
    """report.html's section of one synthetic dataset: contact sheets, memorisation, mask consistency."""
    import html

    e = html.escape
    files = r.get("files", {})
    out = []
    out.append(f"<h2>{e(r['dataset'])}</h2><div class=\"card\"><div class=\"row\"><div>")
    out.append(f"<h3>Synthetic pairs (image | mask overlay)</h3>{_img_tag(files.get('contact_sheet'), 'synthetic contact sheet')}")
    out.append("</div><div>")
    out.append(f"<h3>Real training pairs</h3>{_img_tag(report.get('files', {}).get('real_contact_sheet'), 'real contact sheet')}")
    out.append("</div></div>")
    m = r.get("memorisation")
    if m:
        out.append("<h3>Memorisation</h3>")
        line = memorisation_line(r).replace("**", "")
        out.append(f'<p class="{"alert" if m["alarm"] else "note"}">{e(line)}.</p>')
        out.append('<div class="row"><div style="flex:1 1 560px">')
        out.append(_img_tag(files.get("memorisation"), "closest pairs"))
        out.append('<p class="cap">The most copy-like synthetic cases: synthetic image | its mask || most similar '
                   "real training image | its mask (top row most similar).</p></div><div>")
        out.append(_img_tag(files.get("nearest"), "nearest-real similarities"))
        out.append("<table><tr><th>synthetic</th><th>most similar real</th><th>NCC</th><th>match</th>"
                   "<th>mask 1−Dice</th></tr>")
        for row in m["rows"][:8]:
            flag = ' class="bad"' if row["flagged"] else ""
            out.append(f"<tr{flag}><td>{e(row['case'])}</td><td>{e(row['nearest_by_image'])}</td>"
                       f"<td class=\"num\">{row['image_similarity']:.3f}</td><td>{e(row['match'])}</td>"
                       f"<td class=\"num\">{row['mask_distance']:.3f}</td></tr>")
        out.append("</table></div></div>")
    line = consistency_line(r)
    if line:
        out.append(f'<h3>Mask consistency</h3><p class="note">{e(line)}.</p>')
        if files.get("consistency"):
            out.append('<div class="chart">' + _img_tag(files["consistency"], "per-case mask consistency") + "</div>")
    from nnaug.realism_report import html_lines as realism_html

    out += realism_html(r, _img_tag)
    out.append("</div>")
    return out
