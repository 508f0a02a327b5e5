"""``nnaug convert``, ``nnaug check`` and ``nnaug example-dataset``."""
from __future__ import annotations

from pathlib import Path

import click

from nnaug_cli.params import DATASET_ID, POSITIVE


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset-id", "-d", type=DATASET_ID, required=True, help="nnU-Net dataset ID of the new dataset (1-999).")
@click.option("--name", required=True, help="Dataset name, e.g. Kvasir -> Dataset501_Kvasir.")
@click.option("--images", default="images", show_default=True, help="Sub-folder of SOURCE with the images.")
@click.option("--masks", default="masks", show_default=True, help="Sub-folder of SOURCE with the masks (same file stems).")
@click.option("--threshold", type=float, default=None,
              help="Binarise masks at value > T (for noisy binary masks, e.g. JPEG). Default: detect.")
@click.option("--labels", "label_names", default=None,
              help="Comma-separated label names, background first, e.g. background,polyp.")
@click.option("--size", type=click.IntRange(min=8), default=None,
              help="Resize every case to SIZE x SIZE pixels (image bicubic, labels per class). Default: keep.")
@click.option("--split", default=None,
              help="Split the cases into several datasets, e.g. train=40,val=200,test=rest: IDs DATASET_ID, "
                   "DATASET_ID+1, ... named NAME+Part (Kvasir64Train, Kvasir64Val, ...).")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the split: the same files and seed give the same split anywhere.")
@click.option("--allow-overlap", is_flag=True,
              help="--split: write the parts even when two of them share an image's exact pixels (refused by default; "
                   "near-duplicates are only listed).")
@click.option("--overwrite", is_flag=True, help="Replace the dataset(s) if they exist.")
def convert(source, dataset_id, name, images, masks, threshold, label_names, size, split, split_seed, allow_overlap,
            overwrite):
    """Convert a folder SOURCE with images/ and masks/ into an nnU-Net raw dataset (or, with --split,
    into a training dataset and held-out datasets)."""
    from nnaug.convert import convert_folder, convert_split

    names = [n.strip() for n in label_names.split(",")] if label_names else None
    common = dict(images=images, masks=masks, threshold=threshold, label_names=names, overwrite=overwrite, size=size)
    if split is None:
        if allow_overlap:
            from nnaug.errors import NnaugError

            raise NnaugError("--allow-overlap only applies with --split (it compares the parts)")
        targets = [convert_folder(source, dataset_id, name, **common)]
    else:
        targets = convert_split(source, dataset_id, name, split, seed=split_seed, allow_overlap=allow_overlap, **common)
    for target in targets:
        _print_summary(target.name)
        click.echo(f"wrote {target}")


@click.command()
@click.argument("dataset")
def check(dataset):
    """Load DATASET (ID or name) exactly as the generators will and print a summary."""
    _print_summary(dataset)


@click.command("example-dataset")
@click.option("--dataset-id", "-d", type=DATASET_ID, default=999, show_default=True)
@click.option("--name", default="nnaugExample", show_default=True)
@click.option("--num-cases", type=POSITIVE, default=24, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the dataset if it exists.")
def example_dataset(dataset_id, name, num_cases, overwrite):
    """Write the small procedural example dataset (RGB 64x64, two blob classes) into $nnUNet_raw."""
    from nnaug.example import write_example_dataset

    target = write_example_dataset(dataset_id, name, num_cases=num_cases, overwrite=overwrite)
    click.echo(f"wrote {target}")


def _print_summary(dataset) -> None:
    from nnaug.dataset import check_dataset, load_raw_dataset

    raw = load_raw_dataset(dataset)
    summary = check_dataset(raw, progress=True)
    shapes = summary.shapes
    heights = sorted(s[0] for s in shapes)
    widths = sorted(s[1] for s in shapes)
    total = sum(summary.label_pixels.values())
    click.echo(f"{raw.name}  ({raw.folder})")
    click.echo(f"  cases      {summary.num_cases}  (2D, {raw.reader_writer.__name__}, {raw.file_ending})")
    click.echo(f"  channels   {raw.num_channels}: {', '.join(raw.channel_names)}  (intensities: {raw.intensity_mode})")
    label_names = {v: k for k, v in raw.labels.items()}
    freq = ", ".join(f"{v} {label_names[v]} {100 * summary.label_pixels[v] / total:.1f}%" for v in raw.label_values)
    click.echo(f"  labels     {freq}")
    click.echo(f"  sizes      {heights[0]}-{heights[-1]} x {widths[0]}-{widths[-1]} (median {summary.median_shape[0]}x{summary.median_shape[1]})")


COMMANDS = [convert, check, example_dataset]
