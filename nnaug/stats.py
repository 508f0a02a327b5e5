"""Confidence intervals for Dice over repeated trainings (seeds) × evaluated cases.

Values are ``[seeds, cases]`` arrays; NaN marks a missing value (e.g. a label absent from both the
reference and the prediction of a case), left out of every mean it would enter.

Every interval of ``nnaug sweep`` is the **wider of two intervals** (:func:`mean_ci`, :func:`difference_ci`):

* a **two-way percentile bootstrap** (:func:`bootstrap_ci`, :func:`bootstrap_difference`): each resample
  draws the cases with replacement and, independently, the seeds with replacement (the "pigeonhole"
  bootstrap of a crossed design, Owen 2007). With one seed it is the ordinary percentile bootstrap over
  cases (``tests/test_stats.py`` checks it against ``scipy.stats.bootstrap``). With 2-5 seeds it is too
  narrow when run-to-run noise dominates: drawing 3 seeds from 3 cannot show how far a 4th would fall.
* a **two-way random-effects t-interval** (:func:`t_interval`): Dice = mean + seed effect + case effect
  + residual; the variance of the mean is estimated from the ANOVA mean squares and the t quantile
  takes Satterthwaite's degrees of freedom, which are small when few seeds carry most of the variance.

A difference between two arms is **paired by case** (both arms are evaluated on the same cases) and
treats the **seeds of each arm as independent** (two arms share no randomness at the same seed
number), so relabelling the seeds of an arm cannot change it. With one seed per arm the run-to-run
noise cannot be estimated at all; the interval then covers the cases only and says so (``note``).
Simulated coverage of the method: docs/sweep.md and ``tests/test_stats.py::test_coverage``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

METHOD = ("the wider of a two-way percentile bootstrap (cases and seeds resampled independently, seeds "
          "independently per arm; differences paired by case) and a two-way random-effects t-interval "
          "(Satterthwaite df)")
DEFAULT_RESAMPLES = 10_000
ONE_SEED_NOTE = "1 seed: run-to-run (seed) noise not included"


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval; ``n_seeds``/``n_cases`` are the grid it was computed on
    (for a difference: the fewer seeds of the two arms). ``note``: what the interval leaves out."""

    mean: float
    low: float
    high: float
    confidence: float
    n_seeds: int
    n_cases: int
    df: float | None = None
    note: str | None = None

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
    return _canonical(x)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _canonical(x: np.ndarray) -> np.ndarray:
    """Seeds (rows) sorted by their mean: the bootstrap then cannot depend on how the seeds are numbered."""
    keys = np.array([np.nanmean(r) if np.isfinite(r).any() else np.inf for r in x])
    return x[np.argsort(keys, kind="stable")]


def _grand_mean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _resampled_means(x: np.ndarray, case_counts: np.ndarray, rng) -> np.ndarray:
    """Means of ``x`` over resampled seeds (drawn here) × the given case multiplicities [b, cases]."""
    n_seeds = x.shape[0]
    present = np.isfinite(x)
    filled, weight = np.where(present, x, 0.0), present.astype(np.float64)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=len(case_counts)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((seed_counts @ filled) * case_counts).sum(1) / ((seed_counts @ weight) * case_counts).sum(1)


