"""Few-step distillation of a diffusion JDM (nnaug distill-generator): oracle tests of the maths, and a
student distilled through the CLI on the example that samples closer to its teacher than the teacher's own
few steps do."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, mask_and_its_noise

from nnaug.generators.jdm.distill import (DistilledJDM, TeacherWalk, alpha_bar, ddim_step, student_timesteps,
                                          target_for, x0_for_step)
from nnaug.generators.jdm.presets import scheduler_config
from nnaug.masks import decode_channels, encode_labels
from nnaug.samplers import make_scheduler

CONFIG = scheduler_config(prediction="v", learned_variance=False, noise_schedule="cosine")


def _alphas():
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(CONFIG).alphas_cumprod.float()


class PointOracle(torch.nn.Module):
    """The exact v for data that is one point x*: x0 = x* whatever the state, so every DDIM walk is exact."""

    def __init__(self, target: torch.Tensor, alphas: torch.Tensor):
        super().__init__()
        self.target, self.alphas = target, alphas
        self.config = SimpleNamespace(sample_size=target.shape[-1])
        self.device = torch.device("cpu")
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        a = alpha_bar(self.alphas, torch.as_tensor(t).expand(x.shape[0]))
        return SimpleNamespace(sample=target_for(x, self.target.expand_as(x), a, "v_prediction"))


def _point(size=16):
    torch.manual_seed(0)
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[:, 4:10, 3:12] = 1
    return torch.cat([torch.rand(1, 3, size, size) * 1.6 - 0.8, encode_labels(labels, 1)], 1)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_a_student_that_predicts_its_target_lands_where_the_teacher_walked(prediction):
    torch.manual_seed(2)
    x_t, x_s = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    a_t, a_s = torch.tensor([1e-4, 0.2, 0.6]).view(-1, 1, 1, 1), torch.tensor([0.3, 0.7, 1.0]).view(-1, 1, 1, 1)
    target = target_for(x_t, x0_for_step(x_t, x_s, a_t, a_s), a_t, prediction)
    torch.testing.assert_close(ddim_step(x_t, target, a_t, a_s, prediction, clip=None), x_s, atol=2e-4, rtol=1e-4)
    # at the clean end the step's x0 is the teacher's result itself
    torch.testing.assert_close(x0_for_step(x_t, x_s, a_t, a_s)[2], x_s[2])


def test_the_students_steps_are_the_ddim_samplers_and_end_on_x0():
    for k in (1, 2, 4):
        scheduler = make_scheduler("ddim", CONFIG)
        scheduler.set_timesteps(k)
        steps = student_timesteps(CONFIG, k)
        assert steps[:-1] == [int(t) for t in scheduler.timesteps] and steps[-1] == -1
        assert steps[0] == 999


def test_the_teacher_walk_is_exact_for_a_point_and_keeps_given_masks_on_their_path():
    alphas, target = _alphas(), _point()
    oracle = PointOracle(target, alphas)
    walk = TeacherWalk(oracle, alphas, "v_prediction", 4, 3)
    m, z = mask_and_its_noise(16, [3, 5])  # masks other than the oracle's
    noise = torch.cat([torch.randn(2, 3, 16, 16), z], 1)
    t, s = torch.tensor([999, 499]), torch.tensor([499, -1])
    a_t, a_s = alpha_bar(alphas, t), alpha_bar(alphas, s)
    x_t = a_t.sqrt() * target + (1 - a_t).sqrt() * noise
    joint = walk(x_t, t, s, 5, m, z, torch.tensor([False, False]))
    assert oracle.calls == 5
    # joint: every channel on the exact path of the point (the oracle's x0 is x*, so DDIM is exact)
    torch.testing.assert_close(joint, a_s.sqrt() * target + (1 - a_s).sqrt() * noise, atol=1e-4, rtol=1e-4)
    x_t[:, 3:] = a_t.sqrt() * m + (1 - a_t).sqrt() * z
    # conditioned: the mask channels follow the given mask's path, whatever the teacher believes
    conditioned = walk(x_t, t, s, 5, m, z, torch.tensor([True, True]))
    torch.testing.assert_close(conditioned[:, 3:], a_s.sqrt() * m + (1 - a_s).sqrt() * z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conditioned[1, 3:], m[1])  # the last interval ends on the mask itself


def test_the_distillation_loss_is_zero_for_a_student_equal_to_an_exact_teacher():
    alphas, target = _alphas(), _point()
    labels = decode_channels(target[:, 3:]).expand(6, -1, -1)
    batch = {"image": target[:, :3].expand(6, -1, -1, -1), "label": labels}

    def loss_of(student):
        model = DistilledJDM(student, PointOracle(target, alphas), 3, 1, CONFIG, student_steps=2, teacher_steps=8,
                             mask_share=0.5)
        return float(model(batch, 0, 1, torch.Generator().manual_seed(0))[0])

    assert loss_of(PointOracle(target, alphas)) < 1e-8
    assert loss_of(PointOracle(target + 0.1, alphas)) > 1e-4


def test_only_a_diffusion_jdm_that_is_not_itself_distilled_is_a_teacher(tmp_path):
    from nnaug.errors import NnaugError
    from nnaug.generators.jdm.distill import check_teacher

    check_teacher({"model": "jdm", "settings": {"objective": "diffusion"}}, tmp_path)
    for info, words in (({"model": "siamese", "settings": {}}, "JDM generators only"),
                        ({"model": "jdm", "settings": {"objective": "flow"}}, "--objective diffusion"),
                        ({"model": "jdm", "settings": {"distill": {"student_steps": 4, "teacher": "T"}}}, "distill its teacher T")):
        with pytest.raises(NnaugError, match=words):
            check_teacher(info, tmp_path)


def test_a_distilled_folder_samples_in_its_own_ddim_steps_unless_told_otherwise():
    from nnaug.generators import get_spec

    spec, info = get_spec("jdm"), {"settings": {"objective": "diffusion", "distill": {"student_steps": 3}}}
    assert spec.resolve_sampling(None, None, None, info=info) == ("joint", "ddim", 3)
    assert spec.resolve_sampling("mask-conditioned", "unipc", 8, info=info) == ("mask-conditioned", "unipc", 8)
    assert spec.resolve_sampling(None, None, None, info={"settings": {}})[1:] == spec.default_sampling


TINY = ["--preset", "tiny", "--resolution", "16", "--channels", "32,32", "--attention-resolutions", "8", "--cpu"]


def _distance_to_teacher(generator_dir, teacher, seeds, steps):
    """Mean squared distance between 2-step samples of ``generator_dir`` and the teacher's DDIM 24 samples."""
    from nnaug.generators import load_generator

    reference, _ = load_generator(teacher).sample(seeds, sampler="ddim", steps=24)
    images, _ = load_generator(generator_dir).sample(seeds, sampler="ddim", steps=steps)
    return float(((images - reference) ** 2).mean())


