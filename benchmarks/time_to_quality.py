"""Time to a useful generator: FRD and mask consistency against training CPU time, per JDM recipe.

Recipes (same data, same UNet, same batch, same constant learning rate after the warm-up, so only the
objective differs):

* ``diffusion-v``            v-prediction on the cosine schedule with min-SNR-5 (the tiny/small default);
* ``flow-logit-normal``      rectified flow, t ~ sigmoid(N(0, 1));
* ``flow-uniform``           rectified flow, t ~ U(0, 1).

Each recipe trains in chunks (``--resume`` to more steps: with a constant lr the chunks are one run).
After each chunk its generator samples the same number of joint pairs with a many-step sampler of its
objective (DPM-Solver++ 25 / Heun 13 = 25 evaluations, so the sampler does not limit the comparison),
scored by FRD against the real training images and by mask consistency (a real-only nnU-Net).
The x axis is the process CPU time spent in training (robust on a shared machine; on an idle one it
is about cores x wall time).

    python benchmarks/time_to_quality.py [--dataset ID --model-dir NNUNET_TRAINING_OUTPUT --folds 0]
        [--chunks 100,200,400,700] [--resolution 32] [--plot curve.png]

Without --dataset it uses the built-in example dataset and trains its 5-epoch real-only nnU-Net first.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import nnunet_folders, print_table  # noqa: E402

RECIPES = {
    "diffusion-v": {"objective": "diffusion"},
    "flow-logit-normal": {"objective": "flow", "flow_t": "logit-normal"},
    "flow-uniform": {"objective": "flow", "flow_t": "uniform"},
}
SAMPLING = {"diffusion": ("dpmsolver++", 25), "flow": ("heun", 13)}


def _train_chunk(dataset: str, output: Path, recipe: dict, steps: int, resolution: int) -> float:
    """Train ``output`` up to ``steps``; returns the CPU seconds this chunk took."""
    from nnaug.train_generator import train_generator

    overrides = {**recipe, "steps": steps, "lr_schedule": "constant", "checkpoint_every": steps,
                 "resolution": resolution}
    resume = (output / "checkpoints").is_dir()
    start = time.process_time()
    train_generator(dataset, model="jdm", preset="tiny", output=output, resume=resume, cpu=True, progress=False,
                    overrides={"steps": steps} if resume else overrides)
    return time.process_time() - start


def _score(real, generator: Path, objective: str, model_dir: Path, folds: list, ratio: float, output_id: int) -> dict:
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.mask_consistency import mask_consistency
    from nnaug.synthesis import SynthesisOptions, synthesize

    sampler, steps = SAMPLING[objective]
    folder = synthesize(real.name, SynthesisOptions(ratio=ratio, generator=generator, sampler=sampler, steps=steps,
                                                    output_id=output_id, overwrite=True, device="cpu"), progress=False)
    frd = synthetic_fidelity(real, folder, fid=False)["frd"]
    return {"frd": frd, "mask_consistency": mask_consistency(folder, model_dir, folds=folds)["mean_dice"]}


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for recipe in RECIPES:
        points = [r for r in rows if r["recipe"] == recipe]
        for ax, key in zip(axes, ("frd", "mask_consistency")):
            ax.plot([p["cpu_seconds"] / 60 for p in points], [p[key] for p in points], "o-", label=recipe)
    axes[0].set_title("FRD vs the real images (lower is better)", fontsize=9)
    axes[1].set_title("mask consistency (higher is better)", fontsize=9)
    # from 0 (FRD: log of a distance, may be below 0), so that one-run noise does not look like a trend
    axes[0].set_ylim(min(0.0, *(r["frd"] for r in rows)), 1.1 * max(r["frd"] for r in rows))
    axes[1].set_ylim(0, 1)  # a Dice, on its whole scale
    for ax in axes:
        ax.set_xlabel("training CPU minutes")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="raw dataset ID or name (default: the example, built here)")
    parser.add_argument("--model-dir", type=Path, help="nnU-Net training output folder of a real-only model")
    parser.add_argument("--folds", default="0")
    parser.add_argument("--chunks", default="100,200,400,700", help="cumulative training steps at which to score")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=2.0, help="synthetic pairs per real case, per point")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=Path("time_to_quality.png"))
    args = parser.parse_args()

    from nnaug.dataset import load_raw_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="nnaug-ttq-"))
    if args.dataset is None or args.model_dir is None:
        from jdm_sampling import _example_real_only

        nnunet_folders(work)
        args.dataset, args.model_dir = "999", _example_real_only(work)
    folds = [f if f == "all" else int(f) for f in args.folds.split(",")]
    real = load_raw_dataset(args.dataset)
    rows_file = work / "time_to_quality.json"
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
    for r_index, recipe in enumerate(args.recipes.split(",")):
        output, cpu = work / "generators" / recipe, 0.0
        for c_index, steps in enumerate(int(s) for s in args.chunks.split(",")):
            done = next((r for r in rows if r["recipe"] == recipe and r["steps"] == steps), None)
            if done:
                cpu = done["cpu_seconds"]
                continue
            cpu += _train_chunk(args.dataset, output, RECIPES[recipe], steps, args.resolution)
            score = _score(real, output, RECIPES[recipe]["objective"], args.model_dir, folds, args.ratio,
                           800 + 10 * r_index + c_index)
            rows.append({"recipe": recipe, "steps": steps, "cpu_seconds": cpu, **score})
            rows_file.write_text(json.dumps(rows, indent=1))
            print(rows[-1], flush=True)
    _plot(rows, args.plot)
    print(f"\n{real.name}, {args.resolution} px, JDM tiny widths, constant lr; sampling: "
          f"{', '.join(f'{k} {s} {n}' for k, (s, n) in SAMPLING.items())}; plot: {args.plot}")
    print_table(["recipe", "steps", "training CPU min", "FRD", "mask consistency"],
                [[r["recipe"], r["steps"], r["cpu_seconds"] / 60, r["frd"], r["mask_consistency"]] for r in rows])


if __name__ == "__main__":
    main()
