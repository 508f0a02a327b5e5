"""``nnaug sweep``: which synthetic ratio helps, on the user's own data, with seeds and confidence intervals.

Arms (each trained ``--seeds`` times with ``nnUNetv2_train``, ``nnUNet_extTrainer`` set):

* ``real-only`` — nnaug's real-only trainer with the fine-tuning schedule;
* ``real-only-matched`` — the same trainer for as many iterations as pretraining + fine-tuning
  together (``--no-compute-matched`` drops it), so a gain cannot be just more optimizer steps;
* ``pretrain-r<ratio>`` — synthetic pretraining -> real fine-tuning, one per ratio, on a synthetic
  dataset of that ratio made by the generator (reused when one with the same generator checkpoint,
  ratio and synthesis options exists in ``$nnUNet_raw``, synthesized otherwise).

Every arm and seed trains into its own ``nnUNet_results`` folder (see :func:`sweep_folders`), so
nothing collides, and the synthetic pretraining is cached inside it per seed. Evaluation: nnU-Net's
own cross-validation (``validation/summary.json`` of each fold: only real cases, the synthetic ones
are never in the real dataset's splits), or with a held-out dataset nnU-Net's predictor on its
cases and nnU-Net's ``compute_metrics``. Statistics are in :mod:`nnaug.stats`.

Resumable: a fold counts as trained when its ``checkpoint_final.pth`` (and, for cross-validation,
``validation/summary.json``) exists; everything else is (re)started with ``nnUNetv2_train ... --c``.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.io import file_lock, write_atomic, write_json_atomic

CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
ENV_SEED = "NNAUG_SEED"
ARM_RECORD = "nnaug_sweep_arm.json"
SWEEP_CONFIG = "nnaug_sweep_config.json"
BASE_CONFIG = "nnaug_sweep_base.json"
SYNTHESIS_BATCH = 16
CV_FOLDS = 5
OUTPUTS = ("sweep.md", "sweep.json", "sweep.png")


# ----------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """Schedules of one preset: (epochs, iterations per epoch) of pretraining and fine-tuning."""

    name: str
    pretrain: tuple[int, int]
    finetune: tuple[int, int]
    fixed: bool  # True: nnaug's short trainer classes (fixed schedules); False: NNAUG_* variables
    about: str

    @property
    def matched_epochs(self) -> int:
        """Epochs of the compute-matched real-only arm: pretraining + fine-tuning iterations, in fine-tuning epochs."""
        (pe, pi), (fe, fi) = self.pretrain, self.finetune
        return math.ceil((pe * pi + fe * fi) / fi)

    def trainer(self, kind: str) -> str:
        if self.fixed:
            return {"real-only": "nnUNetTrainer_nnaug_5epochs", "compute-matched": "nnUNetTrainer_nnaug_10epochs",
                    "pretrain": "nnUNetTrainer_nnaugPretrainFinetune_5epochs"}[kind]
        return {"real-only": "nnUNetTrainer_nnaug", "compute-matched": "nnUNetTrainer_nnaug",
                "pretrain": "nnUNetTrainer_nnaugPretrainFinetune"}[kind]

    def env(self, kind: str) -> dict[str, str]:
        if self.fixed:
            return {}
        (pe, pi), (fe, fi) = self.pretrain, self.finetune
        env = {"NNAUG_FINETUNE_EPOCHS": str(self.matched_epochs if kind == "compute-matched" else fe),
               "NNAUG_FINETUNE_ITERATIONS": str(fi), "NNAUG_FINETUNE_LR": "0.01"}
        if kind == "pretrain":
            env.update({"NNAUG_PRETRAIN_EPOCHS": str(pe), "NNAUG_PRETRAIN_ITERATIONS": str(pi), "NNAUG_PRETRAIN_LR": "0.01"})
        return env

    def phases(self, kind: str) -> list[tuple[str, int, int]]:
        """(phase, epochs, iterations per epoch) of one fold of an arm of this kind."""
        if kind == "pretrain":
            return [("pretraining", *self.pretrain), ("fine-tuning", *self.finetune)]
        if kind == "compute-matched":
            return [("training", self.matched_epochs, self.finetune[1])]
        return [("training", *self.finetune)]


BUDGETS = {
    "tiny": Budget("tiny", (5, 10), (5, 10), True,
                   "nnaug's _5epochs trainers: 5 epochs x 10 iterations per phase (compute-matched: "
                   "nnUNetTrainer_nnaug_10epochs); for tests and the example"),
    "small": Budget("small", (15, 25), (15, 25), False,
                    "CPU-sized: pretraining and fine-tuning 15 epochs x 25 iterations each (as "
                    "benchmarks/downstream.py --budget small)"),
    "gpu": Budget("gpu", (100, 250), (150, 250), False,
                  "pretraining 100 x 250, fine-tuning 150 x 250 iterations (the thesis' fine-tuning), for a GPU"),
}


# ----------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # real-only | compute-matched | pretrain
    ratio: float | None
    trainer: str
    env: dict = field(default_factory=dict, hash=False, compare=False)
    phases: tuple = ()
    min_consistency: float | None = None  # pretrain arms: the synthetic set's filter threshold (None: unfiltered)

    @property
    def synthesis_key(self) -> tuple[float, float | None] | None:
        """Which synthetic set this arm pretrains on: (ratio, filter threshold)."""
        return (self.ratio, self.min_consistency) if self.kind == "pretrain" else None

    @property
    def shared(self) -> bool:
        """Real-only arms do not depend on the generator: every generator's sweep shares them."""
        return self.kind != "pretrain"

    @property
    def total_epochs(self) -> int:
        return sum(p[1] for p in self.phases)


def ratio_label(ratio: float) -> str:
    return f"{ratio:g}"


def make_arms(budget: Budget, ratios: list[float], compute_matched: bool,
              thresholds: tuple = (None,)) -> list[Arm]:
    """real-only (and compute-matched), then one pretrain arm per (filter threshold, ratio); None = unfiltered."""
    arms = [Arm("real-only", "real-only", None, budget.trainer("real-only"), budget.env("real-only"),
                tuple(budget.phases("real-only")))]
    if compute_matched:
        arms.append(Arm("real-only-matched", "compute-matched", None, budget.trainer("compute-matched"),
                        budget.env("compute-matched"), tuple(budget.phases("compute-matched"))))
    for threshold in thresholds:
        for ratio in ratios:
            suffix = f"-mc{threshold:g}" if threshold is not None else ""
            arms.append(Arm(f"pretrain-r{ratio_label(ratio)}{suffix}", "pretrain", ratio, budget.trainer("pretrain"),
                            budget.env("pretrain"), tuple(budget.phases("pretrain")), threshold))
    return arms


def parse_thresholds(values) -> tuple:
    """``--min-consistency`` values: 0 is the unfiltered set (None), others must lie in (0, 1]; sorted, distinct."""
    out = set()
    for value in values or [0.0]:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise NnaugError(f"--min-consistency {value:g}: each threshold must lie in (0, 1], or 0 for unfiltered")
        out.add(None if value == 0.0 else value)
    return tuple(sorted(out, key=lambda v: -1.0 if v is None else v))


# ----------------------------------------------------------------------------- inputs
def parse_ratios(ratios) -> list[float]:
    """Sorted distinct ratios > 0; a 0 (the real-only arm, always run) is dropped."""
    values = []
    for value in ratios:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise NnaugError(f"--ratios: {value:g} is not a ratio (synthetic cases per real case, >= 0, e.g. 1,2.5,5)")
        if value > 0 and value not in values:
            values.append(value)
    if not values:
        raise NnaugError("--ratios needs at least one ratio > 0 (0 stands for the real-only arm, which always runs)")
    return sorted(values)


def resolve_folds(folds, test: bool, num_cases: int) -> list:
    if not folds:
        return ["all"] if test else list(range(CV_FOLDS))
    out = []
    for fold in folds:
        if fold == "all":
            if not test:
                raise NnaugError("--folds all trains on every case and leaves none to validate: "
                                 "use --test DATASET with it, or folds 0-4 for cross-validation")
        elif not (isinstance(fold, int) and 0 <= fold < CV_FOLDS):
            raise NnaugError(f"--folds: {fold} is not one of nnU-Net's folds 0-{CV_FOLDS - 1} (or all)")
        if fold not in out:
            out.append(fold)
    if not test and num_cases < CV_FOLDS:
        raise NnaugError(f"{num_cases} cases are too few for nnU-Net's {CV_FOLDS}-fold cross-validation: "
                         "add cases or evaluate on a held-out dataset with --test")
    return out


