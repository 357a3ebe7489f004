"""Vectorised aggregations of many (query, row-range) pairs at once.

A query is (entity, time ``t``, visible seq bound, own seq). For one window, every query's
candidate rows are a contiguous run of the sorted `RowTable`; the runs are expanded into one flat
``(query, row)`` list, rows that arrived after the query (seq above its bound) are masked out,
and each aggregation is a bincount / ``ufunc.reduceat`` over that list. The flat list stays
grouped by query and, within a query, sorted by (event_time, seq), which is what `last` and
`seconds_since_previous` rely on. Empty selections give NaN, except count, distinct_count and sum
which give 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.core.features.definitions import Feature
from driftline.core.features.table import RowTable
from driftline.core.features.windows import Window


@dataclass(frozen=True)
class Queries:
    """One row per requested feature vector."""

    entity: np.ndarray  # int64 entity codes
    time: np.ndarray  # int64 query time t (ms)
    visible_seq: np.ndarray  # rows with seq > this are invisible (arrived later)
    own_seq: np.ndarray  # seq of the query's own event (excluded by seconds_since_previous)

    def __len__(self) -> int:
        return len(self.entity)


class _Selection:
    """The visible rows of every query for one window, flat and grouped by query."""

    def __init__(self, table: RowTable, queries: Queries, window: Window) -> None:
        start, end = window.interval(queries.time)
        lo, hi = table.ranges(queries.entity, start, end)
        lengths = hi - lo
        n = len(queries)
        query = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # Row index of element k = lo[q] + (k - first element of q).
        shift = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
        rows = np.arange(len(query), dtype=np.int64) + shift
        visible = table.seq[rows] <= queries.visible_seq[query]
        self.query, self.rows = query[visible], rows[visible]
        self.n = n
        self.table, self.queries = table, queries
        self.counts = np.bincount(self.query, minlength=n)
        self.ends = np.cumsum(self.counts)
        self.nonempty = self.counts > 0
        self.lo, self.hi = lo, hi
        self.sums: dict[str, np.ndarray] = {}  # sum is shared by sum, mean and std
        self.columns: dict[str, np.ndarray] = {}  # and a field's values by all its features

    def column(self, field: str) -> np.ndarray:
        if field not in self.columns:
            self.columns[field] = self.table.values[field][self.rows]
        return self.columns[field]

    def nan(self) -> np.ndarray:
        return np.full(self.n, np.nan)

    def sum(self, field: str) -> np.ndarray:
        if field not in self.sums:
            self.sums[field] = np.bincount(self.query, self.column(field), minlength=self.n)
        return self.sums[field]

    def mean(self, field: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum(field) / self.counts

    def reduce(self, ufunc: np.ufunc, field: str) -> np.ndarray:
        out = self.nan()
        starts = (self.ends - self.counts)[self.nonempty]
        if len(starts):
            out[self.nonempty] = ufunc.reduceat(self.column(field), starts)
        return out


def _count(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.counts.astype(np.float64)


def _sum(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.sum(feature.field)


def _mean(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.mean(feature.field)


def _min(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.reduce(np.minimum, feature.field)


def _max(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.reduce(np.maximum, feature.field)


def _std(sel: _Selection, feature: Feature) -> np.ndarray:
    # Two passes (mean, then squared deviations): the one-pass E[x^2] - E[x]^2 form loses most
    # digits when the spread is small next to the mean, which is typical for amounts.
    mean = sel.mean(feature.field)
    deviation = sel.column(feature.field) - mean[sel.query]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.bincount(sel.query, deviation * deviation, minlength=sel.n) / sel.counts)


# distinct_count marks (query, code) pairs in a table of queries x codes when that table is at
# most this many times larger than the selection, and sorts the pairs otherwise.
DENSE_DISTINCT_FACTOR = 4


def _distinct_count(sel: _Selection, feature: Feature) -> np.ndarray:
    codes = sel.column(feature.field)
    if len(codes) == 0:
        return np.zeros(sel.n)
    base = int(codes.max()) + 1
    if sel.n * base <= DENSE_DISTINCT_FACTOR * len(codes):
        seen = np.zeros(sel.n * base, dtype=bool)
        seen[sel.query * base + codes] = True
        return np.count_nonzero(seen.reshape(sel.n, base), axis=1).astype(np.float64)
    # A plain sort beats np.unique here (numpy 2's hash-based unique is slower on int64 keys).
    pairs = np.sort(sel.query * base + codes)
    first = np.ones(len(pairs), dtype=bool)
    np.not_equal(pairs[1:], pairs[:-1], out=first[1:])
    return np.bincount(pairs[first] // base, minlength=sel.n).astype(np.float64)


def _last(sel: _Selection, feature: Feature) -> np.ndarray:
    out = sel.nan()
    out[sel.nonempty] = sel.column(feature.field)[sel.ends[sel.nonempty] - 1]
    return out


def _seconds_since_previous(sel: _Selection, feature: Feature) -> np.ndarray:
    # The previous row is the last of the query's run that is visible and not its own: walk
    # back from the run's end past invisible rows and the own row. Only the current batch's
    # rows can be invisible, so this takes a few steps, not one per row of the window.
    seq, queries = sel.table.seq, sel.queries
    row = sel.hi - 1
    active = np.flatnonzero(row >= sel.lo)
    while len(active):
        r = row[active]
        skip = (seq[r] > queries.visible_seq[active]) | (seq[r] == queries.own_seq[active])
        active = active[skip]
        row[active] -= 1
        active = active[row[active] >= sel.lo[active]]
    has = row >= sel.lo
    out = sel.nan()
    out[has] = (queries.time[has] - sel.table.time[row[has]]) / 1000.0
    return out


AGGREGATORS: dict[str, Callable[[_Selection, Feature], np.ndarray]] = {
    "count": _count,
    "sum": _sum,
    "mean": _mean,
    "min": _min,
    "max": _max,
    "std": _std,
    "distinct_count": _distinct_count,
    "last": _last,
    "seconds_since_previous": _seconds_since_previous,
}


def evaluate(table: RowTable, queries: Queries, features: Sequence[Feature]) -> np.ndarray:
    """``(len(queries), len(features))`` float64 values; features sharing a window share work."""
    # Sorted queries make every searchsorted and row gather walk the table in order, which is
    # several times faster than arrival order; results are permuted back at the end.
    order = np.lexsort((queries.time, queries.entity))
    queries = Queries(*(getattr(queries, f)[order] for f in Queries.__dataclass_fields__))
    out = np.empty((len(queries), len(features)))
    by_window: dict[Window, list[int]] = {}
    for i, feature in enumerate(features):
        by_window.setdefault(feature.window, []).append(i)
    for window, columns in by_window.items():
        selection = _Selection(table, queries, window)
        for i in columns:
            out[:, i] = AGGREGATORS[features[i].aggregation](selection, features[i])
    unsorted = np.empty_like(out)
    unsorted[order] = out
    return unsorted
