"""Running a sweep: the only module that starts nnU-Net (plan/preprocess, train with a parent-death guard).

Several workers can run the same sweep: each takes the next run whose lock is free."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.experiment.plan import ARM_RECORD, CONFIGURATION, PLANS, TWO_PHASE_KINDS, Arm, SweepSetup
from nnaug.experiment.synthetic_sets import SyntheticSets
from nnaug.io import file_lock, load_json_or_none, write_json_atomic


ENV_SEED = "NNAUG_SEED"


def nnunet_command(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise NnaugError(f"{name} not found beside {sys.executable} or on PATH: install nnunetv2 in this environment")
    return found


def clean_env() -> dict:
    """This process' environment without nnaug's trainer variables (the sweep sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NNAUG_")}


def nnunet_processes() -> int:
    """Processes for nnU-Net's pools (preprocessing, fingerprints, the final validation's export): its
    default of 8 spawned processes is sized for GPU nodes; on a small machine each one's start-up
    (importing torch and nnU-Net) costs more than the work it shares."""
    return max(1, min(4, os.cpu_count() or 1))


def nnunet_training_env(device: str) -> dict[str, str]:
    """Process counts for ``nnUNetv2_train`` on this machine; the user's own settings win."""
    env = {"nnUNet_def_n_proc": str(nnunet_processes())}
    if device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # augmentation workers only compete for the cores (and break seeding)
    return {k: v for k, v in env.items() if k not in os.environ}


def ensure_planned(raw, log=print) -> str:
    """Plan and preprocess the real dataset (2d) with nnU-Net unless done; returns the sha256 of its plans."""
    import hashlib

    from nnaug.nnunet_paths import preprocessed_root

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

    with file_lock(folder.parent / f".{raw.name}.plan.lock", "waiting for another worker planning " + raw.name):
        if not complete():
            _plan_and_preprocess(raw, log)
        if not complete():
            raise NnaugError(f"nnUNetv2_plan_and_preprocess -d {raw.dataset_id} failed (its output is above): "
                             "fix the dataset and rerun")
    return hashlib.sha256(plans_file.read_bytes()).hexdigest()


def _plan_and_preprocess(raw, log) -> None:
    env = clean_env()
    env.pop("nnUNet_n_proc_DA", None)  # nnUNet_n_proc_DA=0 makes planning crash (docs/trainers.md)
    processes = str(nnunet_processes())
    cmd = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(raw.dataset_id), "-c", CONFIGURATION,
           "--verify_dataset_integrity", "-np", processes, "-npfp", processes]
    log("nnaug sweep: planning and preprocessing " + raw.name + ": " + " ".join(Path(cmd[0]).name if i == 0 else c
                                                                             for i, c in enumerate(cmd)))
    subprocess.run(cmd, env=env)


