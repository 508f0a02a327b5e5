"""FID/KID with a fixed-seed random InceptionV3, memorisation, and `nnaug report` on a fake results tree (fast).

No test here touches the network: where no weights file is given, ``NNAUG_INCEPTION_URL`` points the
first-use download at a file:// URL (a missing file: "offline"; an existing one: a download).
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error
from nnaug.errors import NnaugError


def _images(n, size, seed):
    from nnaug.example import make_case

    rng = np.random.default_rng(seed)
    return np.stack([make_case(rng, size)[0] for _ in range(n)])  # uint8 [N, 3, H, W]


@pytest.mark.slow  # InceptionV3 forward passes
def test_fid_kid_real_vs_real_below_real_vs_noise(random_weights):
    from nnaug.fidelity import fid_kid

    a, b = _images(10, 32, 1), _images(10, 32, 2)
    noise = np.random.default_rng(3).integers(0, 256, a.shape).astype(np.uint8)
    same = fid_kid(a, b, inception_weights=random_weights)
    far = fid_kid(a, noise, inception_weights=random_weights)
    assert set(same) >= {"fid", "kid_mean", "kid_std", "extractor"}
    assert np.isfinite(same["fid"]) and same["fid"] >= 0
    assert far["fid"] > 10 * max(same["fid"], 0.1), (same, far)
    assert far["kid_mean"] > same["kid_mean"] + 0.01, (same, far)


def offline(monkeypatch, tmp_path):
    """No cached weights, and the first-use download fails at once as it does offline (no network touched)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("NNAUG_INCEPTION_URL", (tmp_path / "offline" / "weights-inception.pth").as_uri())


def test_no_weights_no_cache_is_one_line_error(tmp_path, monkeypatch):
    from nnaug.fidelity import fid_kid, inception_cache_path

    offline(monkeypatch, tmp_path)
    assert str(inception_cache_path()).startswith(str(tmp_path))
    imgs = _images(4, 32, 0)
    with pytest.raises(NnaugError) as info:
        fid_kid(imgs, imgs)
    message = str(info.value)
    assert "\n" not in message and "--inception-weights" in message and str(inception_cache_path()) in message
    assert "download from file://" in message and not inception_cache_path().exists()


def _fake_synthetic(nnunet_env, real, copy_of: list[str]):
    """Dataset998_nnaugExampleSynth: example cases, some of them byte copies of real cases, + provenance."""
    from nnaug.example import write_example_dataset

    synth = write_example_dataset(dataset_id=998, name="nnaugExampleSynth", num_cases=6, size=32, seed=7)
    for i, case in enumerate(copy_of):
        shutil.copy(real / "imagesTr" / f"{case}_0000.png", synth / "imagesTr" / f"example_{i:03d}_0000.png")
        shutil.copy(real / "labelsTr" / f"{case}.png", synth / "labelsTr" / f"example_{i:03d}.png")
    provenance = {"source_dataset": real.name, "generator": "/tmp/gen", "generator_model": "jdm", "ratio": 0.75,
                  "num_cases": 6, "mode": "joint", "sampler": "ddim", "steps": 10,
                  "cases": [{"case": f"example_{i:03d}", "seed": i} for i in range(6)]}
    (synth / "nnaug_provenance.json").write_text(json.dumps(provenance))
    return synth


def test_memorisation_finds_the_copied_case(nnunet_env, tmp_path):
    from nnaug.example import write_example_dataset
    from nnaug.memorisation import memorisation

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=32, seed=0)
    synth = _fake_synthetic(nnunet_env, real, ["example_005"])
    png = tmp_path / "pairs.png"
    rows = memorisation(synth.name, real.name, top=3, out_png=png)
    assert len(rows) == 6
    first = rows[0]
    assert first["case"] == "example_000" and first["nearest_by_image"] == "example_005"
    assert first["nearest_by_mask"] == "example_005" and first["match"] == "as is" and first["flagged"]
    assert first["image_similarity"] == pytest.approx(1.0, abs=1e-6) and first["mask_distance"] == pytest.approx(0.0)
    assert all(r["image_similarity"] < 0.5 for r in rows[1:])
    assert png.is_file() and png.stat().st_size > 0


