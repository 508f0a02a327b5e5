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
from conftest import nnunet_folders_in

from nnaug.errors import NnaugError
from nnaug.example import write_example_dataset
from nnaug.io import file_lock
from nnaug.provenance import PROVENANCE_FILE
from nnaug.nnunet_pretraining import (
    ENV_VARS,
    PRETRAIN_DONE_MARKER,
    PROGRESS_FILE,
    TRAINING_RECORD,
    Schedule,
    check_compatible,
    ensure_pretrained,
    find_synthetic_dataset,
    schedule_from_env,
    trainers_path,
)

NNAUG_VARS = ["NNAUG_SYNTHETIC", *[v for names in ENV_VARS.values() for v in names]]
TRAINERS = ["nnUNetTrainer_nnaugPretrainFinetune", "nnUNetTrainer_nnaugFinetune", "nnUNetTrainer_nnaugPretrain",
            "nnUNetTrainer_nnaug", "nnUNetTrainer_nnaugPretrainFinetune_5epochs", "nnUNetTrainer_nnaugFinetune_5epochs",
            "nnUNetTrainer_nnaugPretrain_5epochs", "nnUNetTrainer_nnaug_5epochs", "nnUNetTrainer_nnaugMixed",
            "nnUNetTrainer_nnaugMixed_5epochs"]


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


# ----------------------------------------------------------------------------- slow: one real run, checked by several tests
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """nnUNetv2_train -tr nnUNetTrainer_nnaugPretrainFinetune_5epochs on fold 0, as a user runs it, once for this module:
    a 12-case real dataset, planned and preprocessed, and a 16-case synthetic one naming it as source."""
    from types import SimpleNamespace

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        env = nnunet_folders_in(root, mp)
        for var in NNAUG_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("nnUNet_def_n_proc", "1")
        mp.setenv("nnUNet_extTrainer", trainers_path())
        real = write_example_dataset(998, "Real", num_cases=12, seed=0)
        synthetic = fake_synthetic(999, real.name, num_cases=16, seed=1)
        extract_fingerprints([998], num_processes=1, verbose=False, show_progress_bar=False)
        plan_experiments([998])
        preprocess([998], configurations=["2d"], num_processes=[1], show_progress_bar=False)
        # nnUNet_n_proc_DA=0 (no augmentation workers on a 2-core machine) only now: the planner sets torch's threads from it
        mp.setenv("nnUNet_n_proc_DA", "0")
        trainer = "nnUNetTrainer_nnaugPretrainFinetune_5epochs"
        proc = _nnunet_train("998", "0", "-tr", trainer)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results = env["results"]
        cache = results / synthetic.name / "nnUNetTrainer_nnaugPretrain_5epochs__nnUNetPlans_nnaugFrom998__2d" / "fold_all"
        model = results / real.name / f"{trainer}__nnUNetPlans__2d"
        yield SimpleNamespace(env=env, real=real, synthetic=synthetic, trainer=trainer, cache=cache,
                              final=cache / "checkpoint_final.pth", model=model, fold0=model / "fold_0",
                              synth_ids=[f"synth_{i:06d}" for i in range(16)])


def test_file_lock_without_waiting_says_it_is_taken(tmp_path):
    """A sweep worker asks without waiting and takes the next run when another worker holds this one."""
    lock = tmp_path / "run.lock"
    seen = []

    def other():
        with file_lock(lock, None, wait=False) as held:
            seen.append(held)

    with file_lock(lock, None, wait=False) as held:
        assert held
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(30)
    assert seen == [False]
    with file_lock(lock, None, wait=False) as held:  # free again
        assert held


