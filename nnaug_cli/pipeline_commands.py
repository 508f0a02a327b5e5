"""``nnaug demo`` and ``nnaug trainers-path``."""
from __future__ import annotations

from pathlib import Path

import click

from nnaug_cli.params import GeneratorModel


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("nnaug-demo"), show_default=True,
              help="Folder for the demo's own nnUNet_raw / nnUNet_preprocessed / nnUNet_results.")
@click.option("--model", type=GeneratorModel(), default="jdm", show_default=True,
              help="The generator: jdm (joint pairs) or siamese (images for the training masks), tiny preset.")
@click.option("--generator-steps", type=click.IntRange(min=1), default=None,
              help="Generator training steps (default: the tiny preset's; jdm 700, siamese 200).")
@click.option("--ratio", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Start over if the work folder is not empty.")
def demo(workdir, model, generator_steps, ratio, device, overwrite):
    """Run the whole pipeline on the built-in example dataset (minutes on a CPU)."""
    from nnaug.demo import run_demo

    run_demo(workdir, generator_steps=generator_steps, ratio=ratio, overwrite=overwrite, device=device, model=model)


@click.command("trainers-path")
def trainers_path():
    """Print the folder for nnUNet_extTrainer: export nnUNet_extTrainer=$(nnaug trainers-path)."""
    from nnaug.nnunet_pretraining import trainers_path as path

    click.echo(path())


COMMANDS = [demo, trainers_path]
