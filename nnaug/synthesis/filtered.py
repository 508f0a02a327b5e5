"""``nnaug synthesize --min-consistency D`` / ``--max-components N``: keep only the pairs that pass.

Two tests, alone or together: mask consistency (the image shows its mask: the Dice of the mask with a
real-only nnU-Net's prediction, at least D) and mask shape (no label of the mask has more than N
connected components, :func:`nnaug.mask_realism.most_components`: a generator that draws three blobs
where every real mask has one polyp). Candidate *i* is case *i* of the unfiltered seed stream (same
seed, same real mask in turn), so a filtered set is a subset of the unfiltered one made with the same
options. Candidates are sampled and scored in fixed blocks of ``--batch-size`` (block *k*: candidates
*kB* … *kB*+B−1): each block is scored (consistency by one real-only nnU-Net loaded once per process,
:func:`nnaug.mask_consistency.load_predictor`, the report's own inference on the arrays as written), its
scores are recorded and the candidates that pass are written as ``cand_<i>`` before the block's done marker.

Acceptance is decided in candidate-index order over the blocks done from block 0 on: the kept cases
are the first round(R × N) candidates that pass, renamed ``synth_000000`` … in that order. So a
killed run (``--resume``), shards and one process keep the same cases and bytes, whatever block
finished first. The run is refused (one line, the partial folder removed) when the cap on
candidates is reached, or as soon as even the optimistic end of a 99.9 % Clopper–Pearson interval
of the acceptance rate cannot fill the quota within the cap.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnaug.errors import NnaugError
from nnaug.synthesis.plan import candidate
from nnaug.synthesis.sampling import real_labels, sample_cases
from nnaug.synthesis.work_folder import (PLAN, SynthesisRun, batch_done, batch_record_path, finalize, mark_batch_done,
                                         write_pair)

CONFIDENCE = 0.999  # one-sided, for the early refusal: a reachable quota is refused with well under 1 % chance
CANDIDATE = "cand_"


@dataclass
class Outcome:
    """What the blocks done so far (from block 0 on, without a gap) decide."""

    state: str  # done | refused | more
    tried: int = 0  # candidates decided: up to the one that filled the quota (done), or all seen
    kept: list[int] = field(default_factory=list)  # candidate indices kept, in order
    scores: dict[int, float] = field(default_factory=dict)  # every score seen (candidate index -> Dice)
    records: dict[int, dict] = field(default_factory=dict)  # block index -> its record


def _record_path(work: Path, block: int) -> Path:
    return batch_record_path(work, block, "scores")


def passes(rule: dict, record: dict) -> list[bool]:
    """Which candidates of one block's record pass the filter ``rule`` (the plan's ``filter``)."""
    threshold, most = rule.get("min_consistency"), rule.get("max_components")
    count = len(record["components"] if "components" in record else record["scores"])
    return [(threshold is None or record["scores"][j] >= threshold)
            and (most is None or record["components"][j] <= most) for j in range(count)]


def describe(rule: dict) -> str:
    """The filter in the words of its options, e.g. ``--min-consistency 0.7 --max-components 1``."""
    parts = [f"--min-consistency {rule['min_consistency']:g}" if rule.get("min_consistency") is not None else "",
             f"--max-components {rule['max_components']}" if rule.get("max_components") is not None else ""]
    return " ".join(p for p in parts if p)


def decide(work: Path, plan: dict) -> Outcome:
    """Walk the candidates of the done blocks in index order: quota filled, refused, or more needed."""
    from scipy.stats import beta

    need, cap, size = plan["num_cases"], plan["filter"]["max_candidates"], plan["batch_size"]
    out = Outcome("more")
    passed, block = [], 0
    while block * size < cap and batch_done(work, block):
        record = json.loads(_record_path(work, block).read_text())
        out.records[block] = record
        out.scores.update({block * size + j: s for j, s in enumerate(record.get("scores") or [])})
        passed += passes(plan["filter"], record)
        block += 1
    if not passed:
        return out
    passed = np.array(passed)
    kept = np.cumsum(passed)
    tried = np.arange(1, len(passed) + 1)
    upper = np.where(kept < tried, beta.ppf(CONFIDENCE, kept + 1, np.maximum(tried - kept, 1)), 1.0)
    hopeless = kept + np.minimum(upper * (cap - tried), cap - tried) < need
    full = kept >= need
    first_full = int(np.argmax(full)) if full.any() else None
    first_hopeless = int(np.argmax(hopeless)) if hopeless.any() else None
    if first_full is not None and (first_hopeless is None or first_full < first_hopeless):
        out.state, out.tried = "done", first_full + 1
    elif first_hopeless is not None:
        out.state, out.tried = "refused", first_hopeless + 1
    else:
        out.tried = len(passed)
    out.kept = [int(i) for i in np.flatnonzero(passed[:out.tried])][:need]
    return out


def refusal(plan: dict, outcome: Outcome) -> NnaugError:
    f = plan["filter"]
    seen = [outcome.scores[i] for i in range(outcome.tried) if i in outcome.scores]
    rate = len(outcome.kept) / outcome.tried
    best = f", best score {max(seen):.3f}" if seen else ""
    return NnaugError(
        f"{describe(f)}: {len(outcome.kept)} of {outcome.tried} candidates tried passed (acceptance {rate:.1%}{best}), "
        f"too few for {plan['num_cases']} cases within {f['max_candidates']} candidates (--max-candidates): "
        "loosen the filter, allow more candidates, or use a better generator; nothing was written")


def run_filtered(run: SynthesisRun) -> Path | None:
    """Sample and score this shard's blocks until the done blocks decide; then assemble, or refuse."""
    plan, work, opts = run.plan, run.work, run.opts
    outcome = decide(work, plan)
    if outcome.state == "more" and not opts.merge:
        _work_blocks(run)
        outcome = decide(work, plan)
    if outcome.state == "refused":
        shutil.rmtree(work, ignore_errors=True)
        raise refusal(plan, outcome)
    if outcome.state == "more":
        if opts.merge:
            raise NnaugError(f"--merge: the blocks written so far keep {len(outcome.kept)} of {plan['num_cases']} "
                             "cases: finish the shards first")
        return None  # another shard is still scoring blocks this one needs
    return finalize(run, select=lambda folder: _promote(run.raw, plan, folder, outcome))