def _summary(fg: float, per_label: dict[str, float]) -> dict:
    """Shaped like nnU-Net's validation/summary.json (only the keys the report reads, plus some)."""
    return {"foreground_mean": {"Dice": fg, "IoU": fg * 0.8, "FN": 1, "FP": 1, "TN": 1, "TP": 1},
            "mean": {k: {"Dice": v, "IoU": v * 0.8} for k, v in per_label.items()},
            "metric_per_case": []}


def _fake_results(results, dataset: str):
    written = {}
    for trainer, folds in (("nnUNetTrainer_nnaug_5epochs", {0: 0.61, 1: 0.63}),
                           ("nnUNetTrainer_nnaugPretrainFinetune_5epochs", {0: 0.71, 1: 0.69})):
        for fold, fg in folds.items():
            folder = results / dataset / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
            (folder / "validation").mkdir(parents=True)
            per_label = {"1": fg - 0.05, "2": fg + 0.05}
            (folder / "validation" / "summary.json").write_text(json.dumps(_summary(fg, per_label)))
            if "Pretrain" in trainer:
                (folder / "nnaug_training.json").write_text(json.dumps(
                    {"trainer": trainer, "pretraining": {"synthetic_dataset": "Dataset998_nnaugExampleSynth"}}))
            written[(trainer, fold)] = (fg, per_label)
    return written


@pytest.mark.slow  # InceptionV3 forward passes
def test_report_on_fake_results_tree(nnunet_env, run_cli, random_weights, tmp_path, monkeypatch):
    from nnaug.example import write_example_dataset

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=32, seed=0)
    _fake_synthetic(nnunet_env, real, [])
    written = _fake_results(nnunet_env["results"], real.name)
    labels = {v: k for k, v in json.loads((real / "dataset.json").read_text())["labels"].items()}

    result = run_cli("report", "997", "--inception-weights", random_weights, "--folds", "0,1")
    assert result.exit_code == 0, result.output
    assert "Dataset998_nnaugExampleSynth" in result.stdout and "pretrain→fine-tune" in result.stdout
    folder = nnunet_env["results"] / "nnaug" / real.name
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.md").read_text() in result.stdout
    assert (folder / "report.png").stat().st_size > 0
    (syn,) = report["synthetic"]
    assert syn["dataset"] == "Dataset998_nnaugExampleSynth" and syn["ratio"] == 0.75 and syn["generator"] == "jdm"
    assert np.isfinite(syn["fid"]) and syn["fid"] >= 0 and np.isfinite(syn["kid_mean"])
    assert syn["fidelity"]["weights"] == str(random_weights)
    assert np.isfinite(syn["frd"]) and np.isfinite(syn["frd_roi"]) and f"| {syn['frd']:.2f} | {syn['frd_roi']:.2f} |" in result.stdout
    assert syn["memorisation"]["n_synthetic"] == 6 and syn["memorisation"]["threshold"] > 0
    assert (folder / "report.html").stat().st_size > 0 and (folder / f"{syn['dataset']}_memorisation.png").is_file()
    assert syn["mask_consistency_dice"] is None and "no trained real-only model" in syn["mask_consistency_note"]
    assert syn["mask_consistency_ratio"] is None
    assert len(report["dice"]) == 4
    for row in report["dice"]:
        fg, per_label = written[(row["trainer"], row["fold"])]
        assert row["foreground_dice"] == fg
        assert row["dice"] == {labels[int(k)]: v for k, v in per_label.items()}
        assert row["kind"] == ("pretrain→fine-tune" if "Pretrain" in row["trainer"] else "real-only")
        if "Pretrain" in row["trainer"]:
            assert row["pretrained_on"] == "Dataset998_nnaugExampleSynth"
    means = {s["trainer"]: s["foreground_dice"] for s in report["dice_summary"]}
    assert means["nnUNetTrainer_nnaug_5epochs"] == pytest.approx(0.62)
    assert means["nnUNetTrainer_nnaugPretrainFinetune_5epochs"] == pytest.approx(0.70)

    # only fold 1; no weights anywhere -> FID/KID shown as n/a, the Dice still reported; FRD and memorisation off
    offline(monkeypatch, tmp_path)
    result = run_cli("report", real.name, "--folds", "1", "--no-frd", "--no-memorisation")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "report.json").read_text())
    assert {r["fold"] for r in report["dice"]} == {1}
    (syn,) = report["synthetic"]
    assert syn["fid"] is None and "n/a (no Inception weights" in result.stdout
    assert syn["frd"] is None and syn["frd_note"] == "skipped (--no-frd)" and "memorisation" not in syn