def _nnunet_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    train = Path(sys.executable).parent / "nnUNetv2_train"
    return subprocess.run([str(train), args[0], "2d", *args[1:], "-device", "cpu"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_pretrain_finetune_records_both_phases(trained):
    done = json.loads((trained.cache / PRETRAIN_DONE_MARKER).read_text())
    assert trained.final.is_file() and done["identifiers"] == trained.synth_ids
    assert done["synthetic_dataset"] == trained.synthetic.name
    assert json.loads((trained.cache / TRAINING_RECORD).read_text())["train_identifiers"] == trained.synth_ids
    (pretrain_log,) = trained.cache.glob("training_log_*.txt")
    assert "Epoch 4" in pretrain_log.read_text()

    splits = json.loads((trained.env["preprocessed"] / trained.real.name / "splits_final.json").read_text())
    record = json.loads((trained.fold0 / TRAINING_RECORD).read_text())
    assert record["train_identifiers"] == sorted(splits[0]["train"])
    assert record["val_identifiers"] == sorted(splits[0]["val"])
    assert record["pretrained_weights"] == str(trained.final)
    assert record["pretraining"]["synthetic_dataset"] == trained.synthetic.name
    assert record["schedule"] == {"num_epochs": 5, "initial_lr": 1e-2, "num_iterations_per_epoch": 10,
                                  "num_val_iterations_per_epoch": 2}
    (log,) = trained.fold0.glob("training_log_*.txt")
    text = log.read_text()
    assert text.index("phase 1/2") < text.index("phase 2/2") < text.index("Epoch 4") < text.index("Mean Validation Dice")
    # the progress files nnaug sweep's ETA reads: one per phase, the last epoch's
    for folder, phase in ((trained.cache, "pretrain"), (trained.fold0, "finetune")):
        progress = json.loads((folder / PROGRESS_FILE).read_text())
        assert progress["phase"] == phase and progress["epochs_done"] == progress["num_epochs"] == 5
        assert progress["iterations_per_epoch"] == 10 and 0 < progress["epoch_seconds"] < 600
    dice = json.loads((trained.fold0 / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert 0.0 <= dice <= 1.0
    assert (trained.fold0 / "progress.png").is_file() and (trained.fold0 / "checkpoint_final.pth").is_file()
    results = trained.env["results"]
    assert not list(results.rglob("*.partial")) and not list(results.rglob("checkpoint_latest.pth"))


@pytest.mark.slow
def test_report_reads_what_nnunet_wrote(trained, run_cli, random_weights):
    """nnaug report: the Dice of summary.json, and FID/KID of the synthetic set."""
    result = run_cli("report", "998", "--inception-weights", random_weights, "--folds", "0")
    assert result.exit_code == 0, result.output
    summary = json.loads((trained.fold0 / "validation" / "summary.json").read_text())
    report = json.loads((trained.env["results"] / "nnaug" / trained.real.name / "report.json").read_text())
    (row,) = report["dice"]
    assert (row["trainer"], row["fold"], row["kind"]) == (trained.trainer, 0, "pretrain→fine-tune")
    assert row["foreground_dice"] == summary["foreground_mean"]["Dice"]
    labels = json.loads((trained.real / "dataset.json").read_text())["labels"]
    assert row["dice"] == {name: summary["mean"][str(value)]["Dice"] for name, value in labels.items() if value}
    assert f"{summary['foreground_mean']['Dice']:.4f}" in result.stdout
    (syn,) = report["synthetic"]
    assert syn["dataset"] == trained.synthetic.name and syn["fid"] >= 0 and syn["kid_mean"] == syn["kid_mean"]  # not NaN


def _fold1(trained):
    """Fold 1 of the same model, made in-process by nnU-Net's own trainer construction."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args("998", "2d", 1, trained.trainer, device=torch.device("cpu"))


@pytest.mark.slow
def test_mixed_trains_on_the_folds_real_cases_and_every_synthetic_case(trained):
    """nnUNetTrainer_nnaugMixed: one training on fold 1's real training cases plus the synthetic set, validated on
    fold 1's real validation cases; the real dataset's preprocessed folder is only read."""
    from nnaug.nnunet_results import find_real_only_model, trainer_kind

    real_pre = trained.env["preprocessed"] / trained.real.name
    before = sorted(p.relative_to(real_pre) for p in real_pre.rglob("*") if "splits_final" not in p.name)
    trainer = "nnUNetTrainer_nnaugMixed_5epochs"
    proc = _nnunet_train("998", "1", "-tr", trainer)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fold = trained.env["results"] / trained.real.name / f"{trainer}__nnUNetPlans__2d" / "fold_1"
    splits = json.loads((real_pre / "splits_final.json").read_text())
    record = json.loads((fold / TRAINING_RECORD).read_text())
    assert record["train_identifiers"] == sorted(splits[1]["train"] + trained.synth_ids)
    assert record["val_identifiers"] == sorted(splits[1]["val"])
    assert record["mixed_with"]["synthetic_dataset"] == trained.synthetic.name
    assert (record["mixed_with"]["num_real"], record["mixed_with"]["num_synthetic"]) == (len(splits[1]["train"]), 16)
    assert "pretrained_weights" not in record and record["schedule"]["num_epochs"] == 5
    (log,) = fold.glob("training_log_*.txt")
    assert f"training on {len(splits[1]['train'])} real cases of fold 1 and 16 synthetic cases" in log.read_text()
    validated = json.loads((fold / "validation" / "summary.json").read_text())["metric_per_case"]
    assert sorted(Path(c["reference_file"]).name.split(".")[0] for c in validated) == sorted(splits[1]["val"])
    assert sorted(p.relative_to(real_pre) for p in real_pre.rglob("*") if "splits_final" not in p.name) == before
    # a model that has seen synthetic cases is never taken for the real-only judge of nnaug report
    assert trainer_kind(trainer) == "real + synthetic"
    found = find_real_only_model(trained.real.name)
    assert found is None or "Mixed" not in found[0].name


@pytest.mark.slow
def test_another_fold_reuses_the_cached_pretraining(trained):
    fold1 = _fold1(trained)
    stamp = trained.final.stat().st_mtime_ns
    assert ensure_pretrained(fold1, type(fold1).nnaug_pretrain_trainer)[0] == trained.final
    assert trained.final.stat().st_mtime_ns == stamp and len(list(trained.cache.glob("training_log_*.txt"))) == 1


@pytest.mark.slow
def test_a_killed_pretraining_continues_and_a_changed_schedule_is_refused(trained):
    import torch

    fold1 = _fold1(trained)
    pretrain_class = type(fold1).nnaug_pretrain_trainer
    # killed after epoch 3: continues from its checkpoint_latest (as nnU-Net's --c does)
    logs_before = set(trained.cache.glob("training_log_*.txt"))
    checkpoint = torch.load(trained.final, map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 3
    checkpoint["logging"] = {k: v[:3] for k, v in checkpoint["logging"].items()}
    torch.save(checkpoint, trained.cache / "checkpoint_latest.pth")
    trained.final.unlink()
    (trained.cache / PRETRAIN_DONE_MARKER).unlink()
    assert ensure_pretrained(fold1, pretrain_class)[0] == trained.final
    (resumed_log,) = set(trained.cache.glob("training_log_*.txt")) - logs_before
    resumed = resumed_log.read_text()
    assert "Epoch 3" in resumed and "Epoch 4" in resumed and "Epoch 2" not in resumed
    assert trained.final.is_file() and not (trained.cache / "checkpoint_latest.pth").exists()
    assert torch.load(trained.final, map_location="cpu", weights_only=False)["current_epoch"] == 5
    assert json.loads((trained.cache / PRETRAIN_DONE_MARKER).read_text())["identifiers"] == trained.synth_ids

    # the same trainer name with another schedule is refused instead of silently reusing these weights
    other = type(pretrain_class.__name__, (pretrain_class,), {"nnaug_defaults": Schedule(7, 1e-2, 10, 2)})
    with pytest.raises(NnaugError, match="different schedule"):
        ensure_pretrained(fold1, other)


@pytest.mark.slow
def test_predict_finds_the_trainer_and_mask_consistency_matches_it(trained, tmp_path):
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from PIL import Image

    from nnaug.mask_consistency import mask_consistency

    # inference finds the trainer by name, as nnUNetv2_predict -tr does
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained.model), use_folds=(0,))
    out = tmp_path / "pred"
    out.mkdir()  # predict_from_files_sequential does not create it
    predictor.predict_from_files_sequential([[str(trained.real / "imagesTr" / "example_000_0000.png")],
                                             [str(trained.synthetic / "imagesTr" / "synth_000000_0000.png")]], str(out))
    assert (out / "example_000.png").is_file()

    # mask consistency = Dice of that same prediction against the synthetic mask, for every synthetic case
    consistency = mask_consistency(trained.synthetic, trained.model, folds=(0,))
    assert sorted(consistency["per_case"]) == trained.synth_ids
    predicted = np.asarray(Image.open(out / "synth_000000.png"))
    mask = np.asarray(Image.open(trained.synthetic / "labelsTr" / "synth_000000.png"))
    dices = [2 * ((predicted == v) & (mask == v)).sum() / ((predicted == v).sum() + (mask == v).sum())
             for v in (1, 2) if (predicted == v).any() or (mask == v).any()]
    assert consistency["per_case"]["synth_000000"] == pytest.approx(float(np.mean(dices)) if dices else 1.0, abs=1e-6)


@pytest.mark.slow
def test_continue_refuses_a_schedule_changed_by_the_variables(trained):
    """--c continues with the recorded schedule: NNAUG_* changed since -> one line, exit 2, nothing trained."""
    short = {"NNAUG_FINETUNE_EPOCHS": "1", "NNAUG_FINETUNE_ITERATIONS": "2"}
    first = _nnunet_train("998", "1", "-tr", "nnUNetTrainer_nnaug", env=short)
    assert first.returncode == 0, first.stderr[-3000:]
    fold1 = trained.env["results"] / trained.real.name / "nnUNetTrainer_nnaug__nnUNetPlans__2d" / "fold_1"
    assert json.loads((fold1 / TRAINING_RECORD).read_text())["schedule"]["num_epochs"] == 1
    stamp = (fold1 / "checkpoint_final.pth").stat().st_mtime_ns

    changed = _nnunet_train("998", "1", "-tr", "nnUNetTrainer_nnaug", "--c", env={**short, "NNAUG_FINETUNE_EPOCHS": "3"})
    assert changed.returncode == 2, changed.stderr[-3000:]
    errors = [line for line in changed.stderr.splitlines() if line.startswith("nnaug: error:")]
    assert len(errors) == 1 and "num_epochs 1 -> 3" in errors[0] and "NNAUG_FINETUNE_EPOCHS" in errors[0]
    assert "Traceback" not in changed.stderr
    assert (fold1 / "checkpoint_final.pth").stat().st_mtime_ns == stamp

    same = _nnunet_train("998", "1", "-tr", "nnUNetTrainer_nnaug", "--c", env=short)  # unchanged: continues (already done)
    assert same.returncode == 0, same.stderr[-3000:]
