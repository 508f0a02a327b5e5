"""Mask realism: per-mask statistics on masks whose answers are known, and the distances between sets."""
from __future__ import annotations

import numpy as np
import pytest

from nnaug.errors import NnaugError

S = 32


def _square(y, x, side=6, size=S):
    m = np.zeros((size, size), np.int64)
    m[y:y + side, x:x + side] = 1
    return m


def test_statistics_of_known_masks():
    from nnaug.mask_realism import mask_statistics

    one = _square(10, 12)
    two = _square(2, 2, 4) + _square(20, 20, 4)  # two blobs
    ell = _square(8, 8, 10)
    ell[8:14, 12:18] = 0  # an L: 64 of 100 pixels, hull much bigger
    edge = _square(0, 10)  # on the top row
    empty = np.zeros((S, S), np.int64)
    stats = mask_statistics(np.stack([one, two, ell, edge, empty]), [1])[1]
    assert stats["components"].tolist() == [1, 2, 1, 1, 0]
    assert stats["area_fraction"] == pytest.approx([36 / S**2, 32 / S**2, 64 / S**2, 36 / S**2, 0])
    assert stats["touches_border"].tolist() == [0, 0, 0, 1, 0]
    assert len(stats["centroid_y"]) == 4  # the empty mask has no centroid, solidity or outside share
    assert stats["centroid_y"][0] == pytest.approx(13 / S) and stats["centroid_x"][0] == pytest.approx(15 / S)
    assert stats["solidity"][0] == pytest.approx(1.0) and stats["solidity"][2] < 0.85
    # real masks against the others (leave one out): the lone corner blobs of `two` are covered by nobody else
    assert stats["outside_real"][1] == pytest.approx(1.0) and stats["outside_real"][0] < 1.0


def test_compare_finds_blobs_and_masks_where_no_real_mask_is():
    from nnaug.mask_realism import compare, summary

    rng = np.random.default_rng(0)
    real = np.stack([_square(int(rng.integers(8, 16)), int(rng.integers(8, 16)), 8) for _ in range(20)])
    same = compare(real, real.copy())
    rows = {r["statistic"]: r for r in same["rows"]}
    assert all(r["wasserstein"] == pytest.approx(0.0) for k, r in rows.items() if k != "outside_real")
    # blobs: every synthetic mask has three small ones, in the corners no real mask reaches
    blobs = np.stack([_square(0, 0, 3) + _square(0, S - 3, 3) + _square(S - 3, 0, 3) for _ in range(10)])
    result = compare(real, blobs)
    rows = {r["statistic"]: r for r in result["rows"]}
    assert rows["components"]["real_mean"] == 1 and rows["components"]["synthetic_mean"] == 3
    assert rows["components"]["wasserstein"] == pytest.approx(2.0)
    assert rows["touches_border"]["synthetic_mean"] == 1 and rows["touches_border"]["wasserstein"] == pytest.approx(1.0)
    assert rows["outside_real"]["synthetic_mean"] == pytest.approx(1.0)
    assert rows["components"]["real_split_wasserstein"] == pytest.approx(0.0)  # real masks all have one component
    assert result["synthetic_support"][1].sum() == blobs.sum() and "support" not in summary(result)
    with pytest.raises(NnaugError, match="resize one set"):
        compare(real, blobs[:, :16])
