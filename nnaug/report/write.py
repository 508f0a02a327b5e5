"""Writing the report: report.json, report.md and report.html from one computed report, report.png and the
pictures made from its numbers."""
from __future__ import annotations

from pathlib import Path

from nnaug.report.collect import report_folder
from nnaug.report.figures import bar_chart, consistency_histogram, nearest_histogram
from nnaug.report.html import to_html
from nnaug.report.markdown import to_markdown

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