# Starts nnUNetv2_train so that it gets SIGTERM when the sweep dies (kill -9 included): no orphan keeps
# training into a folder that the next ``nnaug sweep`` continues.
_WRAPPER = ("import ctypes, os, signal, sys\n"
            "try:\n"
            "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)\n"
            "except Exception:\n"
            "    pass\n"
            "if os.getppid() != int(sys.argv[1]):\n"
            "    sys.exit(75)\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n")


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """An ETA after every epoch of a run, from the progress file nnaug's trainers write into each fold folder
    (``nnaug_progress.json``: phase, epochs done, iterations per epoch, the last epoch's seconds)."""

    def __init__(self, log=print):
        self.log = log
        self.seconds_per_iteration: float | None = None

    def start(self, label: str, root: Path, phases: list[tuple[str, int, int]], later_iterations: int) -> None:
        """``root``: the run's nnUNet_results folder; ``phases``: (name, epochs, iterations) still to train."""
        self.label, self.root, self.phases, self.later = label, Path(root), phases, later_iterations
        self.started, self.reported, self.looked = time.time(), {}, 0.0

    def line(self, text: str = "") -> None:
        """Called for every line nnU-Net prints: reports each epoch that finished since (looking at most
        once a second: nnU-Net prints many lines per epoch, and prediction one per case)."""
        from nnaug.nnunet_pretraining import PROGRESS_FILE

        if time.time() - self.looked < 1.0:
            return
        self.looked = time.time()
        for path in self.root.glob(f"*/*/fold_*/{PROGRESS_FILE}"):
            try:
                if path.stat().st_mtime < self.started:
                    continue  # from an earlier start (a cached pretraining, a run continued with --c)
            except OSError:
                continue
            progress = load_json_or_none(path)
            if progress is None or self.reported.get(path) == progress.get("epochs_done"):
                continue
            self.reported[path] = progress["epochs_done"]
            self._report(progress)

    def _report(self, progress: dict) -> None:
        index = 0 if progress["phase"] == "pretrain" else len(self.phases) - 1
        name = self.phases[index][0]
        iterations = progress["iterations_per_epoch"]
        rate = progress["epoch_seconds"] / iterations
        self.seconds_per_iteration = rate if self.seconds_per_iteration is None else \
            0.7 * self.seconds_per_iteration + 0.3 * rate
        remaining = (progress["num_epochs"] - progress["epochs_done"]) * iterations + \
            sum(e * i for _, e, i in self.phases[index + 1:])
        self.log(f"nnaug sweep: {self.label}: {name} epoch {progress['epochs_done']}/{progress['num_epochs']}, "
                 f"ETA {_fmt_seconds(remaining * self.seconds_per_iteration)} for this run, "
                 f"~{_fmt_seconds((remaining + self.later) * self.seconds_per_iteration)} for the sweep's training")


def train_fold(raw, arm: Arm, seed: int, fold, root: Path, device: str, synthetic: Path | None,
               progress: Progress, label: str, later_iterations: int) -> None:
    """``nnUNetv2_train <Dataset> 2d <fold> -tr <trainer> -device <device> --c`` into ``root`` (as nnUNet_results)."""
    from nnaug.nnunet_pretraining import ENV_SYNTHETIC

    env = {**clean_env(), **fold_env(arm, seed, root, synthetic), **nnunet_training_env(device), "PYTHONUNBUFFERED": "1"}
    args = fold_args(raw, arm, fold, device)
    cmd = [sys.executable, "-c", _WRAPPER, str(os.getpid()), nnunet_command("nnUNetv2_train"), *args]
    progress.log(f"nnaug sweep: {label}: nnUNetv2_train {' '.join(args)}  (nnUNet_results={root}, {ENV_SEED}={arm.run_seed(seed)}"
                 + (f", {ENV_SYNTHETIC}={synthetic.name}" if synthetic is not None else "") + ")")
    progress.start(label, root, list(arm.phases) if not pretrained(root, arm, synthetic) else list(arm.phases[1:]),
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


def fold_env(arm: Arm, seed: int, root: Path, synthetic: Path | None) -> dict[str, str]:
    """What nnUNetv2_train needs to train this run (beside the user's own environment)."""
    from nnaug.nnunet_pretraining import ENV_SYNTHETIC, trainers_path

    env = {**arm.env, "nnUNet_results": str(root), "nnUNet_extTrainer": trainers_path(), ENV_SEED: str(arm.run_seed(seed))}
    if synthetic is not None:
        env[ENV_SYNTHETIC] = synthetic.name
    return env


def fold_args(raw, arm: Arm, fold, device: str) -> list[str]:
    return [raw.name, CONFIGURATION, str(fold), "-tr", arm.trainer, "-device", device, "--c"]


def shell_commands(setup: SweepSetup, synthetic: SyntheticSets) -> list[str]:
    """One shell line per run not trained yet (its folds one after another), for any scheduler: each line
    is independent of the others. Rerunning the same ``nnaug sweep`` afterwards evaluates."""
    import shlex

    lines = []
    for arm, seed in setup.tasks:
        folds = setup.folds_left(arm, seed)
        if not folds:
            continue
        if arm.min_consistency is not None and setup.folds_left(setup.arms[0], 0):
            lines.append(f"# {arm.name} seed {seed}: its synthetic set is filtered by real-only seed 0; "
                         "print the commands again once that run is trained")
            continue
        synthetic_set = synthetic.for_arm(arm)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in fold_env(arm, seed, setup.root(arm, seed), synthetic_set).items())
        lines.append(" && ".join(f"{env} nnUNetv2_train {shlex.join(fold_args(setup.raw, arm, f, setup.device))}"
                                 for f in folds))
    return lines