def _bootstrap(grids: list[np.ndarray], signs: list[float], confidence: float, resamples: int, seed: int,
               chunk: int = 1000) -> tuple[float, float]:
    """Percentile interval of sum(sign * mean(grid)) with cases drawn once per resample (shared by the
    grids: pairing by case) and each grid's seeds drawn on their own."""
    rng = np.random.default_rng(seed)
    n_cases = grids[0].shape[1]
    stats = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        case_counts = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=b).astype(np.float64)
        stats.append(sum(s * _resampled_means(g, case_counts, rng) for g, s in zip(grids, signs)))
    stats = np.concatenate(stats)
    stats = stats[np.isfinite(stats)]  # resamples that drew only missing values
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Mean of ``values`` ([seeds, cases], or [cases] for one seed) with the two-way percentile bootstrap
    CI alone. Deterministic for a given ``seed``. A grid without any finite value gives NaNs."""
    _check_confidence(confidence)
    x = _grid(values)
    mean = _grand_mean(x)
    if not np.isfinite(mean):
        return Interval(mean, mean, mean, confidence, *x.shape)
    low, high = _bootstrap([x], [1.0], confidence, resamples, seed)
    return Interval(mean, low, high, confidence, *x.shape)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both grids on the cases that have a value in each arm (pairs with a gap are left out)."""
    a, b = _grid(a), _grid(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired values need the same cases, got {a.shape[1]} and {b.shape[1]} cases")
    keep = np.isfinite(a).any(0) & np.isfinite(b).any(0)
    return a[:, keep], b[:, keep]


def bootstrap_difference(a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Mean of arm ``a`` minus mean of arm ``b`` ([seeds_a, cases], [seeds_b, cases], same cases) with the
    two-way bootstrap alone: cases drawn once for both arms, each arm's seeds drawn on their own."""
    _check_confidence(confidence)
    a, b = _pair(a, b)
    n_seeds = min(a.shape[0], b.shape[0])
    if a.shape[1] == 0:
        return Interval(float("nan"), float("nan"), float("nan"), confidence, n_seeds, 0)
    low, high = _bootstrap([a, b], [1.0, -1.0], confidence, resamples, seed)
    return Interval(_grand_mean(a) - _grand_mean(b), low, high, confidence, n_seeds, a.shape[1])


def _components(x: np.ndarray) -> tuple[list[tuple[float, float]], np.ndarray]:
    """One arm's variance terms of the grand mean, as (value, df) with a sign in the value, and its case means.

    Seed term: var(seed means)/S (= MS_seed / (S C)); residual term: -MS_residual/(S C), from the cases
    every seed evaluated. The case term is added by the caller (it is shared by the arms of a difference).
    """
    n_seeds = x.shape[0]
    with warnings.catch_warnings():  # a case without any value has no mean (NaN, dropped by the caller)
        warnings.simplefilter("ignore", RuntimeWarning)
        case_means = np.nanmean(x, axis=0)
    if n_seeds < 2:
        return [], case_means
    seed_means = np.nanmean(x, axis=1)
    terms = [(float(np.var(seed_means, ddof=1)) / n_seeds, n_seeds - 1)]
    complete = x[:, np.isfinite(x).all(0)]
    if complete.shape[1] >= 2:
        r = complete - complete.mean(1, keepdims=True) - complete.mean(0, keepdims=True) + complete.mean()
        df = (n_seeds - 1) * (complete.shape[1] - 1)
        terms.append((-float((r ** 2).sum() / df) / (n_seeds * x.shape[1]), df))
    return terms, case_means


def t_interval(a, b=None, confidence: float = 0.95) -> Interval:
    """Two-way random-effects t-interval of the mean of ``a`` (or of mean(a) - mean(b), paired by case).

    Var(mean) = MS_seed/(SC) + MS_case/(SC) - MS_residual/(SC) for one arm; for a difference the case term
    is the variance of the per-case differences of the seed-averaged Dice, and each arm brings its own
    seed and residual terms. Satterthwaite's df; the estimate is kept at least as large as each of its
    non-negative parts (whose expectations are each below the true variance).
    """
    _check_confidence(confidence)
    grids = [_grid(a)] if b is None else list(_pair(a, b))
    terms, case_values = [], 0.0
    for sign, x in zip((1.0, -1.0), grids):
        arm_terms, case_means = _components(x)
        terms += arm_terms
        case_values = case_values + sign * case_means
    case_values = np.asarray(case_values)
    case_values = case_values[np.isfinite(case_values)]
    n_seeds, n_cases = min(g.shape[0] for g in grids), len(case_values)
    mean = float(sum(s * _grand_mean(g) for s, g in zip((1.0, -1.0), grids)))
    if n_cases < 2 or not np.isfinite(mean):
        nan = float("nan")
        return Interval(mean if n_cases else nan, nan, nan, confidence, n_seeds, n_cases)
    terms.append((float(np.var(case_values, ddof=1)) / n_cases, n_cases - 1))
    seed_part = sum(v for v, _ in terms[:-1] if v > 0)  # the arms' MS_seed/(SC) terms
    variance = max(sum(v for v, _ in terms), terms[-1][0], seed_part)
    denominator = sum(v * v / df for v, df in terms if df > 0)
    df = variance ** 2 / denominator if denominator > 0 else float(n_cases - 1)
    df = float(min(max(df, 1.0), sum(d for _, d in terms)))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * np.sqrt(variance)
    note = ONE_SEED_NOTE if n_seeds < 2 else None
    return Interval(mean, float(mean - half), float(mean + half), confidence, n_seeds, n_cases, df=df, note=note)


def _wider(boot: Interval, t: Interval) -> Interval:
    if not np.isfinite(t.low):
        return boot
    return Interval(boot.mean, min(boot.low, t.low), max(boot.high, t.high), boot.confidence, boot.n_seeds,
                    boot.n_cases, df=t.df, note=t.note)


def mean_ci(values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Mean of one arm's ``[seeds, cases]`` Dice with the seed-robust CI (see the module docstring)."""
    return _wider(bootstrap_ci(values, confidence, resamples, seed), t_interval(values, confidence=confidence))


def difference_ci(a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """mean(a) - mean(b), paired by case, seeds independent per arm, with the seed-robust CI."""
    return _wider(bootstrap_difference(a, b, confidence, resamples, seed), t_interval(a, b, confidence))


def paired_difference(a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """:func:`difference_ci` (the name older callers use)."""
    return difference_ci(a, b, confidence, resamples, seed)


def describe(interval: Interval, digits: int = 4, signed: bool = False) -> str:
    """``0.7312 [0.7011, 0.7598]`` (``signed``: ``+0.0123 [-0.0101, +0.0350]``)."""
    if not np.isfinite(interval.mean):
        return "n/a"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{fmt.format(interval.mean)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"
