"""Diversity and coverage of a synthetic set: precision, recall, density and coverage in a feature space.

Precision and recall (Kynkäänniemi et al., *Improved Precision and Recall Metric for Assessing
Generative Models*, NeurIPS 2019) and density and coverage (Naeem et al., *Reliable Fidelity and
Diversity Metrics for Generative Models*, ICML 2020) put a ball around every sample, reaching its k-th
nearest neighbour in its own set:

- precision: the share of synthetic samples inside some real ball (do they look real?);
- recall: the share of real samples inside some synthetic ball (is every kind of real sample made?);
- density: how many real balls a synthetic sample is in, on average, ÷ k (about 1 for a matching set);
- coverage: the share of real samples whose own ball holds at least one synthetic sample (the
  recall measure that outliers among the synthetic samples cannot inflate). A generator that makes a
  few kinds of image (mode collapse) covers few real neighbourhoods.

:func:`prdc` is the formulas of Naeem et al.'s reference code (the ``prdc`` package, which
``tests/test_coverage.py`` checks it against) in NumPy. The numbers depend on k and on the set sizes,
so :func:`coverage_against_real` scores the synthetic set and the real set itself under the same
sizes: the real set is split into halves A and B at random; real vs real is B against A, synthetic is
as many synthetic samples as B holds against A; both averaged over :data:`REPEATS` splits.

The feature spaces (:func:`feature_space_rows`): the radiomic features FRD computes (z-scored by the
real images' statistics, as frd-score does; :func:`nnaug.frd.frd`'s ``keep_features``) and, when its
weights are there, the 2048-d InceptionV3 pool features of FID. Arrays in, numbers out: nothing is read here.
"""
from __future__ import annotations

import numpy as np

from nnaug.errors import NnaugError

K = 5
"""Nearest neighbours for the balls (Naeem et al.'s default)."""
REPEATS = 10
"""Random real half/half splits averaged over."""
LOW_COVERAGE = 0.75
"""Synthetic coverage below this share of the real set's own is called low in words."""


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64, clipped at 0 against rounding)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def _radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each sample to its k-th nearest neighbour in its own set (itself is the 0th)."""
    d = _distances(features, features)
    return np.partition(d, k, axis=1)[:, k]


def prdc(real_features, fake_features, k: int = K) -> dict:
    """Precision, recall, density and coverage of ``fake_features`` [M, D] against ``real_features`` [N, D]."""
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise NnaugError(f"PRDC needs two feature arrays [N, D] of one D, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise NnaugError(f"PRDC with k = {k} needs more than {k} samples per set, got {len(real)} and {len(fake)}")
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    d = _distances(real, fake)  # [N, M]
    inside_real = d < real_radii[:, None]
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((d < fake_radii[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum(axis=0).mean() / k),
            "coverage": float((d.min(axis=1) < real_radii).mean()),
            "k": int(k), "n_real": int(len(real)), "n_fake": int(len(fake))}


METRICS = ("precision", "recall", "density", "coverage")


def coverage_against_real(real_features, synthetic_features, k: int = K, repeats: int = REPEATS,
                          seed: int = 0) -> dict:
    """PRDC of the synthetic set and of the real set itself, at the same sizes (see the module docstring).

    Per split the real set is shuffled into halves A (reference) and B; real vs real is ``prdc(A, B)``,
    synthetic is ``prdc(A, S)`` for a random ``len(B)`` of the synthetic samples (all of them when there are
    fewer). k is lowered to fit small sets (``len(B) - 1``, at least 1). Returns ``dict(synthetic={metric:
    mean}, real={metric: mean}, synthetic_std=, real_std=, k=, reference_size=, compared_size=, repeats=,
    coverage_ratio=synthetic ÷ real coverage, low=coverage_ratio < LOW_COVERAGE)``.
    """
    real = np.asarray(real_features, np.float64)
    syn = np.asarray(synthetic_features, np.float64)
    if len(real) < 6:
        raise NnaugError(f"coverage needs at least 6 real samples (two halves of 3), got {len(real)}")
    if len(syn) < 3:
        raise NnaugError(f"coverage needs at least 3 synthetic samples, got {len(syn)}")
    rng = np.random.default_rng(seed)
    half = len(real) // 2
    size = min(len(real) - half, len(syn))
    k = max(1, min(k, size - 1, half - 1))
    real_runs, syn_runs = [], []
    for _ in range(repeats):
        order = rng.permutation(len(real))
        a, b = real[order[:half]], real[order[half:half + size]]
        s = syn[rng.choice(len(syn), size, replace=False)]
        real_runs.append(prdc(a, b, k))
        syn_runs.append(prdc(a, s, k))

    def mean(runs):
        return {m: float(np.mean([r[m] for r in runs])) for m in METRICS}

    def std(runs):
        return {m: float(np.std([r[m] for r in runs])) for m in METRICS}

    out = {"synthetic": mean(syn_runs), "real": mean(real_runs), "synthetic_std": std(syn_runs),
           "real_std": std(real_runs), "k": int(k), "reference_size": int(half), "compared_size": int(size),
           "repeats": int(repeats), "n_real": int(len(real)), "n_synthetic": int(len(syn))}
    own = out["real"]["coverage"]
    out["coverage_ratio"] = out["synthetic"]["coverage"] / own if own > 0 else None
    out["low"] = bool(out["coverage_ratio"] is not None and out["coverage_ratio"] < LOW_COVERAGE)
    return out


def feature_space_rows(radiomics: dict | None, inception: dict | None, notes: dict | None = None) -> list[dict]:
    """One result per feature space that has features: ``radiomics`` / ``inception`` are ``dict(real=, synthetic=)``
    arrays (or None); ``notes``: why a space is missing (shown instead of numbers)."""
    rows = []
    for space, features, what in (("radiomics", radiomics, "FRD's radiomic features, z-scored by the real images"),
                                  ("inception", inception, "InceptionV3 2048-d pool features (FID's)")):
        if features is None:
            if notes and notes.get(space):
                rows.append({"space": space, "what": what, "note": notes[space]})
            continue
        try:
            rows.append({"space": space, "what": what, "dimensions": int(np.asarray(features["real"]).shape[1]),
                         **coverage_against_real(features["real"], features["synthetic"])})
        except NnaugError as exc:
            rows.append({"space": space, "what": what, "note": f"n/a ({exc})"})
    return rows

