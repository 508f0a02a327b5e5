"""Careless input to every command: one ``nnaug: error:`` line, exit code 2, no traceback, no usage block.

Option values are refused by click types before anything runs; files and folders are checked where they
are read (generator folders in :func:`nnaug.generators.read_info`, images at nnU-Net's reader).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error


@pytest.fixture
def example(nnunet_env, run_cli) -> Path:
    assert run_cli("example-dataset", "--num-cases", 4).exit_code == 0
    return nnunet_env["raw"] / "Dataset999_nnaugExample"


GOOD_INFO = {"model": "jdm", "image_channels": 3, "mask_channels": 2, "channel_names": ["R", "G", "B"],
             "labels": {"background": 0, "round": 1, "lobed": 2}, "label_values": [0, 1, 2],
             "resolution": 16, "intensity_mode": "uint8", "source_dataset": "Dataset999_nnaugExample"}


def _generator_folder(tmp_path: Path, info: dict | str | None = None, weights: bool = True) -> Path:
    """A JDM generator folder with a real (untrained, tiny) diffusers UNet and scheduler, and ``info``."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path / "generator"
    folder.mkdir(parents=True)
    if weights:
        UNet2DModel(sample_size=16, in_channels=5, out_channels=5, block_out_channels=(8, 8), norm_num_groups=4,
                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(folder)
        DDPMScheduler().save_pretrained(folder)
    text = info if isinstance(info, str) else json.dumps(GOOD_INFO if info is None else info)
    (folder / "nnaug.json").write_text(text)
    return folder


def _synthesize(run_cli, generator: Path):
    return run_cli("synthesize", "999", "--ratio", "0.5", "--steps", "1", "--generator", generator)


def test_a_valid_hand_built_generator_folder_loads(example, tmp_path):
    """The control for the cases below: the folder they break is otherwise loadable."""
    from nnaug.generators import load_generator

    generator = load_generator(_generator_folder(tmp_path))
    assert generator.resolution == 16 and generator.image_channels == 3


@pytest.mark.parametrize("break_it,fragments", [
    (lambda info: info.pop("labels"), ["nnaug.json lacks labels", "train the generator again"]),
    (lambda info: [info.pop("model"), info.pop("resolution")], ["lacks model, resolution"]),
    (lambda info: info.update(resolution="16"), ["wrong type for resolution (str, expected int)"]),
    (lambda info: info.update(model="gan"), ["unknown generator model 'gan'"]),
    (lambda info: info.update(intensity_mode="rgb"), ["intensity_mode 'rgb' is not one of uint8, percentile"]),
    (lambda info: info.update(intensity_mode="percentile"), ["needs intensity_low and intensity_high"]),
])
def test_generator_json_with_missing_or_wrong_fields(example, run_cli, tmp_path, break_it, fragments):
    info = dict(GOOD_INFO)
    break_it(info)
    assert_one_line_error(_synthesize(run_cli, _generator_folder(tmp_path, info)), *fragments)


def test_generator_json_corrupt_or_not_an_object(example, run_cli, tmp_path):
    folder = _generator_folder(tmp_path, '{"model": "jdm", ')
    assert_one_line_error(_synthesize(run_cli, folder), "nnaug.json is not valid JSON")
    (folder / "nnaug.json").write_text("[1, 2]")
    assert_one_line_error(_synthesize(run_cli, folder), "must hold a JSON object")


def test_generator_without_weights_or_with_truncated_weights(example, run_cli, tmp_path):
    folder = _generator_folder(tmp_path, weights=False)
    assert_one_line_error(_synthesize(run_cli, folder), "incomplete", "diffusion_pytorch_model.safetensors", "--resume")
    folder = _generator_folder(tmp_path / "b")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(_synthesize(run_cli, folder), "cannot load the generator weights", str(folder))


def test_generator_option_is_not_a_folder(example, run_cli, tmp_path):
    assert_one_line_error(_synthesize(run_cli, tmp_path / "nope"), "--generator", "does not exist")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(_synthesize(run_cli, tmp_path / "file"), "--generator", "is a file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_synthesize(run_cli, tmp_path / "empty"), "no nnaug.json")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def test_truncated_png_first_case_names_the_file_not_the_format(example, run_cli):
    first = sorted((example / "imagesTr").glob("*.png"))[0]
    _truncate(first)
    line = assert_one_line_error(run_cli("check", "999"), "cannot read image", first.name, "replace or remove")
    assert "use PNG" not in line


def test_truncated_png_later_case_and_truncated_label(example, run_cli):
    images = sorted((example / "imagesTr").glob("*.png"))
    _truncate(images[2])
    assert_one_line_error(run_cli("check", "999"), "cannot read image", images[2].name)
    images[2].unlink()
    (example / "labelsTr" / images[2].name.replace("_0000", "")).unlink()
    (example / "dataset.json").write_text(
        json.dumps({**json.loads((example / "dataset.json").read_text()), "numTraining": 3}))
    label = sorted((example / "labelsTr").glob("*.png"))[1]
    _truncate(label)
    assert_one_line_error(run_cli("check", "999"), "cannot read label", label.name)


def test_file_ending_no_reader_knows(example, run_cli):
    (example / "dataset.json").write_text(
        json.dumps({**json.loads((example / "dataset.json").read_text()), "file_ending": ".xyz"}))
    for png in list((example / "imagesTr").glob("*.png")) + list((example / "labelsTr").glob("*.png")):
        png.rename(png.with_suffix(".xyz"))
    assert_one_line_error(run_cli("check", "999"), "no reader for file_ending .xyz")


# Option values: each refused by its click type before any work, with the option's name in the line.
BAD_OPTIONS = [
    (["train-generator", "999", "--channels", "8,abc"], ["--channels", "'abc' is not a whole number"]),
    (["train-generator", "999", "--channels", "8,-8"], ["--channels", "below 1"]),
    (["train-generator", "999", "--attention-resolutions", "16,x"], ["--attention-resolutions"]),
    (["train-generator", "999", "--steps", "0"], ["--steps"]),
    (["train-generator", "999", "--batch-size", "-2"], ["--batch-size"]),
    (["train-generator", "999", "--grad-accum", "0"], ["--grad-accum"]),
    (["train-generator", "999", "--lr", "0"], ["--lr"]),
    (["train-generator", "999", "--lr", "abc"], ["--lr", "'abc' is not a valid float"]),
    (["train-generator", "999", "--resolution", "4"], ["--resolution"]),
    (["train-generator", "999", "--ema-decay", "1.5"], ["--ema-decay"]),
    (["train-generator", "999", "--checkpoint-every", "0"], ["--checkpoint-every"]),
    (["train-generator", "999", "--seed", "-1"], ["--seed"]),
    (["train-generator", "999", "--model", "gan"], ["--model", "'gan'"]),
    (["train-generator", "999", "--snr-gamma", "0"], ["--snr-gamma"]),
    (["train-generator", "999", "--base-model", "/no/such/folder"], ["--base-model", "does not exist"]),
    (["distill-generator", "999", "--student-steps", "0"], ["--student-steps"]),
    (["distill-generator", "999", "--teacher-steps", "0"], ["--teacher-steps"]),
    (["distill-generator", "999", "--mask-share", "1.5"], ["--mask-share"]),
    (["distill-generator", "999", "--generator", "/no/such/folder"], ["--generator", "does not exist"]),
    (["synthesize", "999", "--ratio", "abc"], ["--ratio", "'abc' is not a valid float"]),
    (["synthesize", "999", "--ratio", "inf"], ["--ratio must be a number > 0"]),
    (["synthesize", "999", "--ratio", "1", "--steps", "0"], ["--steps"]),
    (["synthesize", "999", "--ratio", "1", "--batch-size", "0"], ["--batch-size"]),
    (["synthesize", "999", "--ratio", "1", "--shard", "2/2"], ["--shard", "0 <= i < n"]),
    (["synthesize", "999", "--ratio", "1", "--shard", "a/b"], ["--shard", "i/n"]),
    (["synthesize", "999", "--ratio", "1", "--output-id", "1000"], ["--output-id"]),
    (["synthesize", "999", "--ratio", "1", "--sampler", "rk4"], ["--sampler"]),
    (["synthesize", "999", "--ratio", "1", "--aug-shift", "2"], ["--aug-shift"]),
    (["synthesize", "999", "--ratio", "1", "--aug-scale", "0", "1"], ["--aug-scale"]),
    (["synthesize", "999", "--ratio", "1", "--seed", "-3"], ["--seed"]),
    (["example-dataset", "--dataset-id", "0"], ["--dataset-id"]),
    (["example-dataset", "--num-cases", "0"], ["--num-cases"]),
    (["convert", "/no/such/folder", "-d", "5", "--name", "X"], ["SOURCE", "does not exist"]),
    (["convert", ".", "-d", "1000", "--name", "X"], ["--dataset-id"]),
    (["report", "999", "--max-images", "1"], ["--max-images"]),
    (["report", "999", "--inception-weights", "/no/such/file.pth"], ["--inception-weights", "does not exist"]),
    (["demo", "--ratio", "0"], ["--ratio"]),
    (["demo", "--generator-steps", "0"], ["--generator-steps"]),
    (["sweep", "999", "--seeds", "x"], ["--seeds"]),
    (["synthesize", "999"], ["Missing option '--ratio'"]),
    (["check"], ["Missing argument 'DATASET'"]),
    (["train-generator", "999", "--no-such-option"], ["No such option '--no-such-option'", "nnaug train-generator --help"]),
    (["no-such-command"], ["No such command 'no-such-command'"]),
]


@pytest.mark.parametrize("args,fragments", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_values_are_one_line(nnunet_env, run_cli, args, fragments):
    line = assert_one_line_error(run_cli(*args), *fragments)
    if "--ratio must" not in line:  # click's refusals also say where to look
        assert "--help" in line


@pytest.mark.slow
def test_resume_refuses_changed_options_and_names_them(example, run_cli, tmp_path):
    out = tmp_path / "gen"
    tiny = ["train-generator", "999", "--preset", "tiny", "--resolution", "16", "--channels", "16,32",
            "--attention-resolutions", "8", "--batch-size", "2", "--checkpoint-every", "1", "--cpu", "--output", out]
    assert run_cli(*tiny, "--steps", "2").exit_code == 0
    line = assert_one_line_error(run_cli(*tiny, "--steps", "3", "--lr", "1e-3", "--resume"), "--resume", "--lr 0.001",
                                 "run: 0.002")
    assert "--steps" not in line.split("differ:")[1]  # more steps is what --resume is for
    assert_one_line_error(run_cli(*tiny[:7], "32,32", *tiny[8:], "--resume"), "--channels (32, 32)")
    # how fast it trains may change: the fast-path switches leave the maths alone
    resumed = run_cli(*tiny, "--steps", "3", "--channels-last", "--fused-adamw", "--resume")
    assert resumed.exit_code == 0, resumed.output
    info = json.loads((out / "nnaug.json").read_text())
    assert info["steps_trained"] == 3 and info["train_config"]["channels_last"] and info["train_config"]["fused_adamw"]


def test_channels_narrower_than_an_attention_head_are_one_line(example, run_cli, nnunet_env):
    """The UNet would divide by zero heads (a ZeroDivisionError deep in diffusers); refused before any work."""
    line = assert_one_line_error(run_cli("train-generator", "999", "--preset", "small", "--resolution", "32", "--channels",
                                         "32,32", "--attention-resolutions", "16", "--steps", "1", "--cpu"),
                                 "width 32", "attention head (64 channels)")
    assert "--channels" in line
    assert not (nnunet_env["results"] / "nnaug").exists()  # nothing written


def test_flow_objective_is_refused_for_siamese_in_one_line(example, run_cli):
    assert_one_line_error(run_cli("train-generator", "999", "--model", "siamese", "--preset", "tiny", "--objective", "flow",
                                  "--steps", "1", "--cpu"), "--objective flow is a JDM option")


# ----------------------------------------------------------------------------- the newer commands (issue 34)
def _listing(folder: Path) -> list[str]:
    """``ls -a``: hidden work folders (``.Dataset…partial``) count."""
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("model", ["jdm", "siamese"])
def test_a_resolution_the_unet_cannot_halve_is_refused_before_anything_is_written(example, run_cli, nnunet_env, model):
    """tiny has 3 UNet levels: 30 px cannot be halved twice (a ValueError inside the JDM's build, after the
    output folder was made)."""
    assert_one_line_error(run_cli("train-generator", "999", "--model", model, "--preset", "tiny", "--resolution", "30",
                                  "--steps", "1", "--cpu"), "--resolution 30", "multiple of 4", "28 or 32")
    assert not (nnunet_env["results"] / "nnaug").exists()  # no generator folder left behind


def _teacher_info(**changes) -> dict:
    settings = {"resolution": 16, "channels": [8, 8], "attention_resolutions": [], "objective": "diffusion",
                "prediction": "epsilon", "learned_variance": False}
    return {**GOOD_INFO, "preset": "tiny", "settings": settings, **changes}


def test_distilling_a_teacher_with_truncated_weights_is_one_line_and_writes_nothing(example, run_cli, tmp_path):
    teacher = _generator_folder(tmp_path, _teacher_info())
    weights = teacher / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(run_cli("distill-generator", "999", "--generator", teacher, "--steps", "1", "--cpu"),
                          "cannot load the generator weights", str(teacher))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("generator_")]  # no student folder (generator_ddim4)
    # a teacher whose nnaug.json lacks its training settings (a KeyError before)
    info = _teacher_info()
    info.pop("settings")
    bare = _generator_folder(tmp_path / "bare", info)
    assert_one_line_error(run_cli("distill-generator", "999", "--generator", bare, "--cpu"), "lacks the teacher's training settings")


def _model_folder(tmp_path: Path, example: Path, plans: bool, checkpoint: bytes = b"not a checkpoint") -> Path:
    """An nnU-Net training output folder with the example's dataset.json and a fold_0 checkpoint file."""
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint)
    (model / "dataset.json").write_text((example / "dataset.json").read_text())
    if plans:
        (model / "plans.json").write_text(json.dumps({"dataset_name": example.name, "plans_name": "nnUNetPlans",
                                                      "configurations": {"2d": {}}}))
    return model


def test_a_filter_model_nnunet_cannot_load_is_one_line_and_leaves_no_partial_folder(example, run_cli, tmp_path, nnunet_env):
    generator = _generator_folder(tmp_path)
    before = _listing(nnunet_env["raw"])

    def filtered(model):
        return run_cli("synthesize", "999", "--ratio", "0.5", "--steps", "1", "--generator", generator,
                       "--min-consistency", "0.5", "--filter-model", model)

    # no plans.json: refused as the folder is checked, before a dataset ID is claimed (a FileNotFoundError before)
    model = _model_folder(tmp_path / "a", example, plans=False)
    assert_one_line_error(filtered(model), "--filter-model", "has no plans.json", "<Trainer>__<Plans>__<Config>")
    assert _listing(nnunet_env["raw"]) == before
    # a checkpoint nnU-Net cannot read: it fails as it loads, after the ID was claimed; the claim is given back
    model = _model_folder(tmp_path / "b", example, plans=True)
    assert_one_line_error(filtered(model), "nnU-Net cannot load the model", str(model))
    assert _listing(nnunet_env["raw"]) == before
    # labels of another dataset
    other = _model_folder(tmp_path / "c", example, plans=True)
    content = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**content, "labels": {"background": 0, "polyp": 1}}))
    assert_one_line_error(filtered(other), "--filter-model", "segments labels")
    assert _listing(nnunet_env["raw"]) == before


def test_a_generator_that_fails_to_load_gives_back_the_dataset_id_it_claimed(example, run_cli, tmp_path, nnunet_env):
    before = _listing(nnunet_env["raw"])
    folder = _generator_folder(tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(_synthesize(run_cli, folder), "cannot load the generator weights")
    assert _listing(nnunet_env["raw"]) == before  # no .Dataset500_nnaugExampleSynth.partial
    # so the next run takes the same ID
    weights.unlink()
    good = _generator_folder(tmp_path / "good")
    result = _synthesize(run_cli, good)
    assert result.exit_code == 0, result.output
    assert _listing(nnunet_env["raw"]) == sorted(before + ["Dataset500_nnaugExampleSynth"])


def test_a_dataset_name_outside_ascii_says_so(nnunet_env, run_cli, tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    assert_one_line_error(run_cli("convert", tmp_path / "src", "-d", "5", "--name", "Kväsir"), "--name 'Kväsir'",
                          "ASCII letters")
    assert_one_line_error(run_cli("convert", tmp_path / "src", "-d", "5", "--name", "K", "--split", "tränung=2,test=rest"),
                          "ASCII letters")
