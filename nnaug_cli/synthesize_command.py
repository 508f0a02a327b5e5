"""``nnaug synthesize``."""
from __future__ import annotations

from pathlib import Path

import click

from nnaug.choices import MASK_SOURCES, MODES
from nnaug.samplers import SAMPLERS
from nnaug_cli.params import CONSISTENCY, DATASET_ID, POSITIVE, POSITIVE_FLOAT, Shard


@click.command()
@click.argument("dataset")
@click.option("--ratio", type=float, required=True, help="Synthetic cases per real training case (5.0 = 500 %).")
@click.option("--generator", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Generator folder. Default: the latest generator trained on DATASET.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="joint: image and mask sampled together (JDM). Default: joint for JDM, mask-conditioned otherwise.")
@click.option("--masks", type=click.Choice(MASK_SOURCES), default="train", show_default=True,
              help="mask-conditioned: the real training masks in turn, or randomly scaled/rotated/shifted/flipped copies.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="Default: unipc for a diffusion JDM and a pixel-space Siamese-Diffusion, heun for a flow-matching "
                   "JDM (--objective flow; euler and heun fit only those), ddim for Siamese-Diffusion on SD 1.5.")
@click.option("--steps", type=POSITIVE, default=None,
              help="Sampling steps. Default: 10 for a diffusion JDM and a pixel-space Siamese-Diffusion (unipc), "
                   "9 for a flow JDM (heun: 17 network evaluations), 50 for Siamese-Diffusion on SD 1.5 (ddim).")
@click.option("--batch-size", type=POSITIVE, default=None,
              help="Cases per batch. Default: 64 on a GPU (halved while one does not fit), 8 on the CPU.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Global seed; case i gets its own seed from it.")
@click.option("--output-id", type=DATASET_ID, default=None, help="Dataset ID of the output (default: next free ID).")
@click.option("--mix", is_flag=True, help="Write real + synthetic cases, with splits_final.json keeping synthetic cases out of validation.")
@click.option("--aug-scale", nargs=2, type=POSITIVE_FLOAT, default=(0.75, 1.25), show_default=True, help="--masks augmented: scale range.")
@click.option("--aug-rotation", type=click.FloatRange(0, 180), default=180.0, show_default=True, help="--masks augmented: max rotation (degrees).")
@click.option("--aug-shift", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="--masks augmented: max shift (fraction of the side).")
@click.option("--aug-flip/--no-aug-flip", default=True, show_default=True)
@click.option("--min-consistency", type=CONSISTENCY, default=None, metavar="D",
              help="Keep only candidates whose mask a real-only nnU-Net finds again with Dice >= D (0 < D <= 1), "
                   "until R x N are kept.")
@click.option("--filter-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="--min-consistency: nnU-Net training output folder that scores the candidates. "
                   "Default: the real-only model nnaug report uses.")
@click.option("--max-components", type=POSITIVE, default=None, metavar="N",
              help="Keep only candidates whose every label has at most N connected components (e.g. 1: one polyp "
                   "per image, as in the real masks), until --ratio's cases are kept; combines with --min-consistency.")
@click.option("--max-candidates", type=POSITIVE, default=None,
              help="--min-consistency / --max-components: candidates tried at most before refusing. "
                   "Default: 10 x R x N.")
@click.option("--shard", type=Shard(), default=None, help="Write only shard i of n (i/n); the last shard to finish assembles.")
@click.option("--merge", is_flag=True, help="Assemble a dataset whose shards are all written.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dataset.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (same options); done cases are kept.")
def synthesize(dataset, shard, aug_scale, aug_rotation, aug_shift, aug_flip, **options):
    """Write synthetic image-mask pairs for DATASET as a new nnU-Net raw dataset."""
    from nnaug.mask_augment import MaskAugmentation
    from nnaug.synthesis import SynthesisOptions
    from nnaug.synthesis import synthesize as run

    opts = SynthesisOptions(**options, shard=shard,
                            augmentation=MaskAugmentation(tuple(aug_scale), aug_rotation, aug_shift, aug_flip))
    folder = run(dataset, opts)
    if folder is None:
        click.echo("shard written; the remaining shards (or `--merge`) will assemble the dataset")
    else:
        click.echo(f"wrote {folder}")


COMMANDS = [synthesize]
