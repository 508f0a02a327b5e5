"""``nnaug sweep``."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from nnaug.choices import BUDGETS, DEVICES, MASK_SOURCES, MODES
from nnaug.samplers import SAMPLERS
from nnaug_cli.params import FloatList, FoldList


@click.command()
@click.argument("dataset")
@click.option("--ratios", type=FloatList(0.0), default="1,2.5,5", show_default=True,
              help="Synthetic cases per real case, comma-separated; one pretrain arm each (0 = the real-only arm, always run).")
@click.option("--seeds", type=click.IntRange(min=1, max=1000), default=3, show_default=True,
              help="How often each arm is trained (NNAUG_SEED = 0..n-1).")
@click.option("--generator", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Generator folder. Default: the latest generator trained on DATASET.")
@click.option("--test", "test", default=None, metavar="DATASET[,DATASET...]",
              help="Held-out raw datasets (IDs or names, comma-separated) to score every arm on, one sweep.md each; "
                   "adding one later trains nothing. Default: nnU-Net's 5-fold CV on the real cases.")
@click.option("--allow-overlap", is_flag=True,
              help="Score on a --test set even if some of its images have the very pixels of training cases (refused "
                   "by default; near-duplicates are only listed).")
@click.option("--folds", type=FoldList(), default=None,
              help="Folds to train: CV default 0,1,2,3,4; with --test default all (several: their ensemble predicts).")
@click.option("--budget", type=click.Choice(BUDGETS), default="small", show_default=True,
              help="tiny: nnaug's _5epochs trainers (tests, the example); small: 15+15 epochs x 25 iterations (CPU); "
                   "gpu: 100 x 250 pretraining + 150 x 250 fine-tuning.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), default=None,
              help="Pretraining epochs of the pretrain and real-twice arms (iterations per epoch stay the budget's). "
                   "Default: the budget's.")
@click.option("--finetune-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of real-only and of every arm's fine-tuning, e.g. 60 = 4x small's 15 (compute-matched: "
                   "pretraining + this). Default: the budget's. A changed budget trains into its own folders.")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="For nnUNetv2_train, synthesis and prediction. Default: cuda if available, else cpu.")
@click.option("--compute-matched/--no-compute-matched", default=True, show_default=True,
              help="Also train real-only as long as pretraining + fine-tuning together.")
@click.option("--real-twice/--no-real-twice", default=True, show_default=True,
              help="Also train the real->real control: the pretrain arms' trainer, schedule and restart, pretraining "
                   "on a copy of the real cases instead of a synthetic set.")
@click.option("--arms", default=None, metavar="KIND[,KIND...]",
              help="Train and evaluate only these kinds of arm: real-only, compute-matched, real-twice, pretrain, "
                   "mixed (real + synthetic in one training, as long as real-only; one arm per ratio) (default: all "
                   "but mixed). Without pretrain and mixed no generator is needed, e.g. --arms real-only to find the "
                   "budget where real-only stops improving.")
@click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="InceptionV3 weights for FID/KID/FRD. Default: torch-fidelity's cache, if present (else n/a).")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="Synthesis mode (default: joint for JDM, mask-conditioned otherwise).")
@click.option("--masks", type=click.Choice(MASK_SOURCES), default="train", show_default=True,
              help="mask-conditioned synthesis: the training masks, or augmented copies.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="Synthesis sampler (default: the generator's, as nnaug synthesize).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Synthesis sampling steps.")
@click.option("--min-consistency", type=FloatList(0.0), default="0", show_default=True,
              help="Synthesis filter thresholds, comma-separated: 0 = the unfiltered sets; each D in (0, 1] adds a "
                   "pretrain arm per ratio on a set kept at mask consistency >= D (scored by the sweep's real-only "
                   "run of seed 0), e.g. 0,0.7.")
@click.option("--max-components", type=click.IntRange(min=1), default=None, metavar="N",
              help="Every synthetic set keeps only pairs whose masks have at most N connected components per label "
                   "(nnaug synthesize --max-components); its pretrain arms train into their own folders.")
@click.option("--print-commands", is_flag=True,
              help="Make the synthetic sets, then print one nnUNetv2_train line per run not trained yet (for SLURM or "
                   "any scheduler) instead of training; the same nnaug sweep afterwards evaluates.")
@click.option("--overwrite", is_flag=True,
              help="Train this sweep's arms again (its real-only arms and this generator's pretrain arms).")
def sweep(dataset, **options):
    """Which synthetic ratio helps on DATASET: real-only vs pretrain -> fine-tune per ratio, seeds, 95 % CIs.

    Trains every arm x seed with nnUNetv2_train (each into its own nnUNet_results under
    $nnUNet_results/nnaug/<Dataset>/sweep/), evaluates, and writes sweep.md, sweep.json and
    sweep.png. Run the same command again to continue after a stop: finished runs are skipped.
    Start it in several processes (one per GPU or node) to share the runs between them.
    """
    from nnaug.experiment.plan import SweepRequest
    from nnaug.experiment.render import to_markdown
    from nnaug.sweep import run_sweep

    request = SweepRequest(dataset=dataset, **options)
    if request.print_commands:  # stdout is the commands alone: nnaug sweep ... --print-commands > runs.sh
        with _stdout_to_stderr():  # planning and synthesis talk (nnU-Net's subprocesses too)
            lines = run_sweep(request)
        click.echo("\n".join(lines))
        return
    for result in run_sweep(request):
        click.echo("")
        click.echo(to_markdown(result))


@contextlib.contextmanager
def _stdout_to_stderr():
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


COMMANDS = [sweep]
