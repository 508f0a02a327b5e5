"""``nnaug report``."""
from __future__ import annotations

from pathlib import Path

import click

from nnaug.choices import FRD_ROIS
from nnaug_cli.params import FoldList


@click.command()
@click.argument("dataset")
@click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="InceptionV3 weights file for FID/KID (torch-fidelity format). Default: torch-fidelity's cache, "
                   "downloaded there on first use when online.")
@click.option("--fidelity/--no-fidelity", default=None,
              help="Demand FID/KID (exit 2 without weights) / skip them. Default: compute them when weights can be "
                   "had; otherwise one warning line and the other metrics go on.")
@click.option("--frd/--no-frd", default=None,
              help="Demand FRD (exit 2 if it cannot be computed) / skip it. Default: computed (frd-score, no weights).")
@click.option("--frd-roi", type=click.Choice(FRD_ROIS), default="both", show_default=True,
              help="FRD over the whole image, over the masks' foreground, or both.")
@click.option("--frd-image-types", default=None, metavar="LIST",
              help="frd-score's feature subset: PyRadiomics image types, e.g. Original (fastest) or Original,LoG. "
                   "Default: Original,LoG,Wavelet (FRDv1).")
@click.option("--frd-features", default=None, metavar="LIST",
              help="frd-score's feature subset: PyRadiomics feature classes, e.g. firstorder,glcm. "
                   "Default: FRDv1's firstorder,glcm,glrlm,glszm,ngtdm.")
@click.option("--memorisation/--no-memorisation", default=True, show_default=True,
              help="Nearest-real distances of the synthetic images and their closest pairs.")
@click.option("--folds", type=FoldList(), default=None, help="Folds to report, e.g. 0,1,2 (default: every fold found).")
@click.option("--max-images", type=click.IntRange(min=2), default=None,
              help="At most N cases per dataset (spread evenly) for FRD, FID/KID, memorisation and mask consistency "
                   "(default: all).")
@click.option("--mask-consistency/--no-mask-consistency", default=True, show_default=True,
              help="Predict the synthetic images with the real-only nnU-Net model (when one is trained).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the nnU-Net predictions.")
def report(dataset, inception_weights, fidelity, frd, frd_roi, frd_image_types, frd_features, memorisation, folds,
           max_images, mask_consistency, device):
    """FRD, FID/KID, memorisation and mask consistency of DATASET's synthetic datasets, and nnU-Net Dice real-only vs pretrained.

    Reads $nnUNet_raw and nnU-Net's validation summary.json files; writes
    $nnUNet_results/nnaug/<Dataset>/report.{md,json,html,png}. Never trains.
    """
    from nnaug.frd import parse_list
    from nnaug.report import build_report, to_markdown, write_report

    rois = ("image", "mask") if frd_roi == "both" else (frd_roi,)
    image_types = parse_list(frd_image_types, "image_types", "--frd-image-types") if frd is not False else None
    features = parse_list(frd_features, "feature_classes", "--frd-features") if frd is not False else None
    result = build_report(dataset, inception_weights=inception_weights, folds=folds or None,
                          max_images=max_images, fidelity=fidelity, mask_check=mask_consistency, device=device,
                          frd=frd, frd_roi=rois, frd_image_types=image_types, frd_features=features,
                          memorisation=memorisation)
    paths = write_report(result)
    click.echo(to_markdown(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


COMMANDS = [report]
