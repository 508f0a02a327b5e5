"""Computing the report: every metric of every synthetic set made from a real dataset, beside what
:mod:`~nnaug.report.collect` finds. Each dataset's images are read from disk once (nnaug.dataset's read cache)
and handed to every metric."""
from __future__ import annotations

import sys
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.nnunet_results import find_real_only_model
from nnaug.report.collect import (check_folds, collect_dice, latest_sweep, real_only_validation_dice, report_folder,
                                  summarise_dice, sweep_test_dataset, warn)
from nnaug.report.figures import contact_sheet_png
from nnaug.report.words import null_name

NO_WEIGHTS_NOTE = "n/a (no Inception weights: --inception-weights FILE)"


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
    Mask realism and coverage (:mod:`nnaug.report.realism`) are computed for every synthetic set.
    The pictures (contact sheets, closest pairs) are written into :func:`report_folder` as they are made.
    """
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.provenance import synthetic_datasets_for
    from nnaug.report.realism import add_realism

    real = load_raw_dataset(dataset)
    warnings_: list[str] = []
    synthetic_folders = synthetic_datasets_for(real.name)
    weights, fid_note = _inception_weights(fidelity, inception_weights, download, bool(synthetic_folders), warnings_)
    out = report_folder(real.name)
    files = {}
    if synthetic_folders:
        sheet = contact_sheet_png(real, None, out / "real_contact_sheet.png")
        files["real_contact_sheet"] = str(sheet) if sheet else None
    model = find_real_only_model(real.name, folds) if mask_check else None
    sweep = latest_sweep(real.name)
    heldout = _held_out(real, sweep, warnings_) if memorisation and synthetic_folders else None
    validation = real_only_validation_dice(*model) if model is not None else None
    synthetic_rows = []
    for folder in synthetic_folders:
        syn = load_raw_dataset(folder)
        row = _synthetic_row(folder, syn, out)
        fidelity_result = synthetic_fidelity(
            real, syn, weights, max_images, fid=weights is not None, frd=frd, frd_roi=frd_roi,
            frd_image_types=frd_image_types, frd_features=frd_features, download=False, progress=progress,
            keep_features=True)
        add_realism(row, real, syn, fidelity_result, weights, out, max_images, progress, warnings_, warn)
        _add_fidelity(row, fidelity_result, weights, fid_note, fidelity)
        if memorisation:
            _add_memorisation(row, syn, real, heldout, out, max_images, progress, warnings_)
        _add_mask_consistency(row, folder, real, model, validation, mask_check, device, max_images, progress)
        synthetic_rows.append(row)
    dice_rows = collect_dice(real.name, folds, real.dataset_json)
    check_folds(real.name, folds, dice_rows, warnings_)
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


def _held_out(real, sweep: dict | None, warnings_: list):
    """The latest sweep's test set, to calibrate memorisation on real images no generator saw (or None). The sweep
    refused identical pixels unless --allow-overlap: what it let through is a warning here."""
    from nnaug.overlap import check_held_out

    heldout = sweep_test_dataset(sweep)
    if heldout is not None:
        check_held_out(real, heldout, allow_overlap=True, what="the held-out set", warn=lambda m: warnings_.append(
            f"memorisation's held-out set {heldout.name}: {m}"))
    return heldout


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
        sheet = contact_sheet_png(syn, synthetic_identifiers(syn), out / f"{folder.name}_contact_sheet.png")
    row["files"] = {"contact_sheet": str(sheet) if sheet else None}
    return row


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
        warn(message)
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
                   f"similar to a real training image than {mem['percentile']:g} % of {null_name(mem)} are "
                   f"({mem['image_metric']} > {mem['threshold']:.3f}; {mem['calibration']}; "
                   f"chance alone: about {mem['expected_by_chance']:.1f}): possible copies, see the memorisation pairs")
        warn(message)
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

