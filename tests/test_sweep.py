"""nnaug sweep: inputs, plan, statistics and rendering (fast); a kill and resume, and two workers sharing a sweep (slow)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from nnaug.example import write_example_dataset
from nnaug.experiment.evaluate import per_case_from_metrics, summarise
from nnaug.experiment.plan import BUDGETS, make_arms
from nnaug.experiment.render import to_markdown, write_outputs
from nnaug.nnunet_results import latest_sweep_markdown


# ----------------------------------------------------------------------------- fast
def test_bad_inputs_are_one_line_errors(nnunet_env, run_cli):
    assert_one_line_error(run_cli("sweep", "999", "--ratios", "1,x"), "--ratios", "'x' is not a number")
    assert_one_line_error(run_cli("sweep", "999", "--ratios", "-1"), "--ratios")
    assert_one_line_error(run_cli("sweep", "999", "--ratios", "0"), "at least one ratio > 0")
    assert_one_line_error(run_cli("sweep", "999", "--seeds", "0"), "--seeds")
    assert_one_line_error(run_cli("sweep", "999", "--folds", "5"), "--folds")
    assert_one_line_error(run_cli("sweep", "999", "--budget", "huge"), "--budget")
    assert_one_line_error(run_cli("sweep", "999", "--no-such-option"), "--no-such-option")
    assert_one_line_error(run_cli("sweep", "999"), "no dataset with ID 999")
    write_example_dataset(999, num_cases=6)
    assert_one_line_error(run_cli("sweep", "999", "--folds", "all", "--device", "cpu"), "--folds all", "--test")
    assert_one_line_error(run_cli("sweep", "999", "--test", "999", "--device", "cpu"), "training dataset itself")
    write_example_dataset(998, "Other", num_cases=4)
    folder = nnunet_env["raw"] / "Dataset998_Other"
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "round": 1, "lobed": 2, "extra": 3}
    (folder / "dataset.json").write_text(json.dumps(meta))
    assert_one_line_error(run_cli("sweep", "999", "--test", "998", "--device", "cpu"), "Dataset998_Other", "labels")
    assert_one_line_error(run_cli("sweep", "999", "--device", "cpu", "--folds", "0"), "no generator trained on")
    import torch

    if not torch.cuda.is_available():
        assert_one_line_error(run_cli("sweep", "999", "--device", "cuda"), "--device cuda")


def test_budgets_and_arms(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnaug.nnunet_pretraining import trainers_path

    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    tiny = BUDGETS["tiny"]
    for kind in ("real-only", "compute-matched", "pretrain"):  # the fixed schedules are what the classes run
        schedule = recursive_find_trainer_class_by_name(tiny.trainer(kind)).nnaug_schedule()
        assert (schedule.num_epochs, schedule.num_iterations_per_epoch) == tiny.phases(kind)[-1][1:]
    assert tiny.matched_epochs == 10 and tiny.env("pretrain") == {}
    small = BUDGETS["small"]
    assert small.matched_epochs == 30
    assert small.env("compute-matched")["NNAUG_FINETUNE_EPOCHS"] == "30"
    assert small.env("pretrain")["NNAUG_PRETRAIN_EPOCHS"] == "15"
    assert BUDGETS["gpu"].matched_epochs == 250
    from nnaug import choices

    assert tuple(BUDGETS) == choices.BUDGETS  # what the CLI offers is what the library has
    arms = make_arms(small, [1.0, 2.5], compute_matched=True)
    assert [a.name for a in arms] == ["real-only", "real-only-matched", "real-twice", "pretrain-r1", "pretrain-r2.5"]
    assert [a.shared for a in arms] == [True, True, True, False, False]
    twice, pretrain = arms[2], arms[3]  # the control has the pretrain arms' trainer, schedule and variables
    assert (twice.trainer, twice.env, twice.phases) == (pretrain.trainer, pretrain.env, pretrain.phases)
    assert twice.synthesis_key is None and tiny.trainer("real-twice") == tiny.trainer("pretrain")
    # no two arms share NNAUG_SEED numbers (same trainer + same seed = same weights and batches); real-only keeps 0..n-1
    numbers = [a.run_seed(s) for a in arms for s in range(5)]
    assert len(set(numbers)) == len(numbers) and [arms[0].run_seed(s) for s in range(3)] == [0, 1, 2]
    assert all(0 <= n < 2 ** 32 for n in numbers)
    from nnaug.experiment.plan import arm_root

    base = Path("/r/sweep/small")  # the control runs are shared by every generator's sweep, pretrain runs are not
    assert arm_root(base, base / "gen-a", arms[0], 1) == arm_root(base, base / "gen-b", arms[0], 1) == base / "real-only" / "seed_1"
    assert arm_root(base, base / "gen-a", twice, 1) == base / "real-twice" / "seed_1"
    assert arm_root(base, base / "gen-a", arms[3], 1) != arm_root(base, base / "gen-b", arms[3], 1)
    assert [a.name for a in make_arms(small, [5.0], compute_matched=False, real_twice=False)] == ["real-only", "pretrain-r5"]
    assert [a.name for a in make_arms(small, [5.0], True, kinds=("real-only", "real-twice"))] == ["real-only", "real-twice"]


def test_budget_options_and_arm_kinds():
    from nnaug.errors import NnaugError
    from nnaug.experiment.plan import parse_arm_kinds, resolve_budget

    small = BUDGETS["small"]
    assert resolve_budget("small") is small and resolve_budget("small", 15, 15) is small  # unchanged: same folders
    long = resolve_budget("small", finetune_epochs=60)
    assert long.name == "small-pt15-ft60" and long.finetune == (60, 25) and long.pretrain == small.pretrain
    assert long.env("real-only")["NNAUG_FINETUNE_EPOCHS"] == "60"
    assert long.env("compute-matched")["NNAUG_FINETUNE_EPOCHS"] == "75"  # pretraining + fine-tuning iterations
    assert long.env("real-twice")["NNAUG_PRETRAIN_EPOCHS"] == "15" and long.phases("pretrain")[1] == ("fine-tuning", 60, 25)
    assert resolve_budget("gpu", pretrain_epochs=10).name == "gpu-pt10-ft150"
    for bad, words in (((("tiny", None, 60)), "use --budget small or gpu"), (("small", 0, None), "--pretrain-epochs"),
                       (("huge", None, None), "unknown budget")):
        with pytest.raises(NnaugError, match=words):
            resolve_budget(*bad)
    assert parse_arm_kinds(None) == ("real-only", "compute-matched", "real-twice", "pretrain")
    assert parse_arm_kinds("pretrain,real-only") == ("real-only", "pretrain")
    for bad, words in (("real-only,nope", "choose from"), ("pretrain", "must include real-only"), ("", "choose from")):
        with pytest.raises(NnaugError, match=words):
            parse_arm_kinds(bad)


def test_mixed_arms_are_asked_for_and_share_the_pretrain_arms_sets(monkeypatch, tmp_path):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnaug.experiment.plan import parse_arm_kinds
    from nnaug.nnunet_pretraining import trainers_path

    assert "mixed" not in parse_arm_kinds(None) and parse_arm_kinds("mixed,real-only") == ("real-only", "mixed")
    small, tiny = BUDGETS["small"], BUDGETS["tiny"]
    arms = make_arms(small, [1.0, 5.0], False, kinds=("real-only", "real-twice", "pretrain", "mixed"))
    assert [a.name for a in arms] == ["real-only", "real-twice", "pretrain-r1", "pretrain-r5", "mixed-r1", "mixed-r5"]
    mixed, pretrain, real_only = arms[4], arms[2], arms[0]
    # one training as long as real-only's, on the same synthetic set as the pretrain arm of its ratio
    assert mixed.trainer == "nnUNetTrainer_nnaugMixed" and mixed.phases == real_only.phases and mixed.env == real_only.env
    assert mixed.synthesis_key == pretrain.synthesis_key == (1.0, None) and not mixed.shared
    assert mixed.run_seed(0) not in {a.run_seed(0) for a in arms if a is not mixed}
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    schedule = recursive_find_trainer_class_by_name(tiny.trainer("mixed")).nnaug_schedule()
    assert (schedule.num_epochs, schedule.num_iterations_per_epoch) == tiny.phases("mixed")[-1][1:]
    # each mixed arm against the controls and against the pretrain arm of its own set, nothing else
    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(20)]
    results = {a.name: {s: {c: {"labels": {"polyp": v}, "foreground": v} for c, v in zip(cases, rng.uniform(0, 1, 20))}
                        for s in (0, 1)} for a in arms}
    pairs = {(d["arm"], d["reference"]) for d in summarise(arms, results, [0, 1], ["polyp"])["differences"]}
    assert {p for p in pairs if p[0].startswith("mixed")} == {
        (f"mixed-r{r}", ref) for r in (1, 5) for ref in ("real-only", "real-twice", f"pretrain-r{r}")}
    assert not any(ref.startswith("mixed") for _, ref in pairs)


def test_per_case_dice_from_nnunet_metrics():
    names = {"1": "round", "2": "lobed"}
    rows = [{"reference_file": "/x/case_a.png", "metrics": {"1": {"Dice": 0.5}, "2": {"Dice": float("nan")}}},
            {"reference_file": "/x/case_b.png", "metrics": {"1": {"Dice": float("nan")}, "2": {"Dice": float("nan")}}},
            {"reference_file": "/x/case_c.png", "metrics": {"1": {"Dice": 0.2}, "2": {"Dice": 0.6}}}]
    out = per_case_from_metrics(rows, names, ".png")
    assert out["case_a"] == {"labels": {"round": 0.5, "lobed": None}, "foreground": 0.5}  # absent in both: left out
    assert out["case_b"]["foreground"] == 1.0  # nothing to find and nothing found
    assert out["case_c"]["foreground"] == pytest.approx(0.4)


def _fake_result(tmp_path, effect: float, noise: float, seed: int = 0) -> dict:
    """A sweep result built from made-up per-case Dice through the same summary and outputs as a real sweep."""
    rng = np.random.default_rng(seed)
    budget = BUDGETS["small"]
    arms = make_arms(budget, [1.0, 5.0], compute_matched=True)
    seeds, cases = [0, 1, 2], [f"case_{i:02d}" for i in range(30)]
    difficulty = rng.uniform(0.4, 0.9, len(cases))
    shift = {"real-only": 0.0, "real-only-matched": 0.0, "real-twice": 0.0, "pretrain-r1": 0.0, "pretrain-r5": effect}
    results = {}
    for arm in arms:
        results[arm.name] = {}
        for s in seeds:
            run = rng.normal(0, noise)
            results[arm.name][s] = {
                c: {"labels": {"polyp": float(np.clip(d + shift[arm.name] + run + rng.normal(0, 0.02), 0, 1))},
                    "foreground": float(np.clip(d + shift[arm.name] + run + rng.normal(0, 0.02), 0, 1))}
                for c, d in zip(cases, difficulty)}
    stats = summarise(arms, results, seeds, ["polyp"])
    return {"dataset": "Dataset501_Fake", "folder": str(tmp_path), "base_folder": str(tmp_path),
            "generator": {"folder": "/g", "model": "jdm", "checkpoint_sha256": "ab" * 32},
            "synthesis": {"mode": "joint", "sampler": "ddpm", "steps": 100},
            "budget": {"name": "small", "about": budget.about, "matched_epochs": 30}, "device": "cpu",
            "seeds": seeds, "ratios": [1.0, 5.0], "folds": ["all"],
            "evaluation": {"mode": "test", "test_dataset": "Dataset502_Held", "num_cases": len(stats["cases"])},
            "labels": ["polyp"], "ci_method": "two-way bootstrap", "finished": "now",
            "arms": [{**row, "phases": [list(p) for p in arm.phases],
                      "synthetic_dataset": "S" if arm.ratio else "RealCopy" if arm.kind == "real-twice" else None,
                      "mean_train_seconds": 1.0} for row, arm in zip(stats["arms"], arms)],
            "differences": stats["differences"],
            "synthetic": [{"ratio": 1.0, "dataset": "S1", "num_cases": 40, "mask_consistency": 0.8,
                           "fidelity": {"fid": 12.0, "kid_mean": 0.01, "kid_std": 0.001, "frd": 3.5},
                           "realism": {"components": [1.08, 2.02], "coverage": 0.48, "coverage_real": 0.965, "low": True}},
                          {"ratio": 5.0, "dataset": "S5", "num_cases": 200, "mask_consistency": 0.7,
                           "fidelity_note": "n/a (no weights)"}]}


def test_summary_pairs_arms_and_flags_intervals_that_include_zero(tmp_path, nnunet_env):
    result = _fake_result(tmp_path, effect=0.1, noise=0.005)
    by = {(d["arm"], d["reference"]): d for d in result["differences"]}
    assert set(by) == {("real-only-matched", "real-only"), ("real-twice", "real-only"),
                       *((f"pretrain-r{r}", ref) for r in (1, 5) for ref in ("real-only", "real-only-matched", "real-twice"))}
    big = by[("pretrain-r5", "real-only")]["foreground"]
    assert big["low"] > 0.05 and not big["includes_zero"] and big["n_seeds"] == 3 and big["n_cases"] == 30
    none = by[("pretrain-r1", "real-only")]["foreground"]
    assert none["includes_zero"] and none["low"] < 0 < none["high"]
    for arm in result["arms"]:
        fg = arm["foreground"]
        assert fg["low"] <= fg["mean"] <= fg["high"] and len(arm["per_seed_foreground"]) == 3
        assert set(arm["labels"]) == {"polyp"}
    text = to_markdown(result)
    assert "includes 0" in text and "pretrain-r1 vs real-only" in text
    assert "| real-twice | real copy (RealCopy) → real (15×25 + 15×25) |" in text and "beyond the restart" in text
    assert f"{big['mean']:+.4f} [{big['low']:+.4f}, {big['high']:+.4f}]" in text
    assert "| 1 | none | S1 | 40 | 12.00 | 0.0100 ± 0.0010 | 3.50 | 0.8000 | 1.08 → 2.02 | 0.48 (0.96) low |" in text
    assert "| 5 | none | S5 | 200 | n/a | n/a | n/a | 0.7000 | — | — |" in text

    # run-to-run noise as large as the effect: the same mean difference no longer excludes 0
    noisy = _fake_result(tmp_path, effect=0.1, noise=0.2, seed=1)
    diff = {(d["arm"], d["reference"]): d for d in noisy["differences"]}[("pretrain-r5", "real-only")]["foreground"]
    assert diff["high"] - diff["low"] > 3 * (big["high"] - big["low"])

    latest = {k: nnunet_env["results"] / "latest" / f"sweep.{k}" for k in ("md", "json", "png")}
    paths = write_outputs(result, tmp_path / "sweep", latest)
    assert len(paths) == 6 and all(p.is_file() for p in paths)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(latest["json"].read_text())["differences"] == result["differences"]
    assert not list((tmp_path / "sweep").glob(".*tmp"))
    assert latest_sweep_markdown("Dataset501_Fake") is None  # nothing at the dataset's own place yet


def test_filtered_sets_are_arms_of_their_own_and_never_stand_in_for_unfiltered_ones(tmp_path):
    from nnaug.errors import NnaugError
    from nnaug.experiment.plan import parse_thresholds
    from nnaug.experiment.render import plot
    from nnaug.experiment.synthetic_sets import wanted_identity

    assert parse_thresholds([0.0, 0.7, 0.7]) == (None, 0.7) and parse_thresholds(None) == (None,)
    with pytest.raises(NnaugError, match="--min-consistency 1.5"):
        parse_thresholds([1.5])
    arms = make_arms(BUDGETS["small"], [1.0, 5.0], compute_matched=False, thresholds=(None, 0.7), real_twice=False)
    assert [a.name for a in arms] == ["real-only", "pretrain-r1", "pretrain-r5", "pretrain-r1-mc0.7", "pretrain-r5-mc0.7"]
    assert arms[3].synthesis_key == (1.0, 0.7) and arms[1].synthesis_key == (1.0, None) and arms[0].synthesis_key is None

    from types import SimpleNamespace

    from nnaug.experiment.plan import SynthesisChoice
    from nnaug.synthesis.plan import plan_identity

    model, sha = tmp_path / "model", "ab" * 32
    raw = SimpleNamespace(name="Dataset501_X", cases=list(range(40)))
    choice = SynthesisChoice("joint", "train", "ddim", 25)
    plain, kept = wanted_identity(raw, sha, 1.0, choice), wanted_identity(raw, sha, 1.0, choice, 0.7, model)
    provenance = {"source_dataset": raw.name, "checkpoint_sha256": sha, "mode": "joint", "masks": None,
                  "mask_augmentation": None, "sampler": "ddim", "steps": 25, "seed": 0, "ratio": 1,
                  "num_real_cases": 40, "generator": "/moved/elsewhere", "batch_size": 8, "cases": []}
    assert plan_identity(provenance) == plain  # where the generator lies and the batch size do not matter
    filtered = {**provenance, "filter": {"min_consistency": 0.7, "model": str(model), "folds": [0]}}
    assert plan_identity(filtered) == kept
    assert plan_identity(filtered) != plain and plan_identity(provenance) != kept  # never one for the other
    assert wanted_identity(raw, sha, 1.0, choice, 0.8, model) != kept
    assert wanted_identity(raw, sha, 1.0, choice, 0.7, tmp_path / "other") != kept
    assert wanted_identity(raw, sha, 2.0, choice) != plain and wanted_identity(raw, "cd" * 32, 1.0, choice) != plain
    # --max-components: a set of its own (found again from its provenance), and pretrain arms in folders of their own
    single = SynthesisChoice("joint", "train", "ddim", 25, max_components=1)
    assert single.tag == "joint-ddim25-c1" and choice.tag == "joint-ddim25"
    shaped = {**provenance, "filter": {"max_components": 1, "max_candidates": 400}}
    assert plan_identity(shaped) == wanted_identity(raw, sha, 1.0, single) != plain
    assert wanted_identity(raw, sha, 1.0, SynthesisChoice("joint", "train", "ddim", 25, max_components=2)) != \
        wanted_identity(raw, sha, 1.0, single)
    # a mask-then-image set is found again from its provenance file (its mask augmentation: tuples in the plan,
    # lists once written as JSON; before, the sweep never reused such a set and made it anew on every start)
    from nnaug.experiment.synthetic_sets import _options
    from nnaug.synthesis.plan import plan_header

    augmented = SynthesisChoice("mask-conditioned", "augmented", "ddim", 25)
    header = plan_header(raw, sha, _options(1.0, Path("."), augmented, "cpu"), "mask-conditioned")
    assert header["mask_augmentation"]
    assert plan_identity(json.loads(json.dumps(header))) == wanted_identity(raw, sha, 1.0, augmented)

    # rendering: the filter is a column of the synthetic table, and a series of its own in the picture
    result = _fake_result(tmp_path, effect=0.05, noise=0.01)
    result["synthetic"].append({"ratio": 1.0, "min_consistency": 0.7, "dataset": "S1f", "num_cases": 40,
                                "mask_consistency": 0.9, "fidelity": {"frd": 3.0}})
    text = to_markdown(result)
    assert "| 1 | mask consistency ≥ 0.7 | S1f | 40 |" in text and "at least its threshold by construction" in text
    filtered_arm = {**result["arms"][-1], "arm": "pretrain-r5-mc0.7", "min_consistency": 0.7}
    result["arms"].append(filtered_arm)
    result["differences"].append({**result["differences"][-1], "arm": "pretrain-r5-mc0.7"})
    assert plot(result, tmp_path / "filtered.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- slow: the whole sweep
def _wait_for(predicate, proc, what: str, timeout: float = 1200.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the sweep exited ({proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _sweep(*args) -> list[str]:
    return [str(Path(sys.executable).parent / "nnaug"), "sweep", "999", "--budget", "tiny", "--device", "cpu",
            "--folds", "0", "--steps", "20", *map(str, args)]  # 20 sampling steps: the quality does not matter here


def _sweep_env() -> dict:
    env = {**os.environ, "nnUNet_def_n_proc": "1"}
    return {k: v for k, v in env.items() if not k.startswith("NNAUG_")}


def _tiny_generator(nnunet_env, name: str, steps: int) -> Path:
    from nnaug.train_generator import train_generator

    generators = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "generators"
    return train_generator("999", preset="tiny", output=generators / name, overrides={"steps": steps},
                           progress=False, cpu=True)


def _check_statistics(result: dict, arms: list[str], seeds: list[str]) -> None:
    """Every arm's mean and every paired difference is what its per-case Dice say."""
    for arm in result["arms"]:
        fg = arm["foreground"]
        assert fg["n_seeds"] == len(seeds) and fg["low"] <= fg["mean"] <= fg["high"]
        values = [v["foreground"] for s in seeds for v in result["per_case"][arm["arm"]][s].values()]
        assert fg["mean"] == pytest.approx(np.mean(values)) and len(values) == len(seeds) * fg["n_cases"]
    assert [a["arm"] for a in result["arms"]] == arms
    for d in result["differences"]:
        a, b = ([[result["per_case"][name][s][c]["foreground"] for c in sorted(result["per_case"][name][s])]
                 for s in seeds] for name in (d["arm"], d["reference"]))
        fg = d["foreground"]
        assert fg["mean"] == pytest.approx((np.array(a) - np.array(b)).mean())
        assert fg["includes_zero"] == (fg["low"] <= 0 <= fg["high"])


