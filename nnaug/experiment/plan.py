"""The plan of a sweep: budgets (schedules), arms, runs (arm x seed x fold) and where each run lives.

Pure functions of the inputs; nothing here starts nnU-Net or writes a file."""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnaug import nnunet_results
from nnaug.errors import NnaugError
from nnaug.choices import DEVICES
from nnaug.nnunet_pretraining import BUDGET_SCHEDULES


CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
ARM_RECORD = "nnaug_sweep_arm.json"
RESULTS_FILE = "sweep.json"  # in the generator folder: every evaluation of its runs (cv, test-<Dataset>, ...)
PLAN_FILE = "plan.json"  # in the generator folder: the latest invocation's plan (SweepSetup.plan_record)
BASE_CONFIG = "nnaug_sweep_base.json"
CONTROLS_FOLDER = "controls"  # in the budget folder: the outputs of a sweep of the control arms alone (--arms)
CV_FOLDS = 5


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
        fixed, variable = ARM_TRAINERS[kind]
        return fixed if self.fixed else variable

    def env(self, kind: str) -> dict[str, str]:
        if self.fixed:
            return {}
        (pe, pi), (fe, fi) = self.pretrain, self.finetune
        env = {"NNAUG_FINETUNE_EPOCHS": str(self.matched_epochs if kind == "compute-matched" else fe),
               "NNAUG_FINETUNE_ITERATIONS": str(fi), "NNAUG_FINETUNE_LR": "0.01"}
        if kind in TWO_PHASE_KINDS:
            env.update({"NNAUG_PRETRAIN_EPOCHS": str(pe), "NNAUG_PRETRAIN_ITERATIONS": str(pi), "NNAUG_PRETRAIN_LR": "0.01"})
        return env

    def phases(self, kind: str) -> list[tuple[str, int, int]]:
        """(phase, epochs, iterations per epoch) of one fold of an arm of this kind."""
        if kind in TWO_PHASE_KINDS:
            return [("pretraining", *self.pretrain), ("fine-tuning", *self.finetune)]
        if kind == "compute-matched":
            return [("training", self.matched_epochs, self.finetune[1])]
        return [("training", *self.finetune)]


ARM_KINDS = ("real-only", "compute-matched", "real-twice", "pretrain", "mixed")
DEFAULT_ARM_KINDS = ARM_KINDS[:-1]  # mixed (real + synthetic in one training) only when asked for
TWO_PHASE_KINDS = ("real-twice", "pretrain")  # pretraining, then a fresh optimizer and lr cycle for fine-tuning
SYNTHETIC_KINDS = ("pretrain", "mixed")  # the arms that train on a synthetic set (one per ratio and filter)
# kind -> (fixed-schedule class of the tiny budget, NNAUG_*-scheduled class); real-twice is the pretrain arm's
# trainer on a copy of the real cases, compute-matched the real-only trainer for longer
ARM_TRAINERS = {
    "real-only": ("nnUNetTrainer_nnaug_5epochs", "nnUNetTrainer_nnaug"),
    "compute-matched": ("nnUNetTrainer_nnaug_10epochs", "nnUNetTrainer_nnaug"),
    "real-twice": ("nnUNetTrainer_nnaugPretrainFinetune_5epochs", "nnUNetTrainer_nnaugPretrainFinetune"),
    "pretrain": ("nnUNetTrainer_nnaugPretrainFinetune_5epochs", "nnUNetTrainer_nnaugPretrainFinetune"),
    "mixed": ("nnUNetTrainer_nnaugMixed_5epochs", "nnUNetTrainer_nnaugMixed"),
}

BUDGETS = {
    "tiny": Budget("tiny", *BUDGET_SCHEDULES["tiny"], True,
                   "nnaug's _5epochs trainers: 5 epochs x 10 iterations per phase (compute-matched: "
                   "nnUNetTrainer_nnaug_10epochs); for tests and the example"),
    "small": Budget("small", *BUDGET_SCHEDULES["small"], False,
                    "CPU-sized: pretraining and fine-tuning 15 epochs x 25 iterations each"),
    "gpu": Budget("gpu", *BUDGET_SCHEDULES["gpu"], False,
                  "pretraining 100 x 250, fine-tuning 150 x 250 iterations (the thesis' fine-tuning), for a GPU"),
}


