"""The compiled row-run loops against the numpy formulation they replaced, bit for bit.

The reference expands every run into a flat (query, row) list, masks the rows a query cannot
see, and reduces with ``np.bincount`` / ``ufunc.reduceat``: the engine's code before the loops.
The engine's bitwise batching tests then hold because both add in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftline.core.features import kernels
from driftline.core.features.slices import expand_ranges


def _runs(seed: int, n_rows: int = 400, n_queries: int = 300):
    rng = np.random.default_rng(seed)
    seq = rng.permutation(n_rows).astype(np.int64)  # visibility is by seq, in any row order
    lo = rng.integers(0, n_rows, n_queries)
    hi = np.minimum(lo + rng.integers(0, 25, n_queries), n_rows)  # some runs empty
    visible = rng.integers(-1, n_rows, n_queries)  # some queries see nothing of their run
    x = rng.normal(100, 30, n_rows).round(rng.integers(0, 3))  # ties for min and max
    x[rng.random(n_rows) < 0.02] = np.nan
    x[rng.random(n_rows) < 0.02] = -0.0
    codes = rng.integers(0, 40, n_rows)
    return lo, hi, seq, visible, x, codes


class Flat:
    """The numpy formulation: one (query, row) pair per visible row, grouped by query."""

    def __init__(self, lo, hi, seq, visible):
        query, rows = expand_ranges(lo, hi)
        keep = seq[rows] <= visible[query]
        self.query, self.rows, self.n = query[keep], rows[keep], len(lo)
        self.counts = np.bincount(self.query, minlength=self.n)
        self.nonempty = self.counts > 0
        self.ends = np.cumsum(self.counts)

    def total(self, x):
        return np.bincount(self.query, x[self.rows], minlength=self.n)

    def reduce(self, ufunc, x):
        out = np.full(self.n, np.nan)
        starts = (self.ends - self.counts)[self.nonempty]
        if len(starts):
            out[self.nonempty] = ufunc.reduceat(x[self.rows], starts)
        return out

    def last(self, x):
        out = np.full(self.n, np.nan)
        out[self.nonempty] = x[self.rows][self.ends[self.nonempty] - 1]
        return out

    def previous(self, seq, own):
        """The last visible row that is not the query's own, -1 for none."""
        out = np.full(self.n, -1, dtype=np.int64)
        others = seq[self.rows] != own[self.query]
        query, rows = self.query[others], self.rows[others]
        np.maximum.at(out, query, rows)  # rows ascend within a query: its last is its max
        return out

    def distinct(self, codes):
        pairs = np.unique(np.stack([self.query, codes[self.rows]]), axis=1)
        return np.bincount(pairs[0], minlength=self.n).astype(np.float64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.int64), b.view(np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_each_loop_gives_the_numpy_formulation_bit_for_bit(seed):
    lo, hi, seq, visible, x, codes = _runs(seed)
    runs = (lo, hi, seq, visible)
    flat = Flat(*runs)
    assert 0 < flat.nonempty.sum() < len(lo)  # the random runs hold empty and non-empty ones
    np.testing.assert_array_equal(kernels.count(*runs), flat.counts)
    assert same_bits(kernels.total(*runs, x), flat.total(x))
    assert same_bits(kernels.extreme(*runs, x, True), flat.reduce(np.maximum, x))
    assert same_bits(kernels.extreme(*runs, x, False), flat.reduce(np.minimum, x))
    assert same_bits(kernels.last(*runs, x), flat.last(x))
    np.testing.assert_array_equal(kernels.distinct(*runs, codes), flat.distinct(codes))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = flat.total(x) / flat.counts
        deviation = x[flat.rows] - mean[flat.query]
        expected = np.bincount(flat.query, deviation * deviation, minlength=flat.n)
    assert same_bits(kernels.squared_deviations(*runs, x, mean), expected)
    owns = np.random.default_rng(seed).random(len(lo)) < 0.5
    own = np.where(owns, visible, -2)  # half the queries own a row (seq == their bound)
    np.testing.assert_array_equal(kernels.previous(*runs, own), flat.previous(seq, own))


def test_a_row_that_arrived_after_the_query_is_not_counted():
    seq = np.array([0, 5, 1], dtype=np.int64)  # the middle row arrived after the query
    x = np.array([1.0, 100.0, 2.0])
    runs = (np.array([0]), np.array([3]), seq, np.array([1]))
    assert kernels.count(*runs).tolist() == [2]
    assert kernels.total(*runs, x).tolist() == [3.0]
    assert kernels.extreme(*runs, x, True).tolist() == [2.0]
    assert kernels.last(*runs, x).tolist() == [2.0]
    assert kernels.distinct(*runs, np.array([7, 8, 7])).tolist() == [1.0]
    assert kernels.previous(*runs, np.array([1])).tolist() == [0]  # skips its own row too
