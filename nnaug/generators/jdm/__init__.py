"""JDM, the joint diffusion model: one pixel-space DDPM over image channels and mask channels stacked.

``presets`` (settings and the noise-schedule config), ``model`` (the diffusers ``UNet2DModel`` and
the trainable module), ``objective`` (the improved-DDPM maths: q-sample, posterior, hybrid loss),
``sampling`` (pairs, or images for given masks, with any diffusers scheduler). ``SPEC`` is its
registry entry; this file stays import-light (no torch).
"""
from __future__ import annotations

from nnaug.generators.jdm.presets import FLOW_DEFAULT_SAMPLING, OBJECTIVES, PRESETS
from nnaug.generators.registry import GeneratorSpec, lazy


def check_settings(settings: dict) -> None:
    """Refuse, in one line, settings the UNet cannot be built with."""
    from nnaug.errors import NnaugError
    from nnaug.generators.registry import check_unet_resolution

    check_unet_resolution(settings)
    resolution, channels = int(settings["resolution"]), tuple(settings["channels"])
    levels = [resolution // 2**i for i in range(len(channels))]
    narrow = [w for w, r in zip(channels, levels) if r in tuple(settings["attention_resolutions"])
              and w < int(settings["attention_head_dim"])]
    if narrow:
        raise NnaugError(f"--channels: width {narrow[0]} at an attention level is narrower than one attention head "
                         f"({settings['attention_head_dim']} channels): widen those levels or change --attention-resolutions")
    if settings.get("objective", "diffusion") not in OBJECTIVES:
        raise NnaugError(f"--objective must be one of {', '.join(OBJECTIVES)}")


def folder_sampling(settings: dict) -> tuple[str, int] | None:
    """A flow-matching JDM integrates its velocity with Heun (see FLOW_DEFAULT_SAMPLING); a distilled one
    samples in the DDIM steps it was distilled for (nnaug.generators.jdm.distill)."""
    if settings.get("distill"):
        return "ddim", int(settings["distill"]["student_steps"])
    return FLOW_DEFAULT_SAMPLING if settings.get("objective") == "flow" else None


# JDM samples with UniPC 10 steps by default: the cheapest row of benchmarks/jdm_sampling.py close to
# DPM-Solver++ 25 on the Kvasir 64 px generator (100 cases per row, docs/train-generator.md): FRD 1.007x,
# mask consistency 0.996x, and its KID against the DPM-Solver++ 25 set 2 % of that set's KID against the
# real images. UniPC 3-5 kept FRD and mask consistency within 10 % too, but lost the fine mucosal texture
# (visible on the contact sheets; KID against the reference 0.8-3.4x). The thesis' ancestral DDPM stays
# available with --sampler ddpm.
SPEC = GeneratorSpec(
    name="jdm", summary="joint diffusion model: image and mask channels in one pixel-space DDPM",
    presets=PRESETS, build=lazy("nnaug.generators.jdm.model:build_jdm_model"),
    load=lazy("nnaug.generators.jdm.sampling:JDMGenerator.from_pretrained"),
    required_files=("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"),
    supports_joint=True, default_sampling=("unipc", 10), sampling_for_settings=folder_sampling,
    check_settings=check_settings)
