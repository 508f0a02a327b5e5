"""``nnaug synthesize``: a trained generator -> a new nnU-Net raw dataset of synthetic pairs.

The work is cut into fixed batches of consecutive cases, each with its own per-case seeds, and
written into a hidden ``.DatasetXXX_Name.partial`` folder beside the target. A batch counts as
done when its marker file exists, so a killed run (``--resume``), several shards (``--shard i/n``
or ``accelerate launch``) and one uninterrupted process all compute the same batches from the
same seeds and write the same bytes. The last step renames the folder into place.
With ``--min-consistency`` the batches are blocks of candidates, scored and kept in candidate order
(:mod:`nnaug.synthesis_filter`).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nnaug.choices import MASK_SOURCES
from nnaug.dataset import (PairDataset, RawDataset, check_dataset, from_model_range, load_raw_dataset,
                           next_free_dataset_id, raw_root, raw_target, write_case, write_dataset_json)
from nnaug.errors import NnaugError
from nnaug.generators import checkpoint_sha256, find_latest_generator, get_spec, load_generator, read_info
from nnaug.io import partial_dir, replace_dir, write_json_atomic
from nnaug.mask_augment import MaskAugmentation, augment_mask
from nnaug.provenance import write_provenance

PROGRESS = ".nnaug_batches"
PLAN = ".nnaug_plan.json"


@dataclass
class SynthesisOptions:
    ratio: float
    generator: Path | None = None
    mode: str | None = None  # joint | mask-conditioned (default: joint when the generator can)
    masks: str = "train"  # train | augmented
    sampler: str | None = None  # None: the generator's default (its GeneratorSpec.default_sampling)
    steps: int | None = None
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE for the device
    seed: int = 0
    output_id: int | None = None
    overwrite: bool = False
    resume: bool = False
    mix: bool = False
    shard: tuple[int, int] | None = None
    merge: bool = False
    augmentation: MaskAugmentation = MaskAugmentation()
    device: str | None = None
    min_consistency: float | None = None  # keep only candidates whose mask consistency reaches it (nnaug.synthesis_filter)
    filter_model: Path | None = None  # nnU-Net training output folder that scores them (default: the report's real-only model)
    max_candidates: int | None = None  # candidates tried at most (default: synthesis_filter.CANDIDATES_PER_CASE x cases)


# Cases per batch (the unit of work, resume and sharding). A GPU gets large batches to keep it busy; a batch
# that does not fit is sampled in halves (per-case seeds keep the output the same).
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


def case_seed(global_seed: int, index: int) -> int:
    return (global_seed * 1_000_003 + index) % (2**31 - 1)


def synthetic_name(raw: RawDataset, mix: bool) -> str:
    source = raw.name.split("_", 1)[1] if "_" in raw.name else raw.name
    return f"{source}Synth{'Mix' if mix else ''}"


def check_generator_fits(raw: RawDataset, info: dict, folder: Path) -> None:
    """The generator in ``folder`` makes the labels and channels of ``raw`` (it was trained on such a dataset)."""
    if info["label_values"] != raw.label_values or info["labels"] != raw.labels:
        raise NnaugError(f"generator {folder} was trained on labels {info['labels']} ({info['source_dataset']}), but "
                         f"{raw.name} has {raw.labels}: use a generator trained on this dataset")
    if info["image_channels"] != raw.num_channels or info["channel_names"] != raw.channel_names:
        raise NnaugError(f"generator {folder} makes {info['image_channels']} channel(s) {info['channel_names']}, but "
                         f"{raw.name} has {raw.num_channels} {raw.channel_names}: use a generator trained on this dataset")


def make_plan(raw: RawDataset, info: dict, generator_dir: Path, opts: SynthesisOptions, mode: str) -> dict:
    """Everything that decides the output bytes; a resumed run must find the same plan."""
    count = int(round(opts.ratio * len(raw.cases)))
    if count < 1:
        raise NnaugError(f"--ratio {opts.ratio} x {len(raw.cases)} cases rounds to 0 synthetic cases: use a larger ratio")
    filtering = None
    if opts.min_consistency is not None:  # the kept cases are only known as candidates are scored
        from nnaug.synthesis_filter import filter_plan

        filtering = filter_plan(raw, opts, count)
    cases = [] if filtering else [candidate(raw, opts.seed, mode, i, f"synth_{i:06d}") for i in range(count)]
    plan = {
        **plan_header(raw, checkpoint_sha256(generator_dir), opts, mode),
        "generator": str(generator_dir.resolve()), "generator_model": info["model"],
        "generator_steps_trained": info.get("steps_trained"),
        "batch_size": opts.batch_size, "num_cases": count, "cases": cases,
    }
    if filtering:
        plan["filter"] = filtering
    return plan


def plan_header(raw: RawDataset, sha: str, opts: SynthesisOptions, mode: str) -> dict:
    """The part of a synthesis plan that decides which cases come out (see :func:`plan_identity`)."""
    augmented = mode == "mask-conditioned" and opts.masks == "augmented"
    return {"source_dataset": raw.name, "checkpoint_sha256": sha, "mode": mode,
            "masks": opts.masks if mode == "mask-conditioned" else None,
            "mask_augmentation": opts.augmentation.as_dict() if augmented else None,
            "sampler": opts.sampler, "steps": opts.steps, "seed": opts.seed, "ratio": opts.ratio,
            "num_real_cases": len(raw.cases)}


def plan_identity(plan: dict) -> dict:
    """What makes two synthetic sets the same set, from a plan or a provenance (which holds its plan): the
    header's keys, and a filter's threshold and scoring model; not where the generator lies or the batch size.
    ``nnaug sweep`` reuses a set whose identity is the one it would make."""
    identity = {key: plan.get(key) for key in ("source_dataset", "checkpoint_sha256", "mode", "masks",
                                               "mask_augmentation", "sampler", "steps", "seed", "num_real_cases")}
    identity = json.loads(json.dumps(identity))  # as a provenance file holds it: tuples become lists
    try:
        identity["ratio"] = float(plan.get("ratio"))
    except (TypeError, ValueError):
        identity["ratio"] = None
    record = plan.get("filter") or {}
    model = record.get("model")
    identity["filter"] = (record.get("min_consistency"), str(Path(str(model)).resolve()) if model else None)
    return identity


def candidate(raw: RawDataset, seed: int, mode: str, index: int, name: str) -> dict:
    """Case ``index`` of the seed stream: its seed and (mask-conditioned) the real case its mask comes from."""
    case = {"case": name, "seed": case_seed(seed, index)}
    if mode == "mask-conditioned":
        case["mask_from"] = raw.cases[index % len(raw.cases)].identifier
    return case


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


def synthesize(dataset: str, opts: SynthesisOptions, progress: bool = True) -> Path | None:
    """Write the synthetic dataset; returns its folder (None for a shard that left assembly to another)."""
    import torch

    if not 0 < opts.ratio < 1e6:  # also refuses nan and inf
        raise NnaugError(f"--ratio must be a number > 0 (synthetic cases per real case, e.g. 5.0 for 500 %), got {opts.ratio}")
    if (opts.steps is not None and opts.steps < 1) or (opts.batch_size is not None and opts.batch_size < 1):
        raise NnaugError("--steps and --batch-size must be at least 1")
    _check_filter_options(opts)
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
    shard_index, shard_count = _shard(opts, cpu=str(device) == "cpu")

    plan = make_plan(raw, info, generator_dir, opts, mode)  # checks a filter model too: before an ID is claimed
    target = _resolve_target(raw, opts)
    if target.exists() and not opts.overwrite:
        raise NnaugError(f"{target} already exists: pass --overwrite to replace it, or --output-id for another ID")
    work = partial_dir(target)
    resuming = opts.resume or opts.merge or shard_count > 1
    started_here = shard_count == 1 and not (resuming and (work / PLAN).is_file())
    try:
        _open_work_folder(work, plan, resume=resuming)
        return _run(raw, info, generator_dir, plan, work, target, opts, summary, (shard_index, shard_count), device,
                    progress)
    except Exception:
        # a run that fails before its first batch (weights that do not load, a scoring model nnU-Net cannot
        # read) gives back the ID it claimed; one that got further keeps its work for --resume
        if started_here and not list((work / PROGRESS).glob("*.done")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _run(raw, info, generator_dir: Path, plan: dict, work: Path, target: Path, opts: SynthesisOptions, summary,
         shard: tuple[int, int], device: str, progress: bool) -> Path | None:
    """The batches of this shard that are not done, then the assembly (or, filtered, nnaug.synthesis_filter)."""
    if "filter" in plan:
        from nnaug.synthesis_filter import synthesize_filtered

        return synthesize_filtered(raw, info, generator_dir, plan, work, target, opts, summary, shard, device, progress)

    shard_index, shard_count = shard
    batches = [list(range(s, min(s + opts.batch_size, plan["num_cases"])))
               for s in range(0, plan["num_cases"], opts.batch_size)]
    mine = [(k, b) for k, b in enumerate(batches) if k % shard_count == shard_index and not _done(work, k)]
    if mine and not opts.merge:
        generator = load_generator(generator_dir, device=device)
        real_labels = PairDataset(raw, info["resolution"], progress=False).labels if plan["mode"] == "mask-conditioned" else None
        _generate(raw, info, generator, plan, mine, real_labels, opts, summary, work, progress)
    if not all(_done(work, k) for k in range(len(batches))):
        if opts.merge:
            missing = [k for k in range(len(batches)) if not _done(work, k)]
            raise NnaugError(f"--merge: {len(missing)} of {len(batches)} batches are not written yet (e.g. batch {missing[0]}): finish the shards first")
        return None  # another shard will assemble
    return _finalize(raw, plan, work, target, opts)


def _check_filter_options(opts: SynthesisOptions) -> None:
    if opts.min_consistency is None:
        if opts.filter_model is not None or opts.max_candidates is not None:
            raise NnaugError("--filter-model and --max-candidates only apply with --min-consistency D")
        return
    if not 0 < opts.min_consistency <= 1:  # also refuses nan
        raise NnaugError(f"--min-consistency must be a Dice in (0, 1], e.g. 0.7, got {opts.min_consistency}")
    if opts.max_candidates is not None and opts.max_candidates < 1:
        raise NnaugError(f"--max-candidates must be at least 1, got {opts.max_candidates}")


def _shard(opts: SynthesisOptions, cpu: bool) -> tuple[int, int]:
    if opts.shard:
        index, count = opts.shard
        if not (count >= 1 and 0 <= index < count):
            raise NnaugError(f"--shard i/n needs 0 <= i < n, got {index}/{count}")
        return index, count
    from accelerate import PartialState

    # `accelerate launch` with n processes: one shard each. On the CPU the processes only form a group
    # (gloo) when asked to: without cpu=True every one of them would think it is alone and write everything.
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise NnaugError(f"started as one of {launched} processes, but they do not form a group "
                         f"(accelerate sees {state.num_processes}): use --shard i/n for each, or `accelerate launch`")
    return state.process_index, state.num_processes


def _open_work_folder(work: Path, plan: dict, resume: bool) -> None:
    plan_file = work / PLAN
    if work.exists() and resume and plan_file.is_file():
        if json.loads(plan_file.read_text()) != plan:
            raise NnaugError(f"{work} was started with other settings (generator, sampler, seed, ratio...): "
                             "rerun with the same options, or without --resume to start over")
        return
    if work.exists() and not resume:
        shutil.rmtree(work)
    (work / PROGRESS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan, indent=1)  # temp names carry the pid: shards may write the plan at once


def _done(work: Path, batch_index: int) -> bool:
    return (work / PROGRESS / f"batch_{batch_index:06d}.done").exists()


def sample_fitting(generator, seeds: list[int], labels, sampler: str, steps: int):
    """``generator.sample``, in halves while the GPU runs out of memory (each case has its own seed,
    so the split does not change what is drawn)."""
    import torch

    try:
        return generator.sample(seeds, labels=labels, sampler=sampler, steps=steps)
    except torch.OutOfMemoryError:
        if len(seeds) == 1:
            raise NnaugError("one case does not fit in the GPU's memory: free the GPU, or use --device cpu") from None
    torch.cuda.empty_cache()
    half = len(seeds) // 2
    parts = [sample_fitting(generator, part, None if labels is None else labels[cut], sampler, steps)
             for part, cut in ((seeds[:half], slice(0, half)), (seeds[half:], slice(half, None)))]
    return torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]])


def sample_cases(raw, info, generator, plan, cases: list[dict], real_labels, opts, out_shape) -> list[tuple]:
    """(pixels as written, label uint8) per case of one batch, at ``out_shape``; an augmented mask's
    parameters go into its case dict."""
    import torch
    import torch.nn.functional as F

    real_index = {c.identifier: i for i, c in enumerate(raw.cases)}
    seeds = [c["seed"] for c in cases]
    labels = None
    if plan["mode"] == "mask-conditioned":
        masks = []
        for case in cases:
            label = real_labels[real_index[case["mask_from"]]].numpy()
            if plan["masks"] == "augmented":
                label, params = augment_mask(label, np.random.default_rng(case["seed"]), opts.augmentation)
                case["augmentation"] = params
            masks.append(torch.from_numpy(np.ascontiguousarray(label)))
        labels = torch.stack(masks)
    images, out_labels = sample_fitting(generator, seeds, labels, plan["sampler"], plan["steps"])
    images = F.interpolate(images.float(), size=tuple(out_shape), mode="bicubic", align_corners=False).clamp(-1, 1)
    out_labels = F.interpolate(out_labels[:, None].float(), size=tuple(out_shape), mode="nearest-exact")[:, 0].long()
    return [(from_model_range(image, info["intensity_mode"], info.get("intensity_low"), info.get("intensity_high")),
             label.astype(np.uint8)) for image, label in zip(images.numpy(), out_labels.numpy())]


def write_pair(raw: RawDataset, work: Path, name: str, pixels: np.ndarray, label: np.ndarray, props: dict) -> None:
    write_case(work, name, pixels, label, raw.file_ending, raw.channels_per_file, raw.reader_writer, props)


def _generate(raw, info, generator, plan, mine, real_labels, opts, summary, work: Path, progress: bool):
    from tqdm.auto import tqdm

    first_props = raw.read_case(raw.cases[0])[2]
    bar = tqdm(total=sum(len(b) for _, b in mine), desc=f"synthesizing {work.name[1:].removesuffix('.partial')}",
               unit="case", disable=None if progress else True)
    for batch_index, batch in mine:
        cases = [plan["cases"][i] for i in batch]
        pairs = sample_cases(raw, info, generator, plan, cases, real_labels, opts, summary.median_shape)
        for case, (pixels, label) in zip(cases, pairs):
            write_pair(raw, work, case["case"], pixels, label, first_props)
        if plan["mode"] == "mask-conditioned" and plan["masks"] == "augmented":
            (work / PROGRESS / f"batch_{batch_index:06d}.json").write_text(
                json.dumps({c["case"]: c.get("augmentation") for c in cases}))
        (work / PROGRESS / f"batch_{batch_index:06d}.done").touch()
        bar.update(len(batch))
    bar.close()


def _finalize(raw: RawDataset, plan: dict, work: Path, target: Path, opts: SynthesisOptions,
              select=None) -> Path | None:
    """Provenance, dataset.json, contact sheet (and for --mix the real cases and splits); then rename.

    ``select(work)``, when given (a filtered run), names the kept cases inside the lock and returns
    (provenance cases, extra provenance keys).
    """
    lock = work / ".finalizing"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        if not opts.resume and not opts.merge:
            return None  # another shard is assembling right now
    provenance = dict(plan)
    if select is not None:
        cases, extra = select(work)
        provenance.update(extra, cases=cases)
    augmentations = {}
    for extra in sorted((work / PROGRESS).glob("batch_*.json")):
        augmentations.update(json.loads(extra.read_text()))
    for case in provenance["cases"]:
        if case["case"] in augmentations:
            case["augmentation"] = augmentations[case["case"]]
    num_total = plan["num_cases"]
    if opts.mix:
        num_total += _copy_real_cases(raw, work)
    write_dataset_json(work, raw.dataset_json, num_total, name=target.name,
                       description=f"Synthetic pairs from {raw.name} made by nnaug ({plan['generator_model']}, {plan['mode']})")
    write_provenance(work, provenance)
    _contact_sheet(raw, work, [c["case"] for c in provenance["cases"][:16]])
    shutil.rmtree(work / PROGRESS)
    for name in (PLAN, ".finalizing"):
        (work / name).unlink(missing_ok=True)
    replace_dir(work, target)
    if opts.mix:
        write_mix_splits(target, [c.identifier for c in raw.cases], [c["case"] for c in provenance["cases"]])
    return target


def _copy_real_cases(raw: RawDataset, work: Path) -> int:
    for case in raw.cases:
        for f in case.image_files:
            shutil.copy2(f, work / "imagesTr" / Path(f).name)
        shutil.copy2(case.label_file, work / "labelsTr" / Path(case.label_file).name)
    return len(raw.cases)


def write_mix_splits(target: Path, real_ids: list[str], synthetic_ids: list[str]) -> Path:
    """5 folds over the real cases (nnU-Net's own split); synthetic cases only ever in ``train``."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnaug.dataset import preprocessed_root

    splits = generate_crossval_split(sorted(real_ids), seed=12345, n_splits=5)
    for fold in splits:
        fold["train"] = list(fold["train"]) + list(synthetic_ids)
    folder = preprocessed_root() / target.name
    folder.mkdir(parents=True, exist_ok=True)
    save_json(splits, str(folder / "splits_final.json"), sort_keys=False)
    return folder / "splits_final.json"


def _contact_sheet(raw: RawDataset, work: Path, identifiers: list[str]) -> None:
    from nnaug.dataset import Case, to_model_range
    from nnaug.visualize import contact_sheet

    images, labels = [], []
    for identifier in identifiers:
        files = [str(work / "imagesTr" / f"{identifier}_{k:04d}{raw.file_ending}") for k in range(len(raw.channels_per_file))]
        image, label, _ = raw.read_case(Case(identifier, files, str(work / "labelsTr" / f"{identifier}{raw.file_ending}")))
        images.append(to_model_range(image, raw.intensity_mode))
        labels.append(label)
    contact_sheet(np.stack(images), np.stack(labels), work / "contact_sheet.png")
