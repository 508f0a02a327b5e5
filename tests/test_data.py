"""The data layer and the convert / check / example-dataset commands, on real and built data."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error

from nnaug.dataset import PairDataset, check_dataset, load_raw_dataset, write_case


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _verify_with_nnunet(folder: Path) -> None:
    """nnU-Net's own integrity check (what --verify_dataset_integrity runs); raises on any problem."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)


@pytest.mark.parametrize("folder_name,name,labels", [
    ("kvasir-seg-80", "Kvasir", "background,polyp"),
    ("monuseg-train-30", "MoNuSeg", "background,nucleus"),
])
@pytest.mark.slow
def test_convert_real_folders_pass_nnunet_integrity_check(shared_data, nnunet_env, run_cli, folder_name, name, labels):
    source = shared_data / folder_name
    before = _tree_digest(source)
    result = run_cli("convert", source, "--dataset-id", 501, "--name", name, "--labels", labels)
    assert result.exit_code == 0, result.output
    target = nnunet_env["raw"] / f"Dataset501_{name}"
    _verify_with_nnunet(target)
    ds = json.loads((target / "dataset.json").read_text())
    assert ds["labels"] == dict(zip(labels.split(","), [0, 1]))
    assert ds["numTraining"] == len(list((source / "images").iterdir()))
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    raw = load_raw_dataset(501)
    summary = check_dataset(raw)
    assert 0 < summary.label_pixels[1] < summary.label_pixels[0] + summary.label_pixels[1]
    # converting again without --overwrite refuses, and changes nothing
    digest = _tree_digest(target)
    again = run_cli("convert", source, "--dataset-id", 501, "--name", name)
    assert_one_line_error(again, "already exists", "--overwrite")
    assert _tree_digest(target) == digest
    assert _tree_digest(source) == before  # the source is only read
    assert not list(nnunet_env["raw"].glob(".*partial"))


