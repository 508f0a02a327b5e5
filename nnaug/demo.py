"""``nnaug demo``: the whole pipeline on the built-in example, in its own folder, in minutes on a CPU.

example dataset -> JDM (tiny) -> synthetic dataset -> nnU-Net plan/preprocess -> real-only and
synthetic-pretrain -> real-fine-tune training (short schedules) -> report. nnU-Net steps run as
the commands a user would type, with ``nnUNet_extTrainer`` pointing at nnaug's trainers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnaug.errors import NnaugError

DATASET_ID = 999
SYNTHETIC_ID = 998


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _run(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise NnaugError(f"`{' '.join(cmd)}` failed with exit code {result.returncode} (its output is above)")


def run_demo(workdir: Path, generator_steps: int | None = None, ratio: float = 2.0, overwrite: bool = False,
             device: str = "cpu") -> dict:
    """Run the demo; the nnU-Net folder variables and ``nnUNet_extTrainer`` point at the demo's folders
    while it runs (nnaug's own steps read them in this process) and are restored afterwards."""
    from unittest import mock

    with mock.patch.dict(os.environ):  # the standard library's restore-the-environment-afterwards
        return _run_demo(workdir, generator_steps, ratio, overwrite, device)


def _run_demo(workdir: Path, generator_steps: int | None, ratio: float, overwrite: bool, device: str) -> dict:
    from nnaug.example import write_example_dataset
    from nnaug.nnunet_pretraining import trainers_path
    from nnaug.synthesize import SynthesisOptions, synthesize
    from nnaug.train_generator import train_generator

    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise NnaugError(f"{workdir} is not empty: pass --overwrite to start the demo over, or --workdir DIR")
        shutil.rmtree(workdir)
    folders = {var: workdir / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for var, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
    os.environ["nnUNet_extTrainer"] = trainers_path()
    env = {**os.environ, "NNAUG_SYNTHETIC": str(SYNTHETIC_ID)}
    timings = {}
    start = t = _step("1/6 example dataset")
    write_example_dataset(DATASET_ID)
    timings["example dataset"] = time.time() - t

    t = _step(f"2/6 train the JDM generator (tiny preset{f', {generator_steps} steps' if generator_steps else ''})")
    generator = train_generator(str(DATASET_ID), model="jdm", preset="tiny", overrides={"steps": generator_steps},
                                cpu=device == "cpu")
    timings["train generator"] = time.time() - t

    t = _step(f"3/6 synthesize {ratio:g} synthetic cases per real case")
    synthetic = synthesize(str(DATASET_ID), SynthesisOptions(ratio=ratio, output_id=SYNTHETIC_ID, device=device))
    timings["synthesize"] = time.time() - t

    bin_dir = Path(sys.executable).parent  # nnU-Net's and nnaug's commands, also when the venv is not on PATH
    t = _step("4/6 nnU-Net plan and preprocess (real dataset)")
    _run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "--verify_dataset_integrity",
          "-np", "2"], env)
    timings["plan and preprocess"] = time.time() - t

    for trainer in ("nnUNetTrainer_nnaug_5epochs", "nnUNetTrainer_nnaugPretrainFinetune_5epochs"):
        t = _step(f"5/6 nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer}")
        _run([str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", device], env)
        timings[trainer] = time.time() - t

    t = _step("6/6 report")
    _run([str(bin_dir / "nnaug"), "report", str(DATASET_ID)], env)
    timings["report"] = time.time() - t
    timings["total"] = time.time() - start

    print("\n== done. Everything is under", workdir)
    print(f"  generator          {generator}")
    print(f"  synthetic dataset  {synthetic}")
    print(f"  nnU-Net results    {folders['nnUNet_results'] / f'Dataset{DATASET_ID:03d}_nnaugExample'}")
    print(f"  report             {folders['nnUNet_results'] / 'nnaug' / f'Dataset{DATASET_ID:03d}_nnaugExample'}")
    print("  to use these folders yourself:")
    for var, folder in folders.items():
        print(f"    export {var}={folder}")
    print(f"    export nnUNet_extTrainer={trainers_path()}")
    print("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return {"workdir": workdir, "generator": generator, "synthetic": synthetic, "timings": timings}
