"""FRD through frd-score on real Kvasir images; InceptionV3 weights downloaded on first use; the offline message.

Nothing here touches the network: the first-use download is pointed (``NNAUG_INCEPTION_URL``) at a
file:// URL — the random weights file (a download that works) or a missing file (offline).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from nnaug.errors import NnaugError

SIZE = 64


@pytest.fixture(scope="module")
def kvasir_folder(shared_data, tmp_path_factory):
    """12 Kvasir-SEG pairs, resized to 64x64, as a folder of images/ + masks/ (what `nnaug convert` reads)."""
    from PIL import Image

    src = shared_data / "kvasir-seg-80"
    out = tmp_path_factory.mktemp("kvasir12")
    (out / "images").mkdir()
    (out / "masks").mkdir()
    for path in sorted((src / "images").iterdir())[:12]:
        Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(out / "images" / f"{path.stem}.png")
        mask = np.asarray(Image.open(src / "masks" / path.name).convert("L").resize((SIZE, SIZE), Image.NEAREST))
        Image.fromarray(((mask > 127) * 255).astype(np.uint8)).save(out / "masks" / f"{path.stem}.png")
    return out


def _synthetic_like(real, dataset_id: int, name: str, images, labels, ids) -> Path:
    """A raw dataset of the given pairs with an nnaug provenance naming ``real`` as its source."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    from nnaug.dataset import write_case, write_dataset_json
    from nnaug.nnunet_paths import raw_root

    folder = raw_root() / f"Dataset{dataset_id:03d}_{name}"
    for identifier, image, label in zip(ids, images, labels):
        write_case(folder, identifier, image, label, ".png", [3], NaturalImage2DIO)
    write_dataset_json(folder, real.dataset_json, len(ids), name=folder.name)
    (folder / "nnaug_provenance.json").write_text(json.dumps(
        {"source_dataset": real.name, "generator_model": "test", "ratio": 0.75, "num_cases": len(ids),
         "cases": [{"case": i} for i in ids]}))
    return folder


@pytest.mark.slow  # radiomics features of real Kvasir images
def test_frd_of_copied_real_images_is_finite_and_below_noise(nnunet_env, kvasir_folder):
    """Kvasir as the real dataset; a 'synthetic' set that copies 8 of its cases scores far lower
    (better) than one with the same masks and uniform noise as images — whole image and mask ROI."""
    from nnaug.convert import convert_folder
    from nnaug.dataset import load_raw_dataset
    from nnaug.fidelity import synthetic_fidelity

    real = load_raw_dataset(convert_folder(kvasir_folder, 501, "Kvasir", progress=False))
    cases = real.cases[2:10]
    pairs = [(image.astype(np.uint8), label) for image, label, _ in map(real.read_case, cases)]  # reads float32
    ids = [f"synth_{i:03d}" for i in range(len(cases))]
    copies = _synthetic_like(real, 502, "KvasirCopy", [p[0] for p in pairs], [p[1] for p in pairs], ids)
    rng = np.random.default_rng(0)
    noise_images = [rng.integers(0, 256, p[0].shape).astype(np.uint8) for p in pairs]
    noise = _synthetic_like(real, 503, "KvasirNoise", noise_images, [p[1] for p in pairs], ids)

    near = synthetic_fidelity(real, copies, fid=False)
    far = synthetic_fidelity(real, noise, fid=False)
    for result in (near, far):
        assert (result["n_real"], result["n_synthetic"], result["resolution"]) == (12, 8, [SIZE, SIZE])
        assert set(result["frd_details"]) == {"image", "mask"} and result["fid"] is None
        assert result["fid_note"] == "skipped (--no-fidelity)"
        for roi, value in (("image", result["frd"]), ("mask", result["frd_roi"])):
            assert math.isfinite(value), (roi, result)
            details = result["frd_details"][roi]
            assert details["roi"] == roi and details["n_a"] == 12 and details["n_b"] == 8
            assert details["image_types"] == ["Original", "LoG", "Wavelet"] and details["version"] == "v1"
    assert near["frd"] + 2.0 < far["frd"], (near["frd"], far["frd"])
    assert near["frd_roi"] + 2.0 < far["frd_roi"], (near["frd_roi"], far["frd_roi"])


