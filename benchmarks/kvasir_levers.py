"""What could make synthetic pretraining add more than the restart? Levers of issue 36 (item 4) on the
validation set at ``--budget small``, resumably: docs/results.md sections 7 and 8.

Each lever is the x1 validation sweep of docs/results.md section 6 (``nnaug sweep 601 --test 602 --ratios 1
--seeds 3 --budget small --arms real-only,real-twice,pretrain``) with one thing changed. Real-only and real-twice
do not depend on the generator, so every lever shares them, and a lever trains only its pretrain arm's 3 runs.

``components``  ``--max-components 1``: joint pairs whose mask is one polyp (92 % of the real masks are one
                component; the generator's joint pairs have two on average).
``steps<N>``    the section-1 generator (1000 steps) trained on to N steps, in a copy of its folder, so that
                the sweeps of the 1000-step generator keep their generator; the copy's 200 pairs are scored
                like a chunk of the generator curve (FRD against the 40, mask consistency with the judge).
                N = 2000 does not get there: the constant-lr run's loss becomes NaN at step 1515 (its
                folder then holds the step-1500 model); ``steps1500`` is the longest that trains.
``mixed``       ``--arms ...,mixed``: the unfiltered set added to the 40 real cases in one training as long as
                real-only's, instead of pretraining on it (what most papers do).

``set-numbers`` (not a lever) scores the experiment's ratio-1 sets of the 1000-step generator the same way,
whichever are in ``$nnUNet_raw``: joint pairs, joint pairs of one component, and mask-then-image (section 4;
``nnaug synthesize 601 --ratio 1 --mode mask-conditioned --masks augmented --generator $G --sampler dpmsolver++
--steps 25`` makes it again, the same pairs): FRD, mask consistency (judged by the shared real-only run of seed
0), mask realism and coverage, into ``benchmarks/results/set_numbers.json``; docs/results.md puts them next to
the sets' Dice.

Then ``benchmarks/results/levers.json`` and a markdown table: each lever's arm against real-only,
real-twice and the reference (the unfiltered 1000-step arm), paired by case, with its synthetic set's FRD, mask
consistency, components per mask and coverage (the sweep's own set numbers).

    python benchmarks/kvasir_levers.py [--workdir kvasir-evidence] [--levers components,mixed,steps1500] [--workers 1]
    python benchmarks/kvasir_levers.py --levers none     # only the summary, from the sweeps that finished
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kvasir_evidence import (GENERATOR, NAMES, RESULTS, SAMPLING, TRAIN, VAL, Runner, generator_folder,
                             paired_difference, per_case_foreground, real_only_model, score_chunk)

SEEDS = 3
REFERENCE_STEPS = 1000  # the generator of sections 1-6
STEPS_LEVER_IDS = 690  # + (steps // 1000): the 200-pair set of a steps<N> copy, apart from the curve's and the sweeps'


def _sweep(run: Runner, args, generator: Path, *extra, arms: str = "real-only,real-twice,pretrain") -> None:
    run("nnaug", "sweep", TRAIN, "--test", VAL, "--ratios", 1, "--seeds", SEEDS, "--budget", "small",
        "--device", args.device, "--generator", generator, *SAMPLING, "--arms", arms,
        "--no-compute-matched", *extra, workers=args.workers)


def lever_components(run: Runner, args) -> None:
    _sweep(run, args, generator_folder(run), "--max-components", 1)


def lever_mixed(run: Runner, args) -> None:
    _sweep(run, args, generator_folder(run), arms="real-only,real-twice,pretrain,mixed")


def lever_steps(run: Runner, args, steps: int) -> None:
    source = generator_folder(run)
    copy = source.with_name(f"{source.name}_steps{steps}")
    if run.dry_run:
        run("nnaug", "train-generator", TRAIN, *GENERATOR, "--steps", steps, "--output", copy, "--resume")
        return _sweep(run, args, copy)
    if not copy.is_dir():  # whole, or not at all: a half copy would resume from the wrong checkpoint
        shutil.copytree(source, copy.with_name(copy.name + ".partial"), dirs_exist_ok=True)
        copy.with_name(copy.name + ".partial").rename(copy)
    trained = json.loads((copy / "nnaug.json").read_text())["steps_trained"]
    if trained < steps:
        run("nnaug", "train-generator", TRAIN, *GENERATOR, "--steps", steps, "--output", copy, "--resume")
    point_file = copy / "lever_point.json"
    if not point_file.is_file():
        point = score_chunk(run, args, steps, real_only_model(run, args), copy, STEPS_LEVER_IDS + steps // 1000)
        point_file.write_text(json.dumps(point, indent=1))
    _sweep(run, args, copy)


def set_numbers(run: Runner, args) -> dict:
    """FRD, mask consistency, mask realism and coverage of the ratio-1 sets of the reference generator: the
    sweep's own set scoring (``synthetic_quality``, cached beside the judge's runs)."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.experiment.evaluate import synthetic_quality
    from nnaug.experiment.plan import BUDGETS, make_arms, model_folder
    from nnaug.provenance import read_provenance, synthetic_datasets_for

    real = load_raw_dataset(str(TRAIN))
    base = run.results / "nnaug" / NAMES[TRAIN] / "sweep" / "small"
    real_only = make_arms(BUDGETS["small"], [1.0], False, kinds=("real-only",))[0]
    judge = model_folder(base / real_only.name / "seed_0", NAMES[TRAIN], real_only.trainer)  # the shared seed 0
    out = {}
    for folder in sorted(synthetic_datasets_for(NAMES[TRAIN])):
        provenance = read_provenance(folder) or {}
        if provenance.get("ratio") != 1.0 or provenance.get("generator_steps_trained") != REFERENCE_STEPS or \
                (provenance.get("filter") or {}).get("min_consistency") is not None:
            continue
        if json.loads((folder / "dataset.json").read_text()).get("numTraining") != provenance.get("num_cases"):
            continue  # a --mix set: real cases inside
        kind = "mask-then-image" if provenance.get("mode") == "mask-conditioned" else "joint"
        components = (provenance.get("filter") or {}).get("max_components")
        name = kind + (f", <= {components} component(s)" if components else "")
        if name in out:
            continue  # the same set made twice (sorted by name: the older ID is kept)
        quality = synthetic_quality(real, folder, None, judge, ["all"], args.device,
                                    run.work / "set_numbers" / f"{folder.name}.json")
        out[name] = {"dataset": folder.name, "frd": quality["fidelity"]["frd"], "realism": quality["realism"],
                     "mask_consistency": quality["mask_consistency"]}
        print(name, json.dumps(out[name]), flush=True)
    for target in (run.work, RESULTS):
        (target / "set_numbers.json").write_text(json.dumps(out, indent=1))
    return out


