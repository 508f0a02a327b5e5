"""Siamese-Diffusion ablation: what does the noise-consistency loss buy, and how does it compare with the JDM?

On Kvasir-80 (the first 40 cases by sorted name, resized to --size), three generators are trained
with the same preset, steps, batch size and seed: Siamese-Diffusion (pixel backbone), the same
with ``--no-consistency`` (plain ControlNet, L0 only) and the JDM. Each then completes the 40
training masks (``nnaug synthesize --ratio 1 --mode mask-conditioned``, DDIM 50), and is scored by

* KID/FID of its images against the training images (``--inception-weights`` / torch-fidelity's
  cache when present, else a fixed-seed random extractor — the table says which);
* mask consistency: Dice between each requested mask and a real-trained nnU-Net's prediction on
  the generated image — with ``--mask-model`` (an nnU-Net training output folder trained on the
  same 40 cases at the same size, e.g. a real-only run of nnaug sweep);
* training seconds per step (wall time of the whole run / steps, so start-up and the one final
  export are included) and the peak resident memory above the start (CPU) or peak CUDA memory.

    python benchmarks/siamese_ablation.py [--steps 300] [--preset tiny] [--mask-model DIR]
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


def run_arm(index: int, args, device: str) -> dict:
    """Train, synthesize and score one arm (called in a process of its own, so memory and time are its own)."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.generators import get_spec
    from nnaug.mask_consistency import mask_consistency
    from nnaug.synthesize import SynthesisOptions, synthesize
    from nnaug.train_generator import train_generator

    arm, (model, extra) = list(ARMS.items())[index]
    print(f"\n== {arm}: {args.steps} steps", flush=True)
    output = args.workdir / "generators" / f"arm{index}"
    overrides = {"steps": args.steps, "seed": args.seed, "checkpoint_every": args.steps, **extra}
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        train_generator(str(TRAIN_ID), model=model, preset=args.preset, output=output, overwrite=True,
                        overrides=overrides, cpu=device == "cpu")
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    synthetic = synthesize(str(TRAIN_ID), SynthesisOptions(ratio=1.0, generator=output, mode="mask-conditioned",
                                                           output_id=511 + index, overwrite=True, seed=args.seed,
                                                           batch_size=20, device=device))
    sample_seconds = time.perf_counter() - start
    fidelity = synthetic_fidelity(load_raw_dataset(TRAIN_ID), synthetic, args.workdir / "inception.pth")
    consistency = (mask_consistency(synthetic, args.mask_model, folds=(args.fold,), device=device)["mean_dice"]
                   if args.mask_model else None)
    sampler, steps = get_spec(model).default_sampling
    return {"arm": arm, "seconds": seconds, "s_per_step": seconds / args.steps, "peak_mib": memory.mib,
            "sampler": f"{sampler} {steps}", "sample_seconds": sample_seconds, "fidelity": fidelity,
            "mask_consistency": consistency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(KVASIR_DEFAULT), help="the kvasir-seg-80 folder")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-siamese-ablation"))
    parser.add_argument("--size", type=int, default=64, help="Kvasir images are resized to this (dataset size)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", type=Path)
    parser.add_argument("--mask-model", type=Path, help="nnU-Net model folder (…/<Trainer>__<Plans>__2d) for mask consistency")
    parser.add_argument("--fold", default="all", help="fold of --mask-model to use")
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    nnunet_folders(args.workdir)
    if args.arm is not None:
        result = run_arm(args.arm, args, device)
        (args.workdir / f"arm{args.arm}.json").write_text(json.dumps(result, indent=1))
        return

    import shutil

    from nnaug.fidelity import make_random_inception_weights, resolve_inception_weights

    kvasir_split(args.data, args.workdir, args.size, TRAIN_ID, HELDOUT_ID)
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

    print(f"\nSiamese ablation: Kvasir-80, first 40 cases at {args.size} px; preset {args.preset}, {args.steps} steps, "
          f"seed {args.seed}, device {device}, {torch.get_num_threads()} threads, one process per arm; the 40 "
          f"training masks completed with each generator's default sampler; KID/FID vs the 40 training images "
          f"with {extractor}"
          + (f"; mask consistency with {args.mask_model} fold {args.fold}" if args.mask_model else ""))
    rows = [[r["arm"], round(r["fidelity"]["kid_mean"], 5), round(r["fidelity"]["fid"], 2),
             "n/a (no --mask-model)" if r["mask_consistency"] is None else round(r["mask_consistency"], 4),
             round(r["s_per_step"], 3), round(r["peak_mib"], 1), r["sampler"], round(r["sample_seconds"] / 40, 3)]
            for r in results]
    print_table(["arm", "KID vs train", "FID vs train", "mask consistency Dice", "s/step (wall/steps)",
                 "peak memory above start (MiB)", "sampler", "s/image sampling"], rows)
    out = args.workdir / "siamese_ablation.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "extractor": extractor,
                               "results": results}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
