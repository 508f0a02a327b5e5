"""The JDM's flow-matching objective (--objective flow): oracle tests for the loss and both samplers,
the mask channels on their straight path, and training + synthesis through the CLI on the example."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, mask_and_its_noise

from nnaug.generators.jdm import flow
from nnaug.parameterisation import flow_interpolate, flow_velocity
from nnaug.generators.jdm.sampling import JDMGenerator, sample
from nnaug.masks import encode_labels
from nnaug.samplers import make_scheduler, network_evaluations

CONFIG = dict(flow.SCHEDULER_CONFIG)


class FlowOracle(torch.nn.Module):
    """The exact velocity field for data that is a single point x*: u(x, s) = (x - x*) / s."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.calls = target, []
        self.config = SimpleNamespace(sample_size=target.shape[-1])
        self.device = torch.device("cpu")

    def forward(self, x, t):
        s = float(t) / 1000.0
        self.calls.append(float(t))
        return SimpleNamespace(sample=(x - self.target) / s)


def _point(size=16):
    torch.manual_seed(0)
    image = torch.rand(1, 3, size, size) * 1.6 - 0.8
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[:, 4:10, 3:12] = 1
    return torch.cat([image, encode_labels(labels, 1)], 1)


def test_flow_loss_is_zero_for_the_true_velocity_and_the_path_is_straight():
    torch.manual_seed(1)
    x0, noise = torch.rand(4, 4, 8, 8) * 2 - 1, torch.randn(4, 4, 8, 8)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow_interpolate(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[3], noise[3])
    assert flow.training_loss(noise - x0, x0, noise).abs().max() == 0
    off = flow.training_loss(noise - x0 + 0.5, x0, noise)
    torch.testing.assert_close(off, torch.full((4,), 0.25))
    # the velocity is the derivative of the path: a finite difference along t reproduces it
    torch.testing.assert_close((flow_interpolate(x0, noise, torch.tensor(0.6)) - flow_interpolate(x0, noise, torch.tensor(0.4))) / 0.2,
                               flow_velocity(x0, noise), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("distribution", flow.T_DISTRIBUTIONS)
def test_t_distributions_stay_inside_the_unit_interval(distribution):
    t = flow.sample_t(20000, distribution, torch.Generator().manual_seed(0), "cpu")
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.mean()) - 0.5) < 0.01
    # logit-normal puts less mass near the ends than uniform does
    tails = float(((t < 0.1) | (t > 0.9)).float().mean())
    assert (tails < 0.12) if distribution == "logit-normal" else (0.18 < tails < 0.22)


@pytest.mark.parametrize("sampler,steps", [("euler", 1), ("euler", 4), ("heun", 2), ("heun", 8)])
def test_flow_samplers_recover_a_point_mass(sampler, steps):
    target = _point()
    oracle = FlowOracle(target)
    x = sample(oracle, make_scheduler(sampler, CONFIG), [1, 2], steps, 3, 1)
    assert (x - target).abs().max() < 1e-4, (sampler, steps)
    assert len(oracle.calls) == network_evaluations(sampler, steps)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_n_flow_steps_are_n_equal_intervals_of_t(sampler):
    """n steps are n equal intervals of t from 1 to 0 (diffusers' own spacing visits 1, ..., 0.001, 0: its
    last step moved nothing, and on Kvasir 2 Euler steps gave the 1-step images)."""
    for steps in (1, 2, 4):
        scheduler = make_scheduler(sampler, CONFIG)
        scheduler.set_timesteps(steps)
        visited = sorted(set(scheduler.sigmas.tolist()), reverse=True)
        torch.testing.assert_close(torch.tensor(visited), torch.linspace(1, 0, steps + 1))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_flow_mask_channels_stay_exactly_on_their_straight_path(sampler):
    size, seeds = 16, [4, 9]
    target = _point(size)  # the oracle believes in another mask than the given one
    m, z = mask_and_its_noise(size, seeds)
    errors = []

    def check(t_next, x):
        s = 0.0 if t_next < 0 else t_next / 1000.0
        errors.append(float((x[:, 3:] - ((1 - s) * m + s * z)).abs().max()))

    scheduler = make_scheduler(sampler, CONFIG)
    sample(FlowOracle(target), scheduler, seeds, 6, 3, 1, known_mask=m, on_step=check)
    assert len(errors) == len(scheduler.timesteps) and max(errors) < 1e-5, errors


def test_a_flow_generator_refuses_diffusion_samplers_and_back():
    from nnaug.errors import NnaugError
    from nnaug.generators.jdm.presets import SCHEDULER_CONFIG

    with pytest.raises(NnaugError, match="euler, heun"):
        make_scheduler("dpmsolver++", CONFIG)
    with pytest.raises(NnaugError, match="ddim"):
        make_scheduler("euler", SCHEDULER_CONFIG)
    gen = JDMGenerator(Path("."), {"image_channels": 3, "mask_channels": 1, "resolution": 16}, FlowOracle(_point()), CONFIG)
    images, labels = gen.sample([1], sampler="heun", steps=3)
    assert images.shape == (1, 3, 16, 16) and labels.shape == (1, 16, 16)


FLOW_TINY = ["--preset", "tiny", "--resolution", "16", "--channels", "32,32", "--attention-resolutions", "8", "--cpu",
             "--objective", "flow"]


@pytest.mark.slow
def test_flow_jdm_trains_and_synthesizes_through_the_cli(nnunet_env, run_cli, one_torch_thread):
    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    out = nnunet_env["results"] / "flowgen"
    result = run_cli("train-generator", "999", *FLOW_TINY, "--flow-t", "uniform", "--steps", 40,
                     "--checkpoint-every", 40, "--output", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "scheduler_config.json").read_text())["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    info = json.loads((out / "nnaug.json").read_text())
    assert info["settings"]["objective"] == "flow" and info["settings"]["flow_t"] == "uniform"
    losses = [h[1] for h in json.loads((out / "training_log.json").read_text())]
    assert sum(losses[-10:]) < sum(losses[:10])
    for mode, sampler, dataset_id in (("joint", "euler", 901), ("mask-conditioned", "heun", 902)):
        synth = run_cli("synthesize", "999", "--generator", out, "--ratio", "0.5", "--mode", mode,
                        "--sampler", sampler, "--steps", 4, "--output-id", dataset_id)
        assert synth.exit_code == 0, synth.output
        provenance = json.loads(next(nnunet_env["raw"].glob(f"Dataset{dataset_id}_*/nnaug_provenance.json")).read_text())
        assert provenance["sampler"] == sampler and provenance["mode"] == mode
    assert_one_line_error(run_cli("synthesize", "999", "--generator", out, "--ratio", "0.5", "--sampler", "ddim",
                                  "--output-id", 903), "does not fit", "euler, heun")
