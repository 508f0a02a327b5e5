"""Siamese-Diffusion ablation: what does the noise-consistency loss buy, and how does it compare with the JDM?

Three generators train on the same 40 cases with the same **wall-clock budget** (``--seconds``, per arm; or
the same steps with ``--steps``): Siamese-Diffusion (pixel backbone), the same with ``--no-consistency``
(plain ControlNet, L0 only) and the JDM. Each uses its own ``--preset`` with the same resolution, widths,
batch size and seed. For the time budget, each arm's seconds per step are measured first (the median of 10
timed steps of a short run), and the arm then trains
``budget / (s/step)`` steps, its whole lr schedule in that budget. Each then completes the training masks
(``nnaug synthesize --ratio R --mode mask-conditioned``, its default sampler), and is scored by

* FRD against the training images (frd-score), and KID/FID (``--inception-weights`` / torch-fidelity's
  cache when present, else a fixed-seed random extractor: compare arms only);
* mask consistency: Dice between each requested mask and a real-trained nnU-Net's prediction on the
  generated image (``--mask-model``: an nnU-Net training output folder trained on the same cases);
* seconds per step, steps trained, and the peak resident memory above the start (CPU) or peak CUDA memory.

Data: ``--dataset ID`` takes a raw dataset from ``$nnUNet_raw`` (e.g. the Kvasir-SEG experiment's 40
training cases, Dataset601, with its real-only judge as ``--mask-model``; synthetic sets are written there
as Dataset511-513, replaced on every run); without it, the first 40 cases of kvasir-seg-80 at ``--size``.

    python benchmarks/siamese_ablation.py [--dataset 601 --mask-model DIR] [--seconds 600 | --steps 300]
        [--preset tiny] [--resolution 64] [--channels 32,64,64,128] [--ratio 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KVASIR_DEFAULT, PeakMemory, kvasir_split, nnunet_folders, print_table  # noqa: E402

TRAIN_ID, HELDOUT_ID = 501, 502
ARMS = {  # name -> (model, extra settings)
    "Siamese-Diffusion": ("siamese", {"consistency": True}),
    "plain ControlNet (--no-consistency)": ("siamese", {"consistency": False}),
    "JDM, mask-conditioned": ("jdm", {}),
}


def _settings(args) -> dict:
    """What every arm shares (the preset's values otherwise)."""
    shared = {"seed": args.seed, "resolution": args.resolution, "batch_size": args.batch_size}
    if args.channels:
        shared["channels"] = tuple(int(c) for c in args.channels.split(","))
    return {k: v for k, v in shared.items() if v is not None}


def _seconds_per_step(model: str, extra: dict, args, output: Path, steps: int = 12) -> float:
    """Training seconds per step of this arm: the median of ``steps`` timed optimizer steps (the first two,
    warming up, left out), so start-up, the preview and the export do not count."""
    import shutil
    import statistics

    from nnaug.generator_training import GeneratorTrainer
    from nnaug.train_generator import train_generator

    durations, original = [], GeneratorTrainer.train_step

    def timed(self, step):
        start = time.perf_counter()
        logs = original(self, step)
        durations.append(time.perf_counter() - start)
        return logs

    GeneratorTrainer.train_step = timed
    try:
        train_generator(args.train_dataset, model=model, preset=args.preset, output=output, overwrite=True,
                        progress=False, overrides={**_settings(args), **extra, "steps": steps, "checkpoint_every": steps,
                                                   "warmup_steps": 0}, cpu=args.device == "cpu")
    finally:
        GeneratorTrainer.train_step = original
    shutil.rmtree(output)
    return statistics.median(durations[2:])


def run_arm(index: int, args) -> dict:
    """Train, synthesize and score one arm (called in a process of its own, so memory and time are its own)."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.generators import get_spec
    from nnaug.mask_consistency import mask_consistency
    from nnaug.synthesis import SynthesisOptions, synthesize
    from nnaug.train_generator import train_generator

    arm, (model, extra) = list(ARMS.items())[index]
    output = args.workdir / "generators" / f"arm{index}"
    probe = _seconds_per_step(model, extra, args, args.workdir / "generators" / f"probe{index}") if args.seconds else None
    steps = max(10, round(args.seconds / probe)) if args.seconds else args.steps
    print(f"\n== {arm}: {steps} steps" + (f" ({probe:.2f} s/step measured; budget {args.seconds} s)" if probe else ""),
          flush=True)
    overrides = {**_settings(args), **extra, "steps": steps, "checkpoint_every": steps}
    with PeakMemory(args.device) as memory:
        start = time.perf_counter()
        train_generator(args.train_dataset, model=model, preset=args.preset, output=output, overwrite=True,
                        overrides=overrides, cpu=args.device == "cpu")
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    synthetic = synthesize(args.train_dataset, SynthesisOptions(ratio=args.ratio, generator=output,
                                                                mode="mask-conditioned", output_id=511 + index,
                                                                overwrite=True, seed=args.seed, batch_size=20,
                                                                device=args.device))
    cases = len(load_raw_dataset(synthetic).cases)
    sample_seconds = time.perf_counter() - start
    fidelity = synthetic_fidelity(load_raw_dataset(args.train_dataset), synthetic, args.workdir / "inception.pth")
    consistency = (mask_consistency(synthetic, args.mask_model, folds=(args.fold,), device=args.device)
                   if args.mask_model else {})
    sampler, sampler_steps = get_spec(model).default_sampling
    return {"arm": arm, "steps": steps, "seconds": seconds, "s_per_step": seconds / steps, "probe_s_per_step": probe,
            "peak_mib": memory.mib, "sampler": f"{sampler} {sampler_steps}", "cases": cases,
            "s_per_image": sample_seconds / cases, "fidelity": fidelity, "mask_consistency": consistency.get("mean_dice"),
            "mask_consistency_per_case": consistency.get("per_case"), "synthetic": str(synthetic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a raw dataset in $nnUNet_raw to train on (default: kvasir-seg-80's first 40)")
    parser.add_argument("--data", type=Path, default=Path(KVASIR_DEFAULT), help="the kvasir-seg-80 folder")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-siamese-ablation"))
    parser.add_argument("--size", type=int, default=64, help="kvasir-seg-80 images are resized to this (dataset size)")
    parser.add_argument("--preset", default="tiny")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help="training wall-clock budget per arm (the default: 600)")
    budget.add_argument("--steps", type=int, help="the same optimizer steps for every arm instead")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channels", help="UNet widths for every arm, e.g. 32,64,64,128 (default: each preset's)")
    parser.add_argument("--batch-size", type=int, help="for every arm (default: each preset's)")
    parser.add_argument("--ratio", type=float, default=1.0, help="synthetic cases per training mask")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", type=Path)
    parser.add_argument("--mask-model", type=Path, help="nnU-Net model folder (…/<Trainer>__<Plans>__2d) for mask consistency")
    parser.add_argument("--fold", default="all", help="fold of --mask-model to use")
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = parser.parse_args()
    if args.seconds is None and args.steps is None:
        args.seconds = 600.0
    args.workdir = args.workdir.resolve()
    import torch

    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dataset is None:
        nnunet_folders(args.workdir)
    if args.arm is not None:
        args.train_dataset = args.dataset or str(TRAIN_ID)
        result = run_arm(args.arm, args)
        (args.workdir / f"arm{args.arm}.json").write_text(json.dumps(result, indent=1))
        return

    import shutil

    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import make_random_inception_weights, resolve_inception_weights

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = load_raw_dataset(args.dataset).name if args.dataset else (
        kvasir_split(args.data, args.workdir, args.size, TRAIN_ID, HELDOUT_ID)[0].name)
    weights = resolve_inception_weights(args.inception_weights, required=False)
    extractor = "InceptionV3" if weights else "random-init InceptionV3 (seed 0): KID/FID compare arms only"
    if weights is None:
        make_random_inception_weights(args.workdir / "inception.pth")
    else:
        shutil.copyfile(weights, args.workdir / "inception.pth")
    results = []
    for index in range(len(ARMS)):
        if subprocess.run([sys.executable, __file__, *sys.argv[1:], "--arm", str(index)]).returncode != 0:
            raise SystemExit(f"arm {index} failed (output above)")
        results.append(json.loads((args.workdir / f"arm{index}.json").read_text()))

    budget = f"{args.seconds:.0f} s of training per arm" if args.seconds else f"{args.steps} steps per arm"
    print(f"\nSiamese ablation: {data}; preset {args.preset} at {args.resolution} px"
          f"{', widths ' + args.channels if args.channels else ''}; {budget}; seed {args.seed}, device {args.device}, "
          f"{torch.get_num_threads()} threads, one process per arm; {results[0]['cases']} masks completed with each "
          f"generator's default sampler; FRD and KID/FID vs the training images, KID/FID with {extractor}"
          + (f"; mask consistency with {args.mask_model} fold {args.fold}" if args.mask_model else ""))
    rows = [[r["arm"], r["steps"], _round(r["probe_s_per_step"], 3), round(r["s_per_step"], 3),
             _round(r["fidelity"].get("frd"), 3),
             _round(r["fidelity"].get("frd_roi"), 3), round(r["fidelity"]["kid_mean"], 5),
             "n/a (no --mask-model)" if r["mask_consistency"] is None else round(r["mask_consistency"], 4),
             round(r["peak_mib"], 1), r["sampler"], round(r["s_per_image"], 3)]
            for r in results]
    print_table(["arm", "steps", "s/step (timed steps)", "s/step (wall/steps)", "FRD vs train", "FRD (mask ROI)", "KID vs train",
                 "mask consistency Dice", "peak memory above start (MiB)", "sampler", "s/image sampling"], rows)
    _print_consistency_differences(results)
    out = args.workdir / "siamese_ablation.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "extractor": extractor,
                               "results": results}, indent=1))
    print(f"results: {out}")


def _print_consistency_differences(results: list[dict]) -> None:
    """Siamese-Diffusion minus each other arm in mask consistency, paired by requested mask (every arm
    completes the same masks in the same order): percentile bootstrap over the masks (one training seed,
    so training noise is not in the interval)."""
    import numpy as np

    from nnaug.stats import bootstrap_difference

    if any(not r.get("mask_consistency_per_case") for r in results):
        return
    cases = sorted(results[0]["mask_consistency_per_case"])
    grid = [np.array([[r["mask_consistency_per_case"].get(c, np.nan) for c in cases]]) for r in results]
    for other, values in zip(results[1:], grid[1:]):
        d = bootstrap_difference(grid[0], values)
        print(f"mask consistency, {results[0]['arm']} - {other['arm']}: {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
              f"(95 % CI over the {len(cases)} masks, paired; one training seed)")


def _round(value, digits):
    return "n/a" if value is None else round(value, digits)


if __name__ == "__main__":
    main()
