"""The unfiltered run: this shard's batches that are not done, then the assembly by whichever shard is last."""
from __future__ import annotations

import json
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.synthesis.sampling import real_labels, sample_cases
from nnaug.synthesis.work_folder import (SynthesisRun, batch_done, batch_record_path, finalize, mark_batch_done,
                                         write_pair)


def run_plain(run: SynthesisRun) -> Path | None:
    plan, work, opts = run.plan, run.work, run.opts
    shard_index, shard_count = run.shard
    batches = [list(range(s, min(s + opts.batch_size, plan["num_cases"])))
               for s in range(0, plan["num_cases"], opts.batch_size)]
    mine = [(k, b) for k, b in enumerate(batches) if k % shard_count == shard_index and not batch_done(work, k)]
    if mine and not opts.merge:
        from nnaug.generators import load_generator

        _generate(run, load_generator(run.generator_dir, device=run.device), mine)
    if not all(batch_done(work, k) for k in range(len(batches))):
        if opts.merge:
            missing = [k for k in range(len(batches)) if not batch_done(work, k)]
            raise NnaugError(f"--merge: {len(missing)} of {len(batches)} batches are not written yet (e.g. batch {missing[0]}): finish the shards first")
        return None  # another shard will assemble
    return finalize(run)


def _generate(run: SynthesisRun, generator, mine: list[tuple[int, list[int]]]) -> None:
    from tqdm.auto import tqdm

    raw, plan, work = run.raw, run.plan, run.work
    labels_of_real = real_labels(run)
    first_props = raw.read_case(raw.cases[0])[2]
    bar = tqdm(total=sum(len(b) for _, b in mine), desc=f"synthesizing {work.name[1:].removesuffix('.partial')}",
               unit="case", disable=None if run.progress else True)
    for batch_index, batch in mine:
        cases = [plan["cases"][i] for i in batch]
        pairs = sample_cases(run, generator, cases, labels_of_real)
        for case, (pixels, label) in zip(cases, pairs):
            write_pair(raw, work, case["case"], pixels, label, first_props)
        if plan["mode"] == "mask-conditioned" and plan["masks"] == "augmented":
            batch_record_path(work, batch_index, "batch").write_text(
                json.dumps({c["case"]: c.get("augmentation") for c in cases}))
        mark_batch_done(work, batch_index)
        bar.update(len(batch))
    bar.close()
