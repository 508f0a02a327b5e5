"""JDM: samplers, mask-conditioned sampling, training end to end, and resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import mask_and_its_noise

from nnaug.generators.jdm.model import JDMArchitecture
from nnaug.generators.jdm.presets import SCHEDULER_CONFIG
from nnaug.generators.jdm.sampling import JDMGenerator, sample
from nnaug.samplers import make_scheduler
from nnaug.masks import decode_channels, encode_labels


class OracleUNet(torch.nn.Module):
    """The exact predictor for data that is a single point x* (so every sampler must return x*)."""

    def __init__(self, target: torch.Tensor, learned_variance: bool = True, prediction_type: str = "epsilon"):
        super().__init__()
        self.target = target
        self.alphas_cumprod = make_scheduler("ddpm", SCHEDULER_CONFIG).alphas_cumprod
        self.config = SimpleNamespace(sample_size=target.shape[-1])
        self.learned_variance, self.prediction_type = learned_variance, prediction_type
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    def forward(self, x, t):
        self.calls.append(int(t))
        ab = self.alphas_cumprod[int(t)]
        eps = (x - ab.sqrt() * self.target) / (1 - ab).sqrt()
        out = eps if self.prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.target
        v = torch.zeros_like(eps)
        return SimpleNamespace(sample=torch.cat([out, v], 1) if self.learned_variance else out)


def _point(image_channels=3, labels=None, size=16):
    torch.manual_seed(0)
    image = torch.rand(1, image_channels, size, size) * 1.6 - 0.8
    if labels is None:
        labels = torch.zeros(1, size, size, dtype=torch.long)
        labels[:, 4:10, 3:12] = 1
    return image, labels


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddim", 25), ("dpmsolver++", 25), ("unipc", 20)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_samplers_recover_a_point_mass(sampler, steps, prediction_type):
    image, labels = _point()
    target = torch.cat([image, encode_labels(labels, 1)], 1)
    config = {**SCHEDULER_CONFIG, "prediction_type": prediction_type}
    x = sample(OracleUNet(target, prediction_type=prediction_type), make_scheduler(sampler, config), [1, 2], steps, 3, 1)
    assert x.shape == (2, 4, 16, 16)
    assert (x - target).abs().max() < 0.05, (sampler, (x - target).abs().max())


def test_last_ddpm_step_adds_no_noise():
    """Respaced DDPM ends at t = 9 > 0; its last step must return the x0 estimate, as improved-diffusion."""
    image, labels = _point()
    target = torch.cat([image, encode_labels(labels, 1)], 1)
    scheduler = make_scheduler("ddpm", SCHEDULER_CONFIG)
    oracle = OracleUNet(target)
    x = sample(oracle, scheduler, [1, 2], 100, 3, 1)
    assert oracle.calls[-1] > 0  # the last step starts above t = 0 ...
    assert (x - target).abs().max() < 1e-4  # ... and still lands exactly on x* (noise would be ~1e-2)


@pytest.mark.parametrize("steps", [30, 7])
def test_ddim_visits_exactly_the_scheduled_timesteps(steps):
    image, labels = _point()
    target = torch.cat([image, encode_labels(labels, 1)], 1)
    scheduler = make_scheduler("ddim", SCHEDULER_CONFIG)
    oracle = OracleUNet(target)
    seen = []
    sample(oracle, scheduler, [3], steps, 3, 1, on_step=lambda t, x: seen.append(t))
    scheduled = [int(t) for t in scheduler.timesteps]
    assert oracle.calls == scheduled and len(scheduled) == steps and scheduled[0] == 999
    assert seen == scheduled[1:] + [-1]
    assert any(a - b != 1000 // steps for a, b in zip(scheduled, scheduled[1:]))  # t - T//n would miss these


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "unipc"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_deterministic_solvers_keep_the_mask_on_its_noising_path(sampler, prediction_type):
    """With the mask channels of the output set to the oracle's, every solver (UniPC's corrector too)
    moves them along sqrt(abar_t) m + sqrt(1 - abar_t) z with one z per sample, at every step."""
    size, seeds = 16, [4, 9]
    believed = torch.zeros(1, size, size, dtype=torch.long)
    believed[:, 2:6, 2:6] = 1  # the model's own mask differs from the given one
    image, _ = _point(labels=believed)
    target = torch.cat([image, encode_labels(believed, 1)], 1)
    m, z = mask_and_its_noise(size, seeds)
    config = {**SCHEDULER_CONFIG, "prediction_type": prediction_type}
    scheduler = make_scheduler(sampler, config)
    ab = scheduler.alphas_cumprod
    errors = []

    def check(t_next, x):
        expected = m if t_next < 0 else ab[t_next].sqrt() * m + (1 - ab[t_next]).sqrt() * z
        errors.append(float((x[:, 3:] - expected).abs().max()))

    sample(OracleUNet(target, prediction_type=prediction_type), scheduler, seeds, 12, 3, 1, known_mask=m, on_step=check)
    assert len(errors) == 12 and max(errors) < 1e-3, (sampler, errors)


def test_ddim_step_rederives_epsilon_from_the_clipped_x0():
    """improved-diffusion's ddim_sample: x_prev = sqrt(a')·clip(x0) + sqrt(1-a')·eps(x_t, clip(x0))."""
    scheduler = make_scheduler("ddim", SCHEDULER_CONFIG)
    scheduler.set_timesteps(10)
    t, prev = scheduler.timesteps[0], scheduler.timesteps[1]
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    eps = 3 * torch.randn_like(x)  # an overshooting epsilon, as an under-trained model gives: x0 far outside [-1, 1]
    a, a_prev = scheduler.alphas_cumprod[t].double(), scheduler.alphas_cumprod[prev].double()
    x0 = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    assert x0.abs().max() > 1
    x0 = x0.clamp(-1, 1)
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
    raw_eps = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()  # diffusers' default, told apart here
    assert not torch.allclose(raw_eps, expected, atol=1e-3)
    assert torch.allclose(scheduler.step(eps, t, x).prev_sample.double(), expected, atol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_mask_conditioned_sampling_returns_exactly_the_given_mask(num_classes):
    size = 16
    oracle_labels = torch.zeros(1, size, size, dtype=torch.long)
    oracle_labels[:, 2:6, 2:6] = num_classes  # the model "believes" in another mask
    image, _ = _point(labels=oracle_labels)
    target = torch.cat([image, encode_labels(oracle_labels, num_classes)], 1)
    given = torch.zeros(3, size, size, dtype=torch.long)
    given[0, 8:14, 8:14] = 1
    given[1, 0:5, 10:16] = num_classes
    given[2, 3:9, 1:7] = 1
    gen = JDMGenerator(Path("."), {"image_channels": 3, "mask_channels": num_classes, "resolution": size},
                       OracleUNet(target), SCHEDULER_CONFIG)
    for sampler in ("ddpm", "ddim", "dpmsolver++", "unipc"):
        images, labels = gen.sample([5, 6, 7], labels=given, sampler=sampler, steps=10)
        assert torch.equal(labels, given), sampler
        assert set(labels.unique().tolist()) <= set(range(num_classes + 1))
        assert images.shape == (3, 3, size, size) and images.abs().max() <= 1


def test_decode_gives_only_valid_labels():
    channels = torch.randn(4, 3, 8, 8)
    labels = decode_channels(channels)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(decode_channels(encode_labels(labels, 3)), labels)


def test_seed_gives_same_pair_in_any_batch_position():
    unet = JDMArchitecture(resolution=16, image_channels=3, mask_channels=1, channels=(32, 32),
                           attention_resolutions=()).build_unet().eval()
    gen = JDMGenerator(Path("."), {"image_channels": 3, "mask_channels": 1, "resolution": 16}, unet, SCHEDULER_CONFIG)
    a_img, a_lab = gen.sample([11, 12], sampler="ddpm", steps=4)
    b_img, b_lab = gen.sample([13, 11, 14], sampler="ddpm", steps=4)
    torch.testing.assert_close(a_img[0], b_img[1], atol=1e-4, rtol=0)
    assert not torch.allclose(a_img[0], a_img[1])


# ----------------------------------------------------------------------------- training
TINY = ["--preset", "tiny", "--resolution", "16", "--channels", "32,32", "--attention-resolutions", "8", "--cpu"]


def _history(folder: Path) -> list[float]:
    return [h[1] for h in json.loads((folder / "training_log.json").read_text())]


@pytest.mark.slow
def test_train_jdm_on_example_dataset(nnunet_env, run_cli):
    from diffusers import UNet2DModel

    assert run_cli("example-dataset", "-d", 999).exit_code == 0
    result = run_cli("train-generator", "999", "--model", "jdm", "--preset", "tiny", "--steps", 50, "--cpu")
    assert result.exit_code == 0, result.output
    folder = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "generators" / "jdm_tiny"
    losses = _history(folder)
    assert len(losses) == 50
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    unet = UNet2DModel.from_pretrained(str(folder))
    assert unet.config.in_channels == 5 and unet.config.out_channels == 5  # RGB + 2 classes, fixed variance
    scheduler = json.loads((folder / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["beta_schedule"] == "squaredcos_cap_v2"
    info = json.loads((folder / "nnaug.json").read_text())
    assert info["model"] == "jdm" and info["steps_trained"] == 50 and info["label_values"] == [0, 1, 2]
    assert info["source_dataset"] == "Dataset999_nnaugExample" and len(info["source_fingerprint"]) == 64
    assert (folder / "scheduler_config.json").is_file() and (folder / "loss_curve.png").is_file()
    assert list((folder / "samples").glob("*.png")) and list((folder / "checkpoints").glob("step_*"))
    # a second run into the same folder refuses without --resume/--overwrite
    again = run_cli("train-generator", "999", "--model", "jdm", "--preset", "tiny", "--steps", 50, "--cpu")
    assert again.exit_code == 2 and "--resume" in again.stderr


@pytest.mark.slow
def test_train_jdm_on_converted_kvasir(shared_data, nnunet_env, run_cli):
    assert run_cli("convert", shared_data / "kvasir-seg-80", "-d", 501, "--name", "Kvasir").exit_code == 0
    result = run_cli("train-generator", "501", "--model", "jdm", "--preset", "tiny", "--steps", 50, "--cpu",
                     "--output", nnunet_env["results"] / "gen")
    assert result.exit_code == 0, result.output
    losses = _history(nnunet_env["results"] / "gen")
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def _train_cmd(output: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "nnaug_cli.main", "train-generator", "999", "--model", "jdm", *TINY,
            "--steps", "16", "--checkpoint-every", "4", "--output", str(output), *extra]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(nnunet_env, run_cli, tmp_path):
    from safetensors.torch import load_file

    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight), env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step_0000008").is_dir():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere after step 8: mid-step or mid-checkpoint
    proc.wait()
    assert not (killed / "nnaug.json").exists() or json.loads((killed / "nnaug.json").read_text())["steps_trained"] < 16
    resumed = subprocess.run(_train_cmd(killed, ["--resume"]), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = load_file(straight / "diffusion_pytorch_model.safetensors")
    b = load_file(killed / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert json.loads((killed / "nnaug.json").read_text())["steps_trained"] == 16
    assert not list((killed / "checkpoints").glob(".*tmp"))  # no half-written checkpoint left behind


# ----------------------------------------------------------------------------- objectives
def test_v_prediction_loss_is_zero_for_the_true_v_and_min_snr_weights_the_rest():
    from nnaug.generators.jdm.objective import GaussianDiffusion
    from nnaug.generators.jdm.presets import scheduler_config

    diffusion = GaussianDiffusion.from_scheduler(make_scheduler("ddpm", scheduler_config(prediction="v", noise_schedule="cosine")))
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    xt = diffusion.q_sample(x0, t, noise)
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    exact = diffusion.training_losses(v, x0, xt, t, noise, prediction="v", learned_variance=False, snr_gamma=5.0)
    assert exact["loss"].abs().max() < 1e-10
    off = diffusion.training_losses(v + 1, x0, xt, t, noise, prediction="v", learned_variance=False, snr_gamma=5.0)
    snr = (ab / (1 - ab)).view(-1).double()
    torch.testing.assert_close(off["loss"].double(), torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1),
                               rtol=1e-5, atol=1e-6)
    assert off["loss"][0] < off["loss"][2]  # the nearly clean t = 0 no longer dominates


def test_paper_objective_is_still_the_thesis_setting():
    from nnaug.generators.jdm.presets import OBJECTIVE_PAPER, PRESETS, SCHEDULER_CONFIG
    from nnaug.train_generator import build_model

    paper = build_model("jdm", PRESETS["paper"] | {"resolution": 32, "channels": (32, 32), "attention_resolutions": ()},
                        None, 3, 2)
    assert paper.scheduler_config == SCHEDULER_CONFIG and paper.learned_variance and paper.prediction == "epsilon"
    assert paper.unet.config.out_channels == 10 and paper.snr_gamma is None
    tiny = build_model("jdm", PRESETS["tiny"] | OBJECTIVE_PAPER, None, 3, 2)  # the paper objective on any preset
    assert tiny.scheduler_config == SCHEDULER_CONFIG and tiny.unet.config.out_channels == 10