def test_report_errors_are_one_line(nnunet_env, run_cli, tmp_path, monkeypatch):
    from nnaug.example import write_example_dataset

    offline(monkeypatch, tmp_path)
    assert_one_line_error(run_cli("report", "Dataset555_Missing"), "Dataset555_Missing")
    write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=4, size=32, seed=0)
    assert_one_line_error(run_cli("report", "997", "--fidelity"), "--inception-weights")
    assert_one_line_error(run_cli("report", "997", "--folds", "a,b"), "--folds")
    assert_one_line_error(run_cli("report", "997", "--frd-image-types", "Original,Sharpen"), "--frd-image-types",
                          "'Sharpen'", "Wavelet")
    assert_one_line_error(run_cli("report", "997", "--frd-features", "colour"), "--frd-features", "'colour'", "glcm")


def test_report_shows_the_latest_sweep(nnunet_env, run_cli, tmp_path, monkeypatch):
    from nnaug.example import write_example_dataset
    from nnaug.visualize import contact_sheet

    offline(monkeypatch, tmp_path)
    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=4, size=32, seed=0)
    args = ("report", "997", "--no-frd", "--no-memorisation")
    assert run_cli(*args).exit_code == 0
    folder = nnunet_env["results"] / "nnaug" / real.name
    assert "No finished sweep of Dataset997_nnaugExample yet" in (folder / "report.md").read_text()

    sweep_md = ("# nnaug sweep: Dataset997_nnaugExample\n\n- Seeds: 0, 1, 2.\n\n## Dice per arm\n\n"
                "| arm | foreground Dice [95 % CI] |\n|---|---|\n| real-only | 0.612 [0.55, 0.67] |\n"
                "| pretrain-r5 | 0.655 [0.60, 0.70] |\n\nThe 95 % CI **includes 0** for: pretrain-r5 vs real-only.\n")
    (folder / "sweep.md").write_text(sweep_md)
    contact_sheet(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 8, 8), np.int64), folder / "sweep.png")
    assert run_cli(*args).exit_code == 0
    md = (folder / "report.md").read_text()
    assert "## Latest sweep" in md and "### Dice per arm" in md and "| pretrain-r5 | 0.655 [0.60, 0.70] |" in md
    assert "![sweep: Dice vs ratio](sweep.png)" in md
    html = (folder / "report.html").read_text()
    assert re.search(r"<td>pretrain-r5</td>\s*<td>0.655 \[0.60, 0.70\]</td>", html) and "<strong>includes 0</strong>" in html
    assert 'alt="sweep: Dice vs ratio" src="data:image/png;base64,' in html
    assert json.loads((folder / "report.json").read_text())["sweep"]["markdown"] == sweep_md


def test_report_headline_folds_and_consistency_filter(nnunet_env, run_cli, tmp_path, monkeypatch):
    """Single runs give a Dice difference marked as such; a --folds without runs says so in one warning line;
    a filtered synthetic set shows its acceptance rate and the histogram of its per-case consistency."""
    from PIL import Image

    from nnaug.example import write_example_dataset

    offline(monkeypatch, tmp_path)
    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=32, seed=0)
    synth = _fake_synthetic(nnunet_env, real, [])
    provenance = json.loads((synth / "nnaug_provenance.json").read_text())
    consistency = {f"example_{i:03d}": 0.55 + 0.08 * i for i in range(6)}
    provenance.update({"filter": {"min_consistency": 0.5, "model": "/x/nnUNetTrainer__nnUNetPlans__2d",
                                  "candidates_tried": 16, "kept": 6, "acceptance_rate": 0.375},
                       "consistency": consistency})
    (synth / "nnaug_provenance.json").write_text(json.dumps(provenance))
    _fake_results(nnunet_env["results"], real.name)
    result = run_cli("report", "997", "--folds", "0,7", "--no-frd", "--no-memorisation")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "fold 7" in line]
    assert len(warnings) == 1 and warnings[0].startswith("nnaug: warning: --folds") and "folds found: 0, 1" in warnings[0]
    folder = nnunet_env["results"] / "nnaug" / real.name
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert "Dice difference pretrain→fine-tune − real-only: 1 run per arm, no interval (run `nnaug sweep` for one): +0.1000" in md
    assert "1 run per arm, no interval" in page and "Dice gain" not in page
    assert "kept 6 of 16 candidates, acceptance rate 37.5 %" in md and "acceptance rate 37.5 %" in page
    assert "median 0.750" in md  # the recorded per-case values (0.55 ... 0.95)
    png = folder / f"{synth.name}_mask_consistency.png"
    assert f"]({png.name})" in md and Image.open(png).size[0] > 300
    assert page.count('alt="per-case mask consistency"') == 1


