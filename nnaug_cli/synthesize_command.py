"""``nnaug synthesize``."""
from __future__ import annotations

from pathlib import Path

import click


def _shard(value: str | None):
    if not value:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter("use the form i/n, e.g. 0/4") from None
    return index, count


@click.command()
@click.argument("dataset")
@click.option("--ratio", type=float, required=True, help="Synthetic cases per real training case (5.0 = 500 %).")
@click.option("--generator", type=click.Path(path_type=Path), default=None,
              help="Generator folder. Default: the latest generator trained on DATASET.")
@click.option("--mode", type=click.Choice(["joint", "mask-conditioned"]), default=None,
              help="joint: image and mask sampled together (JDM). Default: joint for JDM, mask-conditioned otherwise.")
@click.option("--masks", type=click.Choice(["train", "augmented"]), default="train", show_default=True,
              help="mask-conditioned: the real training masks in turn, or randomly scaled/rotated/shifted/flipped copies.")
@click.option("--sampler", type=click.Choice(["ddim", "dpmsolver++", "ddpm", "unipc"]), default=None,
              help="Default: ddpm (ancestral, learned variance) for JDM, ddim for Siamese-Diffusion.")
@click.option("--steps", type=int, default=None, help="Sampling steps. Default: 25 for JDM (dpmsolver++), 50 for Siamese-Diffusion (ddim).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed; case i gets its own seed from it.")
@click.option("--output-id", type=int, default=None, help="Dataset ID of the output (default: next free ID).")
@click.option("--mix", is_flag=True, help="Write real + synthetic cases, with splits_final.json keeping synthetic cases out of validation.")
@click.option("--aug-scale", nargs=2, type=float, default=(0.75, 1.25), show_default=True, help="--masks augmented: scale range.")
@click.option("--aug-rotation", type=float, default=180.0, show_default=True, help="--masks augmented: max rotation (degrees).")
@click.option("--aug-shift", type=float, default=0.25, show_default=True, help="--masks augmented: max shift (fraction of the side).")
@click.option("--aug-flip/--no-aug-flip", default=True, show_default=True)
@click.option("--shard", default=None, help="Write only shard i of n (i/n); the last shard to finish assembles.")
@click.option("--merge", is_flag=True, help="Assemble a dataset whose shards are all written.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dataset.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (same options); done cases are kept.")
def synthesize(dataset, shard, aug_scale, aug_rotation, aug_shift, aug_flip, **options):
    """Write synthetic image-mask pairs for DATASET as a new nnU-Net raw dataset."""
    from nnaug.mask_augment import MaskAugmentation
    from nnaug.synthesize import SynthesisOptions
    from nnaug.synthesize import synthesize as run

    opts = SynthesisOptions(**options, shard=_shard(shard),
                            augmentation=MaskAugmentation(tuple(aug_scale), aug_rotation, aug_shift, aug_flip))
    folder = run(dataset, opts)
    if folder is None:
        click.echo("shard written; the remaining shards (or `--merge`) will assemble the dataset")
    else:
        click.echo(f"wrote {folder}")


COMMANDS = [synthesize]
