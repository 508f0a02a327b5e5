"""Evaluating a sweep: per-case Dice of every run (CV summary.json, or a held-out set through nnU-Net's
predictor and ``compute_metrics``), the synthetic sets' fidelity, and the statistics of :mod:`nnaug.stats`."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from nnaug import nnunet_results
from nnaug.errors import NnaugError
from nnaug.experiment.plan import ARM_RECORD, SYNTHETIC_KINDS, Arm, SweepSetup
from nnaug.experiment.synthetic_sets import SyntheticSets
from nnaug.io import json_safe, load_json_or_none


def per_case_from_metrics(metric_per_case: list[dict], names: dict[str, str], file_ending: str) -> dict:
    """nnU-Net's ``metric_per_case`` -> ``{case: {"labels": {name: Dice or None}, "foreground": Dice}}``.

    A label absent from both the reference and the prediction has no Dice (None; nnU-Net writes NaN)
    and is left out of the case's foreground Dice (the mean over its labels); a case where every label
    is absent from both counts as foreground Dice 1.0 (the empty prediction is right).
    """
    out = {}
    for entry in metric_per_case:
        case = os.path.basename(entry["reference_file"])
        case = case[:-len(file_ending)] if case.endswith(file_ending) else case
        labels = {}
        for key, name in names.items():
            value = entry.get("metrics", {}).get(key, {}).get("Dice")
            labels[name] = None if value is None or not math.isfinite(float(value)) else float(value)
        present = [v for v in labels.values() if v is not None]
        out[case] = {"labels": labels, "foreground": float(np.mean(present)) if present else 1.0}
    return out


def cv_results(model_dir: Path, folds: list, names: dict[str, str], file_ending: str) -> dict:
    per_case = {}
    for fold in folds:
        summary = json.loads(nnunet_results.cv_summary_path(model_dir, fold).read_text())
        per_case.update(per_case_from_metrics(summary["metric_per_case"], names, file_ending))
    return per_case


def checkpoint_stamp(model_dir: Path, folds: list) -> dict:
    stamp = {}
    for fold in folds:
        stat = nnunet_results.checkpoint_path(model_dir, fold).stat()
        stamp[str(fold)] = [stat.st_size, stat.st_mtime_ns]
    return stamp


def test_record(root: Path, test_name: str) -> Path:
    return root / f"nnaug_sweep_test_{test_name}.json"


def heldout_metrics(test_raw, model_dir: Path, folds: list, root: Path, device: str) -> list[dict]:
    """Dice of the model (ensemble of ``folds``) on every case of the held-out dataset, cached in ``root``
    (one record per held-out dataset, keyed by the checkpoints; a lock keeps two workers from predicting at once).

    nnU-Net's predictor (``predict_from_files_sequential``, its default test-time mirroring) writes the
    predictions to ``root/test_<Dataset>/``; nnU-Net's ``compute_metrics`` scores them.
    """
    from nnaug.io import file_lock, load_json_or_none, write_json_atomic

    record_file = test_record(root, test_raw.name)
    key = {"test_dataset": test_raw.name, "folds": [str(f) for f in folds], "checkpoints": checkpoint_stamp(model_dir, folds)}
    with file_lock(root / f".test_{test_raw.name}.lock", None):
        record = load_json_or_none(record_file)
        if record is not None and record.get("key") == key:
            return record["metric_per_case"]
        metric_per_case = _predict_and_score(test_raw, model_dir, folds, root / f"test_{test_raw.name}", device)
        write_json_atomic(record_file, {"key": key, "model": str(model_dir), "metric_per_case": metric_per_case})
    return metric_per_case


def _predict_and_score(test_raw, model_dir: Path, folds: list, out: Path, device: str) -> list[dict]:
    """nnU-Net's predictor into ``out``, then nnU-Net's ``compute_metrics`` per case."""
    import contextlib
    import io

    import torch
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnaug.mask_consistency import nnaug_trainers_env

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dev = torch.device(device)
    # nnU-Net prints a line per case; nnaug's trainers are findable by name only inside the block
    with contextlib.redirect_stdout(io.StringIO()), nnaug_trainers_env():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(folds),
                                                       checkpoint_name=nnunet_results.CHECKPOINT)
        predictor.predict_from_files_sequential([c.image_files for c in test_raw.cases],
                                                [str(out / c.identifier) for c in test_raw.cases],
                                                save_probabilities=False, overwrite=True)
    label_manager = predictor.plans_manager.get_label_manager(predictor.dataset_json)
    regions = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    rw = test_raw.reader_writer()
    metric_per_case = []
    for case in test_raw.cases:
        result = compute_metrics(case.label_file, str(out / f"{case.identifier}{test_raw.file_ending}"), rw, regions,
                                 label_manager.ignore_label)
        metric_per_case.append({"reference_file": result["reference_file"],
                                "metrics": {str(k): {"Dice": float(v["Dice"])} for k, v in result["metrics"].items()}})
    return metric_per_case


def synthetic_quality(raw, synthetic: Path, weights: Path | None, model_dir: Path, folds: list, device: str,
                      cache: Path, log=print) -> dict:
    """FID/KID (and FRD when nnaug.fidelity gives it) and mask consistency of one synthetic dataset, cached."""
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.io import write_json_atomic
    from nnaug.mask_consistency import mask_consistency
    from nnaug.io import load_json_or_none
    from nnaug.provenance import read_provenance

    provenance = read_provenance(synthetic) or {}
    key = {"synthetic": synthetic.name, "num_cases": provenance.get("num_cases"),
           "checkpoint_sha256": provenance.get("checkpoint_sha256"),
           "weights": [str(weights), weights.stat().st_size] if weights is not None else None,
           "model": str(model_dir), "folds": [str(f) for f in folds],
           "checkpoints": checkpoint_stamp(model_dir, folds)}
    record = load_json_or_none(cache)
    if record is not None and record.get("key") == key:
        return record["quality"]
    quality: dict = {"dataset": synthetic.name, "num_cases": provenance.get("num_cases")}
    log(f"nnaug sweep: fidelity (FID/KID/FRD) of {synthetic.name} against {raw.name} ...")
    try:  # whatever keys nnaug.fidelity gives (fid, kid_mean, kid_std, frd, ... and *_note for what is missing)
        quality["fidelity"] = synthetic_fidelity(raw, synthetic, weights, keep_features=True)
    except NnaugError as exc:
        quality["fidelity_note"] = f"n/a ({exc})"
        log(f"nnaug sweep: warning: fidelity of {synthetic.name}: {exc}")
    # issue 35: mask realism and radiomics coverage, on the same arrays and FRD's features (nnaug.report.realism)
    from nnaug.report.realism import sweep_realism

    try:
        quality["realism"] = sweep_realism(raw, synthetic, quality.get("fidelity") or {})
    except NnaugError as exc:
        log(f"nnaug sweep: warning: mask realism of {synthetic.name}: {exc}")
    log(f"nnaug sweep: mask consistency of {synthetic.name} with {model_dir.name} (real-only, seed 0) ...")
    consistency = mask_consistency(synthetic, model_dir, folds=tuple(folds), device=device)
    quality["mask_consistency"] = consistency["mean_dice"]
    quality["mask_consistency_per_case"] = consistency["per_case"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    quality = json_safe(quality)
    write_json_atomic(cache, {"key": key, "quality": quality})
    return quality


def _grid(per_case_by_seed: dict, seeds: list[int], cases: list[str], label: str | None) -> np.ndarray:
    grid = np.full((len(seeds), len(cases)), np.nan)
    for i, seed in enumerate(seeds):
        results = per_case_by_seed[seed]
        for j, case in enumerate(cases):
            entry = results.get(case)
            if entry is None:
                continue
            value = entry["foreground"] if label is None else entry["labels"].get(label)
            grid[i, j] = np.nan if value is None else value
    return grid


def _nnunet_difference(rows: list[dict], arm: str, reference: str) -> float | None:
    by = {r["arm"]: r["nnunet_foreground_mean"]["mean"] for r in rows}
    return None if by[arm] is None or by[reference] is None else by[arm] - by[reference]


def nnunet_foreground_mean(grids: dict, names: list[str]) -> np.ndarray:
    """nnU-Net's ``foreground_mean`` Dice per seed: each label's mean over the cases where it has a Dice, then
    the mean over labels (a case's foreground Dice here is the other order: over its labels, then over cases)."""
    import warnings

    with warnings.catch_warnings():  # a label without any Dice in a seed: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        per_label = np.stack([np.nanmean(grids[n], axis=1) for n in names]) if names else np.zeros((0, 0))
        return np.nanmean(per_label, axis=0) if len(per_label) else np.full(grids[None].shape[0], np.nan)


def _nnunet_row(values: np.ndarray, seeds: list[int]) -> dict:
    return {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else None,
            "per_seed": {str(s): (float(v) if np.isfinite(v) else None) for s, v in zip(seeds, values)}}


def summarise(arms: list[Arm], results: dict, seeds: list[int], names: list[str], confidence: float = 0.95) -> dict:
    """Per-arm means with CIs, and differences paired by case (vs real-only; pretrain arms also vs each control);
    nnU-Net's foreground_mean beside the per-case foreground Dice."""
    from nnaug.stats import difference_ci as paired_difference
    from nnaug.stats import mean_ci as bootstrap_ci

    case_sets = [set(results[a.name][s]) for a in arms for s in seeds]
    cases = sorted(set.intersection(*case_sets)) if case_sets else []
    if not cases:
        raise NnaugError("the arms have no evaluated case in common: rerun the sweep")
    grids = {a.name: {label: _grid(results[a.name], seeds, cases, label) for label in [None, *names]} for a in arms}
    rows = []
    for arm in arms:
        fg = grids[arm.name][None]
        rows.append({
            "arm": arm.name, "kind": arm.kind, "ratio": arm.ratio, "trainer": arm.trainer,
            "foreground": bootstrap_ci(fg, confidence).as_dict(),
            "labels": {n: bootstrap_ci(grids[arm.name][n], confidence).as_dict() for n in names},
            "per_seed_foreground": {str(s): float(np.nanmean(fg[i])) for i, s in enumerate(seeds)},
            "nnunet_foreground_mean": _nnunet_row(nnunet_foreground_mean(grids[arm.name], names), seeds),
        })
    differences = []
    references = [a for a in arms if a.kind not in SYNTHETIC_KINDS]
    for arm in arms:
        # the controls against real-only; every synthetic arm against each control; mixed against the pretrain
        # arm of the same synthetic set
        same_set = [a for a in arms if arm.kind == "mixed" and a.kind == "pretrain" and a.synthesis_key == arm.synthesis_key]
        for ref in references + same_set:
            if ref.name == arm.name or (arm.kind not in SYNTHETIC_KINDS and ref.kind != "real-only"):
                continue
            differences.append({
                "arm": arm.name, "reference": ref.name, "ratio": arm.ratio,
                "foreground": paired_difference(grids[arm.name][None], grids[ref.name][None], confidence).as_dict(),
                "labels": {n: paired_difference(grids[arm.name][n], grids[ref.name][n], confidence).as_dict()
                           for n in names},
                "nnunet_foreground_mean": _nnunet_difference(rows, arm.name, ref.name),
            })
    return {"cases": cases, "arms": rows, "differences": differences}


def per_case_dice(setup: SweepSetup, test_raw, log=print) -> tuple[dict, dict]:
    """{arm: {seed: per-case Dice}} on the held-out dataset (None: the CV folds), and each arm's training seconds."""
    names_by_key = nnunet_results.metric_label_names(setup.raw.dataset_json)
    results: dict = {}
    seconds: dict = {}
    for arm, seed in setup.tasks:
        root, model_dir = setup.root(arm, seed), setup.model_dir(arm, seed)
        if test_raw is None:
            per_case = cv_results(model_dir, setup.folds, names_by_key, setup.raw.file_ending)
        else:
            log(f"nnaug sweep: {arm.name} seed {seed}: Dice on {test_raw.name} ...")
            metrics = heldout_metrics(test_raw, model_dir, setup.folds, root, setup.device)
            per_case = per_case_from_metrics(metrics, names_by_key, test_raw.file_ending)
        results.setdefault(arm.name, {})[seed] = per_case
        record = load_json_or_none(root / ARM_RECORD)  # none for a run a scheduler trained (--print-commands)
        seconds.setdefault(arm.name, []).extend([sum(record.get("train_seconds", {}).values())] if record else [])
    return results, seconds


def evaluate(setup: SweepSetup, test_raw, synthetic: SyntheticSets, quality: dict, weights: Path | None,
             log=print) -> dict:
    """One evaluation's sweep.json dict: per-case Dice of every run, statistics, and the synthetic sets."""
    from nnaug.stats import DEFAULT_RESAMPLES
    from nnaug.stats import METHOD as CI_METHOD

    results, seconds = per_case_dice(setup, test_raw, log)
    names = list(nnunet_results.metric_label_names(setup.raw.dataset_json).values())
    stats = summarise(setup.arms, results, setup.seeds, names)
    plan, info, raw = setup.budget, setup.info, setup.raw
    pretraining_sets = {a.name: synthetic.for_arm(a) for a in setup.arms}
    result = {
        "dataset": raw.name, "num_real_cases": len(raw.cases), "base_folder": str(setup.base),
        "runs_folder": str(setup.gen_folder),
        "generator": {"folder": str(setup.generator.resolve()), "model": info.get("model"),
                      "checkpoint_sha256": setup.sha, "steps_trained": info.get("steps_trained"),
                      "resolution": info.get("resolution")} if setup.generator else None,
        "synthesis": {**setup.choice.__dict__, "seed": 0} if setup.choice else None,
        "request": setup.request.record() if setup.request else None,
        "budget": {"name": plan.name, "about": plan.about, "pretrain": list(plan.pretrain),
                   "finetune": list(plan.finetune), "matched_epochs": plan.matched_epochs},
        "device": setup.device, "seeds": setup.seeds, "ratios": sorted({a.ratio for a in setup.arms if a.ratio}),
        "min_consistency": list(dict.fromkeys(a.min_consistency for a in setup.arms if a.kind in SYNTHETIC_KINDS)),
        "folds": [str(f) for f in setup.folds],
        "evaluation": ({"mode": "test", "test_dataset": test_raw.name, "num_cases": len(stats["cases"])}
                       if test_raw is not None else {"mode": "cross-validation", "num_cases": len(stats["cases"])}),
        "labels": names, "confidence": 0.95, "ci_method": CI_METHOD, "bootstrap_resamples": DEFAULT_RESAMPLES,
        "arms": [{**row, "phases": [list(p) for p in arm.phases], "env": arm.env, "min_consistency": arm.min_consistency,
                  "synthetic_dataset": pretraining_sets[arm.name].name if pretraining_sets[arm.name] else None,
                  "nnaug_seeds": [arm.run_seed(s) for s in setup.seeds],
                  "mean_train_seconds": float(np.mean(seconds[arm.name])) if seconds[arm.name] else None}
                 for row, arm in zip(stats["arms"], setup.arms)],
        "differences": stats["differences"],
        "synthetic": [{"ratio": key[0], "min_consistency": key[1],
                       **{k: v for k, v in q.items() if k != "mask_consistency_per_case"}} for key, q in quality.items()],
        "per_case": {arm: {str(s): v for s, v in by_seed.items()} for arm, by_seed in results.items()},
        "inception_weights": str(weights) if weights is not None else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return json_safe(result)

