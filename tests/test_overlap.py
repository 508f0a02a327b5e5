"""Held-out sets that cannot leak (nnaug.overlap): identical pixels refused, near-duplicates listed, in
``nnaug sweep --test``, ``nnaug convert --split`` and ``nnaug report``'s held-out calibration set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error

from nnaug.overlap import NEAR_THRESHOLD, find_overlap, fingerprints


def _scene(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random RGB picture [3, S, S] in 0..255 (blobs at a few scales, like a photograph, not noise)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    picture = sum(gaussian_filter(rng.normal(size=(3, size, size)), (0, s, s)) * s for s in (2, 4, 8))
    picture = (picture - picture.min()) / np.ptp(picture)
    return np.round(picture * 255).astype(np.uint8)


def test_identical_pixels_are_exact_a_shifted_noisy_copy_is_near_and_other_scenes_are_neither():
    scenes = [_scene(s) for s in range(12)]
    copy = scenes[0].copy()
    shifted = np.roll(scenes[1], 1, axis=2).astype(np.int16) + np.random.default_rng(0).integers(-6, 7, scenes[1].shape)
    flat = np.full_like(scenes[2], 90)
    train = fingerprints([(f"t{i}", s) for i, s in enumerate(scenes)] + [("flat", flat)])
    held = fingerprints([("copy", copy), ("shifted", np.clip(shifted, 0, 255).astype(np.uint8)), ("flat2", flat),
                         *((f"h{i}", _scene(100 + i)) for i in range(12))])
    found = find_overlap(train, held)
    assert found.exact == [("t0", "copy"), ("flat", "flat2")]  # identical pixels, a flat image too
    assert [(a, b) for a, b, _ in found.near] == [("t1", "shifted")]  # the copy is exact, not near as well
    assert found.near[0][2] >= NEAR_THRESHOLD
    # the same pixels in another dtype are another image: the hash is of what the reader decodes
    assert find_overlap(fingerprints([("a", copy)]), fingerprints([("b", copy.astype(np.float32))])).exact == []


def _source(folder: Path, images: dict[str, np.ndarray]) -> Path:
    """A convert source: images/ and masks/ (a square mask per image)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name, image in images.items():
        Image.fromarray(np.moveaxis(image, 0, -1)).save(folder / "images" / f"{name}.png")
        mask = np.zeros(image.shape[1:], np.uint8)
        mask[16:40, 20:44] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{name}.png")
    return folder


def _split_seed_separating(names: list[str], a: str, b: str, parts: str) -> int:
    """A --split-seed that puts ``a`` and ``b`` into different parts."""
    from nnaug.split import assign_split, parse_split

    for seed in range(100):
        assignment = assign_split(names, parse_split(parts), seed)
        if not any(a in cases and b in cases for cases in assignment.values()):
            return seed
    raise AssertionError("no seed separates them")


def test_convert_split_refuses_an_image_in_two_parts_and_lists_near_duplicates(nnunet_env, run_cli, tmp_path):
    images = {f"case{i}": _scene(i) for i in range(8)}
    images["again"] = images["case0"].copy()  # the same picture under another name
    source = _source(tmp_path / "src", images)
    seed = _split_seed_separating(sorted(images), "again", "case0", "train=4,test=rest")
    args = ["convert", source, "-d", "601", "--name", "X", "--split", "train=4,test=rest", "--split-seed", seed]
    line = assert_one_line_error(run_cli(*args), "--split:", "the very pixels", "--allow-overlap")
    assert "again" in line and "case0" in line
    assert sorted(p.name for p in nnunet_env["raw"].iterdir()) == []  # nothing written, no partial folders
    # --allow-overlap: written, said on a warning line, and recorded with the split
    result = run_cli(*args, "--allow-overlap")
    assert result.exit_code == 0, result.output
    assert "nnaug: warning:" in result.output and "the very pixels" in result.output
    record = json.loads((nnunet_env["raw"] / "Dataset601_XTrain" / "nnaug_split.json").read_text())
    assert sorted(record["overlap"]["exact"][0][1::2]) == ["again", "case0"]
    assert record["overlap"]["near_threshold"] == NEAR_THRESHOLD
    assert_one_line_error(run_cli("convert", source, "-d", "605", "--name", "Y", "--allow-overlap"), "only applies with --split")


