"""The synthesis plan: everything that decides the output bytes. A resumed run or another shard must find the
same plan; ``nnaug sweep`` reuses a synthetic set whose :func:`plan_identity` is the one it would make."""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.dataset import RawDataset
from nnaug.errors import NnaugError
from nnaug.generators import checkpoint_sha256
from nnaug.synthesis.options import SynthesisOptions

CANDIDATES_PER_CASE = 10  # a filter's default cap: 10 candidates per kept case (acceptance below 10 % is refused)


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


def candidate(raw: RawDataset, seed: int, mode: str, index: int, name: str) -> dict:
    """Case ``index`` of the seed stream: its seed and (mask-conditioned) the real case its mask comes from.
    A filtered run's candidate *i* is the unfiltered run's case *i*."""
    case = {"case": name, "seed": case_seed(seed, index)}
    if mode == "mask-conditioned":
        case["mask_from"] = raw.cases[index % len(raw.cases)].identifier
    return case


def make_plan(raw: RawDataset, info: dict, generator_dir: Path, opts: SynthesisOptions, mode: str) -> dict:
    """Everything that decides the output bytes (a filter's model is checked here: before an ID is claimed)."""
    count = int(round(opts.ratio * len(raw.cases)))
    if count < 1:
        raise NnaugError(f"--ratio {opts.ratio} x {len(raw.cases)} cases rounds to 0 synthetic cases: use a larger ratio")
    filtering = filter_plan(raw, opts, count) if opts.filtered else None
    # a filter's kept cases are only known as candidates are scored
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
    header's keys, and a filter's rule (threshold, scoring model, most components); not where the generator lies
    or the batch size."""
    identity = {key: plan.get(key) for key in ("source_dataset", "checkpoint_sha256", "mode", "masks",
                                               "mask_augmentation", "sampler", "steps", "seed", "num_real_cases")}
    identity = json.loads(json.dumps(identity))  # as a provenance file holds it: tuples become lists
    try:
        identity["ratio"] = float(plan.get("ratio"))
    except (TypeError, ValueError):
        identity["ratio"] = None
    record = plan.get("filter") or {}
    model = record.get("model")
    identity["filter"] = (record.get("min_consistency"), str(Path(str(model)).resolve()) if model else None,
                          record.get("max_components"))
    return identity


def resolve_filter_model(raw: RawDataset, model) -> tuple[Path, list]:
    """(training output folder, folds with checkpoint_final.pth): ``model``, checked as nnU-Net will load it
    (:func:`nnaug.nnunet_results.check_model_folder`), or the real-only model ``nnaug report`` uses for mask
    consistency."""
    from nnaug.nnunet_results import check_model_folder, find_real_only_model

    if model is None:
        found = find_real_only_model(raw.name)
        if found is None:
            raise NnaugError(f"--min-consistency needs a real-only nnU-Net trained on {raw.name} and none is under "
                             f"$nnUNet_results/{raw.name}: train one (nnUNetv2_train {raw.dataset_id} 2d 0 -tr "
                             "nnUNetTrainer_nnaug) or pass --filter-model DIR")
        model, folds, what = found[0], found[1], "the real-only model"
    else:
        model, folds, what = Path(model), None, "--filter-model"
    checked = check_model_folder(model, what, folds=folds)
    if checked.labels != raw.dataset_json.get("labels"):
        raise NnaugError(f"{what} {model} segments labels {checked.labels}, but {raw.name} has "
                         f"{raw.dataset_json.get('labels')}: use a model trained on {raw.name}")
    return checked.folder, checked.folds


def filter_plan(raw: RawDataset, opts: SynthesisOptions, count: int) -> dict:
    """The filter's part of the synthesis plan: the most components, the consistency threshold and its model
    (folder, folds, weights hashes), the cap on candidates."""
    from nnaug.io import file_sha256
    from nnaug.nnunet_results import checkpoint_path

    cap = opts.max_candidates if opts.max_candidates is not None else CANDIDATES_PER_CASE * count
    if cap < count:
        raise NnaugError(f"--max-candidates {cap} is below the {count} cases to keep: allow at least {count}")
    rule = {"max_components": opts.max_components, "max_candidates": int(cap)}
    if opts.min_consistency is None:
        return rule
    model, folds = resolve_filter_model(raw, opts.filter_model)
    return {"min_consistency": float(opts.min_consistency), "model": str(Path(model).resolve()), "folds": folds,
            "checkpoint_sha256": {str(f): file_sha256(checkpoint_path(model, f)) for f in folds}, **rule}
