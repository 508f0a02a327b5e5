"""Does synthetic pretraining help nnU-Net on Kvasir-SEG? The whole experiment of docs/results.md, resumably.

Every stage is the ``nnaug`` / ``nnUNetv2_*`` commands a user would type (printed before they run), and
every stage skips what is already done, so the same command continues after any stop:

1. ``split``     kvasir-seg-1000 at 64 px -> 40 training (601), 200 validation (602), 760 test (603) cases.
2. ``generator`` a JDM on the 40 training cases, in chunks of a constant-lr run (``--resume`` to more steps
                 is then the same run); after each chunk 200 joint pairs are scored: FRD against the 40
                 real images, and mask consistency with a real-only nnU-Net. It stops when neither improved
                 by more than 3 % over the last chunk (or at the last chunk); ``curve.json`` / ``curve.png``.
3. ``validate``  ``nnaug sweep 601 --test 602`` for joint pairs and for mask-then-image (``--mode
                 mask-conditioned --masks augmented``) at ratios 1, 2.5, 5, 3 seeds, real-only as reference;
                 per arm, the ratio with the best validation Dice is chosen (``choice.json``).
4. ``test``      ``nnaug sweep 601 --test 603`` once per arm at its chosen ratio, 5 seeds, with compute-matched
                 real-only. The sweep's runs do not depend on the held-out set, so seeds 0-2 of real-only and
                 of the chosen ratios are the validation stage's runs, predicted on 603: only seeds 3-4 and
                 compute-matched real-only are trained here.
5. ``summary``   the numbers for docs/results.md (``summary.json`` and a markdown block on stdout).
6. ``budget``    does the gain survive a baseline trained to its plateau? ``nnaug sweep 601 --test 602`` at
                 fine-tuning budgets ``--multipliers`` x small's 15 epochs (``--finetune-epochs``), 3 seeds, for
                 the arm kinds of ``--curve-arms`` (real-only, real-twice: the real->real restart control,
                 pretrain: joint pairs at ``--curve-ratio``). Several processes with different
                 ``--curve-arms`` share its runs. Writes ``budget_curve.json`` (also into
                 ``benchmarks/results/``, small enough to commit) and ``budget_curve.png``: validation Dice
                 against fine-tuning iterations, with the paired differences of real-twice and pretrain
                 to real-only and of pretrain to real-twice at each budget (``--curve-seeds``, default 3).
   ``budget-summary`` only rewrites those two files from the sweeps that finished.

    python benchmarks/kvasir_evidence.py [--workdir kvasir-evidence] [--stages split,generator,...]
                                         [--seeds 5] [--budget small] [--arms joint,mask-then-image]
                                         [--max-steps 4000] [--workers 2] [--dry-run]

``--workers N`` starts each sweep in N processes that share its runs: for a machine with N GPUs. On one CPU
leave it at 1 (nnU-Net gives every CPU run all the cores; two workers on 2 cores ran 6x slower per epoch).

``--dry-run`` prints the commands of every stage without running them. The test set is touched only
in stage 4, after every choice was made on the validation set.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NNAUG_SHARED_DATA", REPO.parent / "shared" / "data")) / "kvasir-seg-1000"
TRAIN, VAL, TEST = 601, 602, 603
NAMES = {TRAIN: "Dataset601_Kvasir64Train", VAL: "Dataset602_Kvasir64Val", TEST: "Dataset603_Kvasir64Test"}
GENERATOR = ["--model", "jdm", "--preset", "tiny", "--resolution", "64", "--channels", "32,64,64,128",
             "--lr-schedule", "constant", "--checkpoint-every", "250", "--cpu"]
CHUNKS = (500, 1000, 1500, 2000, 3000, 4000)
ARMS = {"joint": [], "mask-then-image": ["--mode", "mask-conditioned", "--masks", "augmented"]}
VALIDATION_RATIOS, VALIDATION_SEEDS = "1,2.5,5", 3
# The sampler the published experiment used (nnaug's default then); pinned so that a rerun reuses its sets
SAMPLING = ["--sampler", "dpmsolver++", "--steps", "25"]
CURVE_CASES_RATIO = 5.0  # 200 synthetic pairs per point of the curve
MIN_GAIN = 0.03


class Runner:
    def __init__(self, work: Path, dry_run: bool):
        self.work, self.dry_run = work, dry_run
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            self.env[var] = str(work / var)
            (work / var).mkdir(parents=True, exist_ok=True)
            os.environ[var] = self.env[var]

    def __call__(self, *args, workers: int = 1) -> None:
        """Runs the command (``workers`` copies at once, each with its share of the cores: ``nnaug sweep``
        shares its runs between them)."""
        command = [str(a) for a in args]
        print("$ " + shlex.join(command) + (f"   # x {workers} workers" if workers > 1 else ""), flush=True)
        if self.dry_run:
            return
        env = self.env if workers == 1 else {**self.env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // workers))}
        procs = [subprocess.Popen(command, env=env) for _ in range(workers)]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit(f"kvasir_evidence: {command[0]} {command[1]} failed (output above); run again to continue")

    @property
    def results(self) -> Path:
        return self.work / "nnUNet_results"


def stage_split(run: Runner, args) -> None:
    if (run.work / "nnUNet_raw" / NAMES[TEST] / "dataset.json").is_file():
        return
    run("nnaug", "convert", args.data, "-d", TRAIN, "--name", "Kvasir64", "--size", 64, "--labels", "background,polyp",
        "--split", "train=40,val=200,test=rest", "--split-seed", 0)


def generator_folder(run: Runner) -> Path:
    return run.results / "nnaug" / NAMES[TRAIN] / "generators" / "jdm_kvasir64"


def real_only_model(run: Runner, args) -> Path:
    """A real-only nnU-Net on the 40 cases (fold all, the sweep's real-only schedule of --budget): the
    mask-consistency judge of the curve. It never sees a validation or test case."""
    from nnaug.experiment.plan import BUDGETS

    budget = BUDGETS[args.budget]
    results = run.work / "judge"
    model = results / NAMES[TRAIN] / f"{budget.trainer('real-only')}__nnUNetPlans__2d"
    if not (model / "fold_all" / "checkpoint_final.pth").is_file():
        run("nnUNetv2_plan_and_preprocess", "-d", TRAIN, "-c", "2d", "-np", 2)
        trainers = subprocess.run(["nnaug", "trainers-path"], capture_output=True, text=True).stdout.strip()
        schedule = [f"{k}={v}" for k, v in budget.env("real-only").items()]
        run("env", f"nnUNet_results={results}", f"nnUNet_extTrainer={trainers}", *schedule, "nnUNetv2_train", TRAIN,
            "2d", "all", "-tr", budget.trainer("real-only"), "-device", args.device, "--c")
    return model


# The curve's 200-pair sets: the first two chunks' are 650 and 651; the sweeps then took 652 and up (nnaug synthesize
# picks the next free ID), so later chunks' sets sit apart from theirs, and --overwrite can only replace the curve's own
CURVE_DATASET_IDS = {500: 650, 1000: 651, **{steps: 680 + i for i, steps in enumerate(CHUNKS[2:])}}


def score_chunk(run: Runner, args, steps: int, judge: Path, generator: Path | None = None,
                output_id: int | None = None) -> dict:
    """200 joint pairs of the generator (default: the curve's) after ``steps``: FRD against the 40 real images, and
    mask consistency with the real-only ``judge``."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.mask_consistency import mask_consistency

    output_id = output_id or CURVE_DATASET_IDS[steps]
    run("nnaug", "synthesize", TRAIN, "--generator", generator or generator_folder(run), "--ratio", CURVE_CASES_RATIO,
        "--output-id", output_id, *SAMPLING, "--overwrite")
    if run.dry_run:
        return {}
    folder = next((run.work / "nnUNet_raw").glob(f"Dataset{output_id}_*"))
    quality = synthetic_fidelity(load_raw_dataset(TRAIN), folder, fid=False)
    consistency = mask_consistency(folder, judge, folds=("all",), device=args.device)["mean_dice"]
    return {"steps": steps, "frd": quality["frd"], "mask_consistency": consistency, "dataset": folder.name}


def stage_generator(run: Runner, args) -> None:
    curve_file = run.work / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else []
    judge = real_only_model(run, args)
    for steps in (c for c in CHUNKS if c <= args.max_steps):
        if any(point["steps"] == steps for point in curve):
            continue
        resume = ["--resume"] if (generator_folder(run) / "checkpoints").is_dir() else []
        run("nnaug", "train-generator", TRAIN, *GENERATOR, "--steps", steps, "--output", generator_folder(run), *resume)
        point = score_chunk(run, args, steps, judge)
        if run.dry_run:
            continue
        curve.append(point)
        curve_file.write_text(json.dumps(curve, indent=1))
        print(f"curve: {curve[-1]}", flush=True)
        if len(curve) >= 2 and not _improved(curve[-2], curve[-1]):
            break
    if not run.dry_run:
        _plot_curve(curve, run.work / "curve.png")


def _improved(before: dict, after: dict) -> bool:
    """More than MIN_GAIN better on FRD (lower) or on mask consistency (higher)."""
    return (after["frd"] < (1 - MIN_GAIN) * before["frd"]
            or after["mask_consistency"] > (1 + MIN_GAIN) * before["mask_consistency"])


def _plot_curve(curve: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    steps = [p["steps"] for p in curve]
    for ax, key, label in zip(fig.subplots(1, 2), ("frd", "mask_consistency"), ("FRD vs the 40 real (lower is better)",
                                                                                  "mask consistency (higher is better)")):
        values = [p[key] for p in curve]
        ax.plot(steps, values, "o-")
        for x, y in zip(steps, values):
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        if key == "mask_consistency":
            ax.set_ylim(0, 1)  # a Dice: on its whole scale, so that noise does not look like a trend
        else:  # FRD is log(d²): it can be below 0
            low, high = min(0.0, min(values)), max(0.0, max(values))
            ax.set_ylim(low - 0.15 * (high - low + 1e-9), high + 0.15 * (high - low + 1e-9))
        ax.set_xlabel("generator steps")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _sweep(run: Runner, args, test: int, arm: str, ratios: str, seeds: int, *extra) -> None:
    run("nnaug", "sweep", TRAIN, "--test", test, "--ratios", ratios, "--seeds", seeds, "--budget", args.budget,
        "--device", args.device, "--generator", generator_folder(run), *SAMPLING, *ARMS[arm], *extra,
        workers=args.workers)


def _sweep_json(run: Runner, test: int, arm: str, budget: str) -> dict:
    """The sweep.json of this generator's sweep on ``test`` for ``arm`` (the newest if there are several)."""
    root = run.results / "nnaug" / NAMES[TRAIN] / "sweep" / budget
    mode = "mask-conditioned" if ARMS[arm] else "joint"
    found = sorted((p for p in root.glob(f"*/test-{NAMES[test]}/sweep.json") if f"_{mode}" in p.parent.parent.name),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"kvasir_evidence: no sweep.json for {arm} on {NAMES[test]} under {root}: run that stage")
    return json.loads(found[-1].read_text())


def stage_validate(run: Runner, args) -> None:
    choice = {}
    for arm in args.arms.split(","):
        # compute-matched real-only is a reference of the final table, not a choice: the test stage trains it
        _sweep(run, args, VAL, arm, args.ratios, VALIDATION_SEEDS, "--no-compute-matched")
        if run.dry_run:
            continue
        rows = [r for r in _sweep_json(run, VAL, arm, args.budget)["arms"] if r["kind"] == "pretrain"]
        best = max(rows, key=lambda r: r["foreground"]["mean"])
        choice[arm] = {"ratio": best["ratio"], "validation_dice": {str(r["ratio"]): r["foreground"]["mean"] for r in rows}}
    if not run.dry_run:
        earlier = json.loads((run.work / "choice.json").read_text()) if (run.work / "choice.json").is_file() else {}
        choice = {**earlier, **choice}
        (run.work / "choice.json").write_text(json.dumps(choice, indent=1))
        print(f"chosen on the validation set: {choice}")


def stage_test(run: Runner, args) -> None:
    choice = json.loads((run.work / "choice.json").read_text()) if not run.dry_run else {a: {"ratio": "R"} for a in ARMS}
    for arm in args.arms.split(","):
        _sweep(run, args, TEST, arm, str(choice[arm]["ratio"]), args.seeds)


def stage_summary(run: Runner, args) -> None:
    if run.dry_run:
        return
    summary = {arm: _sweep_json(run, TEST, arm, args.budget) for arm in args.arms.split(",")}
    (run.work / "summary.json").write_text(json.dumps(summary, indent=1))
    for arm, result in summary.items():
        print(f"\n### {arm}\n")
        for d in result["differences"]:
            fg = d["foreground"]
            print(f"- {d['arm']} - {d['reference']}: {fg['mean']:+.4f} [{fg['low']:+.4f}, {fg['high']:+.4f}]")


BUDGET_SEEDS = 3
RESULTS = REPO / "benchmarks" / "results"


def _budget_sweep_jsons(run: Runner, test: int) -> list[dict]:
    """Every sweep.json of the validation set under the budget folders (small and small-pt15-ftN)."""
    root = run.results / "nnaug" / NAMES[TRAIN] / "sweep"
    return [json.loads(p.read_text()) for p in sorted(root.glob(f"small*/*/test-{NAMES[test]}/sweep.json"))]


def stage_budget(run: Runner, args) -> None:
    kinds = args.curve_arms.split(",")
    for multiplier in (int(m) for m in args.multipliers.split(",")):
        extra = ["--arms", ",".join(["real-only", *(k for k in kinds if k != "real-only")]), "--no-compute-matched",
                 "--finetune-epochs", 15 * multiplier]
        if "pretrain" in kinds:
            _sweep(run, args, VAL, "joint", str(args.curve_ratio), args.curve_seeds, *extra)
        else:  # the controls need no generator
            run("nnaug", "sweep", TRAIN, "--test", VAL, "--seeds", args.curve_seeds, "--budget", args.budget,
                "--device", args.device, *extra)
    if not run.dry_run:
        budget_summary(run)


CURVE_PAIRS = [("real-twice", "real-only"), ("pretrain-r1", "real-only"), ("pretrain-r1", "real-twice")]


def per_case_foreground(result: dict, arm: str) -> dict:
    """{seed: {case: foreground Dice}} of one arm of a sweep.json."""
    return {seed: {case: v["foreground"] for case, v in cases.items()} for seed, cases in result["per_case"][arm].items()}


def paired_difference(a: dict, b: dict) -> dict:
    """a − b over the cases both arms were scored on, paired by case (``per_case_foreground`` dicts)."""
    import numpy as np

    from nnaug.stats import difference_ci

    cases = sorted(set.intersection(*(set(c) for arm in (a, b) for c in arm.values())))
    grid = [np.array([[arm[s][c] for c in cases] for s in sorted(arm)]) for arm in (a, b)]
    return difference_ci(*grid).as_dict()


def budget_summary(run: Runner) -> dict:
    """Validation Dice per arm and fine-tuning budget from the sweeps' own sweep.json files, and the differences
    of CURVE_PAIRS at each budget, paired by case over the per-case Dice the sweeps recorded (the controls and
    the pretrain arms are scored in sweeps of their own, so their difference is computed here). The curve's
    pretrain arm is the unfiltered set's: a run that pretrained on a filtered set is left out (``excluded``)."""
    import numpy as np

    from nnaug.stats import mean_ci

    curve: dict = {}
    per_case: dict = {}  # {iterations: {arm: {seed: {case: dice}}}}
    excluded: list = []
    for result in _budget_sweep_jsons(run, VAL):
        if (result["synthesis"] or {}).get("max_components") is not None or \
                (result["generator"] and Path(result["generator"]["folder"]) != generator_folder(run)):
            continue  # the curve's pretrain arm is the unfiltered set of the curve's generator; others are levers
        iterations = str(result["budget"]["finetune"][0] * result["budget"]["finetune"][1])
        for arm in result["arms"]:
            if arm.get("min_consistency"):
                continue
            name = arm["arm"] if arm["kind"] != "pretrain" else f"pretrain-r{arm['ratio']:g}"
            seeds = per_case_foreground(result, arm["arm"])
            for seed in list(seeds) if arm["kind"] == "pretrain" else []:
                filtered = _filtered_set_of_run(result, arm, seed)
                if filtered:
                    excluded.append({"budget": result["budget"]["name"], "arm": name, "seed": seed,
                                     "why": f"pretrained on the filtered set {filtered}"})
                    del seeds[seed]
            earlier = per_case.get(iterations, {}).get(name)
            if earlier is not None and len(earlier) >= len(seeds):
                continue  # the same runs, shared by sweeps that ask for fewer seeds: keep the sweep with the most
            per_case.setdefault(iterations, {})[name] = seeds
            grid = np.array([[seeds[s][c] for c in sorted(seeds[s])] for s in sorted(seeds)])
            curve.setdefault(name, {})[iterations] = {
                "foreground": mean_ci(grid).as_dict(), "per_seed": {s: float(np.mean(list(seeds[s].values())))
                                                                    for s in sorted(seeds)},
                "phases": arm["phases"], "budget": result["budget"]["name"]}
    differences: dict = {}
    for iterations, arms in per_case.items():
        for a, b in CURVE_PAIRS:
            if a in arms and b in arms:
                differences.setdefault(f"{a} - {b}", {})[iterations] = paired_difference(arms[a], arms[b])
    curve["differences"] = differences
    out = {"validation_dataset": NAMES[VAL], "curve": curve, "excluded": excluded}  # seeds: each point's per_seed
    for folder in (run.work, RESULTS):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "budget_curve.json").write_text(json.dumps(out, indent=1))
    _plot_budget_curve(curve, run.work / "budget_curve.png")
    for name, points in curve.items():
        if name != "differences":
            print(name, {k: round(v["foreground"]["mean"], 4) for k, v in sorted(points.items(), key=lambda x: int(x[0]))})
    for name, points in differences.items():
        print(name, {k: f"{v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]"
                     for k, v in sorted(points.items(), key=lambda x: int(x[0]))})
    return out


def _filtered_set_of_run(result: dict, arm: dict, seed: str) -> str | None:
    """The filtered set a run pretrained on, by its own record in the sweep's runs folder; None when its set is
    unfiltered (or it has no record)."""
    from nnaug.experiment.plan import ARM_RECORD
    from nnaug.nnunet_paths import raw_root
    from nnaug.provenance import read_provenance

    record = Path(result["runs_folder"]) / arm["arm"] / f"seed_{seed}" / ARM_RECORD
    name = json.loads(record.read_text()).get("synthetic_dataset") if record.is_file() else None
    return name if name and (read_provenance(raw_root() / name) or {}).get("filter") else None


def _plot_budget_curve(curve: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    colours = {"real-only": "tab:gray", "real-twice": "tab:red", "mixed-r1": "tab:green"}
    for offset, (name, points) in enumerate((n, p) for n, p in curve.items() if n != "differences"):
        xs = sorted(points, key=int)
        colour = colours.get(name, "tab:blue")
        x = [int(k) * (1 + 0.03 * (offset - 1)) for k in xs]  # nudged apart on the log axis
        means = [points[k]["foreground"]["mean"] for k in xs]
        err = [[m - points[k]["foreground"]["low"] for m, k in zip(means, xs)],
               [points[k]["foreground"]["high"] - m for m, k in zip(means, xs)]]
        ax.errorbar(x, means, yerr=err, fmt="o-", color=colour, capsize=4, label=f"{name} (mean, 95 % CI)")
        for xi, k in zip(x, xs):
            seeds = list(points[k]["per_seed"].values())
            ax.scatter([xi] * len(seeds), seeds, s=10, color=colour, alpha=0.4)
    ax.set_xscale("log")
    ticks = sorted({int(k) for n, p in curve.items() if n != "differences" for k in p})
    ax.set_xticks(ticks, [f"{t}\n(x{t / 375:g})" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fine-tuning iterations, x small's 375 (real-only: all its training); batch 2")
    ax.set_ylabel(f"foreground Dice on {NAMES[VAL]}")
    ax.set_title("Validation Dice against the training budget (dots: seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


STAGES = {"split": stage_split, "generator": stage_generator, "validate": stage_validate, "test": stage_test,
          "summary": stage_summary, "budget": stage_budget, "budget-summary": lambda run, args: budget_summary(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("kvasir-evidence"))
    parser.add_argument("--data", type=Path, default=DATA, help="the kvasir-seg-1000 folder")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the final test-set sweeps")
    parser.add_argument("--max-steps", type=int, default=CHUNKS[-1],
                        help="the generator's last chunk (a cap for a short session; the curve says if it still improved)")
    parser.add_argument("--budget", default="small", choices=["tiny", "small", "gpu"])
    parser.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    parser.add_argument("--ratios", default=VALIDATION_RATIOS, help="the validation stage's ratios")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"synthetic arms, from {','.join(ARMS)}")
    parser.add_argument("--workers", type=int, default=1,
                        help="nnaug sweep processes sharing each sweep (one per GPU; 1 on a CPU)")
    parser.add_argument("--multipliers", default="1,4,16", help="budget stage: fine-tuning budgets, x small's 15 epochs")
    parser.add_argument("--curve-arms", default="real-only,real-twice,pretrain",
                        help="budget stage: arm kinds (real-only, real-twice, pretrain)")
    parser.add_argument("--curve-ratio", type=float, default=1.0, help="budget stage: the pretrain arm's ratio")
    parser.add_argument("--curve-seeds", type=int, default=BUDGET_SEEDS, help="budget stage: seeds per arm and budget")
    parser.add_argument("--dry-run", action="store_true", help="print every stage's commands, run nothing")
    args = parser.parse_args()
    run = Runner(args.workdir.resolve(), args.dry_run)
    for name in args.stages.split(","):
        if name not in STAGES:
            raise SystemExit(f"kvasir_evidence: unknown stage {name!r}: choose from {', '.join(STAGES)}")
        print(f"\n== {name}", flush=True)
        STAGES[name](run, args)


if __name__ == "__main__":
    main()
