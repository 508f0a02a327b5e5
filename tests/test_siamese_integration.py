"""Siamese-Diffusion through `nnaug train-generator` and `nnaug synthesize` (CPU-sized)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from test_siamese_sd15 import S as SD_SIZE
from test_siamese_sd15 import sd_folder  # noqa: F401  (module-scoped fixture: a tiny SD 1.5 folder)

EXAMPLE = "Dataset999_nnaugExample"
# 16 px keeps a step well under a second on a shared CPU
TINY = ["--model", "siamese", "--preset", "tiny", "--resolution", "16", "--cpu"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _folder(results: Path, name: str) -> Path:
    return results / "nnaug" / EXAMPLE / "generators" / name


def _batch(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, size, size, generator=g) * 2 - 1, "label": torch.randint(0, 3, (b, size, size), generator=g)}


class ReadRecorder(dict):
    """Settings that remember which keys were read (with [] or .get)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_pixel_presets_hold_every_setting_the_builder_reads():
    """A setting the builder reads with a fallback but no preset defines would be invisible to users and to --resume."""
    from nnaug.generators.siamese.model import build_siamese_model
    from nnaug.generators.siamese.presets import PRESETS

    settings = ReadRecorder({**PRESETS["tiny"], "resolution": 16, "channels": (8, 16)})
    build_siamese_model(settings, None, 3, 2)
    assert {"backbone", "resolution", "channels", "cross_attention_dim", "dhi_channels"} <= settings.read
    for name in ("tiny", "small"):
        assert settings.read - set(PRESETS[name]) == set(), name


def test_no_consistency_trains_l0_only():
    from nnaug.generators.siamese.model import build_siamese_model
    from nnaug.generators.siamese.presets import PRESETS

    settings = {**PRESETS["tiny"], "resolution": 16, "consistency": False}
    model = build_siamese_model(settings, None, 3, 2)
    loss, logs = model(_batch(), 150, 200, torch.Generator().manual_seed(0))  # late step: L3 would be on
    assert set(logs) == {"loss", "L0"} and logs["loss"] == pytest.approx(logs["L0"])
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    on = build_siamese_model({**settings, "consistency": True}, None, 3, 2)
    _, logs = on(_batch(), 150, 200, torch.Generator().manual_seed(0))
    assert {"L0", "L1", "L2", "L3"} <= set(logs)


def test_generator_refuses_joint_sampling_and_wrong_sizes(tmp_path):
    from nnaug.errors import NnaugError
    from nnaug.generators.siamese.sampling import SiameseGenerator
    from nnaug.generators.siamese.model import build_siamese_model
    from nnaug.generators.siamese.presets import PRESETS

    model = build_siamese_model({**PRESETS["tiny"], "resolution": 16}, None, 3, 2)
    model.export(tmp_path)
    gen = SiameseGenerator.from_pretrained(tmp_path, {"image_channels": 3, "mask_channels": 2, "resolution": 16})
    assert gen.supports_joint is False
    with pytest.raises(NnaugError, match="mask-conditioned"):
        gen.sample([0], labels=None)
    with pytest.raises(NnaugError, match="16"):
        gen.sample([0], labels=torch.zeros(1, 8, 8, dtype=torch.long))
    labels = torch.randint(0, 3, (2, 16, 16))
    for sampler in ("ddim", "dpmsolver++", "ddpm", "unipc"):
        images, out = gen.sample([3, 4], labels=labels, sampler=sampler, steps=3)
        assert images.shape == (2, 3, 16, 16) and images.device.type == "cpu" and torch.isfinite(images).all()
        assert images.min() >= -1 and images.max() <= 1 and torch.equal(out, labels)
    a, _ = gen.sample([3, 4], labels=labels, sampler="ddim", steps=3)
    b, _ = gen.sample([5, 4], labels=labels.flip(0).flip(0), sampler="ddim", steps=3)
    assert torch.allclose(a[1], b[1], atol=1e-5)  # a seed's image does not depend on its batch neighbours


