"""nnaug synthesize: counts, nnU-Net integrity, provenance, resume after SIGKILL, shards, --mix."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, sigkill_after

from nnaug.dataset import load_raw_dataset

TINY_GEN = ["--preset", "tiny", "--resolution", "16", "--channels", "32,32", "--attention-resolutions", "8",
            "--steps", "4", "--cpu"]

pytestmark = pytest.mark.slow  # every test here trains a generator (or converts Kvasir) first


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def example_with_generator(nnunet_env, run_cli):
    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    result = run_cli("train-generator", "999", "--model", "jdm", *TINY_GEN)
    assert result.exit_code == 0, result.output
    return nnunet_env


def _verify(folder: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)


def test_joint_synthesis_writes_a_valid_dataset(example_with_generator, run_cli):
    env = example_with_generator
    source = env["raw"] / "Dataset999_nnaugExample"
    before = _digest(source)
    result = run_cli("synthesize", "999", "--ratio", "2.0", "--steps", 5, "--output-id", 600)
    assert result.exit_code == 0, result.output
    folder = env["raw"] / "Dataset600_nnaugExampleSynth"
    _verify(folder)
    raw = load_raw_dataset(600)
    assert len(raw.cases) == round(2.0 * 8) and raw.cases[0].identifier == "synth_000000"
    assert raw.labels == load_raw_dataset(999).labels
    for case in raw.cases:
        image, label, _ = raw.read_case(case)  # raises if a label value is not in `labels`
        assert image.shape == (3, 64, 64)  # written at the source's median size
    provenance = json.loads((folder / "nnaug_provenance.json").read_text())
    assert provenance["mode"] == "joint" and provenance["num_cases"] == 16 and provenance["seed"] == 0
    assert (provenance["sampler"], provenance["steps"]) == ("unipc", 5)  # the JDM's default sampler
    assert len({c["seed"] for c in provenance["cases"]}) == 16 and len(provenance["checkpoint_sha256"]) == 64
    assert (folder / "contact_sheet.png").is_file()
    assert _digest(source) == before  # the source dataset is read-only to nnaug
    assert not list(env["raw"].glob(".*"))  # no partial folder left
    # same again refuses; bad ratio and incompatible generators get one line
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "2.0", "--output-id", 600), "already exists")
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "0"), "--ratio must be a number > 0")
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "-1"), "--ratio must be a number > 0")


def test_generator_from_another_dataset_is_refused(example_with_generator, run_cli, tmp_path):
    env = example_with_generator
    folder = env["raw"] / "Dataset998_Binary"
    shutil.copytree(env["raw"] / "Dataset999_nnaugExample", folder)
    ds = json.loads((folder / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "blob": 1, "other": 2, "third": 3}
    (folder / "dataset.json").write_text(json.dumps(ds))
    generator = env["results"] / "nnaug" / "Dataset999_nnaugExample" / "generators" / "jdm_tiny"
    assert_one_line_error(run_cli("synthesize", "998", "--ratio", "1", "--generator", generator), "trained on labels")


def test_mask_conditioned_augmented_and_mix_splits(example_with_generator, run_cli):
    env = example_with_generator
    result = run_cli("synthesize", "999", "--ratio", "1.5", "--mode", "mask-conditioned", "--masks", "augmented",
                     "--steps", 4, "--mix", "--output-id", 601)
    assert result.exit_code == 0, result.output
    folder = env["raw"] / "Dataset601_nnaugExampleSynthMix"
    _verify(folder)
    provenance = json.loads((folder / "nnaug_provenance.json").read_text())
    real_ids = [c.identifier for c in load_raw_dataset(999).cases]
    assert all(c["mask_from"] in real_ids and "augmentation" in c for c in provenance["cases"])
    raw = load_raw_dataset(601)
    assert len(raw.cases) == 8 + 12
    synthetic = {c["case"] for c in provenance["cases"]}
    for case in raw.cases:
        _, label, _ = raw.read_case(case)
        if case.identifier in synthetic:
            assert label.max() > 0  # augmented masks keep their foreground inside the frame
    splits = json.loads((env["preprocessed"] / folder.name / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(i for s in splits for i in s["val"]) == sorted(real_ids)  # every real case validated once
    for split in splits:
        assert not synthetic & set(split["val"])
        assert synthetic <= set(split["train"])


def test_sigkill_resume_and_shards_give_identical_bytes(example_with_generator, run_cli, tmp_path):
    env = example_with_generator
    args = ["synthesize", "999", "--ratio", "3.0", "--steps", "25", "--batch-size", "2", "--output-id", "602",
            "--sampler", "ddpm"]
    folder = env["raw"] / "Dataset602_nnaugExampleSynth"
    assert run_cli(*args).exit_code == 0
    reference = _digest(folder)
    shutil.rmtree(folder)

    cmd = [sys.executable, "-m", "nnaug_cli.main", *args]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = env["raw"] / ".Dataset602_nnaugExampleSynth.partial" / ".nnaug_batches"
    sigkill_after(proc, markers, 3)
    assert not folder.exists()
    done_before = len(list(markers.glob("*.done")))
    assert done_before < 12
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _digest(folder) == reference

    shutil.rmtree(folder)
    assert run_cli(*args, "--shard", "1/2").exit_code == 0  # half the batches: nothing assembled yet
    assert not folder.exists()
    assert run_cli(*args, "--shard", "0/2").exit_code == 0  # the last shard assembles
    assert _digest(folder) == reference


def test_kvasir_mask_conditioned_augmented(shared_data, nnunet_env, run_cli):
    assert run_cli("convert", shared_data / "kvasir-seg-80", "-d", 501, "--name", "Kvasir").exit_code == 0
    assert run_cli("train-generator", "501", "--model", "jdm", *TINY_GEN).exit_code == 0
    result = run_cli("synthesize", "501", "--ratio", "0.1", "--mode", "mask-conditioned", "--masks", "augmented",
                     "--steps", 3, "--output-id", 603)
    assert result.exit_code == 0, result.output
    folder = nnunet_env["raw"] / "Dataset603_KvasirSynth"
    _verify(folder)
    raw = load_raw_dataset(603)
    assert len(raw.cases) == 8
    for case in raw.cases:
        image, label, _ = raw.read_case(case)
        assert image.shape == (3, 256, 256) and set(np.unique(label)) <= {0, 1}