def test_frd_feature_subset_and_bad_inputs(shared_data):
    """frd-score's feature subset goes through; mismatched or empty masks are one-line errors."""
    from PIL import Image

    from nnaug.frd import frd, parse_list

    paths = sorted((shared_data / "kvasir-seg-80" / "images").iterdir())[:12]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((48, 48))) for p in paths])  # [N, H, W, 3]
    small = frd(images[:6], images[6:], image_types=["Original"], features=["firstorder"])
    assert math.isfinite(small["frd"]) and small["image_types"] == ["Original"] and small["features"] == ["firstorder"]
    assert small["roi"] == "image" and small["n_a"] == small["n_b"] == 6

    with pytest.raises(NnaugError, match="both image sets or for neither"):
        frd(images[:6], images[6:], masks_a=np.ones((6, 48, 48)))
    empty = np.zeros((6, 48, 48), np.uint8)
    with pytest.raises(NnaugError, match="at least 2 images") as info:
        frd(images[:6], images[6:], masks_a=empty, masks_b=empty, image_types=["Original"])
    assert "\n" not in str(info.value) and "6 left out" in str(info.value)
    # a thin ROI (16 x 3 px, as one Kvasir polyp at 64 px) is left out, not the end of the whole set's FRD
    masks = np.zeros((6, 48, 48), np.uint8)
    masks[:, 10:30, 10:30] = 1
    masks[0] = 0
    masks[0, 5:21, 5:8] = 1
    thin = frd(images[:6], images[6:], masks_a=masks, masks_b=masks[::-1], image_types=["Original"],
               features=["firstorder"])
    assert math.isfinite(thin["frd"]) and thin["skipped_a"] == thin["skipped_b"] == 1 and thin["n_a"] == 5
    assert parse_list("original, LOG", "image_types", "--frd-image-types") == ["Original", "LoG"]
    with pytest.raises(NnaugError, match="--frd-features 'texture' is not a PyRadiomics feature class"):
        parse_list("firstorder,texture", "feature_classes", "--frd-features")


@pytest.mark.slow  # InceptionV3 forward passes
def test_inception_weights_are_downloaded_into_the_cache_once(random_weights, tmp_path, monkeypatch, one_torch_thread):
    """As torch-fidelity does on first use: the file lands in torch's hub cache, and is used from there."""
    from nnaug.fidelity import fid_kid, inception_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("NNAUG_INCEPTION_URL", random_weights.as_uri())
    cache = inception_cache_path()
    assert not cache.exists()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
    b = rng.integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
    first = fid_kid(a, b)
    assert cache.is_file() and cache.read_bytes() == random_weights.read_bytes()
    assert first["weights"] == str(cache) and not list(cache.parent.glob(".*partial"))
    monkeypatch.setenv("NNAUG_INCEPTION_URL", (tmp_path / "gone.pth").as_uri())  # a second download would fail
    again = fid_kid(a, b)
    assert again["fid"] == pytest.approx(first["fid"]) and again["weights"] == str(cache)
    assert np.isfinite(first["fid"]) and first["fid"] > 0


@pytest.mark.slow  # InceptionV3 forward passes
def test_report_offline_says_where_the_weights_go_and_goes_on(nnunet_env, run_cli, tmp_path, monkeypatch):
    """Offline without weights: one warning line naming --inception-weights and the cache path, exit 0,
    FRD and memorisation still reported; with --fidelity the same situation is exit 2 and one error line."""
    from nnaug.example import write_example_dataset
    from nnaug.fidelity import inception_cache_path
    from test_metrics_report import _fake_synthetic

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("NNAUG_INCEPTION_URL", (tmp_path / "offline" / "weights.pth").as_uri())
    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=48, seed=0)
    _fake_synthetic(nnunet_env, real, [])
    cache = str(inception_cache_path())

    result = run_cli("report", "997", "--frd-roi", "image", "--frd-image-types", "Original")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("nnaug: warning: FID/KID")]
    assert len(warnings) == 1 and "Inception" not in result.stderr.replace(warnings[0], ""), result.stderr
    assert cache in warnings[0] and "--inception-weights FILE" in warnings[0] and "--fidelity" in warnings[0]
    report = json.loads((nnunet_env["results"] / "nnaug" / real.name / "report.json").read_text())
    (row,) = report["synthetic"]
    assert row["fid"] is None and math.isfinite(row["frd"]) and row["frd_roi"] is None
    assert f"| {row['frd']:.2f} |" in result.stdout and "n/a (no Inception weights" in result.stdout
    assert row["memorisation"]["n_synthetic"] == 6 and "Memorisation of Dataset998" in result.stdout
    assert report["warnings"][0] in warnings[0] and not inception_cache_path().exists()

    error = assert_one_line_error(run_cli("report", "997", "--fidelity"), "--inception-weights", cache)
    assert "--fidelity" in error