def pretrained(root: Path, arm: Arm, synthetic: Path | None) -> bool:
    """Is this arm's pretraining already cached in ``root`` (then a fold only fine-tunes)?"""
    if arm.kind not in TWO_PHASE_KINDS or synthetic is None:
        return False
    from nnaug.nnunet_pretraining import PRETRAIN_DONE_MARKER

    return any(root.glob(f"{synthetic.name}/*/fold_all/{PRETRAIN_DONE_MARKER}"))


def remaining_iterations(arm: Arm, folds_left: int, pretrained: bool) -> int:
    two_phases = arm.kind in TWO_PHASE_KINDS
    per_fold = sum(e * i for _, e, i in (arm.phases[-1:] if two_phases else arm.phases))
    pretraining = 0 if not two_phases or pretrained or not folds_left else arm.phases[0][1] * arm.phases[0][2]
    return folds_left * per_fold + pretraining


def refuse_runs_on_other_sets(setup: SweepSetup, synthetic: SyntheticSets) -> None:
    """A trained run counts for its arm only if it trained on the arm's set: its trainer's own record
    (``nnaug_training.json``) names the dataset it pretrained on or mixed in. A run on another set (one made by an
    nnaug that took a filtered set for the unfiltered one, a set replaced by hand) is refused, not averaged in."""
    from nnaug.nnunet_pretraining import TRAINING_RECORD
    from nnaug.nnunet_results import fold_folder

    expected = {arm.name: synthetic.for_arm(arm, make=False) for arm in setup.arms}  # each looked up once
    for arm, seed in setup.tasks:
        if expected[arm.name] is None:
            continue
        left = setup.folds_left(arm, seed)
        for fold in (f for f in setup.folds if f not in left):
            record = load_json_or_none(fold_folder(setup.model_dir(arm, seed), fold) / TRAINING_RECORD) or {}
            used = (record.get("pretraining") or record.get("mixed_with") or {}).get("synthetic_dataset")
            wanted = expected[arm.name].name
            if used is not None and used != wanted:
                raise NnaugError(f"{arm.name} seed {seed} fold {fold} was trained on {used}, not on {wanted}, this "
                                 f"sweep's set for the arm: move {setup.root(arm, seed)} away, or pass --overwrite to "
                                 "train this sweep's arms again")


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
                if not wait:
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
                                         pretrained(setup.root(a, s), a, synthetic.for_arm(a, make=False)))
                    for a, s in setup.tasks[index:])
        later += remaining_iterations(arm, len(left) - left.index(fold) - 1, True)
        fold_start = time.time()
        log(f"nnaug sweep: {label} fold {fold}: training with {arm.trainer} ("
            + ", ".join(f"{p} {e} epochs x {i} iterations" for p, e, i in arm.phases) + ")")
        synthetic_set = synthetic.for_arm(arm)
        train_fold(setup.raw, arm, seed, fold, root, setup.device, synthetic_set, progress, f"{label} fold {fold}", later)
        record = load_json_or_none(root / ARM_RECORD) or {}
        seconds = record.get("train_seconds", {})
        seconds[str(fold)] = seconds.get(str(fold), 0.0) + time.time() - fold_start
        write_json_atomic(root / ARM_RECORD, {
            "arm": arm.name, "kind": arm.kind, "ratio": arm.ratio, "seed": seed, "trainer": arm.trainer,
            "env": arm.env, "nnaug_seed": arm.run_seed(seed), "min_consistency": arm.min_consistency,
            "synthetic_dataset": synthetic_set.name if synthetic_set is not None else None,
            "device": setup.device, "plans_sha256": setup.plans_sha, "train_seconds": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        done.append(f"{arm.name} seed {seed} fold {fold}")
    return done