def resolve_budget(name: str, pretrain_epochs: int | None = None, finetune_epochs: int | None = None) -> Budget:
    """A named budget, with its pretraining and/or fine-tuning epochs changed (iterations per epoch stay the
    budget's). A changed budget is named ``<name>-pt<epochs>-ft<epochs>``: its runs get their own folders."""
    if name not in BUDGETS:
        raise NnaugError(f"unknown budget '{name}': choose one of {', '.join(BUDGETS)}")
    budget = BUDGETS[name]
    if pretrain_epochs is None and finetune_epochs is None:
        return budget
    if budget.fixed:
        raise NnaugError(f"--budget {name} trains nnaug's fixed _5epochs trainers: use --budget small or gpu to set "
                         "--pretrain-epochs / --finetune-epochs")
    for option, value in (("--pretrain-epochs", pretrain_epochs), ("--finetune-epochs", finetune_epochs)):
        if value is not None and int(value) < 1:
            raise NnaugError(f"{option} must be at least 1, got {value}")
    pretrain = (int(pretrain_epochs or budget.pretrain[0]), budget.pretrain[1])
    finetune = (int(finetune_epochs or budget.finetune[0]), budget.finetune[1])
    if (pretrain, finetune) == (budget.pretrain, budget.finetune):
        return budget
    return replace(budget, name=f"{name}-pt{pretrain[0]}-ft{finetune[0]}", pretrain=pretrain, finetune=finetune,
                   about=f"`{name}` with pretraining {pretrain[0]} x {pretrain[1]} and fine-tuning {finetune[0]} x "
                         f"{finetune[1]} iterations")


def parse_arm_kinds(text) -> tuple[str, ...]:
    """``--arms real-only,pretrain`` -> the kinds of arm to train and evaluate (all but mixed by default)."""
    if text is None:
        return DEFAULT_ARM_KINDS
    kinds = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if str(k).strip()]
    unknown = [k for k in kinds if k not in ARM_KINDS]
    if unknown or not kinds:
        raise NnaugError(f"--arms {','.join(kinds)}: choose from {', '.join(ARM_KINDS)} (comma-separated)")
    if "real-only" not in kinds:
        raise NnaugError("--arms must include real-only: every other arm is compared with it")
    return tuple(k for k in ARM_KINDS if k in kinds)


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # real-only | compute-matched | real-twice | pretrain | mixed
    ratio: float | None
    trainer: str
    env: dict = field(default_factory=dict, hash=False, compare=False)
    phases: tuple = ()
    min_consistency: float | None = None  # pretrain and mixed arms: the synthetic set's filter threshold (None: unfiltered)

    @property
    def synthesis_key(self) -> tuple[float, float | None] | None:
        """Which synthetic set this arm pretrains on (or mixes in): (ratio, filter threshold)."""
        return (self.ratio, self.min_consistency) if self.kind in SYNTHETIC_KINDS else None

    @property
    def shared(self) -> bool:
        """Real-only arms do not depend on the generator: every generator's sweep shares them."""
        return self.kind not in SYNTHETIC_KINDS

    @property
    def total_epochs(self) -> int:
        return sum(p[1] for p in self.phases)

    def run_seed(self, seed: int) -> int:
        """``NNAUG_SEED`` of this arm's seed ``seed``. Arms of one kind share a trainer, so at the same number
        they would start from the same weights and see the same batches; each arm but real-only gets numbers of
        its own, and the arms are independent repeats, as :mod:`nnaug.stats` assumes."""
        return seed if self.kind == "real-only" else seed + 1000 * (1 + zlib.crc32(self.name.encode()) % 100_000)


def ratio_label(ratio: float) -> str:
    return f"{ratio:g}"


