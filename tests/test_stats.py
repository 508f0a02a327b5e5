"""nnaug.stats: the seeds × cases bootstrap against scipy, missing values, and what the seeds add."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from nnaug.stats import bootstrap_ci, describe, paired_difference


def _scipy_percentile(data, statistic, paired=False):
    return sps.bootstrap(data, statistic, paired=paired, vectorized=False, n_resamples=10_000, method="percentile",
                         confidence_level=0.95, rng=np.random.default_rng(123)).confidence_interval


def test_one_seed_is_the_percentile_bootstrap_over_cases_as_scipy():
    rng = np.random.default_rng(0)
    dice = np.clip(rng.beta(5, 2, size=40), 0, 1)
    ours = bootstrap_ci(dice)
    ref = _scipy_percentile((dice,), np.mean)
    width = ref.high - ref.low
    assert ours.mean == pytest.approx(dice.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.05 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.05 * width)
    assert (ours.n_seeds, ours.n_cases) == (1, 40)


def test_one_seed_paired_difference_as_scipy_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = np.clip(rng.beta(5, 2, size=30), 0, 1)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, size=30), 0, 1)
    ours = paired_difference(a, b)
    ref = _scipy_percentile((a, b), lambda x, y: np.mean(x - y), paired=True)
    width = ref.high - ref.low
    assert ours.mean == pytest.approx(np.mean(a - b))
    assert ours.low == pytest.approx(ref.low, abs=0.05 * width) and ours.high == pytest.approx(ref.high, abs=0.05 * width)
    assert not ours.includes_zero and ours.low > 0  # a is better by 0.03 with little noise
    assert "includes_zero" in ours.as_dict()


def test_seed_noise_widens_the_interval_and_identical_seeds_do_not():
    rng = np.random.default_rng(2)
    cases = rng.beta(5, 2, size=40)
    one = bootstrap_ci(cases)
    same = bootstrap_ci(np.stack([cases, cases, cases]))  # three seeds that agree exactly: nothing to add
    width = one.high - one.low
    assert same.low == pytest.approx(one.low, abs=0.05 * width) and same.high == pytest.approx(one.high, abs=0.05 * width)
    shifted = np.stack([cases - 0.1, cases, cases + 0.1])  # run-to-run noise: the whole seed moves
    noisy = bootstrap_ci(shifted)
    assert noisy.mean == pytest.approx(cases.mean())
    assert noisy.high - noisy.low > 1.5 * width


def test_missing_values_are_left_out_and_pairs_with_a_gap_too():
    x = np.array([[0.5, np.nan, 0.7], [0.6, 0.8, np.nan]])
    interval = bootstrap_ci(x, resamples=2000)
    assert interval.mean == pytest.approx(np.nanmean(x))
    assert 0.5 <= interval.low <= interval.mean <= interval.high <= 0.8
    a, b = np.array([[0.9, 0.5, np.nan]]), np.array([[0.8, np.nan, 0.1]])
    assert paired_difference(a, b, resamples=500).mean == pytest.approx(0.1)  # only case 0 is a complete pair
    empty = bootstrap_ci(np.full((2, 3), np.nan))
    assert np.isnan(empty.mean) and describe(empty) == "n/a"


def test_includes_zero_describe_and_bad_input():
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.1, size=(2, 50))
    assert paired_difference(noise, np.zeros_like(noise)).includes_zero
    assert describe(bootstrap_ci([0.5, 0.5, 0.5])) == "0.5000 [0.5000, 0.5000]"
    assert describe(paired_difference([0.6, 0.7], [0.5, 0.5]), signed=True).startswith("+0.1500 [+0.1000, +0.2000]")
    assert bootstrap_ci(noise, seed=7) == bootstrap_ci(noise, seed=7)  # deterministic
    with pytest.raises(ValueError):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros((0, 3)))
