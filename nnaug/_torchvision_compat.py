"""Make a CUDA-only torchvision importable next to a CPU-only torch.

Why: torch-fidelity and timm (pulled in by nnunetv2) need torchvision. Where the only
torchvision that matches the installed torch is a CUDA build (e.g. ``0.28.0+cu130`` beside
``torch 2.13.0+cpu``), its C++ library ``_C.so`` cannot load, and torchvision then fails at
import time with ``operator torchvision::nms does not exist``: its Python side registers
meta kernels for ``nms``/``qnms`` whose schemas only ``_C.so`` would have defined.

What: ``install()`` (run at interpreter start by ``nnaug_torchvision_compat.pth``) puts a
finder on ``sys.meta_path`` that does nothing until something imports ``torchvision``. At that
moment it removes itself and, only if ``_C.so`` really cannot be loaded, defines the two
missing operator schemas with ``torch.library``. torchvision then imports; its C++ ops
(``torchvision.ops.nms`` etc.) stay unavailable, which nothing in nnaug's stack needs.
On a normal machine (matching torch + torchvision) ``_C.so`` loads and nothing is changed.
Interpreters that never import torchvision pay nothing (torch is not imported here).
"""
from __future__ import annotations

import importlib.util
import os
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the life of the process
applied = False  # True once the schemas were defined in this process (for tests/diagnostics)


def _c_extension_loads(package_dir: str) -> bool:
    import torch

    candidates = [f for f in os.listdir(package_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(package_dir, candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def _patch_if_needed() -> None:
    global _library, applied
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    package_dir = list(spec.submodule_search_locations)[0]
    if _c_extension_loads(package_dir):
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    applied = True


class _TorchvisionFinder:
    """A meta-path finder that only fires once, on the first ``import torchvision``."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        try:
            _patch_if_needed()
        except Exception as exc:  # never break an import because of this shim
            print(f"nnaug: torchvision compatibility shim skipped ({exc})", file=sys.stderr)
        return None  # let the normal finders import torchvision


def install() -> None:
    if os.environ.get("NNAUG_NO_TORCHVISION_SHIM"):
        return
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionFinder())
