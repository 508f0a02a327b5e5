"""report.html: one self-contained page (CSS inline, pictures embedded as base64 PNG) with the tables of
:mod:`~nnaug.report.tables`, the lines of :mod:`~nnaug.report.words`, and each synthetic set's pictures."""
from __future__ import annotations

import html
from pathlib import Path

from nnaug.report.markdown import demote_headings
from nnaug.report.tables import (closest_pairs_table, dice_per_fold_table, dice_summary_table, html_table,
                                 synthetic_table)
from nnaug.report.words import consistency_line, dice_difference_line, fmt_frd, memorisation_line, method_notes

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


def img_tag(path, alt: str) -> str:
    import base64

    if not path or not Path(path).is_file():
        return f'<p class="na">({html.escape(alt)}: no picture)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def markdown_to_html(text: str) -> str:
    """Markdown nnaug wrote (the sweep's sweep.md) as HTML, by Python-Markdown with its tables extension;
    headings one level down (they sit under the report's own), pictures left out (the page embeds them)."""
    import markdown

    lines = [line for line in demote_headings(text) if not line.startswith("![")]
    body = markdown.markdown("\n".join(lines), extensions=["tables"], output_format="html")
    return body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def at_a_glance(report: dict) -> list[tuple[str, str]]:
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

    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>nnaug report: {e(report['dataset'])}</title>", f"<style>{_CSS}</style></head><body><main>",
           f"<h1>nnaug report: {e(report['dataset'])}</h1>",
           f'<p class="sub">{report["num_real_cases"]} real training cases · {len(report["synthetic"])} synthetic '
           f'dataset(s) · {len(report["dice"])} validation summaries · written '
           f'{datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}</p>']
    for w in report.get("warnings", []):
        out.append(f'<div class="warn"><b>warning:</b> {e(w)}</div>')

    glance = at_a_glance(report)
    if glance:
        out.append('<div class="glance">' + "".join(
            f'<div class="kpi"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>' for k, v in glance) + "</div>")
    out += _html_synthetic_table(report) + _html_dice(report) + _html_sweep(report)
    for r in report["synthetic"]:
        out += _html_synthetic_section(r, report)
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _html_synthetic_table(report: dict) -> list[str]:
    e = html.escape
    out = ["<h2>Synthetic datasets</h2>"]
    if report["synthetic"]:
        out.append('<div class="card">' + html_table(synthetic_table(report)))
        out += [f'<p class="note">{e(n).replace("*image*", "<i>image</i>").replace("*mask ROI*", "<i>mask ROI</i>").replace("`", "")}</p>'
                for n in method_notes(report) if n]
        out.append("</div>")
    else:
        out.append(f'<p class="note">No synthetic dataset in $nnUNet_raw names {e(report["dataset"])} as its source '
                   "(make one with <code>nnaug synthesize</code>).</p>")
    return out


def _html_dice(report: dict) -> list[str]:
    out = ["<h2>Segmentation Dice (nnU-Net validation)</h2>"]
    if report["dice"]:
        out.append('<div class="card"><h3>Mean over folds</h3>' + html_table(dice_summary_table(report)))
        out.append('<div class="chart">' + img_tag(report.get("files", {}).get("bar_chart"), "foreground Dice per fold"))
        out.append('<p class="cap">Validation foreground Dice per fold (nnU-Net summary.json).</p></div>')
        out.append("<h3>Per fold</h3>" + html_table(dice_per_fold_table(report)))
        out.append('<p class="cap">Rows edged blue: real-only; orange: pretrain→fine-tune.</p></div>')
    else:
        out.append(f'<p class="note">No validation summary.json under $nnUNet_results/{html.escape(report["dataset"])} yet.</p>')
    return out


def _html_sweep(report: dict) -> list[str]:
    e = html.escape
    out = ["<h2>Latest sweep (<code>nnaug sweep</code>)</h2>"]
    sweep = report.get("sweep")
    if sweep:
        out.append('<div class="card">' + markdown_to_html(sweep["markdown"]))
        if sweep.get("png"):
            out.append('<div class="chart">' + img_tag(sweep["png"], "sweep: Dice vs ratio") + "</div>")
        out.append("</div>")
    else:
        out.append(f'<p class="note">No finished sweep of {e(report["dataset"])} yet '
                   f"(<code>nnaug sweep {e(report['dataset'])} --ratios 1,5 --seeds 3</code>).</p>")
    return out


def _html_synthetic_section(r: dict, report: dict) -> list[str]:
    """report.html's section of one synthetic dataset: contact sheets, memorisation, mask consistency."""
    e = html.escape
    files = r.get("files", {})
    out = []
    out.append(f"<h2>{e(r['dataset'])}</h2><div class=\"card\"><div class=\"row\"><div>")
    out.append(f"<h3>Synthetic pairs (image | mask overlay)</h3>{img_tag(files.get('contact_sheet'), 'synthetic contact sheet')}")
    out.append("</div><div>")
    out.append(f"<h3>Real training pairs</h3>{img_tag(report.get('files', {}).get('real_contact_sheet'), 'real contact sheet')}")
    out.append("</div></div>")
    m = r.get("memorisation")
    if m:
        out.append("<h3>Memorisation</h3>")
        line = memorisation_line(r).replace("**", "")
        out.append(f'<p class="{"alert" if m["alarm"] else "note"}">{e(line)}.</p>')
        out.append('<div class="row"><div style="flex:1 1 560px">')
        out.append(img_tag(files.get("memorisation"), "closest pairs"))
        out.append('<p class="cap">The most copy-like synthetic cases: synthetic image | its mask || most similar '
                   "real training image | its mask (top row most similar).</p></div><div>")
        out.append(img_tag(files.get("nearest"), "nearest-real similarities"))
        out.append(html_table(closest_pairs_table(m)) + "</div></div>")
    line = consistency_line(r)
    if line:
        out.append(f'<h3>Mask consistency</h3><p class="note">{e(line)}.</p>')
        if files.get("consistency"):
            out.append('<div class="chart">' + img_tag(files["consistency"], "per-case mask consistency") + "</div>")
    from nnaug.report.realism import html_lines as realism_html

    out += realism_html(r, img_tag)
    out.append("</div>")
    return out

