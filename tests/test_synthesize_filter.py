"""nnaug synthesize --min-consistency / --max-components: the kept cases, their scores, determinism, resume,
shards, refusal.

The slow tests share one module-scoped set-up: the example dataset (8 cases), a tiny JDM and a
real-only nnU-Net trained by nnUNetv2_train (nnUNetTrainer_nnaug_5epochs, fold 0). Thresholds are
taken from the scores the report's own mask consistency gives an unfiltered set of the same seeds.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_one_line_error, nnunet_folders_in, sigkill_after

from nnaug.synthesis.filtered import CANDIDATE, decide
from nnaug.synthesis.work_folder import PLAN, PROGRESS

TINY_GEN = ["--preset", "tiny", "--resolution", "16", "--channels", "32,32", "--attention-resolutions", "8",
            "--steps", "4", "--cpu"]
REAL_ONLY = "nnUNetTrainer_nnaug_5epochs"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- fast: the acceptance rule alone
def _work_with_scores(tmp_path: Path, blocks: dict[int, list[float]], need: int, threshold: float, cap: int,
                      size: int) -> tuple[Path, dict]:
    work = tmp_path / ".Dataset600_XSynth.partial"
    (work / PROGRESS).mkdir(parents=True)
    for block, scores in blocks.items():
        (work / PROGRESS / f"scores_{block:06d}.json").write_text(json.dumps({"scores": scores, "augmentation": {}}))
        (work / PROGRESS / f"batch_{block:06d}.done").touch()
    plan = {"num_cases": need, "batch_size": size, "filter": {"min_consistency": threshold, "max_candidates": cap}}
    return work, plan


def test_acceptance_is_decided_in_candidate_order(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 24).round(3).tolist()
    passing = [i for i, s in enumerate(scores) if s >= 0.5]
    assert len(passing) >= 4
    for size in (2, 3, 8):  # the kept cases do not depend on how the candidates were cut into blocks
        blocks = {k: scores[k * size:(k + 1) * size] for k in range(len(scores) // size)}
        work, plan = _work_with_scores(tmp_path / str(size), blocks, need=4, threshold=0.5, cap=100, size=size)
        out = decide(work, plan)
        assert (out.state, out.kept, out.tried) == ("done", passing[:4], passing[3] + 1)
    # a block missing in the middle: only the blocks before it count
    blocks = {0: scores[:2], 2: scores[4:6], 3: scores[6:8]}
    work, plan = _work_with_scores(tmp_path / "gap", blocks, need=len(passing), threshold=0.5, cap=100, size=2)
    out = decide(work, plan)
    assert out.state == "more" and out.tried == 2 and out.kept == [i for i in passing if i < 2]


def test_component_rule_alone_and_with_a_threshold(tmp_path):
    from nnaug.synthesis.filtered import passes, refusal

    record = {"scores": [0.9, 0.2, 0.8, 0.95, 0.1, 0.7], "components": [1, 1, 3, 2, 1, 1]}
    assert passes({"max_components": 1}, {"components": record["components"]}) == [True, True, False, False, True, True]
    assert passes({"max_components": 2, "min_consistency": 0.5}, record) == [True, False, False, True, False, True]
    assert passes({"min_consistency": 0.5}, {"scores": record["scores"]}) == [True, False, True, True, False, True]
    work = tmp_path / ".Dataset600_XSynth.partial"
    (work / PROGRESS).mkdir(parents=True)
    for block in range(2):  # a block record of the shape rule alone holds no scores
        part = {"components": record["components"][3 * block:3 * block + 3], "augmentation": {}}
        (work / PROGRESS / f"scores_{block:06d}.json").write_text(json.dumps(part))
        (work / PROGRESS / f"batch_{block:06d}.done").touch()
    plan = {"num_cases": 3, "batch_size": 3, "filter": {"max_components": 1, "max_candidates": 30}}
    out = decide(work, plan)
    assert (out.state, out.kept, out.tried, out.scores) == ("done", [0, 1, 4], 5, {})
    plan["num_cases"], plan["filter"]["max_candidates"] = 6, 6
    out = decide(work, plan)
    assert out.state == "refused"
    message = str(refusal(plan, out))
    assert message.startswith("--max-components 1: 2 of 3 candidates tried passed")  # 6 can no longer be reached and "best score" not in message


def test_most_components_counts_8_connected_regions_per_label():
    from nnaug.mask_realism import most_components

    m = np.zeros((8, 8), np.uint8)
    m[1, 1] = m[2, 2] = 1  # diagonal neighbours: one region
    assert most_components(m, [1]) == 1
    m[6, 6] = 1
    m[0, 5:7] = m[3, 5] = 2
    assert most_components(m, [1]) == 2 and most_components(m, [1, 2]) == 2 and most_components(m, [2]) == 2
    m[5, 0] = 2
    assert most_components(m, [1, 2]) == 3 and most_components(np.zeros((4, 4)), [1, 2]) == 0


def test_hopeless_thresholds_are_refused_before_the_cap(tmp_path):
    low = [0.1] * 8
    work, plan = _work_with_scores(tmp_path / "a", {k: low for k in range(5)}, need=8, threshold=0.9, cap=80, size=8)
    out = decide(work, plan)
    assert out.state == "refused" and out.kept == [] and out.tried < 40  # half the 80 allowed, not all of them
    work, plan = _work_with_scores(tmp_path / "b", {0: low}, need=8, threshold=0.9, cap=80, size=8)
    assert decide(work, plan).state == "more"  # 8 failures alone are not proof yet
    # the cap itself: 9 of 10 allowed tried, 8 needed, 1 kept -> refused whatever the rate
    scores = [1.0] + [0.0] * 8
    work, plan = _work_with_scores(tmp_path / "c", {0: scores}, need=8, threshold=0.5, cap=10, size=9)
    assert decide(work, plan).state == "refused"


def test_filter_options_need_a_threshold(nnunet_env, run_cli):
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "1", "--max-candidates", "5"), "--min-consistency")
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "1", "--filter-model", nnunet_env["results"]),
                          "--min-consistency")
    for bad in ("0", "1.5", "-0.2", "nan"):
        assert_one_line_error(run_cli("synthesize", "999", "--ratio", "1", "--min-consistency", bad), "--min-consistency")
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "1", "--max-components", "0"), "--max-components")


# ----------------------------------------------------------------------------- slow: one generator and one real-only nnU-Net
@pytest.fixture(scope="module")
def filtering(tmp_path_factory):
    """Example dataset 999 (8 cases), a tiny JDM, a real-only nnU-Net (fold 0), and an unfiltered set 600
    (24 cases, batch size 8) with the report's mask consistency of every case."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    from nnaug.mask_consistency import mask_consistency
    from nnaug.nnunet_pretraining import trainers_path

    root = tmp_path_factory.mktemp("filtering")
    with pytest.MonkeyPatch.context() as mp:
        env = nnunet_folders_in(root, mp)
        mp.setenv("nnUNet_def_n_proc", "1")
        mp.setenv("OMP_NUM_THREADS", "1")  # the subprocesses below: the same threads, the same sums, the same bytes
        assert _cli("example-dataset", "-d", "999", "--num-cases", "8").returncode == 0
        assert _cli("train-generator", "999", "--model", "jdm", *TINY_GEN).returncode == 0
        extract_fingerprints([999], num_processes=1, verbose=False, show_progress_bar=False)
        plan_experiments([999])
        preprocess([999], configurations=["2d"], num_processes=[1], show_progress_bar=False)
        mp.setenv("nnUNet_extTrainer", trainers_path())
        mp.setenv("nnUNet_n_proc_DA", "0")  # only after planning (the planner sets torch's threads from it)
        train = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), "999", "2d", "0", "-tr", REAL_ONLY,
                                "-device", "cpu"], capture_output=True, text=True, timeout=1800)
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
        model = env["results"] / "Dataset999_nnaugExample" / f"{REAL_ONLY}__nnUNetPlans__2d"
        assert _cli("synthesize", "999", "--ratio", "3", "--steps", "5", "--output-id", "600").returncode == 0
        unfiltered = env["raw"] / "Dataset600_nnaugExampleSynth"
        scores = mask_consistency(unfiltered, model, folds=(0,))["per_case"]
        yield SimpleNamespace(env=env, model=model, unfiltered=unfiltered,
                              scores=[scores[f"synth_{i:06d}"] for i in range(24)])


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``nnaug`` in its own process (as a user runs it; a SIGKILL there does not hit pytest)."""
    return subprocess.run([sys.executable, "-m", "nnaug_cli.main", *args], capture_output=True, text=True,
                          timeout=900, **kwargs)


@pytest.mark.slow
def test_filtered_set_keeps_the_first_candidates_at_the_threshold(filtering):
    threshold = float(np.median(filtering.scores))
    passing = [i for i, s in enumerate(filtering.scores) if s >= threshold]
    assert len(passing) >= 8  # the median keeps half of the 24: the first 8 kept are among them
    result = _cli("synthesize", "999", "--ratio", "1", "--steps", "5", "--output-id", "610",
                  "--min-consistency", repr(threshold))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = filtering.env["raw"] / "Dataset610_nnaugExampleSynth"
    provenance = json.loads((folder / "nnaug_provenance.json").read_text())
    kept = passing[:8]
    assert [c["candidate"] for c in provenance["cases"]] == kept
    assert [c["case"] for c in provenance["cases"]] == [f"synth_{j:06d}" for j in range(8)]
    f = provenance["filter"]
    assert (f["min_consistency"], f["model"], f["kept"], f["candidates_tried"]) == (
        threshold, str(filtering.model), 8, kept[-1] + 1)
    assert f["acceptance_rate"] == pytest.approx(8 / (kept[-1] + 1))
    consistency = provenance["consistency"]
    assert sorted(consistency) == [f"synth_{j:06d}" for j in range(8)]
    for j, i in enumerate(kept):  # the recorded score is the report's score of that case, and >= the threshold
        assert consistency[f"synth_{j:06d}"] == pytest.approx(filtering.scores[i], abs=1e-9) and consistency[
            f"synth_{j:06d}"] >= threshold
        for sub, suffix in (("imagesTr", "_0000.png"), ("labelsTr", ".png")):  # candidate i is unfiltered case i
            assert (folder / sub / f"synth_{j:06d}{suffix}").read_bytes() == \
                (filtering.unfiltered / sub / f"synth_{i:06d}{suffix}").read_bytes()
    assert len(list((folder / "imagesTr").iterdir())) == 8 and (folder / "contact_sheet.png").is_file()
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 8
    assert not list(filtering.env["raw"].glob(".*"))  # no partial folder, no candidate left behind


@pytest.mark.slow
def test_max_components_keeps_the_first_candidates_with_few_regions(filtering):
    from PIL import Image

    from nnaug.mask_realism import most_components

    def regions(folder: Path, i: int) -> int:
        return most_components(np.array(Image.open(folder / "labelsTr" / f"synth_{i:06d}.png")), [1, 2])

    counts = [regions(filtering.unfiltered, i) for i in range(24)]
    most = sorted(counts)[8]  # a rule that keeps at least 9 of the 24 and drops some
    assert most < max(counts)
    passing = [i for i, c in enumerate(counts) if c <= most]
    threshold = float(np.median(filtering.scores))
    both = [i for i in passing if filtering.scores[i] >= threshold]
    for output, extra, kept in (("613", [], passing[:8]), ("614", ["--min-consistency", repr(threshold)], both[:3])):
        ratio = "1" if output == "613" else "0.375"  # 3 of 8 with both rules: the first 3 lie among the 24
        assert len(kept) == (8 if output == "613" else 3)
        result = _cli("synthesize", "999", "--ratio", ratio, "--steps", "5", "--output-id", output,
                      "--max-components", str(most), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        folder = filtering.env["raw"] / f"Dataset{output}_nnaugExampleSynth"
        provenance = json.loads((folder / "nnaug_provenance.json").read_text())
        assert [c["candidate"] for c in provenance["cases"]] == kept
        assert [c["components"] for c in provenance["cases"]] == [counts[i] for i in kept]
        assert provenance["filter"]["max_components"] == most and provenance["filter"]["kept"] == len(kept)
        assert provenance["filter"]["candidates_tried"] == kept[-1] + 1
        assert bool(provenance["consistency"]) == bool(extra)  # scores only when consistency was asked for
        for j, i in enumerate(kept):  # candidate i is unfiltered case i, and it has at most `most` regions
            assert regions(folder, j) <= most
            assert (folder / "labelsTr" / f"synth_{j:06d}.png").read_bytes() == \
                (filtering.unfiltered / "labelsTr" / f"synth_{i:06d}.png").read_bytes()


def _sigkill_when(proc, condition, timeout: float = 600) -> None:
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None and time.time() < deadline, "synthesis ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_resume_and_shards_give_identical_bytes(filtering):
    threshold = float(np.median(filtering.scores))
    args = ["synthesize", "999", "--ratio", "1", "--steps", "5", "--batch-size", "2", "--output-id", "611",
            "--min-consistency", repr(threshold)]
    folder = filtering.env["raw"] / "Dataset611_nnaugExampleSynth"
    assert _cli(*args).returncode == 0
    reference = _digest(folder)
    shutil.rmtree(folder)

    work = filtering.env["raw"] / ".Dataset611_nnaugExampleSynth.partial"
    markers = work / PROGRESS
    # killed inside a block (its first kept candidate on disk, the block's scores and done marker maybe not yet),
    # then the resumed run killed again between blocks: the second resume must still make the same bytes
    proc = subprocess.Popen([sys.executable, "-m", "nnaug_cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _sigkill_when(proc, lambda: any((work / "imagesTr").glob(f"{CANDIDATE}*")))
    assert not folder.exists() and (work / PLAN).is_file()
    proc = subprocess.Popen([sys.executable, "-m", "nnaug_cli.main", *args, "--resume"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sigkill_after(proc, markers, 3)
    assert not folder.exists()
    other = _cli(*[a if a != repr(threshold) else repr(threshold / 2) for a in args], "--resume")
    assert other.returncode == 2 and "other settings" in other.stderr  # another threshold is another plan
    assert (markers.parent / PLAN).is_file()  # ... and the refused resume left the work alone
    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _digest(folder) == reference

    shutil.rmtree(folder)
    assert _cli(*args, "--shard", "1/2").returncode == 0  # odd blocks only: the quota is not decided yet
    assert not folder.exists()
    assert _cli(*args, "--shard", "0/2").returncode == 0  # the last shard assembles
    assert _digest(folder) == reference


@pytest.mark.slow
def test_unreachable_threshold_is_refused_and_leaves_nothing(filtering, run_cli):
    assert max(filtering.scores) < 0.999
    result = _cli("synthesize", "999", "--ratio", "1", "--steps", "5", "--output-id", "612", "--min-consistency", "0.999")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnaug: error: --min-consistency 0.999: 0 of "), lines
    assert "best score" in lines[0] and "Traceback" not in result.stderr
    assert not (filtering.env["raw"] / "Dataset612_nnaugExampleSynth").exists()
    assert not list(filtering.env["raw"].glob(".*"))
    missing = filtering.env["results"] / "no_model"
    missing.mkdir()
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "1", "--min-consistency", "0.5", "--filter-model",
                                  missing), "has no fold_*/checkpoint_final.pth")
