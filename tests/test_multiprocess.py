"""Generator training and synthesis on two CPU processes through ``accelerate launch`` (gloo), as a user runs them."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

TINY = ["--model", "jdm", "--preset", "tiny", "--resolution", "16", "--channels", "16,32", "--attention-resolutions", "8",
        "--batch-size", "4", "--warmup-steps", "2", "--lr", "2e-3", "--cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args, processes: int = 2) -> list[str]:
    """``accelerate launch --multi_gpu --num_processes N -m nnaug_cli.main ARGS``: accelerate's own launcher.

    ``--multi_gpu`` is what starts N processes (through torchrun); without GPUs they run on the CPU with
    gloo. ``accelerate launch --cpu --num_processes N`` starts only one (accelerate's multi-CPU needs MPI).
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "nnaug_cli.main", *map(str, args)]


def _env(threads: int | None = None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@pytest.mark.slow
def test_train_generator_on_two_processes_resumes_after_a_worker_is_killed(nnunet_env, run_cli, tmp_path):
    assert run_cli("example-dataset", "--num-cases", 8).exit_code == 0
    out = tmp_path / "gen"
    cmd = _launch("train-generator", "999", *TINY, "--steps", "40", "--checkpoint-every", "10", "--output", out)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (out / "nnaug.json").is_file():  # the first checkpoint, exported, is the handshake
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "nnaug_cli" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        os.kill(workers[-1].pid, signal.SIGKILL)  # one worker dies: the launcher takes the run down
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert json.loads((out / "nnaug.json").read_text())["steps_trained"] < 40

    resumed = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((out / "nnaug.json").read_text())
    assert info["steps_trained"] == 40
    assert info["num_processes"] == 2 and info["effective_batch_size"] == 2 * 4  # per process x processes x accum
    history = json.loads((out / "training_log.json").read_text())
    assert [row[0] for row in history] == list(range(1, 41))  # every step once, resumed or not
    losses = np.array([row[1] for row in history])
    assert losses[-10:].mean() < 0.7 * losses[:5].mean(), losses  # it learns across the resume
    assert len(list((out / "samples").glob("*.png"))) >= 1 and not list((out / "checkpoints").glob(".*tmp"))


def test_processes_draw_different_batches_and_noise_reproducibly():
    from nnaug.generator_training import step_generator

    def draw(process):
        g = step_generator(0, 7, process, "cpu")
        return torch.randint(0, 1000, (16,), generator=g), torch.randn(4, generator=g)

    idx0, noise0 = draw(0)
    idx1, noise1 = draw(1)
    assert not torch.equal(idx0, idx1) and not torch.equal(noise0, noise1)
    again = draw(1)
    assert torch.equal(again[0], idx1) and torch.equal(again[1], noise1)


def _read_dataset(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from nnaug.dataset import load_raw_dataset

    raw = load_raw_dataset(folder)
    return {case.identifier: raw.read_case(case)[:2] for case in raw.cases}


@pytest.mark.slow
def test_synthesize_on_two_processes_matches_one_process(nnunet_env, run_cli, tmp_path):
    assert run_cli("example-dataset", "--num-cases", 8).exit_code == 0
    assert run_cli("train-generator", "999", *TINY, "--steps", "4").exit_code == 0
    args = ["synthesize", "999", "--ratio", "3", "--steps", "5", "--batch-size", "2"]
    raw = nnunet_env["raw"]

    one = subprocess.run([sys.executable, "-m", "nnaug_cli.main", *args, "--output-id", "601"], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_launch(*args, "--output-id", "602"), env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    single, multi = _read_dataset(raw / "Dataset601_nnaugExampleSynth"), _read_dataset(raw / "Dataset602_nnaugExampleSynth")
    assert single.keys() == multi.keys() and len(single) == 24
    for case, (image, label) in single.items():
        np.testing.assert_array_equal(multi[case][1], label, err_msg=case)  # labels identical
        assert np.abs(multi[case][0] - image).max() <= 1, case  # images within one grey level (documented)

    # At the same thread count per process the bytes are identical: the rest is CPU reduction order.
    same = subprocess.run([sys.executable, "-m", "nnaug_cli.main", *args, "--output-id", "603"], env=_env(threads=1),
                          capture_output=True, text=True, timeout=600)
    assert same.returncode == 0, same.stderr[-3000:]
    two_one = subprocess.run(_launch(*args, "--output-id", "604"), env=_env(threads=1), capture_output=True, text=True,
                             timeout=600)
    assert two_one.returncode == 0, two_one.stderr[-3000:]
    for name in ("imagesTr", "labelsTr"):
        a = {p.name: p.read_bytes() for p in (raw / "Dataset603_nnaugExampleSynth" / name).iterdir()}
        b = {p.name: p.read_bytes() for p in (raw / "Dataset604_nnaugExampleSynth" / name).iterdir()}
        assert a == b, name
