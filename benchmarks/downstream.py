"""Downstream benchmark: does pretraining nnU-Net on JDM-synthetic pairs help on held-out Kvasir?

Kvasir-80 is split by sorted file name into 40 training and 40 held-out cases (both converted to
nnU-Net raw). On the 40 training cases: a JDM generator is trained, synthetic datasets are made at
ratios 1, 2.5 and 5 (joint sampling, DDPM with the learned variance), and nnU-Net is trained real-only and pretrain(synthetic) -> fine-tune(real)
for each ratio, all on fold ``all`` with nnaug's trainers and the same fine-tuning schedule. Every
arm is scored by mean foreground Dice on the 40 held-out cases (nnU-Net's predictor); each ratio
by KID/FID and FRD (frd-score; whole image and mask ROI) against the training images and mask consistency (Dice of the real-only model's
prediction on the synthetic images vs their masks). Everything runs as a user would run it
(``nnaug`` library calls and ``nnUNetv2_*`` commands with ``nnUNet_extTrainer``).

    python benchmarks/downstream.py --budget small        # < 30 min on a 2-core CPU, 64 px
    python benchmarks/downstream.py --budget gpu          # the real experiment (256 px), for a GPU

Numbers are printed, never asserted. KID/FID use ``--inception-weights`` (or torch-fidelity's cache,
downloaded there on first use when online), else a fixed-seed random extractor (the table says which;
then only the ratios compare). FRD needs no weights.
Each arm gets its own ``nnUNet_results`` so the pretrain -> fine-tune runs of different ratios,
which share a trainer name, don't overwrite each other. A rerun with the same --workdir reuses
every finished step.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KVASIR_DEFAULT, kvasir_split, nnunet_folders, print_table  # noqa: E402

TRAIN_ID, HELDOUT_ID, FIRST_SYNTHETIC_ID = 501, 502, 511
RATIOS = (1.0, 2.5, 5.0)
# (epochs, iterations per epoch) of each nnU-Net phase; the gpu fine-tuning is the thesis' 150 x 250.
BUDGETS = {
    "small": dict(size=64, preset="tiny", resolution=32, generator_steps=1000, sampler_steps=50,
                  pretrain=(15, 25), finetune=(15, 25), device="cpu"),
    "gpu": dict(size=256, preset="small", resolution=128, generator_steps=20000, sampler_steps=100,
                pretrain=(100, 250), finetune=(150, 250), device="cuda"),
}


def _timed(times: dict, key: str):
    class _Timer:
        def __enter__(self):
            print(f"\n== {key}", flush=True)
            self.start = time.time()

        def __exit__(self, *exc):
            times[key] = times.get(key, 0.0) + time.time() - self.start
    return _Timer()


def _nnunet(args: list[str], env: dict) -> None:
    command = [str(Path(sys.executable).parent / args[0])] + args[1:]
    print("$ " + " ".join(args), flush=True)
    if subprocess.run(command, env=env).returncode != 0:
        raise SystemExit(f"{args[0]} failed (output above)")


def _schedule_env(budget: dict, finetune_epochs: int | None = None) -> dict:
    (pe, pi), (fe, fi) = budget["pretrain"], budget["finetune"]
    return {"NNAUG_PRETRAIN_EPOCHS": str(pe), "NNAUG_PRETRAIN_ITERATIONS": str(pi),
            "NNAUG_FINETUNE_EPOCHS": str(finetune_epochs or fe), "NNAUG_FINETUNE_ITERATIONS": str(fi)}


def train_arm(work: Path, arm: str, trainer: str, budget: dict, times: dict, synthetic_id: int | None = None,
              finetune_epochs: int | None = None) -> Path:
    """``nnUNetv2_train 501 2d all -tr TRAINER`` into this arm's own nnUNet_results; returns the model folder."""
    from nnaug.nnunet_pretraining import trainers_path

    results = work / "results_per_arm" / re.sub(r"[^A-Za-z0-9.]+", "-", arm).strip("-")
    model = results / f"Dataset{TRAIN_ID:03d}_Kvasir{budget['size']}Train" / f"{trainer}__nnUNetPlans__2d"
    if (model / "fold_all" / "checkpoint_final.pth").is_file():
        return model
    env = {**os.environ, **_schedule_env(budget, finetune_epochs), "nnUNet_results": str(results),
           "nnUNet_extTrainer": trainers_path()}
    if synthetic_id is not None:
        env["NNAUG_SYNTHETIC"] = str(synthetic_id)
    if budget["device"] == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "0")  # augmentation workers only compete for 2 cores
    with _timed(times, f"train {arm}"):
        _nnunet(["nnUNetv2_train", str(TRAIN_ID), "2d", "all", "-tr", trainer, "-device", budget["device"]], env)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--data", type=Path, default=Path(KVASIR_DEFAULT), help="the kvasir-seg-80 folder")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-downstream"))
    parser.add_argument("--inception-weights", type=Path)
    parser.add_argument("--generator-steps", type=int, help="override the budget's JDM training steps")
    args = parser.parse_args()
    budget = dict(BUDGETS[args.budget])
    if args.generator_steps:
        budget["generator_steps"] = args.generator_steps
    import torch

    if budget["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--budget gpu needs a CUDA device; use --budget small on a CPU")
    if budget["device"] == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import make_random_inception_weights, resolve_inception_weights, synthetic_fidelity
    from nnaug.mask_consistency import mask_consistency, segmentation_dice
    from nnaug.synthesize import SynthesisOptions, synthesize
    from nnaug.train_generator import train_generator

    work = args.workdir.resolve()
    nnunet_folders(work)
    times: dict[str, float] = {}
    start = time.time()
    with _timed(times, "prepare Kvasir-80 (40 train / 40 held out)"):
        train_folder, heldout_folder = kvasir_split(args.data, work, budget["size"], TRAIN_ID, HELDOUT_ID)
    with _timed(times, "nnU-Net plan and preprocess"):
        if not (Path(os.environ["nnUNet_preprocessed"]) / train_folder.name / "nnUNetPlans.json").is_file():
            _nnunet(["nnUNetv2_plan_and_preprocess", "-d", str(TRAIN_ID), "-c", "2d", "--verify_dataset_integrity",
                     "-np", "2"], dict(os.environ))

    with _timed(times, f"train JDM ({budget['preset']}, {budget['generator_steps']} steps)"):
        generator = Path(os.environ["nnUNet_results"]) / "nnaug" / train_folder.name / "generators" / f"jdm_{budget['preset']}"
        checkpoints = sorted((generator / "checkpoints").glob("step_*"))
        if not checkpoints or checkpoints[-1].name != f"step_{budget['generator_steps']:07d}":
            train_generator(str(TRAIN_ID), model="jdm", preset=budget["preset"], output=generator,
                            resume=bool(checkpoints), overwrite=not checkpoints,
                            overrides={"steps": budget["generator_steps"], "resolution": budget["resolution"]},
                            cpu=budget["device"] == "cpu")

    synthetic = {}
    for i, ratio in enumerate(RATIOS):
        with _timed(times, f"synthesize ratio {ratio:g}"):
            existing = sorted(Path(os.environ["nnUNet_raw"]).glob(f"Dataset{FIRST_SYNTHETIC_ID + i:03d}_*"))
            synthetic[ratio] = existing[0] if existing else synthesize(str(TRAIN_ID), SynthesisOptions(
                ratio=ratio, generator=generator, sampler="ddpm", steps=budget["sampler_steps"], output_id=FIRST_SYNTHETIC_ID + i,
                batch_size=32, device=budget["device"]))

    # real-only twice: the fine-tuning schedule alone, and as many epochs as pretraining + fine-tuning
    # together (so a gain of the pretrained arms is not just more optimizer steps)
    (pretrain_epochs, _), (finetune_epochs, _) = budget["pretrain"], budget["finetune"]
    models = {"real-only": train_arm(work, "real-only", "nnUNetTrainer_nnaug", budget, times)}
    models["real-only, same total epochs"] = train_arm(work, "real-only, same total epochs", "nnUNetTrainer_nnaug",
                                                        budget, times, finetune_epochs=pretrain_epochs + finetune_epochs)
    for i, ratio in enumerate(RATIOS):
        models[f"pretrain {ratio:g}x -> fine-tune"] = train_arm(work, f"pretrain {ratio:g}x -> fine-tune",
                                                                "nnUNetTrainer_nnaugPretrainFinetune", budget, times,
                                                                synthetic_id=FIRST_SYNTHETIC_ID + i)

    weights = resolve_inception_weights(args.inception_weights, required=False)
    extractor = "InceptionV3" if weights else "random-init InceptionV3 (seed 0): KID compares ratios only"
    if weights is None:
        weights = make_random_inception_weights(work / "random_inception.pth")
    real = load_raw_dataset(train_folder)
    with _timed(times, "evaluate (held-out Dice, KID, FRD, mask consistency)"):
        heldout = {arm: segmentation_dice(heldout_folder, model, folds=("all",), device=budget["device"])
                   for arm, model in models.items()}
        fidelity = {r: synthetic_fidelity(real, folder, weights) for r, folder in synthetic.items()}
        consistency = {r: mask_consistency(folder, models["real-only"], folds=("all",), device=budget["device"])
                       for r, folder in synthetic.items()}
    times["total"] = time.time() - start

    reference = np.array(list(heldout["real-only"]["per_case"].values()))
    print(f"\nDownstream benchmark, budget '{args.budget}': Kvasir-80 at {budget['size']} px, 40 train / 40 held out; "
          f"JDM {budget['preset']} at {budget['resolution']} px, {budget['generator_steps']} steps; DDPM "
          f"{budget['sampler_steps']}; nnU-Net 2d fold all, pretrain {budget['pretrain'][0]}x{budget['pretrain'][1]}, "
          f"fine-tune / real-only {budget['finetune'][0]}x{budget['finetune'][1]} (epochs x iterations; the "
          f"second real-only arm {pretrain_epochs + finetune_epochs} epochs); "
          f"device {budget['device']}, {torch.get_num_threads()} threads\n")
    rows = []
    for arm, result in heldout.items():
        dice = np.array([result["per_case"][k] for k in heldout["real-only"]["per_case"]])
        diff = dice - reference
        train_time = times.get(f"train {arm}")
        rows.append([arm, round(float(dice.mean()), 4), round(float(dice.std()), 4),
                     "—" if arm == "real-only" else f"{diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}",
                     "—" if train_time is None else f"{train_time:.0f}"])
    print_table(["arm", "held-out Dice (mean)", "sd over cases", "Δ vs real-only (± s.e., paired)", "train s"], rows)
    print("(train s includes the pretraining, the fine-tuning and nnU-Net's final validation of each arm)")
    print()
    def frd_cell(value):
        return "n/a" if value is None else round(value, 2)

    rows = [[f"{r:g}", len(consistency[r]["per_case"]), round(fidelity[r]["kid_mean"], 5), round(fidelity[r]["fid"], 2),
             frd_cell(fidelity[r]["frd"]), frd_cell(fidelity[r]["frd_roi"]),
             round(consistency[r]["mean_dice"], 4), f"{times[f'synthesize ratio {r:g}']:.0f}"] for r in RATIOS]
    print_table(["ratio", "synthetic cases", "KID vs train", "FID vs train", "FRD vs train (image)",
                 "FRD vs train (mask ROI)", "mask consistency Dice", "synthesize s"], rows)
    print(f"\nKID/FID extractor: {extractor}")
    frd_details = next((f["frd_details"] for f in fidelity.values() if f.get("frd_details")), None)
    if frd_details:
        d = next(iter(frd_details.values()))
        print(f"FRD: {d['package']}, FRD{d['version']} ({', '.join(d['image_types'])}), real training images as "
              "reference, lower is better")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    out = work / "downstream_results.json"
    out.write_text(json.dumps({"budget": args.budget, "settings": budget, "extractor": extractor, "times": times,
                               "heldout": heldout, "fidelity": {str(k): v for k, v in fidelity.items()},
                               "mask_consistency": {str(k): v for k, v in consistency.items()}}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
