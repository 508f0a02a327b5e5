"""The generators nnaug knows: one :class:`GeneratorSpec` each, and the two protocols a generator meets.

``train-generator``, ``synthesize``, ``sweep`` and the CLI read this registry and nothing else about a
generator. The built-in ones are named in :data:`BUILT_IN` (each package exports ``SPEC``); another
package adds its own with :func:`register`, or, installed, with an entry point in the group
``nnaug.generators`` (``mygen = "mypackage:SPEC"``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from nnaug.errors import NnaugError

BUILT_IN = {"jdm": "nnaug.generators.jdm", "siamese": "nnaug.generators.siamese"}
ENTRY_POINT_GROUP = "nnaug.generators"


@runtime_checkable
class TrainableGenerator(Protocol):
    """The ``nn.Module`` that :class:`nnaug.generator_training.GeneratorTrainer` optimises."""

    def forward(self, batch: dict, step: int, max_steps: int, generator) -> tuple[Any, dict]:
        """``batch``: {"image": [B, C, S, S] in [-1, 1], "label": [B, S, S]} -> (loss, logs)."""

    def export(self, folder: Path) -> None:
        """Write the weights (``save_pretrained``) into the generator folder."""

    def preview(self, labels, seeds: list[int]) -> tuple[Any, Any]:
        """A few samples for the contact sheet: (images in [-1, 1], labels)."""


@runtime_checkable
class SampleableGenerator(Protocol):
    """A loaded generator folder, as ``nnaug synthesize`` uses it."""

    supports_joint: bool
    image_channels: int
    mask_channels: int
    resolution: int

    def sample(self, seeds: list[int], labels=None, sampler: str = "ddim", steps: int = 50,
               guidance_scale: float | None = None) -> tuple[Any, Any]:
        """(images [B, C, S, S] in [-1, 1] on the CPU, labels [B, S, S]); ``labels`` given: mask-conditioned."""


def lazy(target: str) -> Callable:
    """``"package.module:attr.attr"`` as a callable that imports it on first call: a spec names its build and
    load functions without importing torch or diffusers when the registry is read."""
    module, _, path = target.partition(":")

    def call(*args, **kwargs):
        obj = importlib.import_module(module)
        for name in path.split("."):
            obj = getattr(obj, name)
        return obj(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    return call


def _no_check(settings: dict) -> None:
    return None


def check_unet_resolution(settings: dict) -> None:
    """For a generator's ``check_settings``: a UNet with ``len(settings["channels"])`` levels halves the image
    at every level but the last, so the resolution must divide by 2^(levels - 1); say which sizes would do."""
    resolution, levels = int(settings["resolution"]), len(tuple(settings["channels"]))
    factor = 2 ** (levels - 1)
    if resolution % factor:
        below, above = resolution // factor * factor, (resolution // factor + 1) * factor
        choices = f"{below} or {above}" if below > 0 else str(above)
        raise NnaugError(f"--resolution {resolution} cannot pass the {levels} UNet levels of --channels "
                         f"{','.join(map(str, settings['channels']))} (it is halved {levels - 1} times): use a multiple "
                         f"of {factor}, e.g. {choices}, or fewer levels")


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    summary: str
    presets: Mapping[str, Mapping[str, Any]]  # settings per preset: model settings and TrainConfig fields
    build: Callable[..., TrainableGenerator]  # (settings, raw dataset, image_channels, mask_channels)
    load: Callable[..., SampleableGenerator]  # (folder, info from nnaug.json, device)
    required_files: tuple[str, ...]  # in a generator folder, besides nnaug.json
    supports_joint: bool  # can it sample masks too (joint mode), or only images for given masks
    default_sampling: tuple[str, int]  # sampler and steps of `nnaug synthesize` when none are given
    check_settings: Callable[[dict], None] = _no_check  # refuse what the user can fix, before anything is written
    # a trained folder's own default, from its nnaug.json settings (e.g. a flow-matching JDM: euler, not DPM-Solver++)
    sampling_for_settings: Callable[[dict], tuple[str, int] | None] | None = None

    def resolve_sampling(self, mode: str | None, sampler: str | None, steps: int | None,
                         info: dict | None = None) -> tuple[str, str, int]:
        """(mode, sampler, steps) for synthesis: the user's choice, else the defaults of this generator
        (of the trained folder whose nnaug.json is ``info``, where they differ by its settings)."""
        mode = mode or ("joint" if self.supports_joint else "mask-conditioned")
        if mode == "joint" and not self.supports_joint:
            raise NnaugError(f"a {self.name} generator cannot sample masks: use --mode mask-conditioned")
        default = self.default_sampling
        if info is not None and self.sampling_for_settings is not None:
            default = self.sampling_for_settings(info.get("settings", {})) or default
        return mode, sampler or default[0], int(steps or default[1])


_REGISTRY: dict[str, GeneratorSpec] = {}
_loaded = False


def register(spec: GeneratorSpec) -> GeneratorSpec:
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_known() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, module in BUILT_IN.items():
        _REGISTRY.setdefault(name, importlib.import_module(module).SPEC)
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        _REGISTRY.setdefault(spec.name, spec)


def generator_names() -> list[str]:
    _load_known()
    return list(_REGISTRY)


def get_spec(name: str) -> GeneratorSpec:
    _load_known()
    if name not in _REGISTRY:
        raise NnaugError(f"unknown generator model '{name}': nnaug knows {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