def _check_same_kind(raw, other, what: str) -> None:
    for key in ("channel_names", "labels", "file_ending"):
        if raw.dataset_json.get(key) != other.dataset_json.get(key):
            raise NnaugError(f"{what} {other.name} has dataset.json {key} {other.dataset_json.get(key)!r}, but "
                             f"{raw.name} has {raw.dataset_json.get(key)!r}: they must match")


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda", "mps"):
        raise NnaugError(f"--device must be cpu, cuda or mps (what nnUNetv2_train accepts), got {device}")
    if device == "cuda" and not torch.cuda.is_available():
        raise NnaugError("--device cuda: no CUDA device is visible to torch; use --device cpu (with --budget tiny or small)")
    return device


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


# ----------------------------------------------------------------------------- folders
def sweeps_root(dataset_name: str) -> Path:
    from nnaug.dataset import results_root

    return results_root() / "nnaug" / dataset_name / "sweep"


def latest_outputs(dataset_name: str) -> dict[str, Path]:
    """``$nnUNet_results/nnaug/<Dataset>/sweep.{md,json,png}``: copies of the latest finished sweep."""
    from nnaug.dataset import results_root

    folder = results_root() / "nnaug" / dataset_name
    return {name.split(".")[1]: folder / name for name in OUTPUTS}


def latest_sweep_markdown(dataset_name: str) -> str | None:
    """The markdown of the latest finished sweep of ``dataset_name`` (for ``nnaug report``), or None."""
    try:
        path = latest_outputs(dataset_name)["md"]
    except NnaugError:
        return None
    try:
        return path.read_text()
    except OSError:
        return None


def sweep_folders(dataset_name: str, budget: str, generator_tag: str) -> tuple[Path, Path]:
    """(base, generator folder): where the runs are trained. Neither depends on how they are evaluated.

    ``$nnUNet_results/nnaug/<Dataset>/sweep/<budget>/`` holds the real-only arms (they do not depend on
    the generator); ``.../<generator tag>/`` inside it the pretrain arms and the synthetic sets' fidelity.
    Arm + seed: ``<folder>/<arm>/seed_<s>/``, an ordinary ``nnUNet_results`` tree
    (``<Dataset>/<Trainer>__nnUNetPlans__2d/fold_<f>/``). Each evaluation (``cv``, ``test-<Dataset>``) writes
    its sweep.{md,json,png} into ``<generator folder>/<evaluation>/``, so another held-out set trains nothing.
    """
    base = sweeps_root(dataset_name) / budget
    return base, base / generator_tag


def arm_root(base: Path, generator_folder: Path, arm: Arm, seed: int) -> Path:
    return (base if arm.shared else generator_folder) / arm.name / f"seed_{seed}"


def model_folder(root: Path, dataset_name: str, trainer: str) -> Path:
    return root / dataset_name / f"{trainer}__{PLANS}__{CONFIGURATION}"


def fold_done(model_dir: Path, fold, cross_validation: bool) -> bool:
    fold_dir = model_dir / f"fold_{fold}"
    if not (fold_dir / "checkpoint_final.pth").is_file():
        return False
    return not cross_validation or (fold_dir / "validation" / "summary.json").is_file()