CONTROL_ARM_NAMES = {"real-only": "real-only", "compute-matched": "real-only-matched", "real-twice": "real-twice"}


def make_arms(budget: Budget, ratios: list[float], compute_matched: bool,
              thresholds: tuple = (None,), real_twice: bool = True, kinds: tuple = DEFAULT_ARM_KINDS) -> list[Arm]:
    """real-only (compute-matched, real-twice), then one pretrain arm and one mixed arm (when asked for) per
    (filter threshold, ratio); None = unfiltered.

    ``real-twice`` is the pretrain arms' trainer and schedule with the real cases in place of the synthetic set:
    the same restart (new optimizer, new lr cycle, new output layer), no synthetic image. ``mixed`` trains once,
    as long as real-only, on the real cases and the synthetic set together."""
    wanted = {"compute-matched": compute_matched, "real-twice": real_twice}
    arms = [Arm(name, kind, None, budget.trainer(kind), budget.env(kind), tuple(budget.phases(kind)))
            for kind, name in CONTROL_ARM_NAMES.items() if kind in kinds and wanted.get(kind, True)]
    for kind in (k for k in SYNTHETIC_KINDS if k in kinds):
        for threshold in thresholds:
            for ratio in ratios:
                suffix = f"-mc{threshold:g}" if threshold is not None else ""
                arms.append(Arm(f"{kind}-r{ratio_label(ratio)}{suffix}", kind, ratio, budget.trainer(kind),
                                budget.env(kind), tuple(budget.phases(kind)), threshold))
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


def parse_folds(text) -> list:
    """``0,1,2`` or ``all`` -> [0, 1, 2] / ["all"] (nnaug's one fold parser; which folds exist is checked where
    it matters: :func:`resolve_folds` for a sweep, the model folder for a report)."""
    folds = []
    for part in (p.strip() for p in str(text).split(",")):
        if part == "all" or part.isdigit():
            folds.append("all" if part == "all" else int(part))
        else:
            raise NnaugError(f"--folds {text}: {part!r} is not a fold; use fold numbers separated by commas "
                             "(e.g. 0,1,2) or all")
    return folds


def check_fold_numbers(folds) -> None:
    for fold in folds:
        if fold != "all" and not (isinstance(fold, int) and 0 <= fold < CV_FOLDS):
            raise NnaugError(f"--folds: {fold} is not one of nnU-Net's folds 0-{CV_FOLDS - 1} (or all)")


def resolve_folds(folds, test: bool, num_cases: int) -> list:
    if not folds:
        return ["all"] if test else list(range(CV_FOLDS))
    check_fold_numbers(folds)
    out = []
    for fold in folds:
        if fold == "all" and not test:
            raise NnaugError("--folds all trains on every case and leaves none to validate: "
                             "use --test DATASET with it, or folds 0-4 for cross-validation")
        if fold not in out:
            out.append(fold)
    if not test and num_cases < CV_FOLDS:
        raise NnaugError(f"{num_cases} cases are too few for nnU-Net's {CV_FOLDS}-fold cross-validation: "
                         "add cases or evaluate on a held-out dataset with --test")
    return out


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise NnaugError(f"--device must be cpu, cuda or mps (what nnUNetv2_train accepts), got {device}")
    if device == "cuda" and not torch.cuda.is_available():
        raise NnaugError("--device cuda: no CUDA device is visible to torch; use --device cpu (with --budget tiny or small)")
    return device


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def sweeps_root(dataset_name: str) -> Path:
    from nnaug.nnunet_results import nnaug_folder

    return nnaug_folder(dataset_name) / "sweep"


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
    return nnunet_results.model_folder(root, dataset_name, trainer, PLANS, CONFIGURATION)


