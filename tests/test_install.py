"""After the README's install, the torchvision-dependent stack imports in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.slow
def test_torch_fidelity_diffusers_timm_import_in_fresh_interpreter():
    result = _python("""
        import torch_fidelity, timm
        from diffusers import UNet2DModel
        import torch, torchvision
        print('ok', torch.__version__, torchvision.__version__)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


@pytest.mark.slow
def test_shim_only_acts_when_torchvision_c_extension_cannot_load():
    result = _python("""
        import torch, torchvision, importlib.util, os
        import nnaug._torchvision_compat as compat
        spec = importlib.util.find_spec('torchvision')
        loads = compat._c_extension_loads(list(spec.submodule_search_locations)[0])
        print(loads, compat.applied)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    loads, applied = result.stdout.split()
    assert applied == str(loads == "False"), result.stdout  # applied exactly when _C cannot load


def test_torch_is_the_pinned_cpu_build_and_no_nvidia_packages():
    from importlib import metadata

    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"
    nvidia = [d.metadata["Name"] for d in metadata.distributions() if (d.metadata["Name"] or "").lower().startswith("nvidia")]
    assert nvidia == [] or torch.cuda.is_available(), nvidia


@pytest.mark.slow
def test_nnunet_finds_external_trainer_through_nnUNet_extTrainer(tmp_path):
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "nnaug_test_ext_trainer.py").write_text(textwrap.dedent("""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        class nnUNetTrainer_nnaugInstallProbe(nnUNetTrainer):
            pass
    """))
    # the same lookup nnUNetv2_train and nnUNetv2_predict do (it imports nnU-Net's whole trainer tree, timm included)
    result = _python("""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        cls = recursive_find_trainer_class_by_name('nnUNetTrainer_nnaugInstallProbe')
        print('found', cls.__name__)
    """, nnUNet_extTrainer=str(folder))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "found nnUNetTrainer_nnaugInstallProbe" in result.stdout


@pytest.mark.slow
def test_console_script_lists_commands():
    exe = os.path.join(os.path.dirname(sys.executable), "nnaug")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("convert", "check", "example-dataset"):
        assert command in result.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_trainers_inside_nnaug_and_nnunet_finds_them(tmp_path):
    """Built as pip builds it: no top-level `trainers` package; `nnaug trainers-path` points nnU-Net at them."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(Path(__file__).resolve().parent.parent)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("nnaug-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnaug/nnunet_trainers/nnaug_trainers.py" in names
    assert not [n for n in names if n.startswith("trainers/")]
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # the unpacked wheel first on the path, as an installed copy would be
    result = _python("""
        import os, nnaug
        from nnaug.nnunet_pretraining import trainers_path
        os.environ['nnUNet_extTrainer'] = trainers_path()
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        cls = recursive_find_trainer_class_by_name('nnUNetTrainer_nnaugPretrainFinetune')
        print('path', trainers_path()); print('nnaug', nnaug.__file__); print('found', cls.__name__)
    """, PYTHONPATH=str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"path {tmp_path / 'site' / 'nnaug' / 'nnunet_trainers'}" in result.stdout
    assert "found nnUNetTrainer_nnaugPretrainFinetune" in result.stdout
