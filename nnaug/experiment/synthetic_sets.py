"""The synthetic datasets a sweep pretrains on: found by their plan (reused), resumed, or made."""
from __future__ import annotations

from pathlib import Path

from nnaug.experiment.plan import SynthesisChoice, ratio_label


SYNTHESIS_BATCH = 16


def _options(ratio: float, generator: Path, choice: SynthesisChoice, device: str, **extra):
    from nnaug.synthesis import SynthesisOptions

    return SynthesisOptions(ratio=ratio, generator=generator, mode=choice.mode, masks=choice.masks,
                            sampler=choice.sampler, steps=choice.steps, max_components=choice.max_components,
                            batch_size=SYNTHESIS_BATCH, device=device, **extra)


def wanted_identity(raw, sha: str, ratio: float, choice: SynthesisChoice, min_consistency: float | None = None,
                    filter_model: Path | None = None) -> dict:
    """The identity (:func:`nnaug.synthesis.plan.plan_identity`) of the set the sweep would make: a set of that
    identity is reused. A filtered set is only reused for the same rule (threshold and scoring model, most
    components), and an unfiltered one never stands in for a filtered one or the other way round."""
    from nnaug.synthesis.plan import plan_header, plan_identity

    opts = _options(ratio, Path("."), choice, "cpu")
    header = plan_header(raw, sha, opts, choice.mode)
    rule = {"max_components": choice.max_components} if choice.max_components is not None else {}
    if min_consistency is not None:
        rule.update({"min_consistency": float(min_consistency), "model": str(filter_model)})
    if rule:
        header["filter"] = rule
    return plan_identity(header)


def find_synthetic(raw, sha: str, ratio: float, choice: SynthesisChoice, min_consistency: float | None = None,
                   filter_model: Path | None = None) -> Path | None:
    """A finished synthetic dataset in $nnUNet_raw made from ``raw`` by this generator with these options (newest ID)."""
    from nnaug.nnunet_paths import parse_dataset_id, raw_root
    from nnaug.io import load_json_or_none
    from nnaug.provenance import read_provenance

    from nnaug.synthesis.plan import plan_identity

    wanted = wanted_identity(raw, sha, ratio, choice, min_consistency, filter_model)
    found = []
    for folder in raw_root().glob("Dataset*_*"):
        provenance = read_provenance(folder) if folder.is_dir() else None
        if provenance is None or plan_identity(provenance) != wanted:
            continue
        dataset_json = load_json_or_none(folder / "dataset.json") or {}
        if dataset_json.get("numTraining") != provenance.get("num_cases"):
            continue  # a --mix dataset (real cases inside), not a pure synthetic set
        found.append((parse_dataset_id(folder.name) or 0, folder))
    return max(found, key=lambda f: f[0])[1] if found else None


def ensure_synthetic(raw, generator: Path, sha: str, ratio: float, choice: SynthesisChoice, device: str,
                     lock_folder: Path, log=print, min_consistency: float | None = None,
                     filter_model: Path | None = None) -> Path:
    """The synthetic dataset of ``ratio`` (filtered at ``min_consistency`` by ``filter_model`` when given):
    reused, or an interrupted synthesis resumed, or made anew."""
    from nnaug.nnunet_paths import parse_dataset_id, raw_root
    from nnaug.generators import read_info
    from nnaug.io import file_lock, load_json_or_none
    from nnaug.synthesis import synthesize
    from nnaug.synthesis.plan import make_plan, synthetic_name
    from nnaug.synthesis.work_folder import PLAN

    wanted = (min_consistency, filter_model)
    existing = find_synthetic(raw, sha, ratio, choice, *wanted)
    if existing is not None:
        return existing
    extra = {"min_consistency": min_consistency, "filter_model": filter_model} if min_consistency else {}
    with file_lock(lock_folder / ".synthesis.lock", "waiting for another worker synthesizing for this generator"):
        existing = find_synthetic(raw, sha, ratio, choice, *wanted)
        if existing is not None:
            return existing
        opts = _options(ratio, generator, choice, device, **extra)
        plan = make_plan(raw, read_info(generator), generator, opts, choice.mode)
        for partial in sorted(raw_root().glob(f".Dataset*_{synthetic_name(raw, False)}.partial")):
            if load_json_or_none(partial / PLAN) == plan:
                dataset_id = parse_dataset_id(partial.name[1:].removesuffix(".partial"))
                log(f"nnaug sweep: resuming the synthesis of ratio {ratio_label(ratio)} in {partial}")
                return synthesize(raw.name, _options(ratio, generator, choice, device, output_id=dataset_id, resume=True,
                                                     **extra))
        log(f"nnaug sweep: synthesizing ratio {ratio_label(ratio)} ({plan['num_cases']} cases, {choice.mode}, "
            f"{choice.sampler} {choice.steps} steps"
            + (f", kept at mask consistency >= {min_consistency:g}" if min_consistency else "")
            + (f", masks of at most {choice.max_components} components" if choice.max_components else "")
            + f") with {generator}")
        return synthesize(raw.name, opts)


class SyntheticSets:
    """The sweep's synthetic datasets by (ratio, filter threshold), made or reused when first asked for.

    Filtered sets are scored by ``judge``, the sweep's own real-only run of seed 0 (the same training
    cases, never a test case): they are first asked for when an arm that needs them trains, after that run
    (it is the sweep's first task). ``get`` looks without making."""

    def __init__(self, raw, generator: Path, sha: str, choice: SynthesisChoice, device: str, folder: Path,
                 judge: Path, log=print):
        self.raw, self.generator, self.sha, self.choice, self.device = raw, generator, sha, choice, device
        self.folder, self.judge, self.log, self.made = folder, judge, log, {}

    def get(self, key) -> Path | None:
        return self.made.get(key)

    def for_arm(self, arm, make: bool = True) -> Path | None:
        """The raw dataset an arm pretrains on: its synthetic set, the copy of the real cases (real-twice), or
        None (a one-phase arm). ``make=False``: only what is already there."""
        if arm.kind == "real-twice":
            from nnaug.experiment.real_copy import ensure_real_copy, find_real_copy

            return ensure_real_copy(self.raw, self.folder, self.log) if make else find_real_copy(self.raw)
        if arm.synthesis_key is None:
            return None
        return self[arm.synthesis_key] if make else self.get(arm.synthesis_key)

    def __getitem__(self, key) -> Path:
        if key not in self.made:
            ratio, threshold = key
            self.made[key] = ensure_synthetic(self.raw, self.generator, self.sha, ratio, self.choice, self.device,
                                              self.folder, self.log, threshold, self.judge if threshold else None)
            self.log(f"nnaug sweep: ratio {ratio_label(ratio)}"
                     + (f", mask consistency >= {threshold:g}" if threshold else "") + f": {self.made[key].name}")
        return self.made[key]