def test_report_takes_the_sweeps_difference_and_test_set(nnunet_env, run_cli, tmp_path, monkeypatch):
    """With a finished sweep the headline is its paired difference with the CI, and memorisation is calibrated
    on the sweep's held-out test set."""
    from nnaug.example import write_example_dataset

    offline(monkeypatch, tmp_path)
    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=32, seed=0)
    held = write_example_dataset(dataset_id=996, name="nnaugHeld", num_cases=5, size=32, seed=3)
    _fake_synthetic(nnunet_env, real, ["example_005"])
    _fake_results(nnunet_env["results"], real.name)
    folder = nnunet_env["results"] / "nnaug" / real.name
    folder.mkdir(parents=True)
    (folder / "sweep.md").write_text("# nnaug sweep: Dataset997_nnaugExample\n\nsweep tables\n")
    (folder / "sweep.json").write_text(json.dumps({
        "seeds": [0, 1, 2], "evaluation": {"mode": "test", "test_dataset": held.name, "num_cases": 5},
        "differences": [{"arm": "pretrain-r5", "reference": "real-only",
                         "foreground": {"mean": 0.02, "low": -0.01, "high": 0.05}},
                        {"arm": "pretrain-r5", "reference": "real-only-matched",
                         "foreground": {"mean": 0.09, "low": 0.05, "high": 0.12}}]}))
    result = run_cli("report", "997", "--no-frd")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "report.json").read_text())
    mem = report["synthetic"][0]["memorisation"]
    assert mem["calibration"] == f"5 held-out real cases of {held.name} vs the training set"
    assert len(mem["null_similarity"]) == 5 and mem["rows"][0]["case"] == "example_000" and mem["alarm"]
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    line = "Dice difference pretrain-r5 − real-only (latest sweep, 3 seeds, paired 95 % CI): +0.0200 [-0.0100, +0.0500]."
    assert line in md and "+0.0200 [-0.0100, +0.0500]" in page and "no interval" not in md


def test_report_reads_each_file_once_for_all_its_metrics(nnunet_env, monkeypatch):
    """FRD (image and mask ROI), memorisation and the contact sheets all take the same arrays: counted at
    nnU-Net's reader, every image and label file of both sets is read from disk once (the first image of a
    dataset once more, when the dataset is opened and nnU-Net's reader is chosen)."""
    from collections import Counter

    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    import nnaug.dataset
    from nnaug.example import write_example_dataset
    from nnaug.report import build_report

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=32, seed=0)
    _fake_synthetic(nnunet_env, real, [])
    reads = Counter()
    original = NaturalImage2DIO.read_images  # its read_seg reads through read_images too

    def counting(self, files):
        reads.update(files)
        return original(self, files)

    monkeypatch.setattr(NaturalImage2DIO, "read_images", counting)
    monkeypatch.setattr(nnaug.dataset, "READ_CACHE", nnaug.dataset.ReadCache())
    # FRD's cost is the square root of its feature covariance, not the reading: a small feature set keeps it quick
    report = build_report("997", fidelity=False, mask_check=False, progress=False, frd_image_types=["Original"])
    (syn,) = report["synthetic"]
    assert syn["frd"] is not None and syn["memorisation"]["n_synthetic"] == 6  # the metrics did read the images
    assert len(reads) == 2 * (8 + 6)  # every image and label of both sets was read ...
    opened = {f for f in reads if f.endswith("example_000_0000.png")}  # opening a dataset detects its reader
    assert max(n for f, n in reads.items() if f not in opened) == 1, reads.most_common(3)  # ... once
    assert max(reads[f] for f in opened) <= 3
