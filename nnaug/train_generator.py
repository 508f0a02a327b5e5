"""``nnaug train-generator``: from a raw dataset to a generator folder, for every model type.

The common part lives here (dataset check, resolution, output folder, presets and overrides,
resume); the model comes from its registry entry (:mod:`nnaug.generators.registry`), and
:class:`nnaug.generator_training.GeneratorTrainer` runs the optimisation.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from nnaug.dataset import PairDataset, check_dataset, fingerprint, load_raw_dataset
from nnaug.errors import NnaugError
from nnaug.generator_training import (LOGS, GeneratorTrainer, TrainConfig, check_output, check_report_to,
                                      latest_checkpoint, prepare_output)
from nnaug.generators.folder import generators_root
from nnaug.generators.registry import get_spec
from nnaug.io import write_json_atomic
from nnaug.masks import num_mask_channels

RUN_CONFIG = "train_config.json"  # written at start so --resume rebuilds the same model


def default_output(dataset_name: str, model: str, preset: str) -> Path:
    return generators_root(dataset_name) / f"{model}_{preset}"


def resolve_settings(model: str, preset: str, overrides: dict) -> dict:
    presets = get_spec(model).presets
    if preset not in presets:
        raise NnaugError(f"unknown preset '{preset}' for {model}: choose one of {', '.join(presets)}")
    settings = dict(presets[preset])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("steps", "batch_size", "resolution", "checkpoint_every", "grad_accum"):
        if key in settings and int(settings[key]) < 1:
            raise NnaugError(f"--{key.replace('_', '-')} must be at least 1, got {settings[key]}")
    return settings


# What --resume may change: how long to train, and how fast (these leave the maths alone).
RESUMABLE_CHANGES = ("steps", "tf32", "channels_last", "fused_adamw", "compile", "report_to")


def refuse_changed_options(output: Path, settings: dict, overrides: dict) -> None:
    """``--resume`` continues the run as it was started; only RESUMABLE_CHANGES may differ."""
    def same(a, b) -> bool:  # tuples from the CLI, lists from JSON
        return json.loads(json.dumps(a)) == json.loads(json.dumps(b))

    changed = [key for key, value in overrides.items()
               if value is not None and key not in RESUMABLE_CHANGES and not same(settings.get(key), value)]
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {overrides[k]!r} (run: {settings.get(k)!r})" for k in changed)
        raise NnaugError(f"--resume continues {output} with the settings it started with; these differ: {shown} — "
                         "drop them, or train a new generator with --overwrite or another --output")


def train_config_from(settings: dict) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in settings.items() if k in fields and k != "extra"})
    config.checkpoint_every = min(config.checkpoint_every, config.steps)
    return config


def make_accelerator(config: TrainConfig, output: Path, cpu: bool):
    """The run's Accelerator; with ``report_to`` its tracker writes under ``<output>/logs``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if not config.report_to:
        return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
    project = ProjectConfiguration(project_dir=str(output), logging_dir=str(output / LOGS))
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu, log_with=config.report_to,
                       project_config=project)


def build_model(model: str, settings: dict, raw, image_channels: int, mask_channels: int):
    """The trainable generator, its initialisation seeded by ``settings["seed"]`` (the caller's RNG is left alone).
    A new run builds it before it writes anything, so settings the network cannot take leave nothing behind."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.get("seed", TrainConfig.seed)))
        return get_spec(model).build(settings, raw, image_channels, mask_channels)


def train_generator(dataset: str, model: str = "jdm", preset: str = "tiny", output: Path | None = None,
                    resume: bool = False, overwrite: bool = False, overrides: dict | None = None,
                    progress: bool = True, cpu: bool = False) -> Path:
    """Train (or resume) a generator on ``dataset``; returns the generator folder."""
    from accelerate import PartialState

    spec = get_spec(model)
    raw = load_raw_dataset(dataset)
    summary = check_dataset(raw, progress=progress)
    output = Path(output) if output else default_output(raw.name, model, preset)
    check_report_to((overrides or {}).get("report_to"))
    if not resume:
        settings = resolve_settings(model, preset, overrides or {})
        spec.check_settings(settings)
    # Under `accelerate launch` every process runs this; only the main one touches the folder, after all
    # have checked it (so no process sees a half-deleted run), and the others wait for it.
    state = PartialState(cpu=cpu)
    check_output(output, resume=resume, overwrite=overwrite)
    mask_channels = num_mask_channels(raw.label_values)
    net = None if resume else build_model(model, settings, raw, raw.num_channels, mask_channels)  # before any write
    state.wait_for_everyone()
    if state.is_main_process:
        prepare_output(output, resume=resume, overwrite=overwrite)
    state.wait_for_everyone()
    if resume:
        saved = json.loads((output / RUN_CONFIG).read_text())
        if saved["source_dataset"] != raw.name:
            raise NnaugError(f"{output} was trained on {saved['source_dataset']}, not {raw.name}: resume it with that dataset")
        settings = saved["settings"]
        refuse_changed_options(output, settings, overrides or {})
        settings.update({k: v for k, v in (overrides or {}).items() if k in RESUMABLE_CHANGES and v is not None})
    elif state.is_main_process:
        write_json_atomic(output / RUN_CONFIG, {"model": model, "preset": preset, "source_dataset": raw.name,
                                                "settings": settings})
    config = train_config_from(settings)
    check_report_to(config.report_to)  # a resumed run's own tracker, too
    accelerator = make_accelerator(config, output, cpu)
    pairs = PairDataset(raw, int(settings["resolution"]), progress=progress)
    if net is None:  # a resumed run: the settings it started with
        net = build_model(model, settings, raw, raw.num_channels, mask_channels)
    info = {
        "model": model, "preset": preset, "image_channels": raw.num_channels, "mask_channels": mask_channels,
        "channel_names": raw.channel_names, "labels": raw.labels, "label_values": raw.label_values,
        "resolution": int(settings["resolution"]), "intensity_mode": raw.intensity_mode,
        "intensity_low": summary.intensity_low, "intensity_high": summary.intensity_high,
        "file_ending": raw.file_ending, "median_shape": list(summary.median_shape),
        "source_dataset": raw.name, "source_fingerprint": fingerprint(raw), "num_source_cases": len(raw.cases),
        "settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # what one optimizer step sees: per process x processes x accumulation
        "num_processes": accelerator.num_processes,
        "effective_batch_size": int(settings["batch_size"]) * accelerator.num_processes * int(settings.get("grad_accum", 1)),
    }
    trainer = GeneratorTrainer(net, pairs.images, pairs.labels, config, output, info, accelerator=accelerator, progress=progress)
    if resume:
        trainer.load_checkpoint(latest_checkpoint(output))
    trainer.run()
    return output
