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


# Siamese-Diffusion samples with its published DDIM 50 (eta 0); the weight files are checked by
# SiameseComponents when loading (they depend on the backbone).
SPEC = GeneratorSpec(
    name="siamese", summary="Siamese-Diffusion: ControlNet with a Dense Hint Input, images for given masks",
    presets=PRESETS, build=lazy("nnaug.generators.siamese.model:build_siamese_model"),
    load=lazy("nnaug.generators.siamese.sampling:SiameseGenerator.from_pretrained"), required_files=("siamese.json",), supports_joint=False,
    default_sampling=("ddim", 50), check_settings=check_settings)