@pytest.mark.slow
def test_a_distilled_student_follows_its_teacher_and_synthesizes_through_the_cli(nnunet_env, run_cli, one_torch_thread):
    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    teacher = nnunet_env["results"] / "nnaug" / "Dataset999_nnaugExample" / "generators" / "teacher"  # where defaults look
    assert run_cli("train-generator", "999", *TINY, "--steps", 150, "--checkpoint-every", 150,
                   "--output", teacher).exit_code == 0
    result = run_cli("distill-generator", "999", "--generator", teacher, "--student-steps", 2, "--teacher-steps", 24,
                     "--steps", 60, "--batch-size", 8, "--cpu")
    assert result.exit_code == 0, result.output
    student = teacher.parent / "teacher_ddim2"
    info = json.loads((student / "nnaug.json").read_text())
    assert info["settings"]["distill"]["student_steps"] == 2 and info["settings"]["distill"]["teacher"] == str(teacher.resolve())
    assert list((student / "samples").glob("*.png"))
    # the claim: the student's 2 steps land nearer the teacher's 24 than the teacher's own 2 steps do
    seeds = list(range(100, 116))
    d_student, d_teacher = _distance_to_teacher(student, teacher, seeds, 2), _distance_to_teacher(teacher, teacher, seeds, 2)
    assert d_student < 0.5 * d_teacher, (d_student, d_teacher)  # measured: 0.010 vs 0.051
    # a distilled folder samples in its own steps by default, in both modes
    for mode, dataset_id in (("joint", 901), ("mask-conditioned", 902)):
        synth = run_cli("synthesize", "999", "--generator", student, "--ratio", "0.5", "--mode", mode,
                        "--output-id", dataset_id)
        assert synth.exit_code == 0, synth.output
        provenance = json.loads(next(nnunet_env["raw"].glob(f"Dataset{dataset_id}_*/nnaug_provenance.json")).read_text())
        assert (provenance["sampler"], provenance["steps"]) == ("ddim", 2)
    # what cannot be distilled, or continued, says so in one line
    assert_one_line_error(run_cli("distill-generator", "999", "--generator", student), "itself distilled", str(teacher))
    assert_one_line_error(run_cli("distill-generator", "999", "--generator", teacher, "--student-steps", 4,
                                  "--teacher-steps", 2), "--teacher-steps 2", "--student-steps 4")
    # without --generator the latest generator is the student: its teacher is distilled again
    assert_one_line_error(run_cli("distill-generator", "999", "--student-steps", 2), "already holds a generator",
                          "--overwrite", str(student))
    assert_one_line_error(run_cli("distill-generator", "999", "--generator", teacher, "--output", student,
                                  "--teacher-steps", 12, "--resume"), "--teacher-steps 12", "--overwrite")