def summary(run: Runner) -> dict:
    """Every pretrain-r1 and mixed-r1 arm of the ``small`` validation sweeps, against the shared controls and the
    reference."""
    import numpy as np

    root = run.results / "nnaug" / NAMES[TRAIN] / "sweep" / "small"
    per_case, rows = {}, {}
    for path in sorted(root.glob(f"*/test-{NAMES[VAL]}/sweep.json")):
        result = json.loads(path.read_text())
        for arm in result["arms"]:
            if arm["kind"] in ("real-only", "real-twice"):
                name = arm["kind"]
                if name in per_case and len(per_case[name]) >= len(result["per_case"][name]):
                    continue  # the same shared runs, seen by several sweeps: the one with the most seeds
            elif arm["kind"] in ("pretrain", "mixed") and arm["ratio"] == 1.0 and not arm.get("min_consistency"):
                name = _lever_name(result, arm["arm"])
                steps = result["generator"]["steps_trained"]
                synthetic = next(s for s in result["synthetic"] if s["dataset"] == arm["synthetic_dataset"])
                point = Path(result["generator"]["folder"]) / "lever_point.json"
                rows[name] = {
                    "kind": arm["kind"], "generator_steps": steps, "max_components": result["synthesis"].get("max_components"),
                    "foreground": arm["foreground"], "per_seed": arm["per_seed_foreground"],
                    "synthetic_dataset": arm["synthetic_dataset"], "frd": synthetic["fidelity"]["frd"],
                    "mask_consistency": synthetic["mask_consistency"], "realism": synthetic.get("realism"),
                    "curve_point_200_pairs": json.loads(point.read_text()) if point.is_file() else None}
            else:
                continue
            per_case[name] = per_case_foreground(result, arm["arm"])

    for name, row in rows.items():
        row["differences"] = {reference: paired_difference(per_case[name], per_case[reference])
                              for reference in ("real-only", "real-twice", _reference_name())
                              if reference != name and reference in per_case}
    controls = {name: {"per_seed": {s: float(np.mean(list(c.values()))) for s, c in per_case[name].items()}}
                for name in ("real-only", "real-twice") if name in per_case}
    out = {"validation_dataset": NAMES[VAL], "budget": "small", "controls": controls, "levers": rows}
    for folder in (run.work, RESULTS):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "levers.json").write_text(json.dumps(out, indent=1))
    _print_table(rows)
    return out


