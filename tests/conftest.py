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


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders for one test."""
    paths = {}
    for var, name in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        paths[name] = tmp_path / name
        paths[name].mkdir()
        monkeypatch.setenv(var, str(paths[name]))
    return paths


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
