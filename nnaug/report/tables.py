"""The report's tables as one model (:class:`Table`), rendered by :func:`markdown_table` for report.md and by
:func:`html_table` for report.html: the two files carry the same tables because they are made from the same rows."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

from nnaug.report.words import fid_cell_texts, fmt, fmt_frd, mc_cell_texts


@dataclass
class Cell:
    text: str
    num: bool = False  # right-aligned, tabular figures in HTML
    css: str = ""  # an HTML class of its own (bad | good)


@dataclass
class Row:
    cells: list[Cell]
    css: str = ""  # an HTML class of the row (real-only | finetune | bad)


@dataclass
class Table:
    header: list[str]
    rows: list[Row] = field(default_factory=list)

    def add(self, *cells, css: str = "") -> None:
        """A row from cells or plain strings (a string is a text cell)."""
        self.rows.append(Row([c if isinstance(c, Cell) else Cell(str(c)) for c in cells], css))


def markdown_table(table: Table) -> list[str]:
    return (["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
            + ["| " + " | ".join(c.text for c in row.cells) + " |" for row in table.rows])


def _html_cell(cell: Cell) -> str:
    classes = [c for c in ("na" if cell.text.startswith(("n/a", "skipped", "—")) else "num" if cell.num else "",
                           cell.css) if c]
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attribute}>{html.escape(cell.text)}</td>"


def html_table(table: Table) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>"
    body = "".join((f'<tr class="{row.css}">' if row.css else "<tr>") + "".join(_html_cell(c) for c in row.cells)
                   + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table>{head}{body}</table></div>'


# ----------------------------------------------------------------------------- the report's own tables
def synthetic_table(report: dict) -> Table:
    """One row per synthetic set: fidelity, mask consistency, memorisation."""
    table = Table(["synthetic dataset", "ratio", "cases", "generator", "FRD (image)", "FRD (mask ROI)", "FID",
                   "KID (mean ± std)", "mask consistency", "MC ÷ real-only val. Dice",
                   "max similarity to real / copy threshold"])
    for r in report["synthetic"]:
        fid, kid = fid_cell_texts(r)
        mc, ratio = mc_cell_texts(r)
        generator = fmt(r["generator"]) + (f", {r['sampler']} {r['steps']}" if r.get("sampler") else "")
        table.add(r["dataset"], Cell(fmt(r["ratio"], 2), True), Cell(fmt(r["num_cases"]), True), generator,
                  Cell(fmt_frd(r.get("frd"), r.get("frd_note")), True),
                  Cell(fmt_frd(r.get("frd_roi"), r.get("frd_mask_note")), True), Cell(fid, True), Cell(kid, True),
                  Cell(mc, True), Cell(ratio, True), _memorisation_cell(r.get("memorisation")))
    return table


def _memorisation_cell(m: dict | None) -> Cell:
    if not m:
        return Cell("—")
    text = (f"{m['synthetic_quantiles']['max']:.3f} / {fmt(m['threshold'], 3)}"
            + (f" ({m['n_flagged']} above)" if m["n_flagged"] else ""))
    return Cell(text, True, "bad" if m["alarm"] else "good")


def _labels(report: dict) -> list[str]:
    return sorted({k for r in report["dice"] for k in r["dice"]})


def _kind_css(kind: str) -> str:
    return "real-only" if kind == "real-only" else "finetune"


def dice_per_fold_table(report: dict) -> Table:
    labels = _labels(report)
    table = Table(["trainer", "kind", "plans", "config", "fold", "foreground Dice", *labels, "pretrained on"])
    for r in report["dice"]:
        table.add(r["trainer"], r["kind"], r["plans"], r["configuration"], Cell(str(r["fold"]), True),
                  Cell(f"{r['foreground_dice']:.4f}", True), *(Cell(fmt(r["dice"].get(k)), True) for k in labels),
                  fmt(r["pretrained_on"]), css=_kind_css(r["kind"]))
    return table


def dice_summary_table(report: dict) -> Table:
    labels = _labels(report)
    table = Table(["trainer", "kind", "folds", "foreground Dice", *labels])
    for s in report["dice_summary"]:
        table.add(s["trainer"], s["kind"], ",".join(map(str, s["folds"])), Cell(f"{s['foreground_dice']:.4f}", True),
                  *(Cell(fmt(s["dice"].get(k)), True) for k in labels), css=_kind_css(s["kind"]))
    return table


def closest_pairs_table(m: dict, top: int = 8) -> Table:
    """The most copy-like synthetic cases of one set, flagged rows first marked."""
    table = Table(["synthetic", "most similar real", "NCC", "match", "mask 1−Dice"])
    for row in m["rows"][:top]:
        table.add(row["case"], row["nearest_by_image"], Cell(f"{row['image_similarity']:.3f}", True), row["match"],
                  Cell(f"{row['mask_distance']:.3f}", True), css="bad" if row["flagged"] else "")
    return table
