"""Confidence intervals for Dice over repeated trainings (seeds) × evaluated cases.

One method, used for every interval of ``nnaug sweep``: a **two-way percentile bootstrap** over
seeds and cases. Each resample draws the seeds with replacement and, independently, the cases with
replacement (the "pigeonhole" bootstrap of a crossed design, Owen 2007), and takes the mean over
that seeds × cases grid. The interval therefore contains both sources of noise a Dice comparison
has: which training run you got (seeds) and which cases happened to be evaluated (cases). With
one seed it is the ordinary percentile bootstrap over cases (``tests/test_stats.py`` checks it
against ``scipy.stats.bootstrap``).

A paired difference is the same bootstrap applied to ``a[s, c] - b[s, c]``: the two arms are
compared on the same cases and the same seed indices.

Values are ``[seeds, cases]`` arrays; NaN marks a missing value (e.g. a label that is absent from
both the reference and the prediction of a case), which is left out of every mean it would enter.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHOD = ("two-way percentile bootstrap over seeds and cases (each resample draws seeds and cases "
          "with replacement, independently)")
DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval; ``n_seeds``/``n_cases`` are the grid it was computed on."""

    mean: float
    low: float
    high: float
    confidence: float
    n_seeds: int
    n_cases: int

    @property
    def includes_zero(self) -> bool:
        return bool(self.low <= 0.0 <= self.high)

    def as_dict(self) -> dict:
        return {**asdict(self), "includes_zero": self.includes_zero}


def _grid(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"values must be a non-empty [seeds, cases] array, got shape {x.shape}")
    return x


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 chunk: int = 1000) -> Interval:
    """Mean of ``values`` ([seeds, cases], or [cases] for one seed) with a two-way percentile bootstrap CI.

    Deterministic for a given ``seed``. A grid without any finite value gives NaNs.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _grid(values)
    n_seeds, n_cases = x.shape
    present = np.isfinite(x)
    if not present.any():
        nan = float("nan")
        return Interval(nan, nan, nan, confidence, n_seeds, n_cases)
    filled = np.where(present, x, 0.0)
    weight = present.astype(np.float64)
    mean = float(filled.sum() / weight.sum())
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        # multiplicities of each seed and each case in the resample (= drawing indices with replacement)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=b).astype(np.float64)
        case_counts = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=b).astype(np.float64)
        numerator = ((seed_counts @ filled) * case_counts).sum(axis=1)
        denominator = ((seed_counts @ weight) * case_counts).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(numerator / denominator)
    stats = np.concatenate(stats)
    stats = stats[np.isfinite(stats)]  # resamples that drew only missing values
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), confidence, n_seeds, n_cases)


def paired_difference(a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over the same seeds × cases, with the CI of :func:`bootstrap_ci`.

    A pair with a missing value on either side is left out.
    """
    a, b = _grid(a), _grid(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same [seeds, cases] shape, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, confidence=confidence, resamples=resamples, seed=seed)


def describe(interval: Interval, digits: int = 4, signed: bool = False) -> str:
    """``0.7312 [0.7011, 0.7598]`` (``signed``: ``+0.0123 [-0.0101, +0.0350]``)."""
    if not np.isfinite(interval.mean):
        return "n/a"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{fmt.format(interval.mean)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"
