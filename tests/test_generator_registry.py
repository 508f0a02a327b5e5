"""The generator registry: a third generator, registered in one place, runs through the CLI like the built-ins."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error

from nnaug.generators import GeneratorSpec, SampleableGenerator, TrainableGenerator, generator_names, get_spec
from nnaug.generators.registry import register, unregister


@pytest.fixture
def toy():
    from toy_generator import SPEC

    register(SPEC)
    yield SPEC
    unregister(SPEC.name)


def test_the_built_in_generators_are_registered():
    assert {"jdm", "siamese"} <= set(generator_names())
    jdm, siamese = get_spec("jdm"), get_spec("siamese")
    assert jdm.supports_joint and not siamese.supports_joint
    assert set(jdm.presets) == set(siamese.presets) == {"tiny", "small", "paper"}
    assert jdm.resolve_sampling(None, None, None) == ("joint", "unipc", 10)
    assert siamese.resolve_sampling(None, None, 10) == ("mask-conditioned", "ddim", 10)
    # a trained folder's own default: UniPC 10 in pixel space, the published DDIM 50 on SD 1.5
    assert siamese.resolve_sampling(None, None, None, {"settings": {"backbone": "pixel"}})[1:] == ("unipc", 10)
    assert siamese.resolve_sampling(None, None, None, {"settings": {"backbone": "sd15"}})[1:] == ("ddim", 50)


@pytest.mark.slow
def test_a_registered_third_generator_trains_and_synthesizes_through_the_cli(nnunet_env, run_cli, toy, tmp_path):
    from diffusers import ModelMixin

    from nnaug.dataset import load_raw_dataset
    from nnaug.generators import load_generator

    assert isinstance(toy, GeneratorSpec)
    assert run_cli("example-dataset", "--num-cases", 8).exit_code == 0
    out = tmp_path / "toy"
    trained = run_cli("train-generator", "999", "--model", "toy", "--preset", "tiny", "--cpu", "--output", out)
    assert trained.exit_code == 0, trained.output
    info = json.loads((out / "nnaug.json").read_text())
    assert info["model"] == "toy" and info["steps_trained"] == 40
    history = json.loads((out / "training_log.json").read_text())
    assert history[-1][1] < 0.5 * history[0][1]  # it learnt the colours
    assert (out / "samples" / "step_0000040.png").is_file()

    generator = load_generator(out)
    assert isinstance(generator, SampleableGenerator) and isinstance(generator.net, ModelMixin)
    assert isinstance(toy.build(toy.presets["tiny"], None, 3, 2), TrainableGenerator)

    # joint sampling is refused (the spec says it cannot sample masks); the default is mask-conditioned
    assert_one_line_error(run_cli("synthesize", "999", "--ratio", "0.5", "--generator", out, "--mode", "joint"),
                          "toy generator cannot sample masks")
    made = run_cli("synthesize", "999", "--ratio", "0.5", "--generator", out, "--output-id", 990)
    assert made.exit_code == 0, made.output
    synthetic = load_raw_dataset("990")
    assert len(synthetic.cases) == 4
    provenance = json.loads((synthetic.folder / "nnaug_provenance.json").read_text())
    assert provenance["mode"] == "mask-conditioned" and provenance["generator_model"] == "toy"
    image, label, _ = synthetic.read_case(synthetic.cases[0])
    assert set(np.unique(label)) <= {0, 1, 2} and image.std() > 0  # painted masks, not a blank


def test_an_unknown_generator_is_one_line(nnunet_env, run_cli, toy):
    assert run_cli("example-dataset", "--num-cases", 4).exit_code == 0
    assert_one_line_error(run_cli("train-generator", "999", "--model", "nope"), "--model", "jdm, siamese", "toy")
    assert_one_line_error(run_cli("train-generator", "999", "--model", "toy", "--preset", "paper"),
                          "unknown preset 'paper' for toy", "tiny")


def test_a_jdm_folder_alone_rebuilds_the_generator(tmp_path):
    """diffusers' idiom: ``from_pretrained(folder)`` needs nothing else; it meets the SampleableGenerator protocol."""
    import torch
    from test_bad_inputs import _generator_folder

    from nnaug.errors import NnaugError
    from nnaug.generators.jdm.sampling import JDMGenerator

    generator = JDMGenerator.from_pretrained(_generator_folder(tmp_path))
    assert isinstance(generator, SampleableGenerator) and generator.resolution == 16
    images, labels = generator.sample([1, 2], sampler="ddim", steps=2)
    assert images.shape == (2, 3, 16, 16) and labels.shape == (2, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(NnaugError, match="no conditioning to guide"):
        generator.sample([1], sampler="ddim", steps=2, guidance_scale=7.5)
