"""Memorisation on real Kvasir-SEG: planted copies (flipped, shifted, re-encoded) are flagged, blurred unseen
real images are not, with a threshold calibrated on held-out cases or by cross-fitting; and on raw datasets."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter


def _model_range(image: Image.Image) -> np.ndarray:
    return np.moveaxis(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1.0, -1, 0)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _shift(image: Image.Image, dy: int, dx: int) -> Image.Image:
    return Image.fromarray(np.roll(np.asarray(image), (dy, dx), (0, 1)))


def _plant(image: Image.Image, kind: int) -> Image.Image:
    """A copy of a training image as a generator might reproduce it: flipped, shifted by a few pixels, re-encoded."""
    if kind == 0:
        return image.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == 1:
        return _shift(image, -2, 3)
    if kind == 2:
        return _jpeg(image, 60)
    return _jpeg(_shift(image.transpose(Image.FLIP_TOP_BOTTOM), 4, -4), 75)


@pytest.fixture(scope="module")
def kvasir_sets(shared_data):
    """Kvasir-SEG (1000 cases, 256 px), shuffled: 300 training, 150 held-out for calibration, 150 unseen;
    a 'synthetic' set of 40 planted copies of training images and 60 blurred unseen images (sigma 2, 3, 4 px)."""
    from nnaug.memorisation import features

    files = sorted((shared_data / "kvasir-seg-1000" / "images").iterdir())
    order = np.random.default_rng(0).permutation(len(files))
    load = [Image.open(files[i]).convert("RGB") for i in order[:600]]
    train, held, unseen = load[:300], load[300:450], load[450:]
    planted = [_plant(image, k % 4) for k, image in enumerate(train[:40])]
    blurred = [image.filter(ImageFilter.GaussianBlur(float(2 + k % 3))) for k, image in enumerate(unseen[:60])]
    as_features = lambda images: features([_model_range(i) for i in images])  # noqa: E731
    return {name: as_features(images) for name, images in
            (("train", train), ("held", held), ("planted", planted), ("blurred", blurred))}


@pytest.mark.slow  # 600 Kvasir images, similarities over 36 flips/shifts
@pytest.mark.parametrize("calibration", ["held-out", "cross-fit"])
def test_planted_copies_are_flagged_and_blurred_real_images_are_not(kvasir_sets, calibration):
    from nnaug.memorisation import calibrate, copy_threshold, similarity

    s = kvasir_sets
    null = calibrate(s["train"], s["held"] if calibration == "held-out" else None)
    assert len(null) == (150 if calibration == "held-out" else 300)
    threshold = copy_threshold(null)
    assert threshold == pytest.approx(np.percentile(null, 95), abs=0.02)
    synthetic = np.concatenate([s["planted"], s["blurred"]])
    best, which = similarity(synthetic, s["train"])
    flagged = best.max(1) > threshold
    planted, blurred = flagged[:40], flagged[40:]
    assert planted.mean() >= 0.9, (threshold, best.max(1)[:40].min())
    assert blurred.mean() <= 0.05, (threshold, np.sort(best.max(1)[40:])[-5:])
    # each planted copy is matched to the training image it was made from
    assert (best[:40].argmax(1) == np.arange(40)).mean() >= 0.9


def test_memorisation_of_raw_datasets_flags_a_flipped_copy(nnunet_env, tmp_path):
    """Example datasets: a synthetic set with one flipped copy of a real case; calibrated by cross-fitting, then
    on a held-out set; the picture of the closest pairs is written."""
    from nnaug.example import write_example_dataset
    from nnaug.memorisation import memorisation_summary

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=20, size=64, seed=0)
    held = write_example_dataset(dataset_id=996, name="nnaugHeld", num_cases=10, size=64, seed=1)
    synth = write_example_dataset(dataset_id=998, name="nnaugExampleSynth", num_cases=6, size=64, seed=7)
    for folder, suffix in (("imagesTr", "_0000.png"), ("labelsTr", ".png")):
        Image.open(real / folder / f"example_005{suffix}").transpose(Image.FLIP_LEFT_RIGHT).save(
            synth / folder / f"example_000{suffix}")
    (synth / "nnaug_provenance.json").write_text(json.dumps(
        {"source_dataset": real.name, "num_cases": 6, "cases": [{"case": f"example_{i:03d}"} for i in range(6)]}))
    png = tmp_path / "pairs.png"
    crossfit = memorisation_summary(synth.name, real.name, top=3, out_png=png)
    first = crossfit["rows"][0]
    assert first["case"] == "example_000" and first["nearest_by_image"] == "example_005"
    assert first["image_similarity"] > 0.99 and first["match"].startswith("h-flip") and first["flagged"]
    assert crossfit["flagged"] == ["example_000"] and crossfit["n_synthetic"] == 6 and crossfit["n_real"] == 20
    assert "cross-fit" in crossfit["calibration"] and len(crossfit["null_similarity"]) == 20
    assert png.is_file() and Image.open(png).size[1] > 3 * 128
    heldout = memorisation_summary(synth.name, real.name, heldout_raw=held.name)
    assert "10 held-out real cases of Dataset996_nnaugHeld" in heldout["calibration"]
    assert len(heldout["null_similarity"]) == 10 and heldout["rows"][0]["flagged"]
    assert heldout["rows"][0]["case"] == "example_000"
    shutil.rmtree(held)


@pytest.mark.slow  # 450 Kvasir images and masks, similarities over 36 flips/shifts
def test_images_made_for_training_masks_are_not_copies_outside_the_masks(shared_data):
    """Mask-conditioned images share their training mask's outline by design. Stand-ins: unseen real images
    with a polyp-coloured blob painted exactly on a training mask. Compared outside the masks (as the report
    does for mask-conditioned sets) they are flagged no more than chance; planted copies, with their masks
    transformed alike, still are."""
    from nnaug.memorisation import calibrate, copy_threshold, features, outside_masks, similarity

    kvasir = shared_data / "kvasir-seg-1000"
    files = sorted((kvasir / "images").iterdir())
    order = np.random.default_rng(1).permutation(len(files))[:450]
    images = [Image.open(files[i]).convert("RGB") for i in order]
    masks = [Image.open(kvasir / "masks" / f"{files[i].stem}.png").convert("L") for i in order]
    train, held, unseen = slice(0, 300), slice(300, 390), slice(390, 450)

    def painted(k: int) -> tuple[Image.Image, Image.Image]:  # unseen image k, training mask k's outline, a polyp colour
        image, mask = np.asarray(images[unseen][k]).copy(), np.asarray(masks[train][k]) > 127
        image[mask] = np.asarray(images[train][k])[mask].mean(0).astype(np.uint8)
        return Image.fromarray(image), masks[train][k]

    def flipped(k: int) -> tuple[Image.Image, Image.Image]:
        return images[train][k].transpose(Image.FLIP_LEFT_RIGHT), masks[train][k].transpose(Image.FLIP_LEFT_RIGHT)

    def feats(pairs) -> np.ndarray:
        return outside_masks(features([_model_range(i) for i, _ in pairs]), [np.asarray(m) for _, m in pairs])

    f_train = feats(list(zip(images[train], masks[train])))
    null = calibrate(f_train, feats(list(zip(images[held], masks[held]))))
    threshold = copy_threshold(null)
    outline = similarity(feats([painted(k) for k in range(60)]), f_train)[0].max(1)
    copies = similarity(feats([flipped(k) for k in range(30)]), f_train)[0].max(1)
    assert (outline > threshold).mean() <= 0.1, (threshold, np.sort(outline)[-5:])
    assert (copies > threshold).mean() >= 0.9, (threshold, np.sort(copies)[:5])


def test_mask_conditioned_sets_are_compared_outside_their_masks(nnunet_env):
    """The Siamese demo's false alarm, rebuilt: other example images with a blob of the right colour painted on
    each training mask (what a mask-conditioned generator is asked to draw). The whole-image measure flags most;
    a set whose provenance says mask-conditioned is compared outside the masks: no warning, and a flipped copy
    (with its flipped mask) among them is still flagged."""
    from nnaug.dataset import load_raw_dataset
    from nnaug.example import write_example_dataset
    from nnaug.memorisation import memorisation_summary

    real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=24, size=64, seed=0)
    synth = write_example_dataset(dataset_id=998, name="nnaugExampleSynth", num_cases=24, size=64, seed=7)
    raw = load_raw_dataset(real.name)
    for k, case in enumerate(raw.cases):  # synthetic case k: its own background, training case k's mask and colours
        image = np.asarray(Image.open(synth / "imagesTr" / f"example_{k:03d}_0000.png").convert("RGB")).copy()
        real_rgb = np.asarray(Image.open(real / "imagesTr" / f"{case.identifier}_0000.png").convert("RGB"))
        label = np.asarray(Image.open(real / "labelsTr" / f"{case.identifier}.png"))
        for value in (1, 2):
            image[label == value] = real_rgb[label == value].mean(0).astype(np.uint8) if (label == value).any() else 0
        Image.fromarray(image).save(synth / "imagesTr" / f"example_{k:03d}_0000.png")
        Image.fromarray(label).save(synth / "labelsTr" / f"example_{k:03d}.png")
    for folder, suffix in (("imagesTr", "_0000.png"), ("labelsTr", ".png")):  # case 23: a flipped copy of case 5
        Image.open(real / folder / f"example_005{suffix}").transpose(Image.FLIP_LEFT_RIGHT).save(
            synth / folder / f"example_023{suffix}")
    provenance = {"source_dataset": real.name, "num_cases": 24, "cases": [{"case": f"example_{i:03d}"} for i in range(24)]}
    (synth / "nnaug_provenance.json").write_text(json.dumps({**provenance, "mode": "joint"}))
    whole = memorisation_summary(synth.name, real.name)
    assert whole["n_flagged"] >= 12 and whole["alarm"]  # the outline alone looks like copying
    (synth / "nnaug_provenance.json").write_text(json.dumps({**provenance, "mode": "mask-conditioned"}))
    outside = memorisation_summary(synth.name, real.name)
    assert "outside the masks" in outside["image_metric"]
    assert outside["flagged"][:1] == ["example_023"] and outside["n_flagged"] <= 3, outside["flagged"]
    assert outside["rows"][0]["nearest_by_image"] == "example_005"
