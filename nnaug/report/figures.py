"""The report's pictures: Dice per fold, nearest-real similarities, per-case mask consistency, contact sheets.
Each written atomically; matplotlib through its Agg canvas (no pyplot)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnaug.nnunet_results import trainer_kind
from nnaug.report.words import consistency_values

def figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas directly: no pyplot, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_atomic(save, path: Path) -> Path:
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
    fig = figure(max(6.0, 1.1 * len(folds) * len(models) + 2), 4.6)
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
    return save_atomic(fig.savefig, path)


def nearest_histogram(memorisation: dict, title: str, path: Path) -> Path:
    """Histograms of synthetic→most-similar-real and unseen-real→most-similar-training similarities, with the threshold."""
    syn = np.asarray(memorisation["synthetic_similarity"], np.float64)
    null = np.asarray(memorisation["null_similarity"], np.float64)
    fig = figure(5.2, 3.9)
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
    return save_atomic(fig.savefig, path)


def consistency_histogram(r: dict, path: Path) -> Path | None:
    """Per-case mask consistency of one synthetic set (and the filter's threshold when it was filtered)."""
    found = consistency_values(r)
    if not found:
        return None
    values, source = np.asarray(found[0]), found[1]
    fig = figure(5.2, 3.4)
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
    return save_atomic(fig.savefig, path)


def contact_sheet_png(raw, identifiers: list[str] | None, path: Path, max_cases: int = 16) -> Path | None:
    from nnaug.dataset_images import load_cases, select_cases
    from nnaug.visualize import contact_sheet

    cases = select_cases(raw, identifiers)[:max_cases]
    if not cases:
        return None
    _, first_label, _ = raw.read_case(cases[0])
    side = min(128, int(max(first_label.shape)))
    images, labels = load_cases(raw, cases, (side, side))
    return save_atomic(lambda tmp: contact_sheet(np.stack(images), np.stack(labels), tmp), path)

