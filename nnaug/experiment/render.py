"""Rendering a sweep's result (the sweep.json dict): sweep.md, sweep.png, and the dataset's latest copies."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from nnaug.experiment.plan import CV_FOLDS, SYNTHETIC_KINDS, ratio_label
from nnaug.io import write_atomic


def _num(value, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(interval: dict, signed: bool = False) -> str:
    if interval.get("mean") is None:
        return "n/a"
    return (f"{_num(interval['mean'], signed=signed)} [{_num(interval['low'], signed=signed)}, "
            f"{_num(interval['high'], signed=signed)}]")


def _verdict(interval: dict) -> str:
    if interval.get("mean") is None:
        return "n/a"
    if interval["includes_zero"]:
        return "**includes 0**: no detectable difference"
    return "better" if interval["low"] > 0 else "worse"


def _show_nnunet(result: dict) -> bool:
    """Show nnU-Net's foreground_mean beside the per-case foreground Dice: only where they differ (4 decimals)."""
    for arm in result["arms"]:
        nn = (arm.get("nnunet_foreground_mean") or {}).get("mean")
        if nn is not None and arm["foreground"].get("mean") is not None and abs(nn - arm["foreground"]["mean"]) >= 5e-5:
            return True
    return False


def _arm_table(result: dict, names: list[str], nn: bool) -> list[str]:
    lines = ["## Dice per arm (mean over seeds × cases, 95 % CI)", "",
             "| arm | trained on | foreground Dice [95 % CI] | " + ("nnU-Net foreground_mean | " if nn else "")
             + " | ".join(names) + " | per-seed means | train s/seed |",
             "|---|---|---|" + ("---|" if nn else "") + "---|" * len(names) + "---|---|"]
    for arm in result["arms"]:
        on = f"{arm['synthetic_dataset']} → real" if arm["synthetic_dataset"] else "real"
        on = {"real-twice": f"real copy ({arm['synthetic_dataset']}) → real",
              "mixed": f"real + {arm['synthetic_dataset']}"}.get(arm["kind"], on)
        epochs = " + ".join(f"{e}×{i}" for _, e, i in arm["phases"])
        seeds = ", ".join(_num(v, 3) for v in arm["per_seed_foreground"].values())
        lines.append(f"| {arm['arm']} | {on} ({epochs}) | {_ci(arm['foreground'])} | "
                     + (f"{_num((arm.get('nnunet_foreground_mean') or {}).get('mean'))} | " if nn else "")
                     + " | ".join(_ci(arm["labels"][n]) for n in names)
                     + f" | {seeds} | {_num(arm['mean_train_seconds'], 0)} |")
    return lines


def _difference_table(result: dict, names: list[str], nn: bool) -> list[str]:
    lines = ["", "## Paired differences (same cases; each arm's seeds on their own)", "",
             "| arm | vs | Δ foreground Dice [95 % CI] | CI | " + ("Δ nnU-Net foreground_mean | " if nn else "")
             + " | ".join(f"Δ {n}" for n in names) + " |",
             "|---|---|---|---|" + ("---|" if nn else "") + "---|" * len(names)]
    for diff in result["differences"]:
        lines.append(f"| {diff['arm']} | {diff['reference']} | {_ci(diff['foreground'], True)} | "
                     f"{_verdict(diff['foreground'])} | "
                     + (f"{_num(diff.get('nnunet_foreground_mean'), signed=True)} | " if nn else "")
                     + " | ".join(_ci(diff["labels"][n], True) for n in names) + " |")
    return lines


def to_markdown(result: dict) -> str:
    budget, ev, gen = result["budget"], result["evaluation"], result["generator"]
    n_seeds, n_cases = len(result["seeds"]), ev["num_cases"]
    lines = [f"# nnaug sweep: {result['dataset']}", ""]
    where = (f"held-out dataset {ev['test_dataset']} ({n_cases} cases; nnU-Net's predictor, ensemble of fold(s) "
             f"{', '.join(result['folds'])})" if ev["mode"] == "test" else
             f"nnU-Net's {CV_FOLDS}-fold cross-validation on the real cases, fold(s) {', '.join(result['folds'])} "
             f"({n_cases} validation cases, real only)")
    lines += [f"- Evaluated on: {where}.",
              (f"- Generator: `{gen['folder']}` ({gen['model']}, checkpoint sha256 {gen['checkpoint_sha256'][:12]}…); "
               f"synthesis {result['synthesis']['mode']}, {result['synthesis']['sampler']} {result['synthesis']['steps']} "
               "steps." if gen else "- Control arms only (`--arms`): no generator, no synthetic set."),
              f"- Budget `{budget['name']}`: {budget['about']}. Compute-matched real-only: {budget['matched_epochs']} "
              f"epochs.",
              f"- Seeds: {', '.join(map(str, result['seeds']))} (each arm trained {n_seeds}x; `NNAUG_SEED` seeds "
              f"torch/numpy/random in nnaug's trainers, a number of its own per arm, so that no two arms share "
              f"initial weights or batches). Device: {result['device']}.",
              f"- 95 % CIs: {result['ci_method']}; 10,000 bootstrap resamples, over {n_seeds} seeds × {n_cases} cases"
              + (" (1 seed: run-to-run noise is not in the intervals; use `--seeds 3` or more)." if n_seeds < 2 else "."),
              ""]
    names = result["labels"]
    nn = _show_nnunet(result)
    lines += _arm_table(result, names, nn) + _difference_table(result, names, nn)
    return "\n".join(lines + _zero_line(result) + _synthetic_table(result) + _how_to_read(result, nn)) + "\n"


