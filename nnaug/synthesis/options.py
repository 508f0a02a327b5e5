"""What the user asked of ``nnaug synthesize``, and the checks that need nothing but the options."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nnaug.errors import NnaugError
from nnaug.mask_augment import MaskAugmentation

# Cases per batch (the unit of work, resume and sharding). A GPU gets large batches to keep it busy; a batch
# that does not fit is sampled in halves (per-case seeds keep the output the same).
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


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
    min_consistency: float | None = None  # keep only candidates whose mask consistency reaches it (synthesis.filtered)
    filter_model: Path | None = None  # nnU-Net training output folder that scores them (default: the report's real-only model)
    max_candidates: int | None = None  # candidates tried at most (default: plan.CANDIDATES_PER_CASE x cases)
    max_components: int | None = None  # keep only candidates whose every label has at most N connected components

    @property
    def filtered(self) -> bool:
        """Are candidates sampled and only some kept (synthesis.filtered)?"""
        return self.min_consistency is not None or self.max_components is not None


def check_options(opts: SynthesisOptions) -> None:
    """Refuse values no dataset could make sense of, before anything is read or written."""
    if not 0 < opts.ratio < 1e6:  # also refuses nan and inf
        raise NnaugError(f"--ratio must be a number > 0 (synthetic cases per real case, e.g. 5.0 for 500 %), got {opts.ratio}")
    if (opts.steps is not None and opts.steps < 1) or (opts.batch_size is not None and opts.batch_size < 1):
        raise NnaugError("--steps and --batch-size must be at least 1")
    if opts.min_consistency is None and opts.filter_model is not None:
        raise NnaugError("--filter-model only applies with --min-consistency D (it scores mask consistency)")
    if not opts.filtered:
        if opts.max_candidates is not None:
            raise NnaugError("--max-candidates only applies with a filter: --min-consistency D or --max-components N")
        return
    if opts.min_consistency is not None and not 0 < opts.min_consistency <= 1:  # also refuses nan
        raise NnaugError(f"--min-consistency must be a Dice in (0, 1], e.g. 0.7, got {opts.min_consistency}")
    if opts.max_components is not None and opts.max_components < 1:
        raise NnaugError(f"--max-components must be at least 1 (connected components per label), got {opts.max_components}")
    if opts.max_candidates is not None and opts.max_candidates < 1:
        raise NnaugError(f"--max-candidates must be at least 1, got {opts.max_candidates}")


def resolve_shard(opts: SynthesisOptions, cpu: bool) -> tuple[int, int]:
    """(index, count) of this process: ``--shard i/n``, or its place among ``accelerate launch``'s processes."""
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