# ----------------------------------------------------------------------------- nnU-Net plans
def _nnunet_command(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise NnaugError(f"{name} not found beside {sys.executable} or on PATH: install nnunetv2 in this environment")
    return found


def _clean_env() -> dict:
    """This process' environment without nnaug's trainer variables (the sweep sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NNAUG_")}


def ensure_planned(raw, log=print) -> str:
    """Plan and preprocess the real dataset (2d) with nnU-Net unless done; returns the sha256 of its plans."""
    import hashlib

    from nnaug.dataset import preprocessed_root

    folder = preprocessed_root() / raw.name
    plans_file = folder / f"{PLANS}.json"

    def complete() -> bool:
        try:
            plans = json.loads(plans_file.read_text())
            data = folder / plans["configurations"][CONFIGURATION]["data_identifier"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        done = {p.name[:-len(".pkl")] for p in data.glob("*.pkl")} if data.is_dir() else set()
        return done >= {c.identifier for c in raw.cases}

    if not complete():
        env = _clean_env()
        env.pop("nnUNet_n_proc_DA", None)  # nnUNet_n_proc_DA=0 makes planning crash (docs/trainers.md)
        processes = str(max(1, min(4, os.cpu_count() or 1)))
        cmd = [_nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(raw.dataset_id), "-c", CONFIGURATION,
               "--verify_dataset_integrity", "-np", processes]
        log("nnaug sweep: planning and preprocessing " + raw.name + ": " + " ".join(Path(cmd[0]).name if i == 0 else c
                                                                                 for i, c in enumerate(cmd)))
        if subprocess.run(cmd, env=env).returncode != 0 or not complete():
            raise NnaugError(f"nnUNetv2_plan_and_preprocess -d {raw.dataset_id} failed (its output is above): "
                             "fix the dataset and rerun")
    return hashlib.sha256(plans_file.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- synthetic datasets
@dataclass(frozen=True)
class SynthesisChoice:
    mode: str
    masks: str
    sampler: str
    steps: int

    @property
    def tag(self) -> str:
        return f"{self.mode}-{self.sampler}{self.steps}" + ("-augmented" if self.masks == "augmented" else "")


def resolve_synthesis(info: dict, mode: str | None, masks: str, sampler: str | None, steps: int | None) -> SynthesisChoice:
    from nnaug.generators import get_spec

    mode, sampler, steps = get_spec(info["model"]).resolve_sampling(mode, sampler, steps, info)
    return SynthesisChoice(mode, masks if mode == "mask-conditioned" else "train", sampler, steps)


def _options(ratio: float, generator: Path, choice: SynthesisChoice, device: str, **extra):
    from nnaug.synthesize import SynthesisOptions

    return SynthesisOptions(ratio=ratio, generator=generator, mode=choice.mode, masks=choice.masks,
                            sampler=choice.sampler, steps=choice.steps, batch_size=SYNTHESIS_BATCH, device=device,
                            **extra)


def _same_filter(provenance: dict, min_consistency: float | None, filter_model: Path | None) -> bool:
    """A filtered set is only reused for the same threshold and the same scoring model; an unfiltered one never
    stands in for a filtered one or the other way round."""
    record = provenance.get("filter") or {}
    if record.get("min_consistency") != min_consistency:
        return False
    return min_consistency is None or Path(str(record.get("model"))).resolve() == Path(filter_model).resolve()


def _matches(provenance: dict, raw, sha: str, ratio: float, choice: SynthesisChoice,
             min_consistency: float | None = None, filter_model: Path | None = None) -> bool:
    from nnaug.mask_augment import MaskAugmentation

    if not _same_filter(provenance, min_consistency, filter_model):
        return False
    wanted = {"source_dataset": raw.name, "checkpoint_sha256": sha, "mode": choice.mode, "sampler": choice.sampler,
              "steps": choice.steps, "seed": 0, "num_real_cases": len(raw.cases),
              "masks": choice.masks if choice.mode == "mask-conditioned" else None,
              "mask_augmentation": MaskAugmentation().as_dict()
              if choice.mode == "mask-conditioned" and choice.masks == "augmented" else None}
    try:
        return all(provenance.get(k) == v for k, v in wanted.items()) and float(provenance.get("ratio")) == ratio
    except (TypeError, ValueError):
        return False


def find_synthetic(raw, sha: str, ratio: float, choice: SynthesisChoice, min_consistency: float | None = None,
                   filter_model: Path | None = None) -> Path | None:
    """A finished synthetic dataset in $nnUNet_raw made from ``raw`` by this generator with these options (newest ID)."""
    from nnaug.dataset import parse_dataset_id, raw_root
    from nnaug.io import load_json_or_none
    from nnaug.provenance import read_provenance

    found = []
    for folder in raw_root().glob("Dataset*_*"):
        provenance = read_provenance(folder) if folder.is_dir() else None
        if provenance is None or not _matches(provenance, raw, sha, ratio, choice, min_consistency, filter_model):
            continue
        dataset_json = load_json_or_none(folder / "dataset.json") or {}
        if dataset_json.get("numTraining") != provenance.get("num_cases"):
            continue  # a --mix dataset (real cases inside), not a pure synthetic set
        found.append((parse_dataset_id(folder.name) or 0, folder))
    return max(found, key=lambda f: f[0])[1] if found else None


def ensure_synthetic(raw, generator: Path, sha: str, ratio: float, choice: SynthesisChoice, device: str,
                     lock_folder: Path, log=print, min_consistency: float | None = None,
                     filter_model: Path | None = None) -> Path:
    """The synthetic dataset of ``ratio`` (filtered at ``min_consistency`` by ``filter_model`` when given):
    reused, or an interrupted synthesis resumed, or made anew."""
    from nnaug.dataset import parse_dataset_id, raw_root
    from nnaug.generators import read_info
    from nnaug.io import file_lock, load_json_or_none
    from nnaug.synthesize import PLAN, make_plan, synthesize, synthetic_name

    wanted = (min_consistency, filter_model)
    existing = find_synthetic(raw, sha, ratio, choice, *wanted)
    if existing is not None:
        return existing
    extra = {"min_consistency": min_consistency, "filter_model": filter_model} if min_consistency else {}
    with file_lock(lock_folder / ".synthesis.lock", "waiting for another sweep synthesizing for this generator"):
        existing = find_synthetic(raw, sha, ratio, choice, *wanted)
        if existing is not None:
            return existing
        opts = _options(ratio, generator, choice, device, **extra)
        plan = make_plan(raw, read_info(generator), generator, opts, choice.mode)
        for partial in sorted(raw_root().glob(f".Dataset*_{synthetic_name(raw, False)}.partial")):
            if load_json_or_none(partial / PLAN) == plan:
                dataset_id = parse_dataset_id(partial.name[1:].removesuffix(".partial"))
                log(f"nnaug sweep: resuming the synthesis of ratio {ratio_label(ratio)} in {partial}")
                return synthesize(raw.name, _options(ratio, generator, choice, device, output_id=dataset_id, resume=True,
                                                     **extra))
        log(f"nnaug sweep: synthesizing ratio {ratio_label(ratio)} ({plan['num_cases']} cases, {choice.mode}, "
            f"{choice.sampler} {choice.steps} steps"
            + (f", kept at mask consistency >= {min_consistency:g}" if min_consistency else "") + f") with {generator}")
        return synthesize(raw.name, opts)


class SyntheticSets:
    """The sweep's synthetic datasets by (ratio, filter threshold), made or reused when first asked for.

    Filtered sets are scored by ``judge``, the sweep's own real-only run of seed 0 (the same training
    cases, never a test case): they are first asked for when an arm that needs them trains, after that run
    (it is the sweep's first task). ``get`` looks without making."""

    def __init__(self, raw, generator: Path, sha: str, choice: SynthesisChoice, device: str, folder: Path,
                 judge: Path, log=print):
        self.raw, self.generator, self.sha, self.choice, self.device = raw, generator, sha, choice, device
        self.folder, self.judge, self.log, self.made = folder, judge, log, {}

    def get(self, key) -> Path | None:
        return self.made.get(key)

    def __getitem__(self, key) -> Path:
        if key not in self.made:
            ratio, threshold = key
            self.made[key] = ensure_synthetic(self.raw, self.generator, self.sha, ratio, self.choice, self.device,
                                              self.folder, self.log, threshold, self.judge if threshold else None)
            self.log(f"nnaug sweep: ratio {ratio_label(ratio)}"
                     + (f", mask consistency >= {threshold:g}" if threshold else "") + f": {self.made[key].name}")
        return self.made[key]


# ----------------------------------------------------------------------------- training
_WRAPPER = ("import ctypes, os, signal, sys\n"
            "try:\n"
            "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)\n"
            "except Exception:\n"
            "    pass\n"
            "if os.getppid() != int(sys.argv[1]):\n"
            "    sys.exit(75)\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n")
"""Starts nnUNetv2_train so that it gets SIGTERM when the sweep dies (kill -9 included): no orphan keeps
training into a folder that the next ``nnaug sweep`` continues."""


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Follows nnU-Net's log lines ("Epoch N", "Epoch time: X s", nnaug's phase lines) for an ETA."""

    def __init__(self, log=print):
        self.log = log
        self.seconds_per_iteration: float | None = None

    def start(self, label: str, phases: list[tuple[str, int, int]], later_iterations: int) -> None:
        self.label, self.phases, self.later = label, phases, later_iterations
        self.phase, self.epoch = 0, -1

    def line(self, text: str) -> None:
        if len(self.phases) > 1 and ("nnaug: phase 2/2" in text or "continuing the fine-tuning" in text):
            self.phase = 1
        match = re.search(r": Epoch (\d+)\s*$", text)
        if match:
            self.epoch = int(match.group(1))
            return
        match = re.search(r"Epoch time: ([0-9.]+) s", text)
        if match and self.epoch >= 0:
            name, epochs, iterations = self.phases[self.phase]
            rate = float(match.group(1)) / iterations
            self.seconds_per_iteration = rate if self.seconds_per_iteration is None else \
                0.7 * self.seconds_per_iteration + 0.3 * rate
            remaining = (epochs - self.epoch - 1) * iterations + sum(e * i for _, e, i in self.phases[self.phase + 1:])
            arm_eta = remaining * self.seconds_per_iteration
            sweep_eta = (remaining + self.later) * self.seconds_per_iteration
            self.log(f"nnaug sweep: {self.label}: {name} epoch {self.epoch + 1}/{epochs}, "
                     f"ETA {_fmt_seconds(arm_eta)} for this run, ~{_fmt_seconds(sweep_eta)} for the sweep's training")


def train_fold(raw, arm: Arm, seed: int, fold, root: Path, device: str, synthetic: Path | None,
               progress: Progress, label: str, later_iterations: int) -> None:
    """``nnUNetv2_train <Dataset> 2d <fold> -tr <trainer> -device <device> --c`` into ``root`` (as nnUNet_results)."""
    from nnaug.nnunet_pretraining import ENV_SYNTHETIC, trainers_path

    env = {**_clean_env(), **arm.env, "nnUNet_results": str(root), "nnUNet_extTrainer": trainers_path(),
           ENV_SEED: str(seed), "PYTHONUNBUFFERED": "1"}
    if synthetic is not None:
        env[ENV_SYNTHETIC] = synthetic.name
    if device == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "0")  # augmentation workers only compete for the cores (and break seeding)
    # nnU-Net's final validation exports through a pool of nnUNet_def_n_proc (default 8) spawned processes
    env.setdefault("nnUNet_def_n_proc", str(max(1, min(4, os.cpu_count() or 1))))
    args = [raw.name, CONFIGURATION, str(fold), "-tr", arm.trainer, "-device", device, "--c"]
    cmd = [sys.executable, "-c", _WRAPPER, str(os.getpid()), _nnunet_command("nnUNetv2_train"), *args]
    progress.log(f"nnaug sweep: {label}: nnUNetv2_train {' '.join(args)}  (nnUNet_results={root}, {ENV_SEED}={seed}"
                 + (f", {ENV_SYNTHETIC}={synthetic.name}" if synthetic is not None else "") + ")")
    progress.start(label, list(arm.phases) if not _pretrained(root, arm, synthetic) else list(arm.phases[1:]),
                   later_iterations)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            progress.line(line.rstrip("\n"))
    finally:
        code = proc.wait()
    if code != 0:
        raise NnaugError(f"nnUNetv2_train {' '.join(args)} failed with exit code {code} (its output is above); "
                         "rerun the same nnaug sweep command to continue")


def _pretrained(root: Path, arm: Arm, synthetic: Path | None) -> bool:
    """Is this arm's synthetic pretraining already cached in ``root`` (then a fold only fine-tunes)?"""
    if arm.kind != "pretrain" or synthetic is None:
        return False
    from nnaug.nnunet_pretraining import PRETRAIN_DONE_MARKER

    return any(root.glob(f"{synthetic.name}/*/fold_all/{PRETRAIN_DONE_MARKER}"))


