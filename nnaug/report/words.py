"""The report's numbers in words and cells: formatting, the one-line summaries of each metric, and the notes
on how each was computed. Shared by every renderer (:mod:`~nnaug.report.tables`, :mod:`~nnaug.report.markdown`,
:mod:`~nnaug.report.html`, :mod:`~nnaug.report.figures`); nothing here reads a file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

def fmt(value, digits: int = 4) -> str:
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


def fid_cell_texts(r: dict) -> tuple[str, str]:
    if r["fid"] is not None:
        return f"{r['fid']:.2f}", f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
    return r.get("fidelity_note") or "n/a", "n/a"


def mc_cell_texts(r: dict) -> tuple[str, str]:
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
    return (text + f"{null_name(m)} ({m['calibration']}): {m['percentile']:g}th percentile "
            f"{m['threshold']:.3f} (the threshold), median {nq['median']:.3f}; {verdict}")


def consistency_values(r: dict) -> tuple[list[float], str] | None:
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
    values = consistency_values(r)
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


def null_name(m: dict) -> str:
    """What the threshold was calibrated on, in words."""
    return ("held-out real images the generator never saw" if "held-out" in m.get("calibration", "")
            else "real training images against the parts of the training set they are not in")


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


def method_notes(report: dict) -> list[str]:
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
                     f"{null_name(mem)} ({mem['calibration']}).")
    return [n for note in notes for n in (note, "")][:-1]

