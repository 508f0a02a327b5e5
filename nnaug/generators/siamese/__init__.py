"""Siamese-Diffusion (Qiu et al., CVPR 2025): a mask-conditioned ControlNet generator.

- ``presets`` -- settings (data only).
- ``dhi`` -- the Dense Hint Input that replaces ControlNet's hint encoder.
- ``backbone`` -- :class:`SiameseComponents`, :func:`build_pixel`, :func:`load_sd15`, hints, saving and loading.
- ``objective`` -- the training loss (L0..L3) and :func:`trainable_parameters`.
- ``model`` -- the trainable module the generator training optimises.
- ``sampling`` -- :func:`sample_images` and :class:`SiameseGenerator` (Mask-Diffusion only).

``SPEC`` is its registry entry; this file stays import-light (no torch).
"""
from __future__ import annotations

from nnaug.generators.registry import GeneratorSpec, lazy
from nnaug.generators.siamese.presets import PRESETS, check_settings


def pixel_sampling(settings: dict) -> tuple[str, int] | None:
    """The pixel backbone samples with UniPC 10: on the example (benchmarks/jdm_sampling.py on the demo's
    tiny generator, 96 mask-conditioned cases per row) it matched DDIM 50 in mask consistency (1.01x), its
    KID against the DDIM 50 set was 1 % of that set's KID against the real images, and its FRD was lower
    (7.16 vs 10.75: DDIM 50 smoothed the background mottling); UniPC 5 passed too, but on Kvasir the JDM
    needed 10 to keep the fine texture (docs/train-generator.md), so 10 it is. sd15 keeps the published DDIM 50."""
    return ("unipc", 10) if settings.get("backbone", "pixel") == "pixel" else None


# Siamese-Diffusion samples with its published DDIM 50 (eta 0) on SD 1.5, UniPC 10 in pixel space
# (pixel_sampling); the weight files are checked by SiameseComponents when loading (they depend on the backbone).
SPEC = GeneratorSpec(
    name="siamese", summary="Siamese-Diffusion: ControlNet with a Dense Hint Input, images for given masks",
    presets=PRESETS, build=lazy("nnaug.generators.siamese.model:build_siamese_model"),
    load=lazy("nnaug.generators.siamese.sampling:SiameseGenerator.from_pretrained"), required_files=("siamese.json",), supports_joint=False,
    default_sampling=("ddim", 50), sampling_for_settings=pixel_sampling, check_settings=check_settings)
