"""Shared fixtures: nnU-Net folders in tmp, the real data in ../shared/data, and a CLI runner."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (Kvasir-SEG, MoNuSeg). Missing data is a loud failure, never a skip."""
    folder = Path(os.environ.get("NNAUG_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (folder / "kvasir-seg-80" / "images").is_dir() or not (folder / "monuseg-train-30" / "images").is_dir():
        pytest.fail(f"real test data not found at {folder}: put ../shared/data beside the checkout "
                    "or set NNAUG_SHARED_DATA", pytrace=False)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spinning threads made tiny-model tests 10x slower; restores the setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nnunet_folders_in(root: Path, monkeypatch) -> dict[str, Path]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results made under ``root`` and set with ``monkeypatch``
    (a fixture's, or a ``pytest.MonkeyPatch.context()`` for module-scoped set-ups); keys raw, preprocessed, results."""
    paths = {}
    for var, name in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        paths[name] = root / name
        paths[name].mkdir()
        monkeypatch.setenv(var, str(paths[name]))
    return paths


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders for one test."""
    return nnunet_folders_in(tmp_path, monkeypatch)


def sigkill_after(proc, done_markers: Path, count: int, timeout: float = 300) -> None:
    """SIGKILL ``proc`` once ``done_markers`` holds ``count`` ``*.done`` files (a synthesis mid-run)."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while len(list(done_markers.glob("*.done"))) < count:
        assert proc.poll() is None and time.time() < deadline, "synthesis ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def mask_and_its_noise(size: int, seeds: list[int], image_channels: int = 3):
    """Two given binary masks ([2, 1, S, S] in {-1, 1}) and the mask noise z each seed's sampler draws for them
    (the sampler draws a sample's initial noise first, then its mask noise, from the seed's own generator)."""
    import torch

    from nnaug.masks import encode_labels

    given = torch.zeros(2, size, size, dtype=torch.long)
    given[0, 8:14, 8:14] = 1
    given[1, 0:5, 3:16] = 1
    z = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        torch.randn((image_channels + 1, size, size), generator=g)
        z.append(torch.randn((1, size, size), generator=g))
    return encode_labels(given, 1).float(), torch.stack(z)


@pytest.fixture
def run_cli():
    """Invoke the ``nnaug`` click group in-process; returns click's Result (stdout and stderr apart)."""
    from nnaug_cli.main import cli

    def run(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, and one 'nnaug: error:' line that mentions every fragment; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("nnaug: error:")]
    assert not [line for line in lines if line.startswith(("Usage:", "Try '"))], result.stderr  # no usage block
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """A fixed-seed random InceptionV3 weights file, loaded through the same path as real weights."""
    from nnaug.fidelity import make_random_inception_weights

    return make_random_inception_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth", seed=0)