def test_convert_overwrite_replaces(shared_data, nnunet_env, run_cli, tmp_path):
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    for p in sorted((shared_data / "kvasir-seg-80" / "images").iterdir())[:4]:
        shutil.copy(p, source / "images" / p.name)
        shutil.copy(shared_data / "kvasir-seg-80" / "masks" / p.name, source / "masks" / p.name)
    assert run_cli("convert", source, "-d", 7, "--name", "Small").exit_code == 0
    (source / "images" / sorted(p.name for p in (source / "images").iterdir())[0]).unlink()
    (source / "masks" / sorted(p.name for p in (source / "masks").iterdir())[0]).unlink()
    result = run_cli("convert", source, "-d", 7, "--name", "Small", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((nnunet_env["raw"] / "Dataset007_Small" / "dataset.json").read_text())["numTraining"] == 3


@pytest.mark.slow
def test_convert_multiclass_grayscale_masks(nnunet_env, run_cli, tmp_path):
    from skimage import io

    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        io.imsave(source / "images" / f"c{i}.tif", rng.integers(0, 255, (20, 24), dtype=np.uint8), check_contrast=False)
        mask = np.zeros((20, 24), np.uint8)
        mask[2:8, 2:8] = 100
        mask[10:15, 10:20] = 200
        io.imsave(source / "masks" / f"c{i}.png", mask, check_contrast=False)
    assert run_cli("convert", source, "-d", 8, "--name", "Gray").exit_code == 0
    target = nnunet_env["raw"] / "Dataset008_Gray"
    _verify_with_nnunet(target)
    raw = load_raw_dataset(8)
    assert raw.channel_names == ["gray"] and raw.label_values == [0, 1, 2]
    _, label, _ = raw.read_case(raw.cases[0])
    assert set(np.unique(label)) == {0, 1, 2}


@pytest.mark.slow
def test_example_dataset_and_check(nnunet_env, run_cli):
    result = run_cli("example-dataset", "--dataset-id", 999)
    assert result.exit_code == 0, result.output
    target = nnunet_env["raw"] / "Dataset999_nnaugExample"
    _verify_with_nnunet(target)
    digest = _tree_digest(target)
    check = run_cli("check", "999")
    assert check.exit_code == 0, check.output
    assert "cases      24" in check.stdout and "round" in check.stdout and "lobed" in check.stdout
    # same seed -> same bytes
    assert run_cli("example-dataset", "--dataset-id", 999, "--overwrite").exit_code == 0
    assert _tree_digest(target) == digest
    assert_one_line_error(run_cli("example-dataset", "--dataset-id", 999), "already exists")


def test_pair_dataset_ranges_and_labels(nnunet_env, run_cli):
    run_cli("example-dataset", "-d", 999, "--num-cases", 5)
    raw = load_raw_dataset("Dataset999_nnaugExample")
    pairs = PairDataset(raw, resolution=32, progress=False)
    image, label = pairs[0]
    assert image.shape == (3, 32, 32) and label.shape == (32, 32)
    assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.05
    assert set(label.unique().tolist()) <= {0, 1, 2} and label.dtype.is_floating_point is False
    original, original_label, _ = raw.read_case(raw.cases[0])
    assert abs(float(image.mean()) - float((original / 127.5 - 1).mean())) < 0.05


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def small_dataset(nnunet_env, run_cli) -> Path:
    assert run_cli("example-dataset", "-d", 990, "--name", "Bad", "--num-cases", 3).exit_code == 0
    return nnunet_env["raw"] / "Dataset990_Bad"


def _edit_json(folder: Path, **changes):
    path = folder / "dataset.json"
    content = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            content.pop(k)
        else:
            content[k] = v
    path.write_text(json.dumps(content))


def test_error_nnunet_raw_unset(monkeypatch, run_cli):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert_one_line_error(run_cli("check", "501"), "nnUNet_raw is not set")


def test_error_dataset_not_found(nnunet_env, run_cli):
    assert_one_line_error(run_cli("check", "123"), "no dataset with ID 123")
    assert_one_line_error(run_cli("check", "Dataset123_Nope"), "Dataset123_Nope not found")


def test_error_dataset_json_missing(small_dataset, run_cli):
    (small_dataset / "dataset.json").unlink()
    assert_one_line_error(run_cli("check", "990"), "dataset.json is missing")


def test_error_dataset_json_not_json(small_dataset, run_cli):
    (small_dataset / "dataset.json").write_text("{ not json")
    assert_one_line_error(run_cli("check", "990"), "not valid JSON")


@pytest.mark.parametrize("key", ["channel_names", "labels", "file_ending"])
def test_error_dataset_json_missing_key(small_dataset, run_cli, key):
    _edit_json(small_dataset, **{key: None})
    assert_one_line_error(run_cli("check", "990"), f"lacks {key}")


def test_error_num_training_mismatch(small_dataset, run_cli):
    _edit_json(small_dataset, numTraining=5)
    assert_one_line_error(run_cli("check", "990"), "numTraining=5", "3 cases")


def test_error_label_values_not_in_labels(small_dataset, run_cli):
    _edit_json(small_dataset, labels={"background": 0, "round": 1})
    assert_one_line_error(run_cli("check", "990"), "not in dataset.json labels", "2")


def test_error_shape_mismatch(small_dataset, run_cli):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    NaturalImage2DIO().write_seg(np.zeros((1, 32, 40), np.uint8), str(small_dataset / "labelsTr" / "example_001.png"), {})
    assert_one_line_error(run_cli("check", "990"), "example_001", "same size")


def test_error_unreadable_image(small_dataset, run_cli):
    (small_dataset / "imagesTr" / "example_002_0000.png").write_bytes(b"this is not a png")
    assert_one_line_error(run_cli("check", "990"), "cannot read image", "example_002_0000.png")


def test_error_3d_volume(nnunet_env, run_cli):
    import SimpleITK as sitk

    folder = nnunet_env["raw"] / "Dataset991_Vol"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 16, 16).astype(np.float32)), str(folder / "imagesTr" / "v_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16), np.uint8)), str(folder / "labelsTr" / "v.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1},
                                                     "numTraining": 1, "file_ending": ".nii.gz"}))
    assert_one_line_error(run_cli("check", "991"), "3D volume", "2D datasets only")


