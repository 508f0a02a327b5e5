"""report.md: the report's tables (:mod:`~nnaug.report.tables`) and lines (:mod:`~nnaug.report.words`) as
Markdown, the latest sweep's own sweep.md one heading level down."""
from __future__ import annotations

from pathlib import Path

from nnaug.report.tables import dice_per_fold_table, dice_summary_table, markdown_table, synthetic_table
from nnaug.report.words import consistency_line, dice_difference_line, memorisation_line, method_notes


def demote_headings(text: str, drop_title: bool = True) -> list[str]:
    """Markdown nnaug wrote (a sweep.md) one heading level down, to sit under the report's own headings; its
    ``# nnaug sweep`` title left out (``drop_title``)."""
    return [("#" + line) if line.startswith("#") else line for line in text.splitlines()
            if not (drop_title and line.startswith("# nnaug sweep"))]


def to_markdown(report: dict) -> str:
    from nnaug.report.realism import markdown_lines as realism_markdown

    lines = [f"# nnaug report: {report['dataset']}", ""]
    lines += [f"Real dataset: {report['dataset']} ({report['num_real_cases']} cases). "
              f"Inception weights: {report['inception_weights'] or 'none'}.", ""]
    for w in report.get("warnings", []):
        lines += [f"> **warning:** {w}", ""]
    lines += ["## Synthetic datasets", ""]
    if report["synthetic"]:
        lines += markdown_table(synthetic_table(report))
        lines += [""] + method_notes(report)
        lines += _synthetic_notes(report)
        lines += realism_markdown(report)
    else:
        lines.append(f"No synthetic dataset in $nnUNet_raw names {report['dataset']} as its source "
                     "(make one with `nnaug synthesize`).")
    lines += ["", "## Segmentation Dice (nnU-Net validation, summary.json)", ""]
    if report["dice"]:
        lines += markdown_table(dice_per_fold_table(report))
        lines += ["", "Mean over folds:", ""] + markdown_table(dice_summary_table(report))
        difference = dice_difference_line(report)
        if difference:
            lines += ["", f"{difference[0]}: {difference[1]}."]
    else:
        lines.append(f"No validation summary.json under $nnUNet_results/{report['dataset']} yet "
                     "(train with nnUNetv2_train, e.g. -tr nnUNetTrainer_nnaug and -tr nnUNetTrainer_nnaugPretrainFinetune).")
    lines += ["", "## Latest sweep (`nnaug sweep`)", ""]
    sweep = report.get("sweep")
    if sweep:
        lines += demote_headings(sweep["markdown"])
        if sweep.get("png"):  # sweep.png lies in the report's own folder
            lines += ["", f"![sweep: Dice vs ratio]({Path(sweep['png']).name})"]
    else:
        lines.append(f"No finished sweep of {report['dataset']} yet (`nnaug sweep {report['dataset']} --ratios 1,5 --seeds 3`).")
    return "\n".join(lines) + "\n"


def _synthetic_notes(report: dict) -> list[str]:
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

