"""``nnaug sweep``: which synthetic ratio helps, on the user's own data, with seeds and confidence intervals.

Arms (each trained ``--seeds`` times with ``nnUNetv2_train``, ``nnUNet_extTrainer`` set):

* ``real-only`` — nnaug's real-only trainer with the fine-tuning schedule;
* ``real-only-matched`` — the same trainer for as many iterations as pretraining + fine-tuning
  together (``--no-compute-matched`` drops it), so a gain cannot be just more optimizer steps;
* ``pretrain-r<ratio>`` — synthetic pretraining -> real fine-tuning, one per ratio, on a synthetic
  dataset of that ratio made by the generator (reused when one with the same generator checkpoint,
  ratio and synthesis options exists in ``$nnUNet_raw``, synthesized otherwise);
* ``real-twice`` — the pretrain arms' trainer, schedule and restart with a copy of the real cases in
  place of the synthetic set (``--no-real-twice`` drops it);
* ``mixed-r<ratio>`` (``--arms ...,mixed``) — one training, as long as real-only, on the real cases and
  the same synthetic set together.

Every arm and seed trains into its own ``nnUNet_results`` folder (see :func:`sweep_folders`), so
nothing collides, and the synthetic pretraining is cached inside it per seed. Evaluation: nnU-Net's
own cross-validation (``validation/summary.json`` of each fold: only real cases, the synthetic ones
are never in the real dataset's splits), or with a held-out dataset nnU-Net's predictor on its
cases and nnU-Net's ``compute_metrics``. Statistics are in :mod:`nnaug.stats`.

Resumable: a fold counts as trained when its ``checkpoint_final.pth`` (and, for cross-validation,
``validation/summary.json``) exists; everything else is (re)started with ``nnUNetv2_train ... --c``.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from nnaug.choices import MASK_SOURCES
from nnaug.errors import NnaugError
from nnaug.experiment.evaluate import evaluate, synthetic_quality
from nnaug.experiment.plan import (BASE_CONFIG, CONTROL_ARM_NAMES, CONTROLS_FOLDER, PLAN_FILE, RESULTS_FILE,
                                   SYNTHETIC_KINDS, SweepRequest, SweepSetup, check_fold_numbers, make_arms, parse_arm_kinds,
                                   parse_ratios, parse_thresholds, resolve_budget, resolve_device, resolve_folds,
                                   resolve_synthesis, slug, sweep_folders)
from nnaug.experiment.render import write_outputs
from nnaug.nnunet_results import latest_outputs
from nnaug.experiment.run import ensure_planned, refuse_runs_on_other_sets, shell_commands, train_runs
from nnaug.experiment.synthetic_sets import SyntheticSets
from nnaug.io import file_lock, load_json_or_none, write_json_atomic


def run_sweep(request: SweepRequest, log=print) -> list:
    """Train every arm x seed that is not done yet (by no other worker either), evaluate on each held-out
    dataset in ``request.test`` (none: cross-validation), and write one sweep.{md,json,png} per evaluation
    plus the sweep's own sweep.json with all of them; returns their result dicts.

    ``request.print_commands``: make the pretraining sets, then return the ``nnUNetv2_train`` lines of the runs
    not trained yet instead of training them (for a scheduler; the same sweep afterwards evaluates)."""
    start = time.time()
    setup = prepare_sweep(request, log)
    synthetic = SyntheticSets(setup.raw, setup.generator, setup.sha, setup.choice, setup.device, setup.gen_folder,
                              setup.model_dir(setup.arms[0], 0), log)
    for arm in setup.arms:
        if arm.kind == "real-twice" or (arm.kind in SYNTHETIC_KINDS and arm.min_consistency is None):
            synthetic.for_arm(arm)  # the unfiltered sets and the real copy up front: made, resumed or reused
    refuse_runs_on_other_sets(setup, synthetic)
    if request.print_commands:
        return shell_commands(setup, synthetic)
    trained = train_runs(setup, synthetic, log)
    for arm, seed in setup.tasks:
        if setup.folds_left(arm, seed):  # a worker that held it died: the next run of the command continues it
            raise NnaugError(f"{arm.name} seed {seed} is not trained (another worker stopped): rerun the same command")
    refuse_runs_on_other_sets(setup, synthetic)  # the filtered sets too, now that they are made
    with file_lock(setup.gen_folder / ".evaluate.lock", "waiting for another worker evaluating this sweep"):
        return _evaluate_all(setup, synthetic, request.inception_weights,
                             {"trained_this_run": trained, "wall_seconds_this_run": time.time() - start}, log)


def _evaluate_all(setup: SweepSetup, synthetic: SyntheticSets, inception_weights: Path | None, this_run: dict,
                  log) -> list[dict]:
    """Evaluates what is not up to date. Of several workers, the first to get here writes the outputs; the
    others find the same runs already evaluated in ``<generator folder>/sweep.json`` and write nothing."""
    from nnaug.fidelity import resolve_inception_weights

    combined_path = setup.gen_folder / RESULTS_FILE
    evaluations = (load_json_or_none(combined_path) or {}).get("evaluations", {})
    stamp = setup.runs_stamp()
    wanted = {(f"test-{t.name}" if t is not None else "cv"): t for t in setup.tests or [None]}
    stale = [key for key in wanted if (evaluations.get(key) or {}).get("runs_stamp") != stamp]
    if not stale:
        log(f"nnaug sweep: up to date: these runs are already evaluated in {combined_path}")
        return [evaluations[key] for key in wanted]
    weights = resolve_inception_weights(inception_weights, required=False)
    real_model = setup.model_dir(setup.arms[0], 0)
    keys = list(dict.fromkeys(a.synthesis_key for a in setup.arms if a.kind in SYNTHETIC_KINDS))
    quality = {key: synthetic_quality(setup.raw, synthetic[key], weights, real_model, setup.folds, setup.device,
                                      setup.gen_folder / "fidelity" / f"{synthetic[key].name}.json", log) for key in keys}
    for key in stale:
        folder = setup.gen_folder / key
        result = evaluate(setup, wanted[key], synthetic, quality, weights, log)
        evaluations[key] = {**result, **this_run, "runs_stamp": stamp, "folder": str(folder)}
        paths = write_outputs(evaluations[key], folder, latest_outputs(setup.raw.name))
        log("nnaug sweep: wrote " + ", ".join(str(p) for p in paths))
    write_json_atomic(combined_path, {"dataset": setup.raw.name, "runs_folder": str(setup.gen_folder),
                                      "evaluations": evaluations})
    log(f"nnaug sweep: wrote {combined_path} ({', '.join(evaluations)})")
    return [evaluations[key] for key in wanted]


def _check_options(request: SweepRequest) -> None:
    check_fold_numbers(request.folds or [])
    if int(request.seeds) < 1:
        raise NnaugError(f"--seeds must be at least 1, got {request.seeds}")
    if request.masks not in MASK_SOURCES:
        raise NnaugError(f"--masks must be train or augmented, got {request.masks}")
    if request.steps is not None and int(request.steps) < 1:
        raise NnaugError(f"--steps must be at least 1, got {request.steps}")
    if request.allow_overlap and not request.test:
        raise NnaugError("--allow-overlap only applies with --test (it lets a held-out set share training cases)")


def _held_out_datasets(raw, test, allow_overlap: bool = False, log=print) -> list:
    """``--test A,B`` (or a list): each a raw dataset other than the training one, of the same kind, holding none
    of its cases (:func:`nnaug.overlap.check_held_out`: identical pixels refused, near-duplicates a warning)."""
    from nnaug.dataset import check_dataset, check_same_kind, load_raw_dataset
    from nnaug.overlap import check_held_out

    names = [t for t in (test.split(",") if isinstance(test, str) else (test or [])) if str(t).strip()]
    tests = []
    for name in names:
        test_raw = load_raw_dataset(str(name).strip())
        if test_raw.folder.resolve() == raw.folder.resolve():
            raise NnaugError(f"--test {name} is the training dataset itself: give a held-out dataset")
        check_same_kind(raw.dataset_json, test_raw.dataset_json, f"--test dataset {test_raw.name}",
                        f"a held-out set must be made like {raw.name} (nnaug convert --split)")
        check_dataset(test_raw)
        check_held_out(raw, test_raw, allow_overlap, "--test", warn=lambda m: log(f"nnaug sweep: warning: {m}"))
        if test_raw.name not in [t.name for t in tests]:
            tests.append(test_raw)
    return tests


def _checked_generator(raw, generator: Path | None) -> tuple[Path, dict]:
    from nnaug.generators import find_latest_generator, read_info

    generator = Path(generator) if generator is not None else find_latest_generator(raw.name)
    from nnaug.synthesis.plan import check_generator_fits

    info = read_info(generator)
    check_generator_fits(raw, info, generator)
    return generator, info


def prepare_sweep(request: SweepRequest, log=print) -> SweepSetup:
    """Checks every input, plans the real dataset, and makes (or, with ``overwrite``, clears) the folders."""
    from nnaug.dataset import check_dataset, load_raw_dataset
    from nnaug.generators import checkpoint_sha256

    _check_options(request)
    budget = resolve_budget(request.budget, request.pretrain_epochs, request.finetune_epochs)
    kinds = parse_arm_kinds(request.arms)
    ratios, thresholds = parse_ratios(request.ratios), parse_thresholds(request.min_consistency)
    device = resolve_device(request.device)
    raw = load_raw_dataset(request.dataset)
    check_dataset(raw)
    tests = _held_out_datasets(raw, request.test, request.allow_overlap, log)
    folds = resolve_folds(list(request.folds or []), bool(tests), len(raw.cases))
    if set(kinds) & set(SYNTHETIC_KINDS):
        generator, info = _checked_generator(raw, request.generator)
        sha = checkpoint_sha256(generator)
        choice = resolve_synthesis(info, request.mode, request.masks, request.sampler, request.steps,
                                   request.max_components)
        base, gen_folder = sweep_folders(raw.name, budget.name, f"{slug(generator.name)}-{sha[:8]}_{choice.tag}")
    else:  # the controls alone (e.g. to find the budget where real-only stops improving): no generator needed
        generator, info, sha, choice = None, {}, None, None
        base, gen_folder = sweep_folders(raw.name, budget.name, CONTROLS_FOLDER)
    plans_sha = ensure_planned(raw, log)
    _prepare_folders(raw, base, gen_folder, plans_sha, budget.name, request.overwrite, log)
    arms = make_arms(budget, ratios, request.compute_matched, thresholds, request.real_twice, kinds)
    setup = SweepSetup(raw, tests, folds, generator, info, sha, choice, budget, device, arms,
                       list(range(int(request.seeds))), base, gen_folder, plans_sha, request)
    write_json_atomic(gen_folder / PLAN_FILE, setup.plan_record())
    done = sum(not setup.folds_left(a, s) for a, s in setup.tasks)
    log(f"nnaug sweep: {raw.name}: {len(arms)} arms ({', '.join(a.name for a in arms)}) x {int(request.seeds)} seeds = "
        f"{len(setup.tasks)} runs ({done} done), folds {','.join(map(str, folds))}, budget {budget.name}, "
        f"device {device}; " + (f"generator {generator} ({sha[:8]}); " if generator else "no generator; ")
        + f"runs under {gen_folder}")
    return setup


def _prepare_folders(raw, base: Path, gen_folder: Path, plans_sha: str, budget: str, overwrite: bool, log) -> None:
    old = load_json_or_none(base / BASE_CONFIG)
    if old is not None and old.get("plans_sha256") != plans_sha and not overwrite:
        raise NnaugError(f"the nnU-Net plans of {raw.name} changed since the arms in {base} were trained: "
                         "pass --overwrite to train them again")
    if overwrite:
        targets = [base] if old is not None and old.get("plans_sha256") != plans_sha else \
            [*(base / name for name in CONTROL_ARM_NAMES.values()), gen_folder]
        for target in targets:
            if target.exists():
                log(f"nnaug sweep: --overwrite: removing {target}")
                shutil.rmtree(target)
    gen_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(base / BASE_CONFIG, {"dataset": raw.name, "plans_sha256": plans_sha, "budget": budget})