def test_2d_nifti_dataset_is_accepted(nnunet_env, run_cli):
    import SimpleITK as sitk

    folder = nnunet_env["raw"] / "Dataset992_Nii"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(16, 16).astype(np.float32) * 1000), str(folder / "imagesTr" / f"v{i}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray((np.random.rand(16, 16) > 0.5).astype(np.uint8)), str(folder / "labelsTr" / f"v{i}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1},
                                                     "numTraining": 2, "file_ending": ".nii.gz"}))
    result = run_cli("check", "992")
    assert result.exit_code == 0, result.output
    raw = load_raw_dataset(992)
    assert raw.intensity_mode == "percentile"
    image, label = PairDataset(raw, 16, progress=False)[0]  # no resize: the percentile clip reaches ±1
    assert float(image.min()) == -1.0 and float(image.max()) == 1.0
    # writing a case in the same layout round-trips through nnU-Net's reader
    img, lab, props = raw.read_case(raw.cases[0])
    out = folder.parent / "out"
    write_case(out, "w", img, lab, ".nii.gz", raw.channels_per_file, raw.reader_writer, props)
    back, _ = raw.reader_writer().read_images([str(out / "imagesTr" / "w_0000.nii.gz")])
    np.testing.assert_allclose(back[:, 0], img, rtol=1e-6)


def test_error_empty_dataset(small_dataset, run_cli):
    for p in (small_dataset / "imagesTr").iterdir():
        p.unlink()
    assert_one_line_error(run_cli("check", "990"), "no training cases")


def test_error_unpaired_stems(tmp_path, nnunet_env, run_cli):
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    from skimage import io

    for stem in ("a", "b", "c"):
        io.imsave(source / "images" / f"{stem}.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    for stem in ("a", "x"):
        io.imsave(source / "masks" / f"{stem}.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    line = assert_one_line_error(run_cli("convert", source, "-d", 5, "--name", "Pairs"), "do not pair up")
    assert "b, c" in line and "x" in line
    assert not (nnunet_env["raw"] / "Dataset005_Pairs").exists()


def test_error_convert_mismatched_shapes_leaves_nothing(tmp_path, nnunet_env, run_cli):
    from skimage import io

    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    io.imsave(source / "images" / "a.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    mask = np.zeros((9, 8), np.uint8)
    mask[2:5, 2:5] = 255
    io.imsave(source / "masks" / "a.png", mask, check_contrast=False)
    assert_one_line_error(run_cli("convert", source, "-d", 6, "--name", "Shapes"), "must match")
    assert list(nnunet_env["raw"].iterdir()) == []


def test_next_free_id_skips_the_ids_unfinished_outputs_hold(nnunet_env):
    from nnaug.nnunet_paths import next_free_dataset_id, raw_target
    from nnaug.errors import NnaugError

    raw = nnunet_env["raw"]
    (raw / "Dataset510_A").mkdir()
    assert next_free_dataset_id() == 511
    (raw / ".Dataset511_B.partial").mkdir()  # another nnaug synthesize writing: its ID is taken
    assert next_free_dataset_id() == 512
    (raw / ".Dataset530_Hidden").mkdir()  # a hidden folder that is not nnaug's work folder takes nothing
    assert next_free_dataset_id() == 512
    with pytest.raises(NnaugError, match="ID 510 is already used by Dataset510_A: choose another --output-id"):
        raw_target(510, "Other", "--output-id")
    assert raw_target(510, "A", "--dataset-id") == raw / "Dataset510_A"


def test_listing_a_dataset_matches_nnunet_and_starts_no_process(nnunet_env, monkeypatch):
    """load_raw_dataset lists cases as nnU-Net does, without the process pool nnU-Net's lister starts."""
    import multiprocessing.pool

    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnaug.example import write_example_dataset

    folder = write_example_dataset(999, num_cases=5)
    (folder / "imagesTr" / "notes.txt").write_text("not a case")  # another ending: neither lister takes it
    expected = get_filenames_of_train_images_and_targets(str(folder), json.loads((folder / "dataset.json").read_text()))

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", no_pool)
    cases = load_raw_dataset(999).cases
    assert {c.identifier: {"images": c.image_files, "label": c.label_file} for c in cases} == expected
    assert len(cases) == 5