@pytest.mark.slow
def test_train_and_synthesize_on_example_dataset(nnunet_env, run_cli):
    import torch.nn.functional as F
    from diffusers import ControlNetModel, UNet2DConditionModel
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from nnaug.dataset import PairDataset, load_raw_dataset

    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    result = run_cli("train-generator", "999", *TINY, "--steps", 30)
    assert result.exit_code == 0, result.output
    folder = _folder(nnunet_env["results"], "siamese_tiny")
    info = json.loads((folder / "nnaug.json").read_text())
    assert info["model"] == "siamese" and info["steps_trained"] == 30 and info["resolution"] == 16
    assert info["settings"]["backbone"] == "pixel" and info["settings"]["consistency"] is True
    assert ControlNetModel.from_pretrained(folder / "controlnet").config.conditioning_channels == 3
    assert UNet2DConditionModel.from_pretrained(folder / "unet").config.in_channels == 3
    history = json.loads((folder / "training_log.json").read_text())
    assert len(history) == 30 and all(len(row) == 3 for row in history)
    assert [row[0] for row in history] == list(range(1, 31))
    assert all(0 < row[1] < 10 for row in history)
    assert list((folder / "samples").glob("*.png")) and (folder / "loss_curve.png").is_file()

    result = run_cli("synthesize", "999", "--ratio", "1.0", "--mode", "mask-conditioned", "--steps", 5)
    assert result.exit_code == 0, result.output
    [synth] = [p for p in nnunet_env["raw"].glob("Dataset*_nnaugExampleSynth") if p.is_dir()]
    provenance = json.loads((synth / "nnaug_provenance.json").read_text())
    cases = provenance["cases"]
    assert len(cases) == 8 and provenance["generator_model"] == "siamese"
    assert (provenance["sampler"], provenance["steps"]) == ("unipc", 5)  # the pixel backbone's default sampler
    source = load_raw_dataset(999)
    real = PairDataset(source, 16, progress=False).labels
    index = {c.identifier: i for i, c in enumerate(source.cases)}
    made = load_raw_dataset(synth.name)
    by_id = {c.identifier: c for c in made.cases}
    for case in cases:
        _, label, _ = made.read_case(by_id[case["case"]])
        label = torch.as_tensor(label).long().squeeze()
        expected = F.interpolate(real[index[case["mask_from"]]][None, None].float(), size=tuple(label.shape),
                                 mode="nearest-exact")[0, 0].long()
        assert torch.equal(label, expected), case
    verify_dataset_integrity(str(synth), num_processes=1)


@pytest.mark.slow
def test_sd15_backbone_through_the_cli(nnunet_env, run_cli, sd_folder):  # noqa: F811
    from nnaug.generators.siamese.backbone import SiameseComponents

    assert run_cli("example-dataset", "-d", 999, "--num-cases", 4).exit_code == 0
    missing = run_cli("train-generator", "999", "--model", "siamese", "--preset", "tiny", "--backbone", "sd15",
                      "--steps", 2, "--cpu")
    assert_one_line_error(missing, "--base-model")

    result = run_cli("train-generator", "999", "--model", "siamese", "--preset", "tiny", "--backbone", "sd15",
                     "--base-model", sd_folder, "--resolution", SD_SIZE, "--batch-size", 2, "--steps", 2, "--cpu")
    assert result.exit_code == 0, result.output
    folder = _folder(nnunet_env["results"], "siamese_tiny")
    info = json.loads((folder / "nnaug.json").read_text())
    assert info["settings"]["backbone"] == "sd15" and info["steps_trained"] == 2
    components = SiameseComponents.from_pretrained(folder)
    assert components.backbone == "sd15" and components.resolution == SD_SIZE

    result = run_cli("synthesize", "999", "--ratio", "0.5", "--steps", 2, "--sampler", "ddim")
    assert result.exit_code == 0, result.output


def test_demo_refuses_an_unknown_model(tmp_path, run_cli):
    result = run_cli("demo", "--model", "nosuch", "--workdir", tmp_path / "demo")
    assert_one_line_error(result, "--model", "jdm, siamese")
    assert not (tmp_path / "demo").exists()