def _copy_dataset(raw: Path, target: Path, change=None) -> Path:
    """``raw`` under another ID; ``change(pixels)`` alters every image (None: the same files)."""
    from PIL import Image

    shutil.copytree(raw, target)
    content = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**content, "name": target.name}))
    if change is not None:
        for path in (target / "imagesTr").glob("*.png"):
            Image.fromarray(change(np.asarray(Image.open(path)))).save(path)
    return target


def _nudge(pixels: np.ndarray) -> np.ndarray:
    """The same picture one pixel to the right, its brightness changed a little: a near-duplicate frame."""
    return np.clip(np.roll(pixels, 1, axis=1).astype(np.int16) + 3, 0, 255).astype(np.uint8)


@pytest.fixture
def example(nnunet_env, run_cli) -> Path:
    assert run_cli("example-dataset", "--num-cases", 6).exit_code == 0
    return nnunet_env["raw"] / "Dataset999_nnaugExample"


def test_sweep_refuses_a_test_set_that_holds_the_training_cases(example, nnunet_env, run_cli):
    _copy_dataset(example, nnunet_env["raw"] / "Dataset997_Copy")
    sweep = ["sweep", "999", "--test", "997", "--arms", "real-only", "--budget", "tiny", "--seeds", "1", "--print-commands"]
    line = assert_one_line_error(run_cli(*sweep), "--test Dataset997_Copy is not held out", "6 case(s)", "--allow-overlap")
    assert "example_000 = example_000" in line
    assert not list(nnunet_env["preprocessed"].iterdir())  # refused before planning anything
    assert_one_line_error(run_cli("sweep", "999", "--allow-overlap"), "--allow-overlap only applies with --test")


@pytest.mark.slow
def test_sweep_lists_near_duplicates_and_goes_on_and_allow_overlap_lets_a_copy_through(example, nnunet_env, run_cli):
    _copy_dataset(example, nnunet_env["raw"] / "Dataset996_Nudged", change=_nudge)
    _copy_dataset(example, nnunet_env["raw"] / "Dataset997_Copy")
    sweep = ["sweep", "999", "--arms", "real-only", "--budget", "tiny", "--seeds", "1", "--print-commands"]
    result = run_cli(*sweep, "--test", "996")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "near-duplicate" in line]
    assert len(warning) == 1 and warning[0].startswith("nnaug sweep: warning: 6 near-duplicate pair(s)"), warning
    assert "nnUNetv2_train" in result.stdout
    allowed = run_cli(*sweep, "--test", "997", "--allow-overlap")
    assert allowed.exit_code == 0, allowed.output
    assert "the very pixels" in allowed.output
    plan = json.loads(next(nnunet_env["results"].rglob("plan.json")).read_text())
    assert plan["request"]["allow_overlap"] is True  # the sweep records it as its input


def test_report_warns_when_its_held_out_calibration_set_overlaps_the_training_set(example, nnunet_env, run_cli, tmp_path):
    from test_bad_inputs import _generator_folder

    generator = _generator_folder(tmp_path)
    assert run_cli("synthesize", "999", "--ratio", "0.5", "--steps", "1", "--generator", generator).exit_code == 0
    _copy_dataset(example, nnunet_env["raw"] / "Dataset997_Copy")
    latest = nnunet_env["results"] / "nnaug" / example.name  # where the latest sweep's copies lie
    latest.mkdir(parents=True, exist_ok=True)
    (latest / "sweep.md").write_text("# sweep\n")
    (latest / "sweep.json").write_text(json.dumps({"evaluation": {"test_dataset": "Dataset997_Copy"}}))
    result = run_cli("report", "999", "--no-fidelity", "--no-frd", "--no-mask-consistency")
    assert result.exit_code == 0, result.output
    report = (latest / "report.md").read_text()
    assert "memorisation's held-out set Dataset997_Copy: 6 case(s) of Dataset997_Copy have the very pixels" in report