def remaining_iterations(arm: Arm, folds_left: int, pretrained: bool) -> int:
    per_fold = sum(e * i for _, e, i in arm.phases[-1:]) if arm.kind == "pretrain" else sum(e * i for _, e, i in arm.phases)
    pretraining = 0 if arm.kind != "pretrain" or pretrained or not folds_left else arm.phases[0][1] * arm.phases[0][2]
    return folds_left * per_fold + pretraining


# ----------------------------------------------------------------------------- evaluation
def label_names(dataset_json: dict) -> dict[str, str]:
    """nnU-Net's metric key ('1', or '(1, 2)' for a region) -> the label's name in dataset.json; background and
    nnU-Net's ``ignore`` label (never scored) are left out."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        key = str(tuple(value)) if isinstance(value, (list, tuple)) else str(int(value))
        if key != "0" and name != "ignore":
            names[key] = name
    return names


def per_case_from_metrics(metric_per_case: list[dict], names: dict[str, str], file_ending: str) -> dict:
    """nnU-Net's ``metric_per_case`` -> ``{case: {"labels": {name: Dice or None}, "foreground": Dice}}``.

    A label absent from both the reference and the prediction has no Dice (None; nnU-Net writes NaN)
    and is left out of the case's foreground Dice (the mean over its labels); a case where every label
    is absent from both counts as foreground Dice 1.0 (the empty prediction is right).
    """
    out = {}
    for entry in metric_per_case:
        case = os.path.basename(entry["reference_file"])
        case = case[:-len(file_ending)] if case.endswith(file_ending) else case
        labels = {}
        for key, name in names.items():
            value = entry.get("metrics", {}).get(key, {}).get("Dice")
            labels[name] = None if value is None or not math.isfinite(float(value)) else float(value)
        present = [v for v in labels.values() if v is not None]
        out[case] = {"labels": labels, "foreground": float(np.mean(present)) if present else 1.0}
    return out


def cv_results(model_dir: Path, folds: list, names: dict[str, str], file_ending: str) -> dict:
    per_case = {}
    for fold in folds:
        summary = json.loads((model_dir / f"fold_{fold}" / "validation" / "summary.json").read_text())
        per_case.update(per_case_from_metrics(summary["metric_per_case"], names, file_ending))
    return per_case


def _checkpoint_stamp(model_dir: Path, folds: list) -> dict:
    stamp = {}
    for fold in folds:
        stat = (model_dir / f"fold_{fold}" / "checkpoint_final.pth").stat()
        stamp[str(fold)] = [stat.st_size, stat.st_mtime_ns]
    return stamp


def test_record(root: Path, test_name: str) -> Path:
    return root / f"nnaug_sweep_test_{test_name}.json"


def heldout_metrics(test_raw, model_dir: Path, folds: list, root: Path, device: str) -> list[dict]:
    """Dice of the model (ensemble of ``folds``) on every case of the held-out dataset, cached in ``root``
    (one record per held-out dataset, keyed by the checkpoints; a lock keeps two workers from predicting at once).

    nnU-Net's predictor (``predict_from_files_sequential``, its default test-time mirroring) writes the
    predictions to ``root/test_<Dataset>/``; nnU-Net's ``compute_metrics`` scores them.
    """
    from nnaug.io import file_lock, load_json_or_none, write_json_atomic

    record_file = test_record(root, test_raw.name)
    key = {"test_dataset": test_raw.name, "folds": [str(f) for f in folds], "checkpoints": _checkpoint_stamp(model_dir, folds)}
    with file_lock(root / f".test_{test_raw.name}.lock", None):
        record = load_json_or_none(record_file)
        if record is not None and record.get("key") == key:
            return record["metric_per_case"]
        metric_per_case = _predict_and_score(test_raw, model_dir, folds, root / f"test_{test_raw.name}", device)
        write_json_atomic(record_file, {"key": key, "model": str(model_dir), "metric_per_case": metric_per_case})
    return metric_per_case


def _predict_and_score(test_raw, model_dir: Path, folds: list, out: Path, device: str) -> list[dict]:
    """nnU-Net's predictor into ``out``, then nnU-Net's ``compute_metrics`` per case."""
    import contextlib
    import io

    import torch
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnaug.mask_consistency import nnaug_trainers_env

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dev = torch.device(device)
    # nnU-Net prints a line per case; nnaug's trainers are findable by name only inside the block
    with contextlib.redirect_stdout(io.StringIO()), nnaug_trainers_env():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(folds),
                                                       checkpoint_name="checkpoint_final.pth")
        predictor.predict_from_files_sequential([c.image_files for c in test_raw.cases],
                                                [str(out / c.identifier) for c in test_raw.cases],
                                                save_probabilities=False, overwrite=True)
    label_manager = predictor.plans_manager.get_label_manager(predictor.dataset_json)
    regions = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    rw = test_raw.reader_writer()
    metric_per_case = []
    for case in test_raw.cases:
        result = compute_metrics(case.label_file, str(out / f"{case.identifier}{test_raw.file_ending}"), rw, regions,
                                 label_manager.ignore_label)
        metric_per_case.append({"reference_file": result["reference_file"],
                                "metrics": {str(k): {"Dice": float(v["Dice"])} for k, v in result["metrics"].items()}})
    return metric_per_case


# ----------------------------------------------------------------------------- fidelity of the synthetic sets
def synthetic_quality(raw, synthetic: Path, weights: Path | None, model_dir: Path, folds: list, device: str,
                      cache: Path, log=print) -> dict:
    """FID/KID (and FRD when nnaug.fidelity gives it) and mask consistency of one synthetic dataset, cached."""
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.io import write_json_atomic
    from nnaug.mask_consistency import mask_consistency
    from nnaug.io import load_json_or_none
    from nnaug.provenance import read_provenance

    provenance = read_provenance(synthetic) or {}
    key = {"synthetic": synthetic.name, "num_cases": provenance.get("num_cases"),
           "checkpoint_sha256": provenance.get("checkpoint_sha256"),
           "weights": [str(weights), weights.stat().st_size] if weights is not None else None,
           "model": str(model_dir), "folds": [str(f) for f in folds],
           "checkpoints": _checkpoint_stamp(model_dir, folds)}
    record = load_json_or_none(cache)
    if record is not None and record.get("key") == key:
        return record["quality"]
    quality: dict = {"dataset": synthetic.name, "num_cases": provenance.get("num_cases")}
    log(f"nnaug sweep: fidelity (FID/KID/FRD) of {synthetic.name} against {raw.name} ...")
    try:  # whatever keys nnaug.fidelity gives (fid, kid_mean, kid_std, frd, ... and *_note for what is missing)
        quality["fidelity"] = synthetic_fidelity(raw, synthetic, weights)
    except NnaugError as exc:
        quality["fidelity_note"] = f"n/a ({exc})"
        log(f"nnaug sweep: warning: fidelity of {synthetic.name}: {exc}")
    log(f"nnaug sweep: mask consistency of {synthetic.name} with {model_dir.name} (real-only, seed 0) ...")
    consistency = mask_consistency(synthetic, model_dir, folds=tuple(folds), device=device)
    quality["mask_consistency"] = consistency["mean_dice"]
    quality["mask_consistency_per_case"] = consistency["per_case"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    quality = _json_safe(quality)
    write_json_atomic(cache, {"key": key, "quality": quality})
    return quality


# ----------------------------------------------------------------------------- statistics
def _grid(per_case_by_seed: dict, seeds: list[int], cases: list[str], label: str | None) -> np.ndarray:
    grid = np.full((len(seeds), len(cases)), np.nan)
    for i, seed in enumerate(seeds):
        results = per_case_by_seed[seed]
        for j, case in enumerate(cases):
            entry = results.get(case)
            if entry is None:
                continue
            value = entry["foreground"] if label is None else entry["labels"].get(label)
            grid[i, j] = np.nan if value is None else value
    return grid


def _nnunet_difference(rows: list[dict], arm: str, reference: str) -> float | None:
    by = {r["arm"]: r["nnunet_foreground_mean"]["mean"] for r in rows}
    return None if by[arm] is None or by[reference] is None else by[arm] - by[reference]


def nnunet_foreground_mean(grids: dict, names: list[str]) -> np.ndarray:
    """nnU-Net's ``foreground_mean`` Dice per seed: each label's mean over the cases where it has a Dice, then
    the mean over labels (a case's foreground Dice here is the other order: over its labels, then over cases)."""
    import warnings

    with warnings.catch_warnings():  # a label without any Dice in a seed: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        per_label = np.stack([np.nanmean(grids[n], axis=1) for n in names]) if names else np.zeros((0, 0))
        return np.nanmean(per_label, axis=0) if len(per_label) else np.full(grids[None].shape[0], np.nan)


def _nnunet_row(values: np.ndarray, seeds: list[int]) -> dict:
    return {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else None,
            "per_seed": {str(s): (float(v) if np.isfinite(v) else None) for s, v in zip(seeds, values)}}


def summarise(arms: list[Arm], results: dict, seeds: list[int], names: list[str], confidence: float = 0.95) -> dict:
    """Per-arm means with CIs, and differences paired by case (vs real-only; pretrain arms also vs compute-matched);
    nnU-Net's foreground_mean beside the per-case foreground Dice."""
    from nnaug.stats import difference_ci as paired_difference
    from nnaug.stats import mean_ci as bootstrap_ci

    case_sets = [set(results[a.name][s]) for a in arms for s in seeds]
    cases = sorted(set.intersection(*case_sets)) if case_sets else []
    if not cases:
        raise NnaugError("the arms have no evaluated case in common: rerun the sweep")
    grids = {a.name: {label: _grid(results[a.name], seeds, cases, label) for label in [None, *names]} for a in arms}
    rows = []
    for arm in arms:
        fg = grids[arm.name][None]
        rows.append({
            "arm": arm.name, "kind": arm.kind, "ratio": arm.ratio, "trainer": arm.trainer,
            "foreground": bootstrap_ci(fg, confidence).as_dict(),
            "labels": {n: bootstrap_ci(grids[arm.name][n], confidence).as_dict() for n in names},
            "per_seed_foreground": {str(s): float(np.nanmean(fg[i])) for i, s in enumerate(seeds)},
            "nnunet_foreground_mean": _nnunet_row(nnunet_foreground_mean(grids[arm.name], names), seeds),
        })
    differences = []
    references = [a for a in arms if a.kind != "pretrain"]
    for arm in arms:
        for ref in references:
            if ref.name == arm.name or (arm.kind != "pretrain" and ref.kind != "real-only"):
                continue
            differences.append({
                "arm": arm.name, "reference": ref.name, "ratio": arm.ratio,
                "foreground": paired_difference(grids[arm.name][None], grids[ref.name][None], confidence).as_dict(),
                "labels": {n: paired_difference(grids[arm.name][n], grids[ref.name][n], confidence).as_dict()
                           for n in names},
                "nnunet_foreground_mean": _nnunet_difference(rows, arm.name, ref.name),
            })
    return {"cases": cases, "arms": rows, "differences": differences}


# ----------------------------------------------------------------------------- the sweep
@dataclass
class SweepSetup:
    """Everything a sweep's runs depend on, checked once: the same command in several processes builds the
    same setup, and each worker takes the runs no other one holds."""

    raw: object
    tests: list  # held-out raw datasets; empty: nnU-Net's cross-validation
    folds: list
    generator: Path
    info: dict
    sha: str
    choice: SynthesisChoice
    budget: str
    device: str
    arms: list
    seeds: list
    base: Path
    gen_folder: Path
    plans_sha: str

    @property
    def cv(self) -> bool:
        return not self.tests

    @property
    def tasks(self) -> list[tuple[Arm, int]]:
        return [(arm, seed) for seed in self.seeds for arm in self.arms]

    def root(self, arm: Arm, seed: int) -> Path:
        return arm_root(self.base, self.gen_folder, arm, seed)

    def model_dir(self, arm: Arm, seed: int) -> Path:
        return model_folder(self.root(arm, seed), self.raw.name, arm.trainer)

    def folds_left(self, arm: Arm, seed: int) -> list:
        return [f for f in self.folds if not fold_done(self.model_dir(arm, seed), f, self.cv)]


def run_sweep(dataset: str, ratios=(1.0, 2.5, 5.0), seeds: int = 3, generator: Path | None = None,
              test=None, folds=None, budget: str = "small", device: str | None = None,
              compute_matched: bool = True, inception_weights: Path | None = None, mode: str | None = None,
              masks: str = "train", sampler: str | None = None, steps: int | None = None, overwrite: bool = False,
              min_consistency=None, log=print) -> list[dict]:
    """Train every arm x seed that is not done yet (by no other worker either), evaluate on each held-out
    dataset in ``test`` (a name/ID or a list; none: cross-validation), and write one sweep.{md,json,png}
    per evaluation; returns their sweep.json dicts."""
    from nnaug.fidelity import resolve_inception_weights

    start = time.time()
    setup = prepare_sweep(dataset, ratios, seeds, generator, test, folds, budget, device, compute_matched, mode,
                          masks, sampler, steps, overwrite, min_consistency, log)
    real_model = setup.model_dir(setup.arms[0], 0)
    synthetic = SyntheticSets(setup.raw, setup.generator, setup.sha, setup.choice, setup.device, setup.gen_folder,
                              real_model, log)
    for key in [a.synthesis_key for a in setup.arms if a.kind == "pretrain" and a.min_consistency is None]:
        synthetic[key]  # the unfiltered sets up front: made, resumed or reused
    trained = train_runs(setup, synthetic, log)
    for arm, seed in setup.tasks:
        if setup.folds_left(arm, seed):  # a worker that held it died: the next run of the command continues it
            raise NnaugError(f"{arm.name} seed {seed} is not trained (another worker stopped): rerun the same command")

    weights = resolve_inception_weights(inception_weights, required=False)
    keys = [a.synthesis_key for a in setup.arms if a.kind == "pretrain"]
    quality = {key: synthetic_quality(setup.raw, synthetic[key], weights, real_model, setup.folds, setup.device,
                                      setup.gen_folder / "fidelity" / f"{synthetic[key].name}.json", log) for key in keys}
    results = []
    for test_raw in setup.tests or [None]:
        results.append(evaluate(setup, test_raw, synthetic, quality, weights, log))
        results[-1].update({"trained_this_run": trained, "wall_seconds_this_run": time.time() - start})
        folder = setup.gen_folder / (f"test-{test_raw.name}" if test_raw is not None else "cv")
        results[-1]["folder"] = str(folder)
        paths = write_outputs(results[-1], folder, latest_outputs(setup.raw.name))
        log("nnaug sweep: wrote " + ", ".join(str(p) for p in paths))
    return results


def _check_options(budget: str, seeds: int, masks: str, steps: int | None) -> None:
    if budget not in BUDGETS:
        raise NnaugError(f"unknown budget '{budget}': choose one of {', '.join(BUDGETS)}")
    if int(seeds) < 1:
        raise NnaugError(f"--seeds must be at least 1, got {seeds}")
    if masks not in ("train", "augmented"):
        raise NnaugError(f"--masks must be train or augmented, got {masks}")
    if steps is not None and int(steps) < 1:
        raise NnaugError(f"--steps must be at least 1, got {steps}")


def _held_out_datasets(raw, test) -> list:
    """``--test A,B`` (or a list): each a raw dataset other than the training one, of the same kind."""
    from nnaug.dataset import check_dataset, load_raw_dataset

    names = [t for t in (test.split(",") if isinstance(test, str) else (test or [])) if str(t).strip()]
    tests = []
    for name in names:
        test_raw = load_raw_dataset(str(name).strip())
        if test_raw.folder.resolve() == raw.folder.resolve():
            raise NnaugError(f"--test {name} is the training dataset itself: give a held-out dataset")
        _check_same_kind(raw, test_raw, "--test dataset")
        check_dataset(test_raw)
        if test_raw.name not in [t.name for t in tests]:
            tests.append(test_raw)
    return tests


def _checked_generator(raw, generator: Path | None) -> tuple[Path, dict]:
    from nnaug.generators import find_latest_generator, read_info

    generator = Path(generator) if generator is not None else find_latest_generator(raw.name)
    info = read_info(generator)
    if info.get("labels") != raw.labels or info.get("channel_names") != raw.channel_names:
        raise NnaugError(f"generator {generator} was trained on {info.get('source_dataset')} with labels "
                         f"{info.get('labels')}, channels {info.get('channel_names')}; {raw.name} has {raw.labels}, "
                         f"{raw.channel_names}: use a generator trained on this dataset")
    return generator, info


def prepare_sweep(dataset, ratios, seeds, generator, test, folds, budget, device, compute_matched, mode, masks,
                  sampler, steps, overwrite, min_consistency, log=print) -> SweepSetup:
    """Checks every input, plans the real dataset, and makes (or, with ``overwrite``, clears) the folders."""
    from nnaug.dataset import check_dataset, load_raw_dataset
    from nnaug.generators import checkpoint_sha256

    _check_options(budget, seeds, masks, steps)
    ratios, thresholds = parse_ratios(ratios), parse_thresholds(min_consistency)
    device = _device(device)
    raw = load_raw_dataset(dataset)
    check_dataset(raw)
    tests = _held_out_datasets(raw, test)
    folds = resolve_folds(list(folds or []), bool(tests), len(raw.cases))
    generator, info = _checked_generator(raw, generator)
    sha = checkpoint_sha256(generator)
    choice = resolve_synthesis(info, mode, masks, sampler, steps)
    base, gen_folder = sweep_folders(raw.name, budget, f"{_slug(generator.name)}-{sha[:8]}_{choice.tag}")
    plans_sha = ensure_planned(raw, log)
    _prepare_folders(raw, base, gen_folder, plans_sha, budget, overwrite, log)
    write_json_atomic(gen_folder / SWEEP_CONFIG, {
        "dataset": raw.name, "plans_sha256": plans_sha, "budget": budget, "generator": str(generator.resolve()),
        "generator_model": info.get("model"), "checkpoint_sha256": sha, "synthesis": choice.__dict__})
    arms = make_arms(BUDGETS[budget], ratios, compute_matched, thresholds)
    setup = SweepSetup(raw, tests, folds, generator, info, sha, choice, budget, device, arms, list(range(int(seeds))),
                       base, gen_folder, plans_sha)
    done = sum(not setup.folds_left(a, s) for a, s in setup.tasks)
    log(f"nnaug sweep: {raw.name}: {len(arms)} arms x {int(seeds)} seeds = {len(setup.tasks)} runs ({done} done), "
        f"folds {','.join(map(str, folds))}, budget {budget}, device {device}; generator {generator} ({sha[:8]}); "
        f"runs under {gen_folder}")
    return setup


def _prepare_folders(raw, base: Path, gen_folder: Path, plans_sha: str, budget: str, overwrite: bool, log) -> None:
    old = _load(base / BASE_CONFIG)
    if old is not None and old.get("plans_sha256") != plans_sha and not overwrite:
        raise NnaugError(f"the nnU-Net plans of {raw.name} changed since the arms in {base} were trained: "
                         "pass --overwrite to train them again")
    if overwrite:
        targets = [base] if old is not None and old.get("plans_sha256") != plans_sha else \
            [base / "real-only", base / "real-only-matched", gen_folder]
        for target in targets:
            if target.exists():
                log(f"nnaug sweep: --overwrite: removing {target}")
                shutil.rmtree(target)
    gen_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(base / BASE_CONFIG, {"dataset": raw.name, "plans_sha256": plans_sha, "budget": budget})


def train_runs(setup: SweepSetup, synthetic: SyntheticSets, log=print) -> list[str]:
    """Trains every run no worker has trained. Several processes can run the same sweep: each takes the
    next run whose lock is free (first pass), then waits for the runs others hold (second pass) and
    continues any whose worker died. A filtered set needs the judge (real-only, seed 0) first."""
    progress = Progress(log)
    trained: list[str] = []
    judge = (setup.arms[0], 0)
    for wait in (False, True):
        for index, (arm, seed) in enumerate(setup.tasks, 1):
            label = f"[{index}/{len(setup.tasks)}] {arm.name} seed {seed}"
            if not setup.folds_left(arm, seed):
                if not wait and not any(label in t for t in trained):
                    log(f"nnaug sweep: {label}: done, skipped")
                continue
            if not wait and arm.min_consistency is not None and setup.folds_left(*judge):
                continue  # its set is filtered by the judge, not trained yet: the second pass comes back
            with file_lock(setup.root(arm, seed).parent / f".seed_{seed}.lock",
                           f"{label}: waiting for another worker training it", wait=wait) as held:
                if not held:
                    log(f"nnaug sweep: {label}: another worker is training it; taking the next run")
                    continue
                trained += _train_run(setup, index, arm, seed, synthetic, progress, log)
    return trained


def _train_run(setup: SweepSetup, index: int, arm: Arm, seed: int, synthetic: SyntheticSets, progress: Progress,
               log) -> list[str]:
    root, done = setup.root(arm, seed), []
    label = f"[{index}/{len(setup.tasks)}] {arm.name} seed {seed}"
    left = setup.folds_left(arm, seed)
    for fold in left:
        later = sum(remaining_iterations(a, len(setup.folds_left(a, s)),
                                         _pretrained(setup.root(a, s), a, synthetic.get(a.synthesis_key)))
                    for a, s in setup.tasks[index:])
        later += remaining_iterations(arm, len(left) - left.index(fold) - 1, True)
        fold_start = time.time()
        log(f"nnaug sweep: {label} fold {fold}: training with {arm.trainer} ("
            + ", ".join(f"{p} {e} epochs x {i} iterations" for p, e, i in arm.phases) + ")")
        synthetic_set = synthetic[arm.synthesis_key] if arm.synthesis_key else None
        train_fold(setup.raw, arm, seed, fold, root, setup.device, synthetic_set, progress, f"{label} fold {fold}", later)
        record = _load(root / ARM_RECORD) or {}
        seconds = record.get("train_seconds", {})
        seconds[str(fold)] = seconds.get(str(fold), 0.0) + time.time() - fold_start
        write_json_atomic(root / ARM_RECORD, {
            "arm": arm.name, "kind": arm.kind, "ratio": arm.ratio, "seed": seed, "trainer": arm.trainer,
            "env": arm.env, "min_consistency": arm.min_consistency,
            "synthetic_dataset": synthetic_set.name if synthetic_set is not None else None,
            "device": setup.device, "plans_sha256": setup.plans_sha, "train_seconds": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        done.append(f"{arm.name} seed {seed} fold {fold}")
    return done


def per_case_dice(setup: SweepSetup, test_raw, log=print) -> tuple[dict, dict]:
    """{arm: {seed: per-case Dice}} on the held-out dataset (None: the CV folds), and each arm's training seconds."""
    names_by_key = label_names(setup.raw.dataset_json)
    results: dict = {}
    seconds: dict = {}
    for arm, seed in setup.tasks:
        root, model_dir = setup.root(arm, seed), setup.model_dir(arm, seed)
        if test_raw is None:
            per_case = cv_results(model_dir, setup.folds, names_by_key, setup.raw.file_ending)
        else:
            log(f"nnaug sweep: {arm.name} seed {seed}: Dice on {test_raw.name} ...")
            metrics = heldout_metrics(test_raw, model_dir, setup.folds, root, setup.device)
            per_case = per_case_from_metrics(metrics, names_by_key, test_raw.file_ending)
        results.setdefault(arm.name, {})[seed] = per_case
        seconds.setdefault(arm.name, []).append(sum((_load(root / ARM_RECORD) or {}).get("train_seconds", {}).values()))
    return results, seconds


def evaluate(setup: SweepSetup, test_raw, synthetic: SyntheticSets, quality: dict, weights: Path | None,
             log=print) -> dict:
    """One evaluation's sweep.json dict: per-case Dice of every run, statistics, and the synthetic sets."""
    from nnaug.stats import DEFAULT_RESAMPLES
    from nnaug.stats import METHOD as CI_METHOD

    results, seconds = per_case_dice(setup, test_raw, log)
    names = list(label_names(setup.raw.dataset_json).values())
    stats = summarise(setup.arms, results, setup.seeds, names)
    plan, info, raw = BUDGETS[setup.budget], setup.info, setup.raw
    synthetic_name = {a.name: synthetic[a.synthesis_key].name if a.synthesis_key else None for a in setup.arms}
    result = {
        "dataset": raw.name, "num_real_cases": len(raw.cases), "base_folder": str(setup.base),
        "runs_folder": str(setup.gen_folder),
        "generator": {"folder": str(setup.generator.resolve()), "model": info.get("model"),
                      "checkpoint_sha256": setup.sha, "steps_trained": info.get("steps_trained"),
                      "resolution": info.get("resolution")},
        "synthesis": {**setup.choice.__dict__, "seed": 0},
        "budget": {"name": setup.budget, "about": plan.about, "pretrain": list(plan.pretrain),
                   "finetune": list(plan.finetune), "matched_epochs": plan.matched_epochs},
        "device": setup.device, "seeds": setup.seeds, "ratios": sorted({a.ratio for a in setup.arms if a.ratio}),
        "min_consistency": list(dict.fromkeys(a.min_consistency for a in setup.arms if a.kind == "pretrain")),
        "folds": [str(f) for f in setup.folds],
        "evaluation": ({"mode": "test", "test_dataset": test_raw.name, "num_cases": len(stats["cases"])}
                       if test_raw is not None else {"mode": "cross-validation", "num_cases": len(stats["cases"])}),
        "labels": names, "confidence": 0.95, "ci_method": CI_METHOD, "bootstrap_resamples": DEFAULT_RESAMPLES,
        "arms": [{**row, "phases": [list(p) for p in arm.phases], "env": arm.env, "min_consistency": arm.min_consistency,
                  "synthetic_dataset": synthetic_name[arm.name],
                  "mean_train_seconds": float(np.mean(seconds[arm.name])) if seconds[arm.name] else None}
                 for row, arm in zip(stats["arms"], setup.arms)],
        "differences": stats["differences"],
        "synthetic": [{"ratio": key[0], "min_consistency": key[1],
                       **{k: v for k, v in q.items() if k != "mask_consistency_per_case"}} for key, q in quality.items()],
        "per_case": {arm: {str(s): v for s, v in by_seed.items()} for arm, by_seed in results.items()},
        "inception_weights": str(weights) if weights is not None else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return _json_safe(result)


def _load(path: Path) -> dict | None:
    from nnaug.io import load_json_or_none

    return load_json_or_none(path)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------- outputs
def _num(value, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(interval: dict, signed: bool = False) -> str:
    if interval.get("mean") is None:
        return "n/a"
    return (f"{_num(interval['mean'], signed=signed)} [{_num(interval['low'], signed=signed)}, "
            f"{_num(interval['high'], signed=signed)}]")


def _verdict(interval: dict) -> str:
    if interval.get("mean") is None:
        return "n/a"
    if interval["includes_zero"]:
        return "**includes 0**: no detectable difference"
    return "better" if interval["low"] > 0 else "worse"


def _show_nnunet(result: dict) -> bool:
    """Show nnU-Net's foreground_mean beside the per-case foreground Dice: only where they differ (4 decimals)."""
    for arm in result["arms"]:
        nn = (arm.get("nnunet_foreground_mean") or {}).get("mean")
        if nn is not None and arm["foreground"].get("mean") is not None and abs(nn - arm["foreground"]["mean"]) >= 5e-5:
            return True
    return False


def _arm_table(result: dict, names: list[str], nn: bool) -> list[str]:
    lines = ["## Dice per arm (mean over seeds × cases, 95 % CI)", "",
             "| arm | trained on | foreground Dice [95 % CI] | " + ("nnU-Net foreground_mean | " if nn else "")
             + " | ".join(names) + " | per-seed means | train s/seed |",
             "|---|---|---|" + ("---|" if nn else "") + "---|" * len(names) + "---|---|"]
    for arm in result["arms"]:
        on = f"{arm['synthetic_dataset']} → real" if arm["synthetic_dataset"] else "real"
        epochs = " + ".join(f"{e}×{i}" for _, e, i in arm["phases"])
        seeds = ", ".join(_num(v, 3) for v in arm["per_seed_foreground"].values())
        lines.append(f"| {arm['arm']} | {on} ({epochs}) | {_ci(arm['foreground'])} | "
                     + (f"{_num((arm.get('nnunet_foreground_mean') or {}).get('mean'))} | " if nn else "")
                     + " | ".join(_ci(arm["labels"][n]) for n in names)
                     + f" | {seeds} | {_num(arm['mean_train_seconds'], 0)} |")
    return lines


def _difference_table(result: dict, names: list[str], nn: bool) -> list[str]:
    lines = ["", "## Paired differences (same cases; each arm's seeds on their own)", "",
             "| arm | vs | Δ foreground Dice [95 % CI] | CI | " + ("Δ nnU-Net foreground_mean | " if nn else "")
             + " | ".join(f"Δ {n}" for n in names) + " |",
             "|---|---|---|---|" + ("---|" if nn else "") + "---|" * len(names)]
    for diff in result["differences"]:
        lines.append(f"| {diff['arm']} | {diff['reference']} | {_ci(diff['foreground'], True)} | "
                     f"{_verdict(diff['foreground'])} | "
                     + (f"{_num(diff.get('nnunet_foreground_mean'), signed=True)} | " if nn else "")
                     + " | ".join(_ci(diff["labels"][n], True) for n in names) + " |")
    return lines


def to_markdown(result: dict) -> str:
    budget, ev, gen = result["budget"], result["evaluation"], result["generator"]
    n_seeds, n_cases = len(result["seeds"]), ev["num_cases"]
    lines = [f"# nnaug sweep: {result['dataset']}", ""]
    where = (f"held-out dataset {ev['test_dataset']} ({n_cases} cases; nnU-Net's predictor, ensemble of fold(s) "
             f"{', '.join(result['folds'])})" if ev["mode"] == "test" else
             f"nnU-Net's {CV_FOLDS}-fold cross-validation on the real cases, fold(s) {', '.join(result['folds'])} "
             f"({n_cases} validation cases, real only)")
    lines += [f"- Evaluated on: {where}.",
              f"- Generator: `{gen['folder']}` ({gen['model']}, checkpoint sha256 {gen['checkpoint_sha256'][:12]}…); "
              f"synthesis {result['synthesis']['mode']}, {result['synthesis']['sampler']} {result['synthesis']['steps']} steps.",
              f"- Budget `{budget['name']}`: {budget['about']}. Compute-matched real-only: {budget['matched_epochs']} "
              f"epochs.",
              f"- Seeds: {', '.join(map(str, result['seeds']))} (each arm trained {n_seeds}x; `NNAUG_SEED` seeds "
              f"torch/numpy/random in nnaug's trainers). Device: {result['device']}.",
              f"- 95 % CIs: {result['ci_method']}; 10,000 bootstrap resamples, over {n_seeds} seeds × {n_cases} cases"
              + (" (1 seed: run-to-run noise is not in the intervals; use `--seeds 3` or more)." if n_seeds < 2 else "."),
              ""]
    names = result["labels"]
    nn = _show_nnunet(result)
    lines += _arm_table(result, names, nn) + _difference_table(result, names, nn)
    zero = [d for d in result["differences"] if d["foreground"].get("includes_zero")]
    lines.append("")
    if zero:
        lines.append("The 95 % CI of the foreground Dice difference **includes 0** for: "
                     + ", ".join(f"{d['arm']} vs {d['reference']}" for d in zero)
                     + " — at this number of seeds and cases these arms are not distinguishable.")
    else:
        lines.append("No foreground Dice difference has a 95 % CI that includes 0.")
    lines += ["", "## Synthetic datasets", "",
              "| ratio | filter | dataset | synthetic cases | FID | KID (mean ± std) | FRD, log(d²) | mask consistency Dice |",
              "|---|---|---|---|---|---|---|---|"]
    extractor, notes = None, []
    for row in result["synthetic"]:
        fidelity = row.get("fidelity") or {}
        extractor = extractor or fidelity.get("extractor")
        kid = "n/a" if fidelity.get("kid_mean") is None else \
            f"{_num(fidelity.get('kid_mean'))} ± {_num(fidelity.get('kid_std'))}"
        kept = f"mask consistency ≥ {row['min_consistency']:g}" if row.get("min_consistency") else "none"
        lines.append(f"| {ratio_label(row['ratio'])} | {kept} | {row['dataset']} | {row['num_cases']} | "
                     f"{_num(fidelity.get('fid'), 2)} | {kid} | {_num(fidelity.get('frd'), 2)} | "
                     f"{_num(row.get('mask_consistency'))} |")
        for note in [row.get("fidelity_note")] + [fidelity.get(k) for k in ("fid_note", "frd_note")]:
            if note and note not in notes:
                notes.append(note)
    lines.append("")
    if extractor:
        lines.append(f"FID/KID: {extractor}, synthetic images against {result['dataset']}'s training images.")
    lines += [f"n/a: {note}" for note in notes]
    if any(row.get("min_consistency") for row in result["synthetic"]):
        lines.append("A filtered set was kept by the same real-only model (seed 0) that measures its mask consistency "
                     "here, so that number is at least its threshold by construction; compare the sets by Dice.")
    lines.append("Mask consistency: Dice of each synthetic mask with the prediction of the real-only model "
                 "(seed 0) on its image.")
    lines += ["", "## How to read this", "",
              "- Foreground Dice here is **per case**: nnU-Net's Dice of each label (`compute_metrics`); a label absent "
              "from both reference and prediction is left out, and a case's foreground Dice is the mean over its "
              "labels (1.0 when no label is present in either), then averaged over cases. nnU-Net's own "
              "`foreground_mean` (summary.json) averages the other way: each label over the cases where it has a "
              "Dice, then over labels. With one label and no empty cases they are equal; "
              + ("they differ here, so both are shown (sweep.json: `nnunet_foreground_mean`)." if nn else
                 "here they agree to 4 decimals (both in sweep.json: `nnunet_foreground_mean`).")
              + " A per-label mean or difference can be over fewer cases than the foreground one, and can even "
              "disagree with it in sign. nnU-Net's `ignore` label is never scored and has no column.",
              "- A difference compares two arms case by case (the same evaluated cases); the seeds of each arm are "
              "resampled on their own, because two arms share no randomness at the same seed number, so the "
              "verdict cannot depend on how seeds are numbered. Its CI contains the run-to-run noise of nnU-Net "
              "training (seeds) and the choice of cases; with 2-5 seeds it is mostly set by the t-interval "
              "(docs/sweep.md: simulated coverage).",
              *(["- `real-only-matched` trains the real-only model as long as pretraining + fine-tuning together: a "
                 "pretrain arm that beats `real-only` but not `real-only-matched` gained from more steps, not from "
                 "the synthetic data."] if any(a["kind"] == "compute-matched" for a in result["arms"]) else []),
              f"- Results: `{result['folder']}`; the nnU-Net runs: `{result.get('runs_folder', result['folder'])}` "
              f"(real-only arms: `{result['base_folder']}`).",
              f"- Written {result['finished']}."]
    return "\n".join(lines) + "\n"


FILTER_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def _by_threshold(pretrain: list[dict]) -> dict:
    """Pretrain arms grouped by their synthetic set's filter threshold (None, unfiltered, first)."""
    groups: dict = {}
    for arm in pretrain:
        groups.setdefault(arm.get("min_consistency"), []).append(arm)
    return dict(sorted(groups.items(), key=lambda g: -1.0 if g[0] is None else g[0]))


def plot(result: dict, path: Path) -> Path:
    """Foreground Dice vs ratio (pretrain arms, 95 % CI bars; per-seed means as dots), real-only arms as bands;
    right: paired differences to real-only."""
    # a Figure on its own Agg canvas: no pyplot, so the caller's matplotlib backend stays as it was
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = result["arms"]
    pretrain = [a for a in arms if a["kind"] == "pretrain"]
    ratios = sorted({a["ratio"] for a in pretrain})
    fig = Figure(figsize=(11, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    colours = {"real-only": "tab:gray", "compute-matched": "tab:orange"}
    span = (-0.06 * max(ratios or [1]), max(ratios or [1]) * 1.08)
    for arm in arms:
        if arm["kind"] == "pretrain":
            continue
        fg, colour = arm["foreground"], colours[arm["kind"]]
        if arm["kind"] == "compute-matched":  # hatched outline, so that the real-only band stays visible under it
            left.axhspan(fg["low"], fg["high"], facecolor="none", edgecolor=colour, hatch="///", lw=0.8, alpha=0.6)
        else:
            left.axhspan(fg["low"], fg["high"], color=colour, alpha=0.2)
            left.errorbar([0], [fg["mean"]], yerr=[[fg["mean"] - fg["low"]], [fg["high"] - fg["mean"]]], fmt="s",
                          color=colour, capsize=5)
        left.axhline(fg["mean"], color=colour, ls="--" if arm["kind"] == "compute-matched" else "-", lw=1.5,
                     label=f"{arm['arm']} {fg['mean']:.3f} (band: 95 % CI)")
    nudge = 0.025 * max(ratios or [1])  # filtered series beside the unfiltered one at the same ratio
    for g, ((threshold, group), colour) in enumerate(zip(_by_threshold(pretrain).items(), FILTER_COLOURS)):
        means = [a["foreground"]["mean"] for a in group]
        err = [[m - a["foreground"]["low"] for m, a in zip(means, group)],
               [a["foreground"]["high"] - m for m, a in zip(means, group)]]
        kept = f", kept at mask consistency ≥ {threshold:g}" if threshold else ""
        left.errorbar([a["ratio"] + g * nudge for a in group], means, yerr=err, fmt="o-", color=colour, capsize=5,
                      lw=1.8, label=f"pretrain → fine-tune{kept} (mean, 95 % CI)")
        for a in group:
            seeds = list(a["per_seed_foreground"].values())
            left.scatter([a["ratio"] + g * nudge] * len(seeds), seeds, s=12, color=colour, alpha=0.45, zorder=3)
    left.scatter([], [], s=12, color="tab:blue", alpha=0.45, label="per-seed means")
    left.set_xlim(*span)
    left.set_xticks([0] + ratios)
    left.set_xlabel("synthetic ratio (synthetic cases per real case; 0 = real-only)")
    left.set_ylabel("foreground Dice")
    left.set_title("Dice vs synthetic ratio")
    left.legend(fontsize=7, loc="best")
    left.grid(alpha=0.3)

    offsets = {"real-only": -0.04, "real-only-matched": 0.04}
    width = max(ratios) if ratios else 1
    threshold_of = {a["arm"]: a.get("min_consistency") for a in arms}
    for (reference, marker), (g, (threshold, colour)) in itertools.product(
            (("real-only", "o"), ("real-only-matched", "s")), enumerate(zip(_by_threshold(pretrain), FILTER_COLOURS))):
        diffs = [d for d in result["differences"] if d["reference"] == reference and d["ratio"] is not None
                 and threshold_of.get(d["arm"]) == threshold]
        if not diffs:
            continue
        xs = [d["ratio"] + (offsets[reference] + 0.1 * g) * width for d in diffs]
        ys = [d["foreground"]["mean"] for d in diffs]
        yerr = [[y - d["foreground"]["low"] for y, d in zip(ys, diffs)],
                [d["foreground"]["high"] - y for y, d in zip(ys, diffs)]]
        kept = f" (mc ≥ {threshold:g})" if threshold else ""
        right.errorbar(xs, ys, yerr=yerr, fmt=marker, color=colour, capsize=5, mfc="white" if reference != "real-only"
                       else colour, label=f"vs {reference}{kept}")
    right.axhline(0.0, color="black", lw=1)
    extra = 0.1 * (len(_by_threshold(pretrain)) - 1)
    right.set_xlim(min(ratios or [0]) - 0.12 * width, max(ratios or [1]) + (0.12 + extra) * width)
    right.set_xticks(ratios)
    right.set_xlabel("synthetic ratio")
    right.set_ylabel("Δ foreground Dice (paired)")
    right.set_title("Paired difference, 95 % CI (crossing 0 = no evidence)")
    right.legend(fontsize=7, loc="best")
    right.grid(alpha=0.3)
    ev = result["evaluation"]
    fig.suptitle(f"{result['dataset']} — budget {result['budget']['name']}, {len(result['seeds'])} seeds × "
                 f"{ev['num_cases']} cases ({'held-out ' + ev['test_dataset'] if ev['mode'] == 'test' else 'CV'})",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_outputs(result: dict, folder: Path, latest: dict[str, Path]) -> list[Path]:
    """sweep.{md,json,png} into the sweep's folder, then the same three files as the dataset's latest sweep."""
    markdown = to_markdown(result)
    text = json.dumps(result, indent=1)
    written = []
    for target in (folder, None):
        paths = {k: (folder / f"sweep.{k}") if target is not None else latest[k] for k in ("md", "json", "png")}
        write_atomic(paths["json"], lambda p: p.write_text(text))
        write_atomic(paths["png"], lambda p: plot(result, p))
        write_atomic(paths["md"], lambda p: p.write_text(markdown))
        written += [paths["md"], paths["json"], paths["png"]]
    return written
