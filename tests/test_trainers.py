"""nnaug's nnU-Net trainers: finding the synthetic dataset, schedules, and a real pretrain -> finetune run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nnaug.errors import NnaugError
from nnaug.example import write_example_dataset
from nnaug.provenance import PROVENANCE_FILE
from nnaug.nnunet_pretraining import (
    ENV_VARS,
    PRETRAIN_DONE_MARKER,
    TRAINING_RECORD,
    Schedule,
    check_compatible,
    ensure_pretrained,
    file_lock,
    find_synthetic_dataset,
    schedule_from_env,
    trainers_path,
)

NNAUG_VARS = ["NNAUG_SYNTHETIC", *[v for names in ENV_VARS.values() for v in names]]
TRAINERS = ["nnUNetTrainer_nnaugPretrainFinetune", "nnUNetTrainer_nnaugFinetune", "nnUNetTrainer_nnaugPretrain",
            "nnUNetTrainer_nnaug", "nnUNetTrainer_nnaugPretrainFinetune_5epochs", "nnUNetTrainer_nnaugFinetune_5epochs",
            "nnUNetTrainer_nnaugPretrain_5epochs", "nnUNetTrainer_nnaug_5epochs"]


@pytest.fixture(autouse=True)
def _no_nnaug_vars(monkeypatch):
    for var in NNAUG_VARS:
        monkeypatch.delenv(var, raising=False)


def fake_synthetic(dataset_id: int, source: str, num_cases: int = 2, seed: int = 1, name: str | None = None) -> Path:
    """An ordinary raw dataset with ``synth_*`` cases and an nnaug_provenance.json naming ``source``."""
    folder = write_example_dataset(dataset_id, name or f"{source.split('_', 1)[1]}Synth", num_cases=num_cases,
                                   seed=seed)
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((folder / sub).iterdir()):
            path.rename(path.with_name(path.name.replace("example_", "synth_000")))
    (folder / PROVENANCE_FILE).write_text(json.dumps(
        {"source_dataset": source, "generator": "fake (test)", "num_cases": num_cases}))
    return folder


# ----------------------------------------------------------------------------- fast
def test_trainers_path_and_nnunet_finds_every_trainer(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    folder = trainers_path()
    assert os.path.isabs(folder) and (Path(folder) / "nnaug_trainers.py").is_file()
    monkeypatch.setenv("nnUNet_extTrainer", folder)
    for name in TRAINERS:
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)


def test_schedules_defaults_and_env(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find

    assert find("nnUNetTrainer_nnaugFinetune").nnaug_schedule() == Schedule(150, 1e-2, 250, 50)
    assert find("nnUNetTrainer_nnaug").nnaug_schedule() == Schedule(150, 1e-2, 250, 50)
    assert find("nnUNetTrainer_nnaugPretrain").nnaug_schedule() == Schedule(1000, 1e-2, 250, 50)
    monkeypatch.setenv("NNAUG_FINETUNE_EPOCHS", "100")
    monkeypatch.setenv("NNAUG_FINETUNE_LR", "5e-6")
    monkeypatch.setenv("NNAUG_PRETRAIN_ITERATIONS", "100")
    assert find("nnUNetTrainer_nnaugPretrainFinetune").nnaug_schedule() == Schedule(100, 5e-6, 250, 50)
    assert find("nnUNetTrainer_nnaug").nnaug_schedule() == Schedule(100, 5e-6, 250, 50)  # baseline stays fair
    assert find("nnUNetTrainer_nnaugPretrain").nnaug_schedule() == Schedule(1000, 1e-2, 100, 50)
    short = find("nnUNetTrainer_nnaugPretrainFinetune_5epochs")
    assert short.nnaug_schedule().num_epochs == 5  # the short variants keep their fixed schedule
    assert short.nnaug_pretrain_trainer.nnaug_schedule() == find("nnUNetTrainer_nnaug_5epochs").nnaug_schedule()
    for bad in ("0", "-3", "ten", "2.5"):
        monkeypatch.setenv("NNAUG_PRETRAIN_EPOCHS", bad)
        with pytest.raises(NnaugError, match="NNAUG_PRETRAIN_EPOCHS must be a positive integer"):
            schedule_from_env("pretrain", Schedule(1, 1.0))


def test_find_synthetic_dataset(nnunet_env, monkeypatch):
    real = write_example_dataset(501, "Kvasir", num_cases=2)
    with pytest.raises(NnaugError, match="no synthetic dataset for Dataset501_Kvasir.*NNAUG_SYNTHETIC"):
        find_synthetic_dataset(real.name)
    write_example_dataset(502, "Other", num_cases=2)  # no provenance: never picked
    fake_synthetic(503, "Dataset777_Elsewhere", name="ElsewhereSynth")  # made from another dataset
    older = fake_synthetic(601, real.name)
    newer = fake_synthetic(602, real.name, name="KvasirSynthB")
    os.utime(older / PROVENANCE_FILE, (time.time() - 100, time.time() - 100))
    assert find_synthetic_dataset(real.name) == newer  # the latest made from this dataset
    os.utime(newer / PROVENANCE_FILE, (time.time() - 200, time.time() - 200))
    assert find_synthetic_dataset(real.name) == older
    for value in ("602", "Dataset602_KvasirSynthB"):
        monkeypatch.setenv("NNAUG_SYNTHETIC", value)
        assert find_synthetic_dataset(real.name) == newer
    monkeypatch.setenv("NNAUG_SYNTHETIC", "502")  # explicit choice wins even without provenance
    assert find_synthetic_dataset(real.name).name == "Dataset502_Other"
    monkeypatch.setenv("NNAUG_SYNTHETIC", "699")
    with pytest.raises(NnaugError, match="no dataset with ID 699"):
        find_synthetic_dataset(real.name)
    monkeypatch.setenv("NNAUG_SYNTHETIC", "501")
    with pytest.raises(NnaugError, match="is the real dataset itself"):
        find_synthetic_dataset(real.name)


def test_incompatible_synthetic_dataset_is_refused():
    real = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1}, "file_ending": ".png"}
    check_compatible(real, dict(real), "Dataset501_Kvasir", "Dataset601_KvasirSynth")
    with pytest.raises(NnaugError, match="labels"):
        check_compatible(real, {**real, "labels": {"background": 0, "a": 1, "b": 2}}, "Dataset501_Kvasir", "Dataset601_X")


def test_file_lock_makes_the_second_process_wait(tmp_path, capsys):
    lock = tmp_path / "x.lock"
    order = []

    def other():
        with file_lock(lock, "waiting"):
            order.append("other")

    printed = ""
    with file_lock(lock, "unused"):
        thread = threading.Thread(target=other)
        thread.start()
        deadline = time.time() + 30
        while "waiting" not in printed:  # handshake: the other thread has found the lock taken
            assert time.time() < deadline and thread.is_alive()
            printed += capsys.readouterr().out
            time.sleep(0.01)
        order.append("first")
    thread.join(30)
    assert order == ["first", "other"]


# ----------------------------------------------------------------------------- slow: a real run
@pytest.mark.slow
def test_pretrain_finetune_run_report_reuse_resume_and_predict(nnunet_env, monkeypatch, tmp_path, run_cli,
                                                               random_weights):
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    real = write_example_dataset(998, "Real", num_cases=12, seed=0)
    synthetic = fake_synthetic(999, real.name, num_cases=16, seed=1)
    synth_ids = [f"synth_{i:06d}" for i in range(16)]
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    extract_fingerprints([998], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([998])
    preprocess([998], configurations=["2d"], num_processes=[1], show_progress_bar=False)

    # nnUNetv2_train as the user runs it; nnUNet_n_proc_DA=0: no augmentation workers on a 2-core machine
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = "nnUNetTrainer_nnaugPretrainFinetune_5epochs"
    train = Path(sys.executable).parent / "nnUNetv2_train"
    proc = subprocess.run([str(train), "998", "2d", "0", "-tr", trainer, "-device", "cpu"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = nnunet_env["results"]
    cache = results / synthetic.name / "nnUNetTrainer_nnaugPretrain_5epochs__nnUNetPlans_nnaugFrom998__2d" / "fold_all"
    final = cache / "checkpoint_final.pth"
    done = json.loads((cache / PRETRAIN_DONE_MARKER).read_text())
    assert final.is_file() and done["identifiers"] == synth_ids and done["synthetic_dataset"] == synthetic.name
    assert json.loads((cache / TRAINING_RECORD).read_text())["train_identifiers"] == synth_ids
    (pretrain_log,) = cache.glob("training_log_*.txt")
    assert "Epoch 4" in pretrain_log.read_text()

    model = results / real.name / f"{trainer}__nnUNetPlans__2d"
    fold0 = model / "fold_0"
    splits = json.loads((nnunet_env["preprocessed"] / real.name / "splits_final.json").read_text())
    record = json.loads((fold0 / TRAINING_RECORD).read_text())
    assert record["train_identifiers"] == sorted(splits[0]["train"])
    assert record["val_identifiers"] == sorted(splits[0]["val"])
    assert record["pretrained_weights"] == str(final)
    assert record["pretraining"]["synthetic_dataset"] == synthetic.name
    (log,) = fold0.glob("training_log_*.txt")
    text = log.read_text()
    assert text.index("phase 1/2") < text.index("phase 2/2") < text.index("Epoch 4") < text.index("Mean Validation Dice")
    dice = json.loads((fold0 / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert 0.0 <= dice <= 1.0
    assert (fold0 / "progress.png").is_file() and (fold0 / "checkpoint_final.pth").is_file()
    assert not list(results.rglob("*.partial")) and not list(results.rglob("checkpoint_latest.pth"))

    # nnaug report reads what nnU-Net wrote: the Dice of summary.json, and FID/KID of the synthetic set
    result = run_cli("report", "998", "--inception-weights", random_weights, "--folds", "0")
    assert result.exit_code == 0, result.output
    summary = json.loads((fold0 / "validation" / "summary.json").read_text())
    report = json.loads((results / "nnaug" / real.name / "report.json").read_text())
    (row,) = report["dice"]
    assert (row["trainer"], row["fold"], row["kind"]) == (trainer, 0, "pretrain→fine-tune")
    assert row["foreground_dice"] == summary["foreground_mean"]["Dice"]
    labels = json.loads((real / "dataset.json").read_text())["labels"]
    assert row["dice"] == {name: summary["mean"][str(value)]["Dice"] for name, value in labels.items() if value}
    assert f"{dice:.4f}" in result.stdout
    (syn,) = report["synthetic"]
    assert syn["dataset"] == synthetic.name and syn["fid"] >= 0 and syn["kid_mean"] == syn["kid_mean"]  # not NaN

    # another fold reuses the cached pretraining (in-process: nnU-Net's own trainer construction)
    from nnunetv2.run.run_training import get_trainer_from_args

    fold1 = get_trainer_from_args("998", "2d", 1, trainer, device=torch.device("cpu"))
    pretrain_class = type(fold1).nnaug_pretrain_trainer
    stamp = final.stat().st_mtime_ns
    assert ensure_pretrained(fold1, pretrain_class)[0] == final
    assert final.stat().st_mtime_ns == stamp and len(list(cache.glob("training_log_*.txt"))) == 1

    # a pretraining killed after epoch 3 continues from its checkpoint_latest (as nnU-Net's --c does)
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 3
    checkpoint["logging"] = {k: v[:3] for k, v in checkpoint["logging"].items()}
    torch.save(checkpoint, cache / "checkpoint_latest.pth")
    final.unlink()
    (cache / PRETRAIN_DONE_MARKER).unlink()
    assert ensure_pretrained(fold1, pretrain_class)[0] == final
    (resumed_log,) = [p for p in cache.glob("training_log_*.txt") if p != pretrain_log]
    resumed = resumed_log.read_text()
    assert "Epoch 3" in resumed and "Epoch 4" in resumed and "Epoch 2" not in resumed
    assert final.is_file() and not (cache / "checkpoint_latest.pth").exists()
    assert torch.load(final, map_location="cpu", weights_only=False)["current_epoch"] == 5
    assert json.loads((cache / PRETRAIN_DONE_MARKER).read_text())["identifiers"] == synth_ids

    # a different pretraining schedule is refused instead of silently reusing these weights
    pretrain_class.nnaug_defaults = Schedule(7, 1e-2, 10, 2)  # (a class object of this lookup only)
    with pytest.raises(NnaugError, match="different schedule"):
        ensure_pretrained(fold1, pretrain_class)

    # inference finds the trainer by name, as nnUNetv2_predict -tr does
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    out = tmp_path / "pred"
    out.mkdir()  # predict_from_files_sequential does not create it
    predictor.predict_from_files_sequential([[str(real / "imagesTr" / "example_000_0000.png")],
                                             [str(synthetic / "imagesTr" / "synth_000000_0000.png")]], str(out))
    assert (out / "example_000.png").is_file()

    # mask consistency = Dice of that same prediction against the synthetic mask, for every synthetic case
    import numpy as np
    from PIL import Image

    from nnaug.metrics import mask_consistency

    consistency = mask_consistency(synthetic, model, folds=(0,))
    assert sorted(consistency["per_case"]) == synth_ids
    predicted = np.asarray(Image.open(out / "synth_000000.png"))
    mask = np.asarray(Image.open(synthetic / "labelsTr" / "synth_000000.png"))
    dices = [2 * ((predicted == v) & (mask == v)).sum() / ((predicted == v).sum() + (mask == v).sum())
             for v in (1, 2) if (predicted == v).any() or (mask == v).any()]
    assert consistency["per_case"]["synth_000000"] == pytest.approx(float(np.mean(dices)) if dices else 1.0, abs=1e-6)