@dataclass(frozen=True)
class SweepRequest:
    """What the user asked ``nnaug sweep`` for, as given (the CLI builds it; :func:`nnaug.sweep.run_sweep`
    checks and resolves it into a :class:`SweepSetup`, and plan.json records it as the sweep's input)."""

    dataset: str
    ratios: tuple = (1.0, 2.5, 5.0)
    seeds: int = 3
    generator: Path | None = None
    test: object = None  # held-out datasets: "A,B" or a list; None: nnU-Net's cross-validation
    allow_overlap: bool = False  # a held-out set may share cases' pixels with the training set (nnaug.overlap)
    folds: tuple | None = None
    budget: str = "small"
    pretrain_epochs: int | None = None  # None: the budget's
    finetune_epochs: int | None = None
    device: str | None = None
    compute_matched: bool = True
    real_twice: bool = True
    arms: str | None = None  # kinds of arm to train and evaluate (None: all but mixed)
    inception_weights: Path | None = None
    mode: str | None = None
    masks: str = "train"
    sampler: str | None = None
    steps: int | None = None
    min_consistency: tuple | None = None
    max_components: int | None = None
    overwrite: bool = False
    print_commands: bool = False

    def record(self) -> dict:
        from dataclasses import asdict

        from nnaug.io import json_safe

        return json_safe(asdict(self))


@dataclass(frozen=True)
class SynthesisChoice:
    mode: str
    masks: str
    sampler: str
    steps: int
    max_components: int | None = None  # every synthetic set keeps only masks with at most this many per label

    @property
    def tag(self) -> str:
        return (f"{self.mode}-{self.sampler}{self.steps}" + ("-augmented" if self.masks == "augmented" else "")
                + (f"-c{self.max_components}" if self.max_components is not None else ""))


def resolve_synthesis(info: dict, mode: str | None, masks: str, sampler: str | None, steps: int | None,
                      max_components: int | None = None) -> SynthesisChoice:
    from nnaug.generators import get_spec

    mode, sampler, steps = get_spec(info["model"]).resolve_sampling(mode, sampler, steps, info)
    return SynthesisChoice(mode, masks if mode == "mask-conditioned" else "train", sampler, steps, max_components)


@dataclass
class SweepSetup:
    """Everything a sweep's runs depend on, checked once: the same command in several processes builds the
    same setup, and each worker takes the runs no other one holds."""

    raw: object
    tests: list  # held-out raw datasets; empty: nnU-Net's cross-validation
    folds: list
    generator: Path | None
    info: dict
    sha: str | None
    choice: SynthesisChoice | None  # None: no pretrain arm (then no generator either)
    budget: Budget
    device: str
    arms: list
    seeds: list
    base: Path
    gen_folder: Path
    plans_sha: str
    request: SweepRequest | None = None

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
        return [f for f in self.folds if not nnunet_results.fold_done(self.model_dir(arm, seed), f, self.cv)]

    def plan_record(self) -> dict:
        """What this sweep is, as JSON: the inputs, the arms, the runs and where they live."""
        from dataclasses import asdict

        return {"request": self.request.record() if self.request else None,
                "dataset": self.raw.name, "plans_sha256": self.plans_sha, "budget": asdict(self.budget),
                "generator": str(self.generator.resolve()) if self.generator else None,
                "generator_model": self.info.get("model"), "checkpoint_sha256": self.sha,
                "synthesis": asdict(self.choice) if self.choice else None, "device": self.device,
                "arms": [asdict(a) for a in self.arms], "seeds": self.seeds, "folds": [str(f) for f in self.folds],
                "tests": [t.name for t in self.tests],
                "runs": [{"arm": a.name, "seed": s, "nnaug_seed": a.run_seed(s), "folder": str(self.root(a, s))}
                         for a, s in self.tasks]}

    def runs_stamp(self) -> str:
        """Which runs, trained when: an evaluation with the same stamp is up to date (another worker's, or
        an earlier run's), and one with another stamp is redone."""
        import hashlib

        runs = []
        for arm, seed in self.tasks:
            for fold in self.folds:
                checkpoint = nnunet_results.checkpoint_path(self.model_dir(arm, seed), fold)
                runs.append([arm.name, seed, str(fold), checkpoint.stat().st_mtime_ns if checkpoint.is_file() else None])
        return hashlib.sha256(json.dumps(runs).encode()).hexdigest()