def _enough_below(work: Path, plan: dict, block: int) -> bool:
    """Do the done blocks before ``block`` already hold the quota (so ``block`` cannot be needed)?"""
    total = 0
    for k in range(block):
        if batch_done(work, k):
            total += sum(passes(plan["filter"], json.loads(_record_path(work, k).read_text())))
    return total >= plan["num_cases"]


def _work_blocks(run: SynthesisRun) -> None:
    from tqdm.auto import tqdm

    plan, work = run.plan, run.work
    index, count = run.shard
    size, cap = plan["batch_size"], plan["filter"]["max_candidates"]
    tools = None
    bar = tqdm(total=plan["num_cases"], desc=f"synthesizing {work.name[1:].removesuffix('.partial')} (kept)",
               unit="case", disable=None if run.progress else True)
    bar.update(len(decide(work, plan).kept))
    for block in range(index, math.ceil(cap / size), count):
        if batch_done(work, block):
            continue
        if not (work / PLAN).is_file():
            raise NnaugError(f"{work} was removed while this shard ran (another shard refused the threshold, "
                             "or the run was started over)")
        outcome = decide(work, plan)
        if outcome.state != "more" or _enough_below(work, plan, block):
            break
        tools = tools or _load_tools(run)
        record = _score_block(run, tools, block)
        bar.update(sum(passes(plan["filter"], record)))
        bar.set_postfix(tried=min((block + 1) * size, cap))
    bar.close()


def _load_tools(run: SynthesisRun) -> dict:
    """The generator, the scoring nnU-Net and the real masks: loaded once per process."""
    from nnaug.generators import load_generator
    from nnaug.mask_consistency import load_predictor

    f = run.plan["filter"]
    scoring = f.get("min_consistency") is not None
    return {"generator": load_generator(run.generator_dir, device=run.device),
            "predictor": load_predictor(f["model"], f["folds"], device=run.device) if scoring else None,
            "props": run.raw.read_case(run.raw.cases[0])[2],
            "real_labels": real_labels(run)}


def _score_block(run: SynthesisRun, tools: dict, block: int) -> dict:
    """Sample block ``block``, score every candidate, write those that pass, then the record."""
    from nnaug.io import write_json_atomic
    from nnaug.mask_consistency import predicted_dices
    from nnaug.mask_realism import most_components

    raw, plan, work = run.raw, run.plan, run.work
    size, cap = plan["batch_size"], plan["filter"]["max_candidates"]
    indices = range(block * size, min((block + 1) * size, cap))
    cases = [candidate(raw, plan["seed"], plan["mode"], i, f"{CANDIDATE}{i:06d}") for i in indices]
    pairs = sample_cases(run, tools["generator"], cases, tools["real_labels"])
    record = {"components": [most_components(label, [v for v in raw.label_values if v > 0]) for _, label in pairs],
              "augmentation": {str(i): c["augmentation"] for i, c in zip(indices, cases) if "augmentation" in c}}
    if tools["predictor"] is not None:
        # scored as nnU-Net's reader returns the written files: float32 [C, 1, H, W], the source's properties
        record["scores"] = predicted_dices(tools["predictor"], [p.astype(np.float32)[:, None] for p, _ in pairs],
                                           tools["props"], [label[None] for _, label in pairs])
    for case, (pixels, label), ok in zip(cases, pairs, passes(plan["filter"], record)):
        if ok:
            write_pair(raw, work, case["case"], pixels, label, tools["props"])
    write_json_atomic(_record_path(work, block), record)
    mark_batch_done(work, block)
    return record


def _promote(raw, plan: dict, work: Path, outcome: Outcome) -> tuple[list[dict], dict]:
    """Rename the kept candidates to ``synth_<j>`` in candidate order and drop the rest (repeatable after a kill)."""
    def files(name: str) -> list[Path]:
        images = [work / "imagesTr" / f"{name}_{k:04d}{raw.file_ending}" for k in range(len(raw.channels_per_file))]
        return [*images, work / "labelsTr" / f"{name}{raw.file_ending}"]

    size, cases, consistency = plan["batch_size"], [], {}
    for j, i in enumerate(outcome.kept):
        name = f"synth_{j:06d}"
        for source, dest in zip(files(f"{CANDIDATE}{i:06d}"), files(name)):
            if source.exists():
                os.replace(source, dest)
        case = {**candidate(raw, plan["seed"], plan["mode"], i, name), "candidate": i}
        record = outcome.records[i // size]
        if i in outcome.scores:
            case["consistency"] = consistency[name] = outcome.scores[i]
        if "components" in record:
            case["components"] = record["components"][i % size]
        augmentation = record["augmentation"].get(str(i))
        if augmentation is not None:
            case["augmentation"] = augmentation
        cases.append(case)
    for folder in ("imagesTr", "labelsTr"):
        for leftover in (work / folder).glob(f"{CANDIDATE}*"):
            leftover.unlink()
    summary = {**plan["filter"], "candidates_tried": outcome.tried, "kept": len(outcome.kept),
               "acceptance_rate": len(outcome.kept) / outcome.tried,
               "candidates_per_case": outcome.tried / len(outcome.kept)}
    return cases, {"filter": summary, "consistency": consistency}
