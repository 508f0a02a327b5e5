"""`nnaug report` with a real-only nnU-Net that nnU-Net itself trained: mask consistency and its ratio
to that model's own validation Dice (slow: trains 5 short epochs)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_metrics_report import _fake_synthetic


@pytest.mark.slow
def test_report_mask_consistency_ratio_with_a_trained_real_only_model(nnunet_env, monkeypatch, run_cli, tmp_path):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    from nnaug.example import write_example_dataset
    from nnaug.nnunet_pretraining import trainers_path

    for var in ("NNAUG_SYNTHETIC", "NNAUG_FINETUNE_EPOCHS", "NNAUG_FINETUNE_ITERATIONS"):
        monkeypatch.delenv(var, raising=False)
    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=12, seed=0)
    synthetic = _fake_synthetic(nnunet_env, real, ["example_003"])
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    extract_fingerprints([997], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([997])
    preprocess([997], configurations=["2d"], num_processes=[1], show_progress_bar=False)
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = "nnUNetTrainer_nnaug_5epochs"
    proc = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), "997", "2d", "0", "-tr", trainer,
                           "-device", "cpu"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = nnunet_env["results"] / real.name / f"{trainer}__nnUNetPlans__2d"
    validation = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # offline: no weights, no download
    monkeypatch.setenv("NNAUG_INCEPTION_URL", (tmp_path / "offline.pth").as_uri())
    result = run_cli("report", "997", "--frd-roi", "image", "--frd-image-types", "Original")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# nnaug report: ")  # no nnU-Net chatter in the printed tables
    report = json.loads((nnunet_env["results"] / "nnaug" / real.name / "report.json").read_text())
    assert report["mask_consistency_model"]["folder"] == str(model)
    assert report["mask_consistency_model"]["validation_dice"] == pytest.approx(validation)
    (row,) = report["synthetic"]
    assert row["dataset"] == synthetic.name and sorted(row["mask_consistency"]["per_case"]) == [
        f"example_{i:03d}" for i in range(6)]
    mc = row["mask_consistency_dice"]
    assert 0.0 <= mc <= 1.0 and math.isfinite(row["frd"])
    if validation > 0:
        assert row["mask_consistency_ratio"] == pytest.approx(mc / validation)
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {synthetic.name}"))
        assert f"| {mc:.4f} | {row['mask_consistency_ratio']:.2f} |" in line
    else:  # a model that never found the foreground has no Dice to divide by
        assert row["mask_consistency_ratio"] is None
    assert f"its own validation foreground Dice is {validation:.4f}" in result.stdout
    html = (nnunet_env["results"] / "nnaug" / real.name / "report.html").read_text()
    assert f"{mc:.4f}" in html and "MC ÷ real-only" in html
