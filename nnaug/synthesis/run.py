""":func:`synthesize`: the checks, the target's dataset ID, and the run (plain or filtered)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from nnaug.choices import MASK_SOURCES
from nnaug.dataset import RawDataset, check_dataset, load_raw_dataset
from nnaug.nnunet_paths import next_free_dataset_id, raw_root, raw_target
from nnaug.errors import NnaugError
from nnaug.generators import find_latest_generator, get_spec, read_info
from nnaug.io import partial_dir
from nnaug.synthesis.filtered import run_filtered
from nnaug.synthesis.options import DEFAULT_BATCH_SIZE, SynthesisOptions, check_options, resolve_shard
from nnaug.synthesis.plain import run_plain
from nnaug.synthesis.plan import check_generator_fits, make_plan, synthetic_name
from nnaug.synthesis.work_folder import PLAN, SynthesisRun, any_batch_done, open_work_folder


def synthesize(dataset: str, opts: SynthesisOptions, progress: bool = True) -> Path | None:
    """Write the synthetic dataset; returns its folder (None for a shard that left assembly to another)."""
    import torch

    check_options(opts)
    raw = load_raw_dataset(dataset)
    summary = check_dataset(raw, progress=progress)
    generator_dir = Path(opts.generator) if opts.generator else find_latest_generator(raw.name)
    info = read_info(generator_dir)
    check_generator_fits(raw, info, generator_dir)
    mode, sampler, steps = get_spec(info["model"]).resolve_sampling(opts.mode, opts.sampler, opts.steps, info)
    opts = replace(opts, sampler=sampler, steps=steps)
    if opts.masks not in MASK_SOURCES:
        raise NnaugError(f"--masks must be train or augmented, got {opts.masks}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = replace(opts, batch_size=opts.batch_size or DEFAULT_BATCH_SIZE.get(torch.device(device).type, 8))
    shard = resolve_shard(opts, cpu=str(device) == "cpu")

    plan = make_plan(raw, info, generator_dir, opts, mode)  # checks a filter model too: before an ID is claimed
    target = _resolve_target(raw, opts)
    if target.exists() and not opts.overwrite:
        raise NnaugError(f"{target} already exists: pass --overwrite to replace it, or --output-id for another ID")
    work = partial_dir(target)
    resuming = opts.resume or opts.merge or shard[1] > 1
    started_here = shard[1] == 1 and not (resuming and (work / PLAN).is_file())
    run = SynthesisRun(raw, info, generator_dir, plan, work, target, opts, tuple(summary.median_shape), shard, device,
                       progress)
    try:
        open_work_folder(work, plan, resume=resuming)
        return run_filtered(run) if "filter" in plan else run_plain(run)
    except Exception:
        # a run that fails before its first batch (weights that do not load, a scoring model nnU-Net cannot
        # read) gives back the ID it claimed; one that got further keeps its work for --resume
        if started_here and not any_batch_done(work):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _resolve_target(raw: RawDataset, opts: SynthesisOptions) -> Path:
    name = synthetic_name(raw, opts.mix)
    root = raw_root()
    if opts.output_id is not None:
        return raw_target(opts.output_id, name, "--output-id")
    if opts.resume or opts.merge or opts.shard:  # continue the unfinished one, if there is exactly one
        partials = sorted(root.glob(f".Dataset*_{name}.partial"))
        if len(partials) == 1:
            return root / partials[0].name[1:].removesuffix(".partial")
        if len(partials) > 1:
            raise NnaugError(f"several unfinished {name} datasets in {root}: pass --output-id to pick one")
        if opts.resume or opts.merge:
            raise NnaugError(f"nothing to {'resume' if opts.resume else 'merge'}: no unfinished {name} dataset in {root}")
    while True:  # a new ID is claimed by making its work folder (mkdir is atomic)
        target = root / f"Dataset{next_free_dataset_id():03d}_{name}"
        try:
            partial_dir(target).mkdir()
        except FileExistsError:
            if not opts.shard:
                continue  # another run chose the same free ID a moment earlier: take the next one
        return target  # (a shard joins the shard that made it)