@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped(nnunet_env, tmp_path, random_weights):
    import psutil

    env = _sweep_env()
    write_example_dataset(999, num_cases=10)
    command = _sweep("--ratios", "1", "--seeds", "1", "--generator", _tiny_generator(nnunet_env, "a", 20),
                     "--inception-weights", random_weights)

    # 1. run until the first arm is done and the second is mid-training, then SIGKILL the sweep
    base = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "sweep" / "tiny"
    first = base / "real-only" / "seed_0"
    first_ckpt = first / "Dataset999_nnaugExample" / "nnUNetTrainer_nnaug_5epochs__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    second = base / "real-only-matched" / "seed_0" / "Dataset999_nnaugExample" / "nnUNetTrainer_nnaug_10epochs__nnUNetPlans__2d" / "fold_0"

    def second_mid_training() -> bool:
        logs = list(second.glob("training_log_*.txt"))
        return bool(logs) and ": Epoch 2" in logs[0].read_text()

    with open(tmp_path / "run1.log", "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: (first / "nnaug_sweep_arm.json").is_file(), proc, "the first arm to finish")
            _wait_for(second_mid_training, proc, "the second arm to be mid-training")
            children = psutil.Process(proc.pid).children(recursive=True)
            assert any("nnUNetv2_train" in " ".join(c.cmdline()) for c in children)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    _, alive = psutil.wait_procs(children, timeout=60)  # nnUNetv2_train goes with the sweep (parent-death signal)
    assert not alive, [c.cmdline() for c in alive]
    assert not (second / "checkpoint_final.pth").exists()
    stamp = first_ckpt.stat().st_mtime_ns

    # 2. the same command: finishes, skips the finished arm, continues the killed one with --c
    run2 = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert run2.returncode == 0, run2.stdout[-4000:] + run2.stderr[-4000:]
    assert "[1/4] real-only seed 0: done, skipped" in run2.stdout
    assert "nnUNetv2_train Dataset999_nnaugExample 2d 0 -tr nnUNetTrainer_nnaug_10epochs -device cpu --c" in run2.stdout
    assert first_ckpt.stat().st_mtime_ns == stamp  # not retrained
    gen_folder = next(p for p in base.iterdir() if p.is_dir() and p.name.startswith("a-"))
    result = json.loads((gen_folder / "cv" / "sweep.json").read_text())
    assert result["trained_this_run"] == ["real-only-matched seed 0 fold 0", "real-twice seed 0 fold 0",
                                          "pretrain-r1 seed 0 fold 0"]
    assert result["evaluation"] == {"mode": "cross-validation", "num_cases": 2}  # fold 0 of 10 cases
    assert result["labels"] == ["round", "lobed"]
    _check_statistics(result, ["real-only", "real-only-matched", "real-twice", "pretrain-r1"], ["0"])
    # the real->real control: the pretrain trainer, pretrained on a copy of the 10 real cases (not a synthetic set)
    from nnaug.provenance import synthetic_datasets_for

    twice = next(a for a in result["arms"] if a["arm"] == "real-twice")
    copy = nnunet_env["raw"] / twice["synthetic_dataset"]
    real = nnunet_env["raw"] / "Dataset999_nnaugExample"
    assert twice["trainer"] == next(a for a in result["arms"] if a["arm"] == "pretrain-r1")["trainer"]
    assert sorted(f.name for f in (copy / "imagesTr").iterdir()) == sorted(f.name for f in (real / "imagesTr").iterdir())
    assert all((copy / "labelsTr" / f.name).read_bytes() == f.read_bytes() for f in (real / "labelsTr").iterdir())
    assert copy not in synthetic_datasets_for(real.name)  # never taken for a synthetic set
    twice_record = json.loads(next((base / "real-twice" / "seed_0").glob("Dataset999_*/*/fold_0/nnaug_training.json")).read_text())
    assert twice_record["pretraining"]["synthetic_dataset"] == copy.name
    assert {d["reference"] for d in result["differences"] if d["arm"] == "pretrain-r1"} == \
        {"real-only", "real-only-matched", "real-twice"}
    synth = result["synthetic"][0]
    assert synth["num_cases"] == 10 and synth["fidelity"]["fid"] >= 0 and 0.0 <= synth["mask_consistency"] <= 1.0
    record = json.loads(next((gen_folder / "pretrain-r1" / "seed_0").glob("Dataset999_*/*/fold_0/nnaug_training.json")).read_text())
    pretrain_seeds = next(a for a in result["arms"] if a["arm"] == "pretrain-r1")["nnaug_seeds"]
    # the arm's own NNAUG_SEED for repeat 0: not real-only's 0, so the two arms do not start from the same weights
    assert record["seed"] == pretrain_seeds[0] != 0 and record["pretraining"]["synthetic_dataset"] == synth["dataset"]
    text = (gen_folder / "cv" / "sweep.md").read_text()
    assert all(f"| {arm} |" in text for arm in ("real-only", "real-only-matched", "real-twice", "pretrain-r1"))
    assert latest_sweep_markdown("Dataset999_nnaugExample") == text
    assert (gen_folder / "cv" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((gen_folder / "sweep.json").read_text())["evaluations"]["cv"] == result
    plan = json.loads((gen_folder / "plan.json").read_text())
    assert [a["name"] for a in plan["arms"]] == ["real-only", "real-only-matched", "real-twice", "pretrain-r1"]
    assert [r["folder"] for r in plan["runs"]] == [str(first), str(base / "real-only-matched" / "seed_0"),
                                                   str(base / "real-twice" / "seed_0"), str(gen_folder / "pretrain-r1" / "seed_0")]
    assert plan["request"]["ratios"] == [1.0] and plan["request"]["budget"] == "tiny"  # the input, as given

    # 3. once more: nothing to train, nothing to evaluate, nothing rewritten
    run3 = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert run3.returncode == 0 and "up to date" in run3.stdout and "nnUNetv2_train" not in run3.stdout
    assert json.loads((gen_folder / "cv" / "sweep.json").read_text()) == result


@pytest.mark.slow
def test_two_workers_share_one_sweep_and_a_second_test_set_trains_nothing(nnunet_env, random_weights):
    env = {**_sweep_env(), "OMP_NUM_THREADS": "1"}  # each worker's nnU-Net takes one core, not all of them
    write_example_dataset(999, num_cases=10)
    write_example_dataset(998, "Held", num_cases=4, seed=5)
    write_example_dataset(997, "Later", num_cases=3, seed=6)
    command = _sweep("--ratios", "1", "--seeds", "2", "--no-compute-matched", "--no-real-twice", "--generator",
                     _tiny_generator(nnunet_env, "b", 10), "--inception-weights", random_weights, "--test", "998")

    # 1. --print-commands: one independent nnUNetv2_train line per run, and nothing else on stdout; a
    #    scheduler runs the first one (real-only seed 0), and the sweep then counts it as done
    printed = subprocess.run(command + ["--print-commands"], env=env, capture_output=True, text=True, timeout=1800)
    assert printed.returncode == 0, printed.stdout[-3000:] + printed.stderr[-3000:]
    lines = printed.stdout.splitlines()
    assert len(lines) == 4 and all(" nnUNetv2_train Dataset999_nnaugExample 2d 0 -tr " in line for line in lines), lines
    assert "NNAUG_SEED=0 " in lines[0] and "NNAUG_SYNTHETIC=" in lines[1] and "NNAUG_SEED=1 " in lines[2]
    scheduled = subprocess.run(["bash", "-c", lines[0]], env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
                               capture_output=True, text=True, timeout=1800)
    assert scheduled.returncode == 0, scheduled.stdout[-3000:] + scheduled.stderr[-3000:]

    # 2. two workers started together: each run is trained by one of them, and one of them evaluates
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=3600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    both = "\n".join(outputs)
    assert all("[1/4] real-only seed 0: done, skipped" in output for output in outputs)  # the scheduler's run
    for run in ("real-only seed 1", "pretrain-r1 seed 0", "pretrain-r1 seed 1"):
        assert both.count(f"{run} fold 0: training with") == 1, run
    assert "another worker is training it; taking the next run" in both
    base = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "sweep" / "tiny"
    gen_folder = next(p for p in base.iterdir() if p.is_dir() and p.name.startswith("b-"))
    for root in [base / "real-only", gen_folder / "pretrain-r1"]:
        for seed in (0, 1):
            assert len(list((root / f"seed_{seed}").glob("Dataset999_*/*/fold_0/training_log_*"))) == 1
    assert both.count("sweep.json (test-Dataset998_Held)") == 1 and "up to date" in both  # written once
    result = json.loads((gen_folder / "test-Dataset998_Held" / "sweep.json").read_text())
    assert result["evaluation"] == {"mode": "test", "test_dataset": "Dataset998_Held", "num_cases": 4}
    assert set(result["per_case"]["pretrain-r1"]["1"]) == {c.name[:-len(".png")] for c in
                                                          (nnunet_env["raw"] / "Dataset998_Held" / "labelsTr").iterdir()}
    _check_statistics(result, ["real-only", "pretrain-r1"], ["0", "1"])
    assert len(list((gen_folder / "pretrain-r1" / "seed_0" / "test_Dataset998_Held").glob("*.png"))) == 4

    # 3. a second held-out set later: nothing is trained, the first set's predictions are reused, and the
    #    sweep's own sweep.json holds both evaluations
    record = gen_folder / "pretrain-r1" / "seed_0" / "nnaug_sweep_test_Dataset998_Held.json"
    stamp = record.stat().st_mtime_ns
    again = subprocess.run(command[:-1] + ["998,997"], env=env, capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "nnUNetv2_train" not in again.stdout and record.stat().st_mtime_ns == stamp
    combined = json.loads((gen_folder / "sweep.json").read_text())["evaluations"]
    assert set(combined) == {"test-Dataset998_Held", "test-Dataset997_Later"}
    assert combined["test-Dataset998_Held"] == result  # up to date: not evaluated again
    assert combined["test-Dataset997_Later"]["trained_this_run"] == []
    assert combined["test-Dataset997_Later"]["evaluation"]["num_cases"] == 3
    assert latest_sweep_markdown("Dataset999_nnaugExample") == (gen_folder / "test-Dataset997_Later" / "sweep.md").read_text()


@pytest.mark.slow
def test_a_mixed_arm_trains_once_on_the_pretrain_arms_set_and_real_cases(nnunet_env, random_weights):
    write_example_dataset(999, num_cases=10)
    write_example_dataset(998, "Held", num_cases=4, seed=5)
    command = _sweep("--ratios", "1", "--seeds", "1", "--arms", "real-only,pretrain,mixed", "--no-compute-matched",
                     "--generator", _tiny_generator(nnunet_env, "m", 10), "--inception-weights", random_weights,
                     "--test", "998")
    proc = subprocess.run(command, env=_sweep_env(), capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    base = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "sweep" / "tiny"
    gen_folder = next(p for p in base.iterdir() if p.is_dir() and p.name.startswith("m-"))
    result = json.loads((gen_folder / "test-Dataset998_Held" / "sweep.json").read_text())
    _check_statistics(result, ["real-only", "pretrain-r1", "mixed-r1"], ["0"])
    arms = {a["arm"]: a for a in result["arms"]}
    assert arms["mixed-r1"]["synthetic_dataset"] == arms["pretrain-r1"]["synthetic_dataset"]  # one set, two uses
    assert arms["mixed-r1"]["phases"] == arms["real-only"]["phases"] == [["training", 5, 10]]
    assert {(d["arm"], d["reference"]) for d in result["differences"]} == {
        ("pretrain-r1", "real-only"), ("mixed-r1", "real-only"), ("mixed-r1", "pretrain-r1")}
    (fold,) = (gen_folder / "mixed-r1" / "seed_0").glob("Dataset999_*/nnUNetTrainer_nnaugMixed_5epochs__*/fold_0")
    record = json.loads((fold / "nnaug_training.json").read_text())
    synthetic = nnunet_env["raw"] / arms["mixed-r1"]["synthetic_dataset"]
    synth_ids = sorted(p.name[:-len(".png")] for p in (synthetic / "labelsTr").iterdir())
    assert len(synth_ids) == 10 and set(synth_ids) <= set(record["train_identifiers"])
    assert len(record["train_identifiers"]) == 10 + 8 and not set(synth_ids) & set(record["val_identifiers"])
    text = (gen_folder / "test-Dataset998_Held" / "sweep.md").read_text()
    assert f"| mixed-r1 | real + {synthetic.name} (5×10) |" in text and "instead of pretraining" in text
    assert (gen_folder / "test-Dataset998_Held" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a run whose trainer recorded another set (an older nnaug took a filtered set for this one) is refused
    record["mixed_with"]["synthetic_dataset"] = "Dataset123_Other"
    (fold / "nnaug_training.json").write_text(json.dumps(record))
    again = subprocess.run(command, env=_sweep_env(), capture_output=True, text=True, timeout=600)
    errors = [line for line in again.stderr.splitlines() if line.startswith("nnaug: error:")]
    assert again.returncode == 2 and "Traceback" not in again.stderr and "nnUNetv2_train" not in again.stdout
    assert len(errors) == 1 and f"mixed-r1 seed 0 fold 0 was trained on Dataset123_Other, not on {synthetic.name}" \
        in errors[0], again.stderr[-2000:]


def test_progress_reads_the_trainers_progress_files(tmp_path):
    from nnaug.experiment.run import Progress
    from nnaug.io import write_json_atomic
    from nnaug.nnunet_pretraining import PROGRESS_FILE

    lines = []
    progress = Progress(lines.append)
    progress.start("[2/8] pretrain-r1 seed 0 fold 0", tmp_path, [("pretraining", 5, 10), ("fine-tuning", 5, 10)],
                   later_iterations=100)
    pretraining = tmp_path / "Dataset502_S" / "nnUNetTrainer_nnaugPretrain__p__2d" / "fold_all" / PROGRESS_FILE
    finetuning = tmp_path / "Dataset501_X" / "nnUNetTrainer_nnaugPretrainFinetune__nnUNetPlans__2d" / "fold_0" / PROGRESS_FILE
    progress.line("no epoch yet")
    assert lines == []
    progress.looked = 0.0
    write_json_atomic(pretraining, {"phase": "pretrain", "epochs_done": 1, "num_epochs": 5, "iterations_per_epoch": 10,
                                    "epoch_seconds": 2.0})
    progress.line()
    progress.looked = 0.0  # (the next look would wait a second)
    progress.line()  # the same epoch is reported once
    write_json_atomic(finetuning, {"phase": "finetune", "epochs_done": 4, "num_epochs": 5, "iterations_per_epoch": 10,
                                   "epoch_seconds": 2.0})
    progress.looked = 0.0
    progress.line()
    assert lines[0] == ("nnaug sweep: [2/8] pretrain-r1 seed 0 fold 0: pretraining epoch 1/5, ETA 0:18 for this run, "
                        "~0:38 for the sweep's training")  # 90 iterations left at 0.2 s, + 100 later
    assert len(lines) == 2 and lines[1].endswith("fine-tuning epoch 4/5, ETA 0:02 for this run, ~0:22 for the sweep's training")


def test_nnunet_foreground_mean_beside_the_per_case_dice_and_no_ignore_column(tmp_path):
    """Two labels, the second absent (no Dice) in half the cases: per-case foreground Dice (labels, then cases)
    and nnU-Net's foreground_mean (cases, then labels) differ, and sweep.md shows both; `ignore` has no column."""
    from nnaug.nnunet_results import metric_label_names as label_names

    assert label_names({"labels": {"background": 0, "polyp": 1, "ignore": 2}}) == {"1": "polyp"}
    arms = make_arms(BUDGETS["small"], [1.0], compute_matched=False, real_twice=False)
    seeds, cases = [0, 1], [f"c{i}" for i in range(4)]
    results = {}
    for k, arm in enumerate(arms):
        results[arm.name] = {}
        for s in seeds:
            per_case = {}
            for i, c in enumerate(cases):
                a, b = 0.9 - 0.1 * i + 0.01 * s + 0.05 * k, (0.3 if i % 2 == 0 else None)
                present = [v for v in (a, b) if v is not None]
                per_case[c] = {"labels": {"a": a, "b": b}, "foreground": float(np.mean(present))}
            results[arm.name][s] = per_case
    stats = summarise(arms, results, seeds, ["a", "b"])
    real = stats["arms"][0]
    a_mean = np.mean([0.9 - 0.1 * i + 0.01 * s for s in seeds for i in range(4)])
    assert real["nnunet_foreground_mean"]["mean"] == pytest.approx((a_mean + 0.3) / 2)
    assert real["foreground"]["mean"] == pytest.approx(np.mean([results["real-only"][s][c]["foreground"]
                                                                for s in seeds for c in cases]))
    assert abs(real["foreground"]["mean"] - real["nnunet_foreground_mean"]["mean"]) > 0.05
    (diff,) = stats["differences"]
    assert diff["nnunet_foreground_mean"] == pytest.approx(0.025)  # +0.05 on label a only, halved over 2 labels
    result = _fake_result(tmp_path, effect=0.0, noise=0.01)
    result.update({"arms": [{**row, "phases": [list(p) for p in arm.phases], "synthetic_dataset": None,
                             "mean_train_seconds": 1.0} for row, arm in zip(stats["arms"], arms)],
                   "differences": stats["differences"], "labels": ["a", "b"]})
    text = to_markdown(result)
    assert "| nnU-Net foreground_mean |" in text and f"| {real['nnunet_foreground_mean']['mean']:.4f} |" in text
    assert "they differ here, so both are shown" in text and "| +0.0250 |" in text
    for arm in result["arms"]:  # where the two agree, one column is enough
        arm["nnunet_foreground_mean"]["mean"] = arm["foreground"]["mean"]
    same = to_markdown(result)
    assert "nnU-Net foreground_mean |" not in same and "here they agree to 4 decimals" in same
