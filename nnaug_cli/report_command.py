"""``nnaug report``."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("dataset")
@click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="InceptionV3 weights file for FID/KID (torch-fidelity format). Default: torch-fidelity's "
                   "cached download, if present; nothing is downloaded.")
@click.option("--fidelity/--no-fidelity", default=None,
              help="Require FID/KID (error without weights) / skip them. Default: compute them when weights exist.")
@click.option("--folds", default=None, help="Folds to report, e.g. 0,1,2 (default: every fold found).")
@click.option("--max-images", type=click.IntRange(min=2), default=None,
              help="At most N cases per dataset for FID/KID and mask consistency (default: all).")
@click.option("--mask-consistency/--no-mask-consistency", default=True, show_default=True,
              help="Predict the synthetic images with the real-only nnU-Net model (when one is trained).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the nnU-Net predictions.")
def report(dataset, inception_weights, fidelity, folds, max_images, mask_consistency, device):
    """Fidelity (FID, KID, mask consistency) of DATASET's synthetic datasets, and nnU-Net Dice real-only vs pretrained.

    Reads $nnUNet_raw and nnU-Net's validation summary.json files; writes
    $nnUNet_results/nnaug/<Dataset>/report.{md,json,png}. Never trains.
    """
    from nnaug.report import build_report, parse_folds, to_markdown, write_report

    result = build_report(dataset, inception_weights=inception_weights, folds=parse_folds(folds),
                          max_images=max_images, fidelity=fidelity, mask_check=mask_consistency, device=device)
    paths = write_report(result)
    click.echo(to_markdown(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


COMMANDS = [report]
