"""``nnaug demo``: the whole pipeline on the built-in example, in its own folder, in minutes on a CPU.

example dataset -> generator (JDM or Siamese-Diffusion, tiny) -> synthetic dataset (JDM: joint pairs;
Siamese: images for the training masks) -> nnU-Net plan/preprocess -> real-only and
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
DATASET_NAME = "Dataset999_nnaugExample"
SYNTHETIC_ID = 998


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def cpu_seconds() -> float:
    """CPU time of this process and of the finished child processes (nnU-Net's commands): on a shared
    machine the wall time says little about what the demo costs."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Timer:
    """Wall and CPU seconds per named step of the demo."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self.start_wall, self.start_cpu = time.time(), cpu_seconds()

    def begin(self, title: str) -> None:
        _step(title)
        self._wall, self._cpu = time.time(), cpu_seconds()

    def end(self, name: str) -> None:
        self.wall[name], self.cpu[name] = time.time() - self._wall, cpu_seconds() - self._cpu

    def finish(self) -> None:
        self.wall["total"], self.cpu["total"] = time.time() - self.start_wall, cpu_seconds() - self.start_cpu


def _run(cmd: list[str], env: dict, extra_env: dict | None = None) -> None:
    """Runs ``cmd`` as the user would type it; ``extra_env`` is printed in front of it."""
    extra_env = extra_env or {}
    print("$ " + " ".join([*(f"{k}={v}" for k, v in extra_env.items()), *cmd]), flush=True)
    result = subprocess.run(cmd, env={**env, **extra_env})
    if result.returncode != 0:
        raise NnaugError(f"`{' '.join(cmd)}` failed with exit code {result.returncode} (its output is above)")


def run_demo(workdir: Path, generator_steps: int | None = None, ratio: float = 2.0, overwrite: bool = False,
             device: str = "cpu", model: str = "jdm") -> dict:
    """Run the demo with the ``model`` generator's tiny preset. Every step is the command a user would type,
    started with the demo's nnU-Net folders and ``nnUNet_extTrainer`` in its environment (this process's
    own environment is left alone)."""
    from nnaug.generators.folder import generators_root
    from nnaug.generators.registry import get_spec
    from nnaug.nnunet_pretraining import trainers_path

    get_spec(model)  # an unknown model is refused before anything is written
    workdir = Path(workdir).resolve()
    folders = _demo_folders(workdir, overwrite)
    env = {**os.environ, **{var: str(folder) for var, folder in folders.items()}, "nnUNet_extTrainer": trainers_path(),
           "NNAUG_SYNTHETIC": str(SYNTHETIC_ID)}
    generator = generators_root(DATASET_NAME, results=folders["nnUNet_results"]) / f"{model}_tiny"
    timer = _run_steps(env, model, generator, generator_steps, ratio, device)
    synthetic = next(folders["nnUNet_raw"].glob(f"Dataset{SYNTHETIC_ID:03d}_*"))
    _print_summary(workdir, folders, generator, synthetic, timer, trainers_path())
    return {"workdir": workdir, "generator": generator, "synthetic": synthetic, "timings": timer.wall,
            "cpu_timings": timer.cpu}


def _demo_folders(workdir: Path, overwrite: bool) -> dict[str, Path]:
    """The demo's own nnUNet_raw, nnUNet_preprocessed and nnUNet_results, made empty."""
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise NnaugError(f"{workdir} is not empty: pass --overwrite to start the demo over, or --workdir DIR")
        shutil.rmtree(workdir)
    folders = {var: workdir / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _run_steps(env: dict, model: str, generator: Path, generator_steps: int | None, ratio: float, device: str) -> Timer:
    from nnaug.experiment.run import nnunet_processes, nnunet_training_env

    bin_dir = Path(sys.executable).parent  # nnU-Net's and nnaug's commands, also when the venv is not on PATH
    nnaug, dataset = str(bin_dir / "nnaug"), str(DATASET_ID)
    cpu = ["--cpu"] if device == "cpu" else []
    steps = ["--steps", str(generator_steps)] if generator_steps else []
    timer = Timer()
    timer.begin("1/6 example dataset")
    _run([nnaug, "example-dataset", "--dataset-id", dataset], env)
    timer.end("example dataset")
    timer.begin(f"2/6 train the {model} generator (tiny preset{f', {generator_steps} steps' if generator_steps else ''})")
    _run([nnaug, "train-generator", dataset, "--model", model, "--preset", "tiny", "--output", str(generator), *steps, *cpu], env)
    timer.end("train generator")
    timer.begin(f"3/6 synthesize {ratio:g} synthetic cases per real case")  # the generator's default mode and sampler
    _run([nnaug, "synthesize", dataset, "--ratio", f"{ratio:g}", "--generator", str(generator),
          "--output-id", str(SYNTHETIC_ID), "--device", device], env)
    timer.end("synthesize")
    timer.begin("4/6 nnU-Net plan and preprocess (real dataset)")
    processes = str(nnunet_processes())
    _run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", dataset, "-c", "2d", "--verify_dataset_integrity",
          "-np", processes, "-npfp", processes], env)
    timer.end("plan and preprocess")
    processes_env = nnunet_training_env(device)  # nnU-Net's pools are sized for GPU nodes
    for trainer in ("nnUNetTrainer_nnaug_5epochs", "nnUNetTrainer_nnaugPretrainFinetune_5epochs"):
        timer.begin(f"5/6 nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer}")
        _run([str(bin_dir / "nnUNetv2_train"), dataset, "2d", "0", "-tr", trainer, "-device", device], env,
             processes_env)
        timer.end(trainer)
    timer.begin("6/6 report")
    _run([nnaug, "report", dataset], env)
    timer.end("report")
    timer.finish()
    return timer


def _print_summary(workdir: Path, folders: dict, generator: Path, synthetic: Path, timer: Timer, trainers: str) -> None:
    print("\n== done. Everything is under", workdir)
    print(f"  generator          {generator}")
    print(f"  synthetic dataset  {synthetic}")
    print(f"  nnU-Net results    {folders['nnUNet_results'] / DATASET_NAME}")
    print(f"  report             {folders['nnUNet_results'] / 'nnaug' / DATASET_NAME}")
    print("  to use these folders yourself:")
    for var, folder in folders.items():
        print(f"    export {var}={folder}")
    print(f"    export nnUNet_extTrainer={trainers}")
    print("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.wall.items()))
    print("  CPU time:  " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.cpu.items()))
