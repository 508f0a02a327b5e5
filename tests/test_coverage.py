"""Coverage: nnaug.coverage against Naeem et al.'s reference code, and the planted cases (one real image
repeated: low coverage; held-out real images: near the real set's own) in FRD's radiomic feature space,
on Kvasir-SEG and through `nnaug report`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

SIZE = 64


@pytest.mark.parametrize("n, m, d, k", [(30, 40, 8, 5), (50, 20, 100, 3), (25, 60, 460, 5), (12, 12, 2, 1)])
def test_prdc_equals_the_reference_package(n, m, d, k):
    import prdc as reference

    from nnaug.coverage import prdc

    rng = np.random.default_rng(n + m + d)
    real = rng.normal(size=(n, d))
    fake = np.concatenate([rng.normal(0.2, 1.1, size=(m // 2, d)), real[: m - m // 2] + 0.05])  # some near copies
    ours = prdc(real, fake, k)
    theirs = reference.compute_prdc(real, fake, k)
    for metric in ("precision", "recall", "density", "coverage"):
        assert ours[metric] == pytest.approx(float(theirs[metric]), abs=1e-12), metric
    assert any(0 < ours[m] < 1 for m in ("precision", "recall", "coverage")), ours  # not a trivial case


def _kvasir(shared_data):
    from PIL import Image

    paths = sorted((shared_data / "kvasir-seg-80" / "images").iterdir())
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)) for p in paths])


def test_planted_cases_in_radiomics_space(shared_data):
    """40 Kvasir training images; 40 held-out ones score the coverage the real set gives itself; one training
    image repeated 40 times (each of the first five in turn) covers little and is called low."""
    from nnaug.coverage import LOW_COVERAGE, coverage_against_real
    from nnaug.frd import frd

    pixels = _kvasir(shared_data)
    result = frd(pixels[:40], pixels[40:], image_types=["Original"], keep_features=True)
    train, held = result["features_a"], result["features_b"]
    assert train.shape[0] == 40 and held.shape == train.shape and len(result["feature_names"]) == train.shape[1]
    assert np.abs(train.mean(0)).max() < 1e-3  # z-scored with the reference (real training) statistics
    held_out = coverage_against_real(train, held)
    assert abs(held_out["synthetic"]["coverage"] - held_out["real"]["coverage"]) <= 0.1, held_out
    assert not held_out["low"] and held_out["real"]["coverage"] > 0.8
    for i in range(5):
        one = coverage_against_real(train, np.repeat(train[i:i + 1], 40, axis=0))
        assert one["low"] and one["coverage_ratio"] < LOW_COVERAGE, (i, one["synthetic"])
        assert one["synthetic"]["coverage"] < held_out["synthetic"]["coverage"] - 0.3
        assert one["synthetic"]["recall"] == 0.0  # copies of one image make balls of radius 0


def test_report_says_low_coverage_in_words(nnunet_env, run_cli):
    """`nnaug report` with two synthetic sets: unseen cases of the same generator (no warning) and one real
    case repeated (the low-coverage warning, in report.md, report.html and on stderr)."""
    from nnaug.example import write_example_dataset

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=40, size=32, seed=0)
    sets = {}
    for dataset_id, name, seed in ((998, "nnaugExampleHeld", 5), (996, "nnaugExampleOne", 6)):
        synth = write_example_dataset(dataset_id=dataset_id, name=name, num_cases=40, size=32, seed=seed)
        if name.endswith("One"):
            for i in range(40):
                shutil.copy(real / "imagesTr" / "example_003_0000.png", synth / "imagesTr" / f"example_{i:03d}_0000.png")
                shutil.copy(real / "labelsTr" / "example_003.png", synth / "labelsTr" / f"example_{i:03d}.png")
        (synth / "nnaug_provenance.json").write_text(json.dumps({
            "source_dataset": real.name, "generator": "/tmp/gen", "generator_model": "jdm", "ratio": 1.0,
            "num_cases": 40, "mode": "joint", "cases": [{"case": f"example_{i:03d}", "seed": i} for i in range(40)]}))
        sets[name] = synth.name
    result = run_cli("report", "997", "--no-fidelity", "--no-memorisation", "--frd-roi", "image",
                     "--frd-image-types", "Original")
    assert result.exit_code == 0, result.output
    folder = nnunet_env["results"] / "nnaug" / real.name
    report = json.loads((folder / "report.json").read_text())
    rows = {r["dataset"]: r for r in report["synthetic"]}
    held, one = rows[sets["nnaugExampleHeld"]], rows[sets["nnaugExampleOne"]]
    (held_cov,) = [c for c in held["coverage"] if c["space"] == "radiomics"]
    (one_cov,) = [c for c in one["coverage"] if c["space"] == "radiomics"]
    assert not held_cov["low"] and one_cov["low"], (held_cov["synthetic"], one_cov["synthetic"])
    assert [c["note"] for c in one["coverage"] if c["space"] == "inception"] == ["n/a (no Inception weights)"]
    warnings = [line for line in result.stderr.splitlines() if "low coverage" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"nnaug: warning: {one['dataset']}: coverage in radiomics")
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert md.count("**low coverage") == 1 and "no sign of mode collapse" in md
    assert page.count('<p class="alert">coverage in radiomics space') == 1
    # the repeated case's mask: one mask shape every time, so its area spread is nothing like the real one
    area = {r["statistic"]: r for r in one["mask_realism"]["rows"] if r["label"] == 1}["area_fraction"]
    assert area["wasserstein"] > area["real_split_wasserstein"]
    assert (folder / f"{one['dataset']}_mask_realism.png").is_file() and (folder / f"{one['dataset']}_coverage.png").is_file()


def test_the_sweeps_set_numbers(nnunet_env):
    """What the sweep's set table shows (nnaug.report.realism.sweep_realism): components per mask real →
    synthetic and radiomics coverage against the real set's own, from synthetic_fidelity's own features."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.example import write_example_dataset
    from nnaug.fidelity import synthetic_fidelity
    from nnaug.report.realism import sweep_realism

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=40, size=32, seed=0)
    synth = write_example_dataset(dataset_id=996, name="nnaugExampleOne", num_cases=20, size=32, seed=6)
    for i in range(20):  # one real case with two lobed blobs, repeated
        shutil.copy(real / "imagesTr" / "example_003_0000.png", synth / "imagesTr" / f"example_{i:03d}_0000.png")
        shutil.copy(real / "labelsTr" / "example_003.png", synth / "labelsTr" / f"example_{i:03d}.png")
    real, synth = load_raw_dataset(real), load_raw_dataset(synth)
    fidelity = synthetic_fidelity(real, synth, fid=False, frd_roi="image", frd_image_types=["Original"],
                                  keep_features=True)
    numbers = sweep_realism(real.folder, synth.folder, fidelity)  # as the sweep calls it: folders
    assert "radiomics_features" not in fidelity  # taken out: the sweep writes the rest as JSON
    assert numbers["components"][1] == 0.0 and numbers["components"][0] > 0.5  # case 3 has no round blob
    assert numbers["low"] and numbers["coverage"] < 0.5 * numbers["coverage_real"]
    json.dumps(numbers)