def _zero_line(result: dict) -> list[str]:
    lines = []
    zero = [d for d in result["differences"] if d["foreground"].get("includes_zero")]
    lines.append("")
    if zero:
        lines.append("The 95 % CI of the foreground Dice difference **includes 0** for: "
                     + ", ".join(f"{d['arm']} vs {d['reference']}" for d in zero)
                     + " — at this number of seeds and cases these arms are not distinguishable.")
    else:
        lines.append("No foreground Dice difference has a 95 % CI that includes 0.")
    return lines


def _realism_cells(realism: dict | None) -> str:
    """issue 35: the set table's mask realism and coverage cells (nnaug.report.realism.sweep_realism's numbers)."""
    if not realism:
        return "— | —"
    comp = realism.get("components") or [None, None]
    cells = "—" if None in comp else f"{comp[0]:.2f} → {comp[1]:.2f}"
    if realism.get("coverage") is None:
        return cells + " | —"
    return cells + f" | {realism['coverage']:.2f} ({realism['coverage_real']:.2f})" + (" low" if realism.get("low") else "")


def _synthetic_table(result: dict) -> list[str]:
    if not result["synthetic"]:
        return []
    lines = ["", "## Synthetic datasets", "",
              "| ratio | filter | dataset | synthetic cases | FID | KID (mean ± std) | FRD, log(d²) | mask consistency Dice |"
              " components per mask (real → synthetic) | coverage (real's own) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    extractor, notes = None, []
    most = (result.get("synthesis") or {}).get("max_components")
    for row in result["synthetic"]:
        fidelity = row.get("fidelity") or {}
        extractor = extractor or fidelity.get("extractor")
        kid = "n/a" if fidelity.get("kid_mean") is None else \
            f"{_num(fidelity.get('kid_mean'))} ± {_num(fidelity.get('kid_std'))}"
        rules = [f"mask consistency ≥ {row['min_consistency']:g}"] if row.get("min_consistency") else []
        rules += [f"≤ {most} components per label"] if most is not None else []
        kept = ", ".join(rules) or "none"
        lines.append(f"| {ratio_label(row['ratio'])} | {kept} | {row['dataset']} | {row['num_cases']} | "
                     f"{_num(fidelity.get('fid'), 2)} | {kid} | {_num(fidelity.get('frd'), 2)} | "
                     f"{_num(row.get('mask_consistency'))} | {_realism_cells(row.get('realism'))} |")
        for note in [row.get("fidelity_note")] + [fidelity.get(k) for k in ("fid_note", "frd_note")]:
            if note and note not in notes:
                notes.append(note)
    lines.append("")
    if extractor:
        lines.append(f"FID/KID: {extractor}, synthetic images against {result['dataset']}'s training images.")
    lines += [f"n/a: {note}" for note in notes]
    if any(row.get("min_consistency") for row in result["synthetic"]):
        lines.append("A filtered set was kept by the same real-only model (seed 0) that measures its mask consistency "
                     "here, so that number is at least its threshold by construction; compare the sets by Dice.")
    lines.append("Mask consistency: Dice of each synthetic mask with the prediction of the real-only model "
                 "(seed 0) on its image.")
    return lines


def _how_to_read(result: dict, nn: bool) -> list[str]:
    return ["", "## How to read this", "",
              "- Foreground Dice here is **per case**: nnU-Net's Dice of each label (`compute_metrics`); a label absent "
              "from both reference and prediction is left out, and a case's foreground Dice is the mean over its "
              "labels (1.0 when no label is present in either), then averaged over cases. nnU-Net's own "
              "`foreground_mean` (summary.json) averages the other way: each label over the cases where it has a "
              "Dice, then over labels. With one label and no empty cases they are equal; "
              + ("they differ here, so both are shown (sweep.json: `nnunet_foreground_mean`)." if nn else
                 "here they agree to 4 decimals (both in sweep.json: `nnunet_foreground_mean`).")
              + " A per-label mean or difference can be over fewer cases than the foreground one, and can even "
              "disagree with it in sign. nnU-Net's `ignore` label is never scored and has no column.",
              "- A difference compares two arms case by case (the same evaluated cases); the seeds of each arm are "
              "resampled on their own: each arm gets `NNAUG_SEED` numbers of its own, so the runs of two arms are "
              "independent and the verdict cannot depend on how seeds are numbered. Its CI "
              "contains the run-to-run noise of nnU-Net "
              "training (seeds) and the choice of cases; with 2-5 seeds it is mostly set by the t-interval "
              "(docs/sweep.md: simulated coverage).",
              *(["- `real-only-matched` trains the real-only model as long as pretraining + fine-tuning together: a "
                 "pretrain arm that beats `real-only` but not `real-only-matched` gained from more steps, not from "
                 "the synthetic data."] if any(a["kind"] == "compute-matched" for a in result["arms"]) else []),
              *(["- `real-twice` is the pretrain arms' trainer and schedule with the real cases in place of the "
                 "synthetic set: the same warm restart (new optimizer, new learning-rate cycle, new output layer), no "
                 "synthetic image. A pretrain arm's difference to `real-twice` is what the synthetic images add "
                 "beyond the restart."] if any(a["kind"] == "real-twice" for a in result["arms"]) else []),
              *(["- `mixed-r<ratio>` trains once, with real-only's trainer schedule, on the real cases and the same "
                 "synthetic set together (validated on real cases only): what most papers do instead of pretraining. "
                 "Its difference to the pretrain arm of the same set compares the two ways of using it."]
                if any(a["kind"] == "mixed" for a in result["arms"]) else []),
              f"- Results: `{result['folder']}`; the nnU-Net runs: `{result.get('runs_folder', result['folder'])}` "
              f"(real-only arms: `{result['base_folder']}`).",
              f"- Written {result['finished']}."]


FILTER_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def _series(arms: list[dict]) -> dict:
    """The arms that train on a synthetic set, one series per (kind, filter threshold): pretrain first, then mixed;
    unfiltered first within each."""
    groups: dict = {}
    for arm in arms:
        if arm["kind"] in SYNTHETIC_KINDS:
            groups.setdefault((arm["kind"], arm.get("min_consistency")), []).append(arm)
    return dict(sorted(groups.items(), key=lambda g: (SYNTHETIC_KINDS.index(g[0][0]), -1.0 if g[0][1] is None else g[0][1])))


def _series_label(kind: str, threshold: float | None) -> str:
    kept = f", kept at mask consistency ≥ {threshold:g}" if threshold else ""
    return ("pretrain → fine-tune" if kind == "pretrain" else "real + synthetic together (mixed)") + kept


def plot(result: dict, path: Path) -> Path:
    """Foreground Dice vs ratio (pretrain arms, 95 % CI bars; per-seed means as dots), real-only arms as bands;
    right: paired differences to real-only."""
    # a Figure on its own Agg canvas: no pyplot, so the caller's matplotlib backend stays as it was
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _plot_dice(left, result)
    _plot_differences(right, result)
    ev = result["evaluation"]
    fig.suptitle(f"{result['dataset']} — budget {result['budget']['name']}, {len(result['seeds'])} seeds × "
                 f"{ev['num_cases']} cases ({'held-out ' + ev['test_dataset'] if ev['mode'] == 'test' else 'CV'})",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _clip_to(ax, low: float, high: float) -> None:
    """Keep the y axis within what the quantity can be; a CI beyond it runs off the axis (the table has it)."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(max(bottom, low), min(top, high))


def _plot_dice(left, result: dict) -> None:
    """Foreground Dice per arm: real-only arms as bands, pretrain (and mixed) arms against their ratio."""
    arms = result["arms"]
    series = _series(arms)
    ratios = sorted({a["ratio"] for group in series.values() for a in group})
    colours = {"real-only": "tab:gray", "compute-matched": "tab:orange", "real-twice": "tab:red"}
    hatches = {"compute-matched": "///", "real-twice": "\\\\\\"}
    span = (-0.06 * max(ratios or [1]), max(ratios or [1]) * 1.08)
    for arm in arms:
        if arm["kind"] in SYNTHETIC_KINDS:
            continue
        fg, colour = arm["foreground"], colours[arm["kind"]]
        if arm["kind"] in hatches:  # hatched outline, so that the real-only band stays visible under it
            left.axhspan(fg["low"], fg["high"], facecolor="none", edgecolor=colour, hatch=hatches[arm["kind"]], lw=0.8,
                         alpha=0.6)
        else:
            left.axhspan(fg["low"], fg["high"], color=colour, alpha=0.2)
            left.errorbar([0], [fg["mean"]], yerr=[[fg["mean"] - fg["low"]], [fg["high"] - fg["mean"]]], fmt="s",
                          color=colour, capsize=5)
        left.axhline(fg["mean"], color=colour, ls={"compute-matched": "--", "real-twice": ":"}.get(arm["kind"], "-"), lw=1.5,
                     label=f"{arm['arm']} {fg['mean']:.3f} (band: 95 % CI)")
    nudge = 0.025 * max(ratios or [1])  # filtered series beside the unfiltered one at the same ratio
    for g, ((key, group), colour) in enumerate(zip(series.items(), FILTER_COLOURS)):
        means = [a["foreground"]["mean"] for a in group]
        err = [[m - a["foreground"]["low"] for m, a in zip(means, group)],
               [a["foreground"]["high"] - m for m, a in zip(means, group)]]
        left.errorbar([a["ratio"] + g * nudge for a in group], means, yerr=err, fmt="o-" if key[0] == "pretrain" else "D--",
                      color=colour, capsize=5, lw=1.8, label=f"{_series_label(*key)} (mean, 95 % CI)")
        for a in group:
            seeds = list(a["per_seed_foreground"].values())
            left.scatter([a["ratio"] + g * nudge] * len(seeds), seeds, s=12, color=colour, alpha=0.45, zorder=3)
    left.scatter([], [], s=12, color="tab:blue", alpha=0.45, label="per-seed means")
    left.set_xlim(*span)
    _clip_to(left, -0.02, 1.02)  # Dice lives in [0, 1]; a 2-seed t-interval can reach far outside it
    left.set_xticks([0] + ratios)
    left.set_xlabel("synthetic ratio (synthetic cases per real case; 0 = real-only)")
    left.set_ylabel("foreground Dice")
    left.set_title("Dice vs synthetic ratio")
    left.legend(fontsize=7, loc="best")
    left.grid(alpha=0.3)


def _plot_differences(right, result: dict) -> None:
    """Paired differences of each pretrain (and mixed) arm to real-only, compute-matched real-only and real-twice,
    95 % CIs."""
    arms = result["arms"]
    series = _series(arms)
    ratios = sorted({a["ratio"] for group in series.values() for a in group})
    offsets = {"real-only": -0.05, "real-only-matched": 0.0, "real-twice": 0.05}
    width = max(ratios) if ratios else 1
    series_of = {a["arm"]: (a["kind"], a.get("min_consistency")) for a in arms}
    for (reference, marker), (g, (key, colour)) in itertools.product(
            (("real-only", "o"), ("real-only-matched", "s"), ("real-twice", "^")), enumerate(zip(series, FILTER_COLOURS))):
        diffs = [d for d in result["differences"] if d["reference"] == reference and d["ratio"] is not None
                 and series_of.get(d["arm"]) == key]
        if not diffs:
            continue
        xs = [d["ratio"] + (offsets[reference] + 0.1 * g) * width for d in diffs]
        ys = [d["foreground"]["mean"] for d in diffs]
        yerr = [[y - d["foreground"]["low"] for y, d in zip(ys, diffs)],
                [d["foreground"]["high"] - y for y, d in zip(ys, diffs)]]
        tag = ("mixed " if key[0] == "mixed" else "") + (f"(mc ≥ {key[1]:g}) " if key[1] else "")
        right.errorbar(xs, ys, yerr=yerr, fmt=marker, color=colour, capsize=5, mfc="white" if reference != "real-only"
                       else colour, label=f"{tag}vs {reference}")
    right.axhline(0.0, color="black", lw=1)
    _clip_to(right, -1.02, 1.02)
    extra = 0.1 * (len(series) - 1)
    right.set_xlim(min(ratios or [0]) - 0.12 * width, max(ratios or [1]) + (0.12 + extra) * width)
    right.set_xticks(ratios)
    right.set_xlabel("synthetic ratio")
    right.set_ylabel("Δ foreground Dice (paired)")
    right.set_title("Paired difference, 95 % CI (crossing 0 = no evidence)")
    right.legend(fontsize=7, loc="best")
    right.grid(alpha=0.3)


def write_outputs(result: dict, folder: Path, latest: dict[str, Path]) -> list[Path]:
    """sweep.{md,json,png} into the sweep's folder, then the same three files as the dataset's latest sweep."""
    markdown = to_markdown(result)
    text = json.dumps(result, indent=1)
    written = []
    for target in (folder, None):
        paths = {k: (folder / f"sweep.{k}") if target is not None else latest[k] for k in ("md", "json", "png")}
        write_atomic(paths["json"], lambda p: p.write_text(text))
        write_atomic(paths["png"], lambda p: plot(result, p))
        write_atomic(paths["md"], lambda p: p.write_text(markdown))
        written += [paths["md"], paths["json"], paths["png"]]
    return written

