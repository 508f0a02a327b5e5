"""Mask realism (:mod:`nnaug.mask_realism`) and coverage (:mod:`nnaug.coverage`) in ``nnaug report``: taking the
arrays, the pictures, and the lines of report.md and report.html.

:func:`add_realism` is the one call :func:`nnaug.report.compute.build_report` makes per synthetic set: it takes the
images and masks through :mod:`nnaug.dataset_images` (the read cache: no file is read a second time), the
radiomic features the whole-image FRD computed, and InceptionV3 features when there are weights, and
stores ``mask_realism`` and ``coverage`` in the set's row. :func:`markdown_lines` and :func:`html_lines` write
them; the two figures are drawn here too. The tables are :mod:`nnaug.report.tables`' model, like the report's own.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.report.figures import figure, save_atomic
from nnaug.report.tables import Cell, Table, html_table, markdown_table

REAL, SYNTHETIC = "#4c72b0", "#dd8452"


# ----------------------------------------------------------------------------- computing
def load_arrays(real, syn, max_images: int | None = None) -> dict:
    """The cases the fidelity metrics compare (:func:`nnaug.fidelity.synthetic_fidelity`'s selection), at the
    synthetic size: ``dict(real_images, real_labels, syn_images, syn_labels)`` ([N, C, H, W] in [-1, 1], [N, H, W])."""
    from nnaug.dataset_images import as_raw, load_cases, select_cases, synthetic_identifiers

    real, syn = as_raw(real), as_raw(syn)  # the sweep hands folders, the report opened datasets
    syn_cases = select_cases(syn, synthetic_identifiers(syn), max_images)
    real_cases = select_cases(real, None, max_images)
    if not syn_cases or not real_cases:
        raise NnaugError(f"{syn.name if not syn_cases else real.name} has no cases to compare")
    _, first_label, _ = syn.read_case(syn_cases[0])
    size = tuple(first_label.shape)
    syn_images, syn_labels = load_cases(syn, syn_cases, size)
    real_images, real_labels = load_cases(real, real_cases, size)
    return {"real_images": np.stack(real_images), "real_labels": np.stack(real_labels),
            "syn_images": np.stack(syn_images), "syn_labels": np.stack(syn_labels)}


def label_names(dataset_json: dict) -> dict[int, str]:
    """Each foreground label's value -> its name (regions, scored by nnU-Net as a whole, are left out)."""
    from nnaug.nnunet_results import metric_label_names

    return {int(key): name for key, name in metric_label_names(dataset_json).items() if key.isdigit()}


def _inception(arrays: dict, weights, progress: bool, name: str):
    from nnaug.dataset_images import uint8_images
    from nnaug.fidelity import inception_features

    if progress:
        print(f"nnaug: InceptionV3 features for coverage of {name} ...", file=sys.stderr, flush=True)
    return {"real": inception_features(uint8_images(list(arrays["real_images"])), weights),
            "synthetic": inception_features(uint8_images(list(arrays["syn_images"])), weights)}


def compute(arrays: dict, radiomics: dict | None, inception: dict | None, labels: list[int],
            notes: dict | None = None) -> dict:
    """Mask realism and coverage from arrays already there: ``dict(mask_realism=, coverage=[rows])``."""
    from nnaug.coverage import feature_space_rows
    from nnaug.mask_realism import compare

    return {"mask_realism": compare(arrays["real_labels"], arrays["syn_labels"], labels),
            "coverage": feature_space_rows(radiomics, inception, notes)}


def add_realism(row: dict, real, syn, fidelity_result: dict, weights, out: Path, max_images, progress: bool,
                warnings_: list, warn) -> None:
    """Mask realism and coverage of one synthetic set into its report ``row`` (and its two pictures into ``out``).

    ``fidelity_result``: :func:`nnaug.fidelity.synthetic_fidelity`'s dict, made with ``keep_features``; its
    ``radiomics_features`` are taken out (arrays do not go into report.json). ``weights``: InceptionV3 weights
    or None. Low coverage in any space is a warning line (``warn``) and in ``warnings_``."""
    radiomics = fidelity_result.pop("radiomics_features", None)
    notes = {"inception": "n/a (no Inception weights)"}
    if radiomics is None:
        notes["radiomics"] = ("n/a (needs the whole-image FRD's features: " +
                              (fidelity_result.get("frd_note") or "--frd-roi image or both") + ")")
    arrays = load_arrays(real, syn, max_images)
    names = label_names(real.dataset_json)
    inception = _inception(arrays, weights, progress, syn.name) if weights is not None else None
    result = compute(arrays, radiomics, inception, sorted(names) or None, notes)
    realism = result["mask_realism"]
    row["mask_realism"] = {**{k: v for k, v in realism.items() if k not in ("real", "synthetic", "support",
                                                                         "synthetic_support")},
                           "per_mask": {"real": realism["real"], "synthetic": realism["synthetic"]},
                           "label_names": {str(k): v for k, v in names.items()}}
    row["coverage"] = result["coverage"]
    files = row.setdefault("files", {})
    files["mask_realism"] = str(realism_figure(realism, names, syn.name, out / f"{syn.name}_mask_realism.png"))
    picture = coverage_figure(result["coverage"], radiomics, syn.name, out / f"{syn.name}_coverage.png")
    if picture is not None:
        files["coverage"] = str(picture)
    for space in result["coverage"]:
        if space.get("low"):
            message = f"{syn.name}: {coverage_line(space).replace('**', '')}"
            warn(message)
            warnings_.append(message)


def sweep_realism(real, syn, fidelity_result: dict) -> dict:
    """The few numbers of mask realism and coverage the sweep's set table shows (no pictures, no Inception pass):
    ``dict(components=[real, synthetic], touches_border=[...], outside_real=[...], coverage=, coverage_real=,
    low=)`` for the first foreground label, coverage in FRD's radiomics space (None without its features)."""
    from nnaug.coverage import coverage_against_real
    from nnaug.mask_realism import compare

    from nnaug.dataset_images import as_raw

    radiomics = fidelity_result.pop("radiomics_features", None)
    real = as_raw(real)
    arrays = load_arrays(real, syn)
    labels = sorted(label_names(real.dataset_json)) or None
    rows = compare(arrays["real_labels"], arrays["syn_labels"], labels)["rows"]
    first = rows[0]["label"] if rows else None
    out = {k: [x["real_mean"], x["synthetic_mean"]] for x in rows if x["label"] == first
           for k in [x["statistic"]] if k in ("components", "touches_border", "outside_real")}
    out.update({"coverage": None, "coverage_real": None, "low": None})
    if radiomics is not None:
        try:
            c = coverage_against_real(radiomics["real"], radiomics["synthetic"])
            out.update({"coverage": c["synthetic"]["coverage"], "coverage_real": c["real"]["coverage"], "low": c["low"]})
        except NnaugError:
            pass
    return out


# ----------------------------------------------------------------------------- words
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def coverage_line(row: dict) -> str:
    """The coverage of one feature space in words (low coverage said as such)."""
    if row.get("note"):
        return f"coverage in {row['space']} space: {row['note']}"
    s, r = row["synthetic"], row["real"]
    text = (f"coverage in {row['space']} space ({row['what']}; k = {row['k']}, {row['compared_size']} images against "
            f"{row['reference_size']} real, {row['repeats']} random splits): {s['coverage']:.2f} of the real images' "
            f"neighbourhoods hold a synthetic image, {r['coverage']:.2f} hold an unseen real one (recall "
            f"{s['recall']:.2f} vs {r['recall']:.2f}, precision {s['precision']:.2f} vs {r['precision']:.2f}, "
            f"density {s['density']:.2f} vs {r['density']:.2f})")
    if row["low"]:
        return text + (f"; **low coverage: the synthetic images cover {100 * row['coverage_ratio']:.0f} % of what real "
                       "images do — too little diversity (mode collapse), or kinds of real image it never makes**")
    return text + "; no sign of mode collapse"


def realism_line(r: dict) -> str | None:
    """Per label, the mean of each statistic real → synthetic, in words."""
    m = r.get("mask_realism")
    if not m:
        return None
    names = m.get("label_names", {})
    parts = []
    for label in m["labels"]:
        rows = {x["statistic"]: x for x in m["rows"] if x["label"] == label}

        def pair(key, scale=1.0, digits=2, unit=""):
            x = rows[key]
            a = "—" if x["real_mean"] is None else f"{scale * x['real_mean']:.{digits}f}{unit}"
            b = "—" if x["synthetic_mean"] is None else f"{scale * x['synthetic_mean']:.{digits}f}{unit}"
            return f"{a} → {b}"

        parts.append(f"{names.get(str(label), f'label {label}')}: components per mask {pair('components')}, "
                     f"area {pair('area_fraction', 100, 1, ' %')}, solidity {pair('solidity')}, touching the border "
                     f"{pair('touches_border', 100, 0, ' %')}, outside the real masks' support "
                     f"{pair('outside_real', 100, 1, ' %')}")
    return f"per mask, real → synthetic ({m['n_real']} vs {m['n_synthetic']} masks at {m['resolution'][0]}x" \
           f"{m['resolution'][1]}): " + "; ".join(parts)


def realism_table(r: dict) -> Table:
    m = r["mask_realism"]
    names = m.get("label_names", {})
    table = Table(["statistic", "label", "real mean", "synthetic mean", "W1 real vs synthetic", "W1 real half vs half"])
    for x in m["rows"]:
        table.add(x["name"], names.get(str(x["label"]), str(x["label"])),
                  *(Cell(_fmt(x[k]), True) for k in ("real_mean", "synthetic_mean", "wasserstein", "real_split_wasserstein")))
    return table


def coverage_table(r: dict) -> Table:
    table = Table(["feature space", "precision", "recall", "density", "coverage", "coverage ÷ real's own"])
    for x in r.get("coverage") or []:
        if x.get("note"):
            table.add(x["space"], x["note"], "", "", "", "")
            continue
        s, q = x["synthetic"], x["real"]
        table.add(x["space"], *(Cell(f"{s[m]:.2f} (real {q[m]:.2f})", True) for m in ("precision", "recall", "density", "coverage")),
                  Cell(_fmt(x["coverage_ratio"], 2) + (" low" if x["low"] else ""), True, "bad" if x["low"] else ""))
    return table


def markdown_lines(report: dict) -> list[str]:
    """report.md's mask realism and coverage of every synthetic set (tables, lines, picture links)."""
    lines = []
    for r in report["synthetic"]:
        if not r.get("mask_realism") and not r.get("coverage"):
            continue
        lines += ["", f"### Mask realism and coverage of {r['dataset']}"]
        if r.get("mask_realism"):
            lines += ["", f"Mask realism: {realism_line(r)}.", ""] + markdown_table(realism_table(r))
            if r.get("files", {}).get("mask_realism"):
                lines += ["", f"![mask realism of {r['dataset']}]({Path(r['files']['mask_realism']).name})"]
        if r.get("coverage"):
            lines += ["", "Coverage (synthetic vs real; in brackets: unseen real images, the same sizes):", ""]
            lines += markdown_table(coverage_table(r))
            lines += [""] + [f"- {coverage_line(x)}." for x in r["coverage"]]
            if r.get("files", {}).get("coverage"):
                lines += ["", f"![coverage of {r['dataset']}]({Path(r['files']['coverage']).name})"]
    return lines


def html_lines(r: dict, img_tag) -> list[str]:
    """report.html's mask realism and coverage of one synthetic set; ``img_tag(path, alt)`` embeds a picture."""
    import html

    e = html.escape
    out = []
    files = r.get("files", {})
    if r.get("mask_realism"):
        out.append("<h3>Mask realism</h3>")
        out.append(f'<p class="note">{e(realism_line(r))}.</p>')
        out.append(html_table(realism_table(r)))
        out.append(img_tag(files.get("mask_realism"), "mask realism"))
        out.append('<p class="cap">Top: where the masks of each label lie (share of masks covering each pixel), real '
                   "and synthetic, and the synthetic masks' pixels where no real mask is. Then each statistic's "
                   "histogram, real (blue) and synthetic (orange) side by side, as shares of masks; W1: the "
                   "1-D Wasserstein distance, in the statistic's unit.</p>")
    if r.get("coverage"):
        out.append("<h3>Diversity and coverage</h3>")
        for x in r["coverage"]:
            line = coverage_line(x)
            out.append(f'<p class="{"alert" if x.get("low") else "note"}">{e(line.replace("**", ""))}.</p>')
        out.append(html_table(coverage_table(r)))
        if files.get("coverage"):
            out.append(img_tag(files["coverage"], "coverage"))
            out.append('<p class="cap">Left: precision, recall, density and coverage of the synthetic images (orange) '
                       "and of unseen real images (blue), same sizes, mean over random splits. Right: the radiomic "
                       "features of both sets on the real images' first two principal components.</p>")
    return out


# ----------------------------------------------------------------------------- pictures
def realism_figure(result: dict, names: dict[int, str], title: str, path: Path) -> Path:
    """Per label two rows of five panels: where the real and the synthetic masks lie (share of masks covering
    each pixel), the synthetic masks' pixels where no real mask is, then the seven statistics' histograms, real
    and synthetic side by side."""
    from nnaug.mask_realism import STATISTICS

    labels = result["labels"]
    fig = figure(17.0, 6.8 * max(1, len(labels)))
    grid = fig.add_gridspec(2 * max(1, len(labels)), 5)
    slots = [(r, c) for r in range(2) for c in range(5)]
    for block, label in enumerate(labels):
        name = names.get(label, f"label {label}")
        real_share = result["support"][label] / max(1, result["n_real"])
        syn_share = result["synthetic_support"][label] / max(1, result["n_synthetic"])
        top = max(1e-9, float(max(real_share.max(), syn_share.max())))
        outside = np.where((result["support"][label] == 0) & (syn_share > 0), syn_share, np.nan)  # NaN: not drawn
        pictures = ((real_share, f"{name}: real masks ({result['n_real']})", "viridis", top),
                    (syn_share, f"{name}: synthetic masks ({result['n_synthetic']})", "viridis", top),
                    (outside, f"synthetic {name} where no real mask is\n(grey: where real masks are)", "magma",
                     max(1e-9, float(np.nanmax(outside))) if np.isfinite(outside).any() else top))
        for (r, c), (image, text, cmap, vmax) in zip(slots, pictures):
            ax = fig.add_subplot(grid[2 * block + r, c])
            if cmap == "magma":
                ax.imshow(result["support"][label] > 0, cmap="Greys", vmin=0, vmax=3)
            shown = ax.imshow(image, cmap=cmap, vmin=0, vmax=vmax)
            ax.set_title(text, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label="share of masks")
        rows = {x["statistic"]: x for x in result["rows"] if x["label"] == label}
        for (r, c), key in zip(slots[3:], STATISTICS):
            ax = fig.add_subplot(grid[2 * block + r, c])
            _histogram(ax, result["real"][label][key], result["synthetic"][label][key], key, STATISTICS[key][0],
                       rows[key])
    fig.suptitle(f"{title}: mask realism, real (blue) vs synthetic (orange)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_atomic(fig.savefig, path)


def _histogram(ax, real, syn, key: str, name: str, row: dict) -> None:
    real, syn = np.asarray(real, float), np.asarray(syn, float)
    if key in ("components", "touches_border"):
        top = int(max(real.max(initial=0), syn.max(initial=0)))
        top = max(1, min(top, 8))
        xs = np.arange(top + 1)
        for offset, values, colour, who in ((-0.2, real, REAL, "real"), (0.2, syn, SYNTHETIC, "synthetic")):
            counts = np.array([(np.minimum(values, top) == x).mean() if len(values) else 0 for x in xs])
            ax.bar(xs + offset, counts, 0.4, color=colour, label=f"{who} ({len(values)})")
        ax.set_xticks(xs)
        if key == "touches_border":
            ax.set_xticklabels(["no", "yes"][: len(xs)])
        elif top == 8:
            ax.set_xticklabels([str(x) for x in xs[:-1]] + ["8+"])
    else:
        both = np.concatenate([real, syn])
        lo, hi = (0.0, 1.0) if not len(both) else (min(0.0, float(both.min())), max(1.0 if key != "area_fraction"
                                                                                    else 0.0, float(both.max())))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 16)
        data = [v for v in (real, syn)]
        weights = [np.full(len(v), 1.0 / len(v)) if len(v) else np.zeros(0) for v in data]
        ax.hist(data, bins=bins, weights=weights, color=[REAL, SYNTHETIC],
                label=[f"real ({len(real)})", f"synthetic ({len(syn)})"])
    w = row.get("wasserstein")
    split = row.get("real_split_wasserstein")
    ax.set_title(f"{name}\nW1 {_fmt(w)}" + (f" (real half vs half {_fmt(split)})" if split is not None else ""),
                 fontsize=8.5)
    ax.set_ylabel("share of masks", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.spines[["top", "right"]].set_visible(False)


def coverage_figure(rows: list[dict], radiomics: dict | None, title: str, path: Path) -> Path | None:
    """Grouped bars of precision/recall/density/coverage per feature space (synthetic vs unseen real) and the
    radiomic features of both sets on the real set's first two principal components."""
    from nnaug.coverage import METRICS

    scored = [x for x in rows if not x.get("note")]
    if not scored:
        return None
    fig = figure(11.0, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    ticks, names = [], []
    for i, x in enumerate(scored):
        for j, metric in enumerate(METRICS):
            pos = i * (len(METRICS) + 1) + j
            ax.bar(pos - 0.2, x["real"][metric], 0.4, color=REAL, label="unseen real" if (i, j) == (0, 0) else None)
            ax.bar(pos + 0.2, x["synthetic"][metric], 0.4, color=SYNTHETIC,
                   label="synthetic" if (i, j) == (0, 0) else None)
            ticks.append(pos)
            names.append(metric)
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, fontsize=7.5)
    top = max(1.1, max(max(x["real"]["density"], x["synthetic"]["density"]) for x in scored) + 0.1) + 0.15
    ax.set_ylim(0, top)
    for i, x in enumerate(scored):
        ax.text(i * (len(METRICS) + 1) + 1.5, top - 0.07, f"{x['space']} space", ha="center", va="top", fontsize=8.5)
    ax.axhline(1.0, color="#999999", lw=0.8, ls=":")
    ax.set_title(f"{title}: PRDC, k = {scored[0]['k']}, {scored[0]['compared_size']} vs {scored[0]['reference_size']} "
                 "real", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if radiomics is not None and len(radiomics["real"]) >= 3:
        real = np.asarray(radiomics["real"], float)
        syn = np.asarray(radiomics["synthetic"], float)
        centre = real.mean(0)
        _, _, vt = np.linalg.svd(real - centre, full_matrices=False)
        pa, pb = (real - centre) @ vt[:2].T, (syn - centre) @ vt[:2].T
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.scatter(pa[:, 0], pa[:, 1], s=16, color=REAL, alpha=0.8, label=f"real ({len(pa)})")
        ax2.scatter(pb[:, 0], pb[:, 1], s=28, color=SYNTHETIC, marker="x", alpha=0.8, zorder=3,
                    label=f"synthetic ({len(pb)})")
        ax2.set_title("radiomic features on the real images' first two principal components", fontsize=9)
        ax2.set_xlabel("PC 1", fontsize=8)
        ax2.set_ylabel("PC 2", fontsize=8)
        ax2.tick_params(labelsize=8)
        ax2.legend(fontsize=8, frameon=False)
        ax2.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_atomic(fig.savefig, path)