def _distill_cmd(teacher, output, extra=()) -> list[str]:
    return [sys.executable, "-m", "nnaug_cli.main", "distill-generator", "999", "--generator", str(teacher),
            "--student-steps", "2", "--teacher-steps", "4", "--steps", "12", "--checkpoint-every", "3",
            "--batch-size", "4", "--cpu", "--output", str(output), *extra]


def _kill_once(cmd: list[str], checkpoint, env) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``checkpoint`` appears (mid-step, or mid-checkpoint)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not checkpoint.is_dir():
        assert proc.poll() is None and time.time() < deadline, "distillation ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_twice_and_resume_gives_the_weights_of_an_uninterrupted_distillation(nnunet_env, run_cli, tmp_path):
    from safetensors.torch import load_file

    assert run_cli("example-dataset", "-d", 999, "--num-cases", 8).exit_code == 0
    teacher = tmp_path / "teacher"
    assert run_cli("train-generator", "999", *TINY, "--steps", 4, "--checkpoint-every", 4, "--output", teacher).exit_code == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_distill_cmd(teacher, straight), env=env, check=True, capture_output=True, timeout=600)

    _kill_once(_distill_cmd(teacher, killed), killed / "checkpoints" / "step_0000003", env)
    _kill_once(_distill_cmd(teacher, killed, ["--resume"]), killed / "checkpoints" / "step_0000009", env)
    assert not (killed / "nnaug.json").exists() or json.loads((killed / "nnaug.json").read_text())["steps_trained"] < 12
    resumed = subprocess.run(_distill_cmd(teacher, killed, ["--resume"]), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = load_file(straight / "diffusion_pytorch_model.safetensors")
    b = load_file(killed / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    teacher_weights = load_file(teacher / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], teacher_weights[k]) for k in a)  # the student did move away from its teacher
    info = json.loads((killed / "nnaug.json").read_text())
    assert info["steps_trained"] == 12 and info["settings"]["distill"]["student_steps"] == 2
    assert not list((killed / "checkpoints").glob(".*tmp"))  # no half-written checkpoint left behind
