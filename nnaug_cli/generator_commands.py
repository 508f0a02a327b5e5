"""``nnaug train-generator`` and ``nnaug distill-generator``."""
from __future__ import annotations

from pathlib import Path

import click

from nnaug.choices import BACKBONES, FLOW_T, LR_SCHEDULES, MIXED_PRECISION, NOISE_SCHEDULES, OBJECTIVES, PREDICTIONS
from nnaug_cli.params import POSITIVE, POSITIVE_FLOAT, GeneratorModel, IntList


@click.command("train-generator")
@click.argument("dataset")
@click.option("--model", type=GeneratorModel(), default="jdm", show_default=True,
              help="jdm or siamese, or a generator another package registered.")
@click.option("--preset", default="small", show_default=True,
              help="Built-in generators: tiny (seconds per step on a CPU), small (64-128 px, about a GPU-hour), "
                   "paper (the published setting).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Generator folder. Default: $nnUNet_results/nnaug/<Dataset>/generators/<model>_<preset>.")
@click.option("--steps", type=POSITIVE, help="Optimizer steps (preset value if not given).")
@click.option("--batch-size", type=POSITIVE)
@click.option("--grad-accum", type=POSITIVE, help="Micro-batches per optimizer step (effective batch = batch-size x this).")
@click.option("--lr", type=POSITIVE_FLOAT, help="AdamW learning rate (peak, after the warm-up).")
@click.option("--lr-schedule", type=click.Choice(list(LR_SCHEDULES)), default=None,
              help="After the warm-up: linear decay to 0 (tiny/small), constant (siamese paper, as published), or cosine.")
@click.option("--grad-clip", "max_grad_norm", type=click.FloatRange(min=0), default=None,
              help="Clip the gradient norm at this value; 0 = no clipping (default 1.0; siamese paper: 0, as published).")
@click.option("--resolution", type=click.IntRange(min=8), help="Square training resolution in pixels.")
@click.option("--channels", type=IntList(), help="UNet widths per level, e.g. 64,128,256.")
@click.option("--layers-per-block", type=POSITIVE)
@click.option("--attention-resolutions", type=IntList(example="16,8"), help="Feature-map sizes with self-attention, e.g. 16,8 (jdm).")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear lr warm-up steps.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True))
@click.option("--ema-warmup/--no-ema-warmup", default=None,
              help="EMA decay that grows with the step count (1 - (1+step)^-3/4, capped at --ema-decay).")
@click.option("--prediction", type=click.Choice(PREDICTIONS), default=None,
              help="jdm and siamese pixel: what the UNet predicts (paper: epsilon; tiny/small: v).")
@click.option("--learned-variance/--fixed-variance", default=None,
              help="jdm: learned-range variance and the hybrid loss (paper), or fixed variance and MSE only.")
@click.option("--snr-gamma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="jdm and siamese: min-SNR-gamma loss weighting (tiny/small: 5).")
@click.option("--noise-schedule", type=click.Choice(NOISE_SCHEDULES), default=None,
              help="jdm and siamese pixel: beta schedule over T = 1000 steps (paper: linear; tiny/small: cosine).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="jdm: diffusion (default) or rectified flow (velocity on a straight noise path; samplers euler, heun).")
@click.option("--flow-t", type=click.Choice(FLOW_T), default=None,
              help="jdm --objective flow: how training draws t in (0, 1) (default logit-normal).")
@click.option("--ema/--no-ema", "use_ema", default=None, help="Keep an EMA of the weights (exported weights are the EMA).")
@click.option("--augment/--no-augment", default=None, help="Random flips and rot90, identical for image and mask.")
@click.option("--checkpoint-every", type=POSITIVE, help="Steps between checkpoints, contact sheets and loss curves.")
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default=None)
@click.option("--tf32/--no-tf32", default=None, help="GPU: TF32 for float32 matmuls and convolutions (Ampere and newer).")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC weights and batches (faster convolutions on tensor cores).")
@click.option("--fused-adamw/--no-fused-adamw", default=None, help="One fused kernel for the AdamW update.")
@click.option("--compile/--no-compile", default=None,
              help="torch.compile the networks: faster steps after a compile of a minute or more at the start.")
@click.option("--cpu", is_flag=True, help="Train on the CPU even if a GPU is present.")
@click.option("--report-to", default=None, metavar="TRACKER",
              help="Log loss, lr and the contact sheets to an accelerate tracker: tensorboard (files under "
                   "<output>/logs), wandb, mlflow, ... Off by default; the tracker's package must be installed.")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="siamese: pixel space or Stable Diffusion 1.5.")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="siamese sd15: local diffusers SD 1.5 folder.")
@click.option("--prompt", default=None, help='siamese sd15: text prompt (default "A photo of a polyp.").')
@click.option("--consistency/--no-consistency", default=None, help="siamese: noise-consistency losses (off = plain ControlNet).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True, help="Start over, deleting an earlier run in the output folder.")
def train_generator(dataset, model, preset, output, resume, overwrite, cpu, channels, attention_resolutions, **options):
    """Train a diffusion generator on the raw dataset DATASET (ID or name)."""
    from nnaug.train_generator import train_generator as run

    options["channels"], options["attention_resolutions"] = channels, attention_resolutions
    options["base_model"] = str(options["base_model"]) if options["base_model"] else None
    folder = run(dataset, model=model, preset=preset, output=output, resume=resume, overwrite=overwrite,
                 overrides=options, cpu=cpu)
    click.echo(f"generator written to {folder}")


@click.command("distill-generator")
@click.argument("dataset")
@click.option("--generator", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The teacher: a diffusion JDM folder trained on DATASET. Default: the latest generator trained on "
                   "DATASET (if that is a distilled student, its teacher).")
@click.option("--student-steps", type=click.IntRange(1, 100), default=None,
              help="DDIM steps (= network evaluations) the student samples in (default 4).")
@click.option("--teacher-steps", type=POSITIVE, default=None,
              help="The teacher's DDIM steps over the whole schedule that the student learns to follow "
                   "(default 48, split evenly over the student's steps).")
@click.option("--mask-share", type=click.FloatRange(0, 1), default=None,
              help="Share of each batch distilled for mask-conditioned sampling (the rest: joint pairs; default 0.5).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Student folder. Default: beside the teacher, <teacher>_ddim<student steps>.")
@click.option("--steps", type=POSITIVE, help="Optimizer steps (default 400).")
@click.option("--batch-size", type=POSITIVE)
@click.option("--lr", type=POSITIVE_FLOAT, help="AdamW learning rate after the warm-up (default 5e-4, decaying linearly to 0).")
@click.option("--checkpoint-every", type=POSITIVE, help="Steps between checkpoints and contact sheets (default 100).")
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--cpu", is_flag=True, help="Train on the CPU even if a GPU is present.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True, help="Start over, deleting an earlier run in the output folder.")
def distill_generator(dataset, generator, student_steps, teacher_steps, mask_share, output, resume, overwrite, cpu,
                      **training):
    """Distill a trained diffusion JDM into a student that samples in a few DDIM steps (DATASET: its training data)."""
    from nnaug.distill_generator import distill_generator as run

    folder = run(dataset, teacher=generator, output=output, resume=resume, overwrite=overwrite, cpu=cpu,
                 distill={"student_steps": student_steps, "teacher_steps": teacher_steps, "mask_share": mask_share},
                 overrides=training)
    click.echo(f"distilled generator written to {folder}")


COMMANDS = [train_generator, distill_generator]