def _lever_name(result: dict, arm: str) -> str:
    steps, components = result["generator"]["steps_trained"], result["synthesis"].get("max_components")
    return f"{arm}, {steps} steps" + (f", <= {components} component(s)" if components else "")


def _reference_name() -> str:
    return f"pretrain-r1, {REFERENCE_STEPS} steps"


def _print_table(rows: dict) -> None:
    def ci(d):
        return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "—"

    print("| arm | Dice [95 % CI] | − real-only | − real-twice | − reference | FRD | mask consistency "
          "| components (real → synthetic) | coverage (real's own) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        fg, diff, realism = row["foreground"], row["differences"], row["realism"] or {}
        components = "→".join(f"{c:.2f}" for c in realism.get("components", [])) or "—"
        coverage = f"{realism['coverage']:.2f} ({realism['coverage_real']:.2f})" if "coverage" in realism else "—"
        print(f"| {name} | {fg['mean']:.3f} [{fg['low']:.3f}, {fg['high']:.3f}] | {ci(diff.get('real-only'))} "
              f"| {ci(diff.get('real-twice'))} | {ci(diff.get(_reference_name()))} | {row['frd']:.2f} "
              f"| {row['mask_consistency']:.3f} | {components} | {coverage} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("kvasir-evidence"))
    parser.add_argument("--levers", default="components,mixed,steps1500",
                        help="comma-separated: components, mixed, steps<N> (e.g. steps1500), set-numbers; none = only "
                             "the summary")
    parser.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    parser.add_argument("--budget", default="small", help=argparse.SUPPRESS)  # the judge's schedule (kvasir_evidence)
    parser.add_argument("--workers", type=int, default=1, help="nnaug sweep processes sharing each sweep")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    run = Runner(args.workdir.resolve(), args.dry_run)
    for lever in (name for name in args.levers.split(",") if name not in ("", "none")):
        print(f"\n== {lever}", flush=True)
        if lever == "components":
            lever_components(run, args)
        elif lever == "mixed":
            lever_mixed(run, args)
        elif lever == "set-numbers":
            set_numbers(run, args) if not run.dry_run else None
        elif lever.startswith("steps") and lever[5:].isdigit() and int(lever[5:]) > REFERENCE_STEPS:
            lever_steps(run, args, int(lever[5:]))
        else:
            raise SystemExit(f"kvasir_levers: unknown lever {lever!r}: components, mixed, or steps<N> with N > "
                             f"{REFERENCE_STEPS}")
    if not run.dry_run:
        summary(run)


if __name__ == "__main__":
    main()
