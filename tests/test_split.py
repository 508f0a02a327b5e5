"""``nnaug convert --split``: deterministic, disjoint training and held-out datasets from one folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error

from nnaug.dataset import load_raw_dataset
from nnaug.split import assign_split, parse_split


def _copy_cases(shared_data: Path, target: Path, count: int) -> Path:
    """The first ``count`` Kvasir-SEG-1000 cases (clean PNG masks) in a folder of their own."""
    kvasir = shared_data / "kvasir-seg-1000"
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for image in sorted((kvasir / "images").iterdir())[:count]:
        shutil.copy(image, target / "images" / image.name)
        mask = kvasir / "masks" / f"{image.stem}.png"
        shutil.copy(mask, target / "masks" / mask.name)
    return target


@pytest.fixture
def kvasir12(shared_data, tmp_path) -> Path:
    return _copy_cases(shared_data, tmp_path / "kvasir12", 12)


def _case_ids(folder: Path) -> set[str]:
    return {p.name[: -len(".png")] for p in (folder / "labelsTr").iterdir()}


@pytest.mark.slow
def test_split_makes_disjoint_datasets_that_nnunet_accepts(kvasir12, nnunet_env, run_cli):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    result = run_cli("convert", kvasir12, "-d", 601, "--name", "K", "--labels", "background,polyp",
                     "--size", 32, "--split", "train=4,val=3,test=rest", "--split-seed", 7)
    assert result.exit_code == 0, result.output
    folders = [nnunet_env["raw"] / n for n in ("Dataset601_KTrain", "Dataset602_KVal", "Dataset603_KTest")]
    cases = [_case_ids(f) for f in folders]
    assert [len(c) for c in cases] == [4, 3, 5]
    assert set.union(*cases) == {p.stem for p in (kvasir12 / "images").iterdir()}  # disjoint and complete
    for folder in folders:
        verify_dataset_integrity(str(folder), num_processes=1)
        raw = load_raw_dataset(folder.name)
        assert raw.labels == {"background": 0, "polyp": 1}
        record = json.loads((folder / "nnaug_split.json").read_text())
        assert record["seed"] == 7 and set(record["cases"]["train"]) == cases[0]
    train = load_raw_dataset("Dataset601_KTrain")
    image, label, _ = train.read_case(train.cases[0])
    assert image.shape[-2:] == (32, 32) and label.shape[-2:] == (32, 32)
    assert set(np.unique(label)) == {0, 1}  # the resized polyp survives as a label, nothing else appears


def test_split_is_deterministic_and_seed_dependent(kvasir12):
    names = [p.stem for p in (kvasir12 / "images").iterdir()]
    parts = parse_split("train=4,test=rest")
    first = assign_split(names, parts, seed=0)
    assert assign_split(list(reversed(names)), parts, seed=0) == first  # listing order does not matter
    assert any(assign_split(names, parts, seed=s)["train"] != first["train"] for s in range(1, 4))


def test_split_rest_in_the_middle_takes_what_fixed_parts_leave():
    split = assign_split([f"c{i:02d}" for i in range(10)], parse_split("a=2,b=rest,c=3"), seed=1)
    assert [len(split[k]) for k in "abc"] == [2, 5, 3]


@pytest.mark.parametrize("split,fragment", [
    ("train=40", "at least two parts"),
    ("train=x,test=rest", "not a positive whole number"),
    ("train=0,test=rest", "not a positive whole number"),
    ("train=2,test=rest,val=rest", "only one part"),
    ("train=2,Train=3", "twice"),
    ("train 4,test=rest", "NAME=SIZE"),
    ("train=10,test=3", "folder has 12"),
    ("train=12,test=rest", "folder has 12"),
])
def test_split_bad_values_are_one_line(kvasir12, nnunet_env, run_cli, split, fragment):
    assert_one_line_error(run_cli("convert", kvasir12, "-d", 601, "--name", "K", "--split", split), fragment)
    assert list(nnunet_env["raw"].iterdir()) == []


def test_split_refuses_an_id_in_use_and_leaves_nothing(kvasir12, nnunet_env, run_cli):
    (nnunet_env["raw"] / "Dataset602_Other").mkdir()
    assert_one_line_error(run_cli("convert", kvasir12, "-d", 601, "--name", "K", "--split", "train=4,test=rest"),
                          "602", "already used")
    assert sorted(p.name for p in nnunet_env["raw"].iterdir()) == ["Dataset602_Other"]
