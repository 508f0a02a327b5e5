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


def _run(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise NnaugError(f"`{' '.join(cmd)}` failed with exit code {result.returncode} (its output is above)")


def run_demo(workdir: Path, generator_steps: int | None = None, ratio: float = 2.0, overwrite: bool = False,
             device: str = "cpu", model: str = "jdm") -> dict:
    """Run the demo with the ``model`` generator's tiny preset; the nnU-Net folder variables and
    ``nnUNet_extTrainer`` point at the demo's folders while it runs (nnaug's own steps read them in this
    process) and are restored afterwards."""
    from unittest import mock

    from nnaug.generators.registry import get_spec

    get_spec(model)  # an unknown model is refused before anything is written
    with mock.patch.dict(os.environ):  # the standard library's restore-the-environment-afterwards
        return _run_demo(workdir, generator_steps, ratio, overwrite, device, model)


def _demo_folders(workdir: Path, overwrite: bool) -> dict[str, Path]:
    """The demo's own nnU-Net folders, set in this process's environment (and nnUNet_extTrainer)."""
    from nnaug.nnunet_pretraining import trainers_path

    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise NnaugError(f"{workdir} is not empty: pass --overwrite to start the demo over, or --workdir DIR")
        shutil.rmtree(workdir)
    folders = {var: workdir / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for var, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
    os.environ["nnUNet_extTrainer"] = trainers_path()
    return folders


def _run_demo(workdir: Path, generator_steps: int | None, ratio: float, overwrite: bool, device: str,
              model: str) -> dict:
    from nnaug.example import write_example_dataset
    from nnaug.nnunet_pretraining import trainers_path
    from nnaug.synthesize import SynthesisOptions, synthesize
    from nnaug.train_generator import train_generator

    workdir = Path(workdir).resolve()
    folders = _demo_folders(workdir, overwrite)
    env = {**os.environ, "NNAUG_SYNTHETIC": str(SYNTHETIC_ID)}
    timer = Timer()
    timer.begin("1/6 example dataset")
    write_example_dataset(DATASET_ID)
    timer.end("example dataset")

    timer.begin(f"2/6 train the {model} generator (tiny preset{f', {generator_steps} steps' if generator_steps else ''})")
    generator = train_generator(str(DATASET_ID), model=model, preset="tiny", overrides={"steps": generator_steps},
                                cpu=device == "cpu")
    timer.end("train generator")

    timer.begin(f"3/6 synthesize {ratio:g} synthetic cases per real case")  # the generator's default mode and sampler
    synthetic = synthesize(str(DATASET_ID), SynthesisOptions(ratio=ratio, output_id=SYNTHETIC_ID, device=device))
    timer.end("synthesize")

    bin_dir = Path(sys.executable).parent  # nnU-Net's and nnaug's commands, also when the venv is not on PATH
    timer.begin("4/6 nnU-Net plan and preprocess (real dataset)")
    _run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "--verify_dataset_integrity",
          "-np", "2"], env)
    timer.end("plan and preprocess")

    for trainer in ("nnUNetTrainer_nnaug_5epochs", "nnUNetTrainer_nnaugPretrainFinetune_5epochs"):
        timer.begin(f"5/6 nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer}")
        _run([str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", device], env)
        timer.end(trainer)

    timer.begin("6/6 report")
    _run([str(bin_dir / "nnaug"), "report", str(DATASET_ID)], env)
    timer.end("report")
    timer.finish()

    print("\n== done. Everything is under", workdir)
    print(f"  generator          {generator}")
    print(f"  synthetic dataset  {synthetic}")
    print(f"  nnU-Net results    {folders['nnUNet_results'] / f'Dataset{DATASET_ID:03d}_nnaugExample'}")
    print(f"  report             {folders['nnUNet_results'] / 'nnaug' / f'Dataset{DATASET_ID:03d}_nnaugExample'}")
    print("  to use these folders yourself:")
    for var, folder in folders.items():
        print(f"    export {var}={folder}")
    print(f"    export nnUNet_extTrainer={trainers_path()}")
    print("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.wall.items()))
    print("  CPU time:  " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.cpu.items()))
    return {"workdir": workdir, "generator": generator, "synthetic": synthetic, "timings": timer.wall,
            "cpu_timings": timer.cpu}
