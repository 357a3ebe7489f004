"""Aggregations of many queries at once, each over a window's rows in the sorted `RowTable`.

A query is (entity, time ``t``, visible seq bound, own seq, settled-before time). For one window,
every query's candidate rows are a contiguous run of the sorted `RowTable`, in (event_time, seq)
order; rows that arrived after the query (seq above its bound) do not count. A window read row
by row (`_Selection`) is aggregated by compiled loops over those runs (`kernels`), which add in
row order. A long window (`slices`) reads its settled whole slices from its `SliceCache` and
only the rest row by row (`_Pieces`, numpy over the flat (query, row) list of that rest).
Empty selections give NaN, except count, distinct_count and sum which give 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.core.features import kernels, slices
from driftline.core.features.definitions import Feature
from driftline.core.features.slices import SliceCache, expand_ranges
from driftline.core.features.table import RowTable
from driftline.core.features.windows import Window

NONE = np.iinfo(np.int64).min  # "no such row" in int64 time columns


@dataclass(frozen=True)
class Queries:
    """One row per requested feature vector."""

    entity: np.ndarray  # int64 entity codes
    time: np.ndarray  # int64 query time t (ms)
    visible_seq: np.ndarray  # rows with seq > this are invisible (arrived later)
    own_seq: np.ndarray  # seq of the query's own event (excluded by seconds_since_previous)
    settled_before: np.ndarray  # the entity's rows before this time are all from earlier
    #                             batches (its earliest row in the current batch)

    def __len__(self) -> int:
        return len(self.entity)

    def take(self, index: np.ndarray) -> Queries:
        return Queries(*(getattr(self, f)[index] for f in Queries.__dataclass_fields__))


class _Selection:
    """The rows of every query for one window: the run ``[lo, hi)`` of the sorted table in the
    query's interval, less the rows that arrived after it (seq above its visible bound). Each
    aggregate is one compiled pass over the runs (`kernels`), in row order."""

    def __init__(self, table: RowTable, queries: Queries, window: Window) -> None:
        start, end = window.interval(queries.time)
        self.lo, self.hi = table.ranges(queries.entity, start, end)
        self.n = len(queries)
        self.table, self.queries = table, queries
        self.runs = (self.lo, self.hi, table.seq, queries.visible_seq)
        self.counts = kernels.count(*self.runs)
        self.sums: dict[str, np.ndarray] = {}  # sum is shared by sum, mean and std

    def sum(self, field: str) -> np.ndarray:
        if field not in self.sums:
            self.sums[field] = kernels.total(*self.runs, self.table.values[field])
        return self.sums[field]

    def mean(self, field: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum(field) / self.counts


def _count(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.counts.astype(np.float64)


def _sum(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.sum(feature.field)


def _mean(sel: _Selection, feature: Feature) -> np.ndarray:
    return sel.mean(feature.field)


def _min(sel: _Selection, feature: Feature) -> np.ndarray:
    return kernels.extreme(*sel.runs, sel.table.values[feature.field], False)


def _max(sel: _Selection, feature: Feature) -> np.ndarray:
    return kernels.extreme(*sel.runs, sel.table.values[feature.field], True)


def _std(sel: _Selection, feature: Feature) -> np.ndarray:
    # Two passes (mean, then squared deviations): the one-pass E[x^2] - E[x]^2 form loses most
    # digits when the spread is small next to the mean, which is typical for amounts.
    mean = sel.mean(feature.field)
    m2 = kernels.squared_deviations(*sel.runs, sel.table.values[feature.field], mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(m2 / sel.counts)


def _distinct_count(sel: _Selection, feature: Feature) -> np.ndarray:
    return kernels.distinct(*sel.runs, sel.table.values[feature.field])


def _last(sel: _Selection, feature: Feature) -> np.ndarray:
    return kernels.last(*sel.runs, sel.table.values[feature.field])


def _seconds_since_previous(sel: _Selection, feature: Feature) -> np.ndarray:
    row = kernels.previous(*sel.runs, sel.queries.own_seq)
    has = row >= 0
    out = np.full(sel.n, np.nan)
    out[has] = (sel.queries.time[has] - sel.table.time[row[has]]) / 1000.0
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


class _Pieces:
    """A long window's aggregates per (query, slice), combined per query in slice order.

    A query's pieces: its start edge (rows of the slice its interval starts in), its settled
    whole slices (from the cache), and its tail (rows from the first unsettled slice on, each
    slice a piece), in that order, which is slice order."""

    def __init__(self, table: RowTable, queries: Queries, window: Window, cache: SliceCache):
        width, n = cache.width, len(queries)
        start, end = window.interval(queries.time)
        first_whole = -(-start // width)  # the first slice starting at or after the start
        settled_end = np.maximum(
            first_whole, np.minimum(end // width, queries.settled_before // width))
        settled_end = np.where(cache.holds(queries.entity), settled_end, first_whole)
        lo1, hi1 = table.ranges(queries.entity, start, np.minimum(first_whole * width, end))
        lo2, hi2 = table.ranges(queries.entity, np.maximum(settled_end * width, start), end)
        part, rows = expand_ranges(np.stack([lo1, lo2], axis=1).ravel(),
                                   np.stack([hi1, hi2], axis=1).ravel())
        query = part >> 1
        visible = table.seq[rows] <= queries.visible_seq[query]
        query, rows = query[visible], rows[visible]
        row_slice = table.time[rows] // width
        new = np.ones(len(rows), dtype=bool)
        new[1:] = (query[1:] != query[:-1]) | (row_slice[1:] != row_slice[:-1])
        read, _ = cache.plan.compute(table, rows, np.cumsum(new) - 1)
        clo, chi = cache.ranges(queries.entity, first_whole, settled_end)
        cached_query, entry = expand_ranges(clo, chi)
        # Place each piece: a query's start edge, then its cached slices, then its tail.
        group_query = query[new]
        n_read, n_cached = np.bincount(group_query, minlength=n), chi - clo
        total = n_read + n_cached
        base = np.cumsum(total) - total
        tail = row_slice[new] >= settled_end[group_query]
        n_edge = n_read - np.bincount(group_query[tail], minlength=n)
        read_at = (base[group_query] + np.arange(len(group_query))
                   - (np.cumsum(n_read) - n_read)[group_query]
                   + np.where(tail, n_cached[group_query], 0))
        cached_at = (base[cached_query] + n_edge[cached_query] + np.arange(len(entry))
                     - (np.cumsum(n_cached) - n_cached)[cached_query])
        if len(entry):
            order = np.empty(len(read_at) + len(cached_at), dtype=np.int64)
            order[read_at] = np.arange(len(read_at))
            order[cached_at] = len(read_at) + np.arange(len(cached_at))
            cached = slices.take({k: v for k, v in cache.stats.items() if k in read}, entry)
            self.stats = slices.take(slices.concat([read, cached]), order)
        else:  # nothing from the cache: the pieces read are already in (query, slice) order
            self.stats = read
        self.query = np.repeat(np.arange(n, dtype=np.int64), total)
        self.n, self.table, self.queries, self.cache = n, table, queries, cache
        self.rows, self.row_query = rows, query
        self.cached_query, self.entry = cached_query, entry
        self.cached_range = clo, chi
        self.counts = np.bincount(self.query, self.stats["count"], minlength=n)
        self.nonempty = total > 0
        self.starts = base[self.nonempty]
        self.ends = (base + total)[self.nonempty] - 1
        self.sums: dict[str, np.ndarray] = {}

    def nan(self) -> np.ndarray:
        return np.full(self.n, np.nan)

    def sum(self, field: str) -> np.ndarray:
        if field not in self.sums:  # the slices' sums, added in slice order
            self.sums[field] = np.bincount(self.query, self.stats[f"sum:{field}"],
                                           minlength=self.n)
        return self.sums[field]

    def mean(self, field: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum(field) / self.counts

    def std(self, field: str) -> np.ndarray:
        mean, count = self.mean(field), self.stats["count"]
        between = self.stats[f"sum:{field}"] / count - mean[self.query]
        m2 = np.bincount(self.query, self.stats[f"m2:{field}"] + count * between * between,
                         minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(m2 / self.counts)

    def reduce(self, ufunc: np.ufunc, name: str) -> np.ndarray:
        out = self.nan()
        if len(self.starts):
            out[self.nonempty] = ufunc.reduceat(self.stats[name], self.starts)
        return out

    def last(self, field: str) -> np.ndarray:
        out = self.nan()
        out[self.nonempty] = self.stats[f"last:{field}"][self.ends]
        return out

    def distinct(self, field: str) -> np.ndarray:
        """Distinct codes of the union of a query's cached slices and its rows read. Queries of
        one entity in a batch mostly read the same run of cached entries (same first whole
        slice, same settled end), so each distinct run is united once and shared: a query
        counts that run's distinct codes plus its own read codes outside the run's set."""
        run_lo, run_hi, run_of = _runs(*self.cached_range)
        start = self.cache.stats[f"dstart:{field}"]
        count = self.cache.stats[f"dcount:{field}"]
        owner, entry = expand_ranges(run_lo, run_hi)  # (run, entry)
        run_entry_start = start[entry]
        coded, index = expand_ranges(run_entry_start, run_entry_start + count[entry])
        cached_codes = self.cache.codes[field][index]
        row_codes = self.table.values[field][self.rows]
        base = int(max(cached_codes.max(initial=-1), row_codes.max(initial=-1))) + 1
        run, code = slices.distinct_pairs(owner[coded], cached_codes, len(run_lo))
        run_keys = run * base + code  # sorted: distinct_pairs sorts by (run, code)
        out = np.zeros(self.n)
        has_run = run_of >= 0
        out[has_run] = np.bincount(run, minlength=len(run_lo))[run_of[has_run]]
        query, code = slices.distinct_pairs(self.row_query, row_codes, self.n)
        outside = ~slices.member(run_of[query] * base + code, run_keys) | (run_of[query] < 0)
        return out + np.bincount(query[outside], minlength=self.n)

    def seconds_since_previous(self) -> np.ndarray:
        """(t - the greatest time among the included rows other than the query's own) / 1000;
        the own row is always read row by row (it is in the current batch)."""
        previous = np.full(self.n, NONE, dtype=np.int64)
        others = self.table.seq[self.rows] != self.queries.own_seq[self.row_query]
        for query, times in ((self.cached_query, self.cache.stats["last_time"][self.entry]),
                             (self.row_query[others], self.table.time[self.rows[others]])):
            counts = np.bincount(query, minlength=self.n)
            has = counts > 0  # a query's pieces are in time order: its last is its greatest
            previous[has] = np.maximum(previous[has], times[np.cumsum(counts)[has] - 1])
        out = self.nan()
        has = previous != NONE
        out[has] = (self.queries.time[has] - previous[has]) / 1000.0
        return out


def _runs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct non-empty ranges ``[lo, hi)`` (their starts and ends) and each query's index
    among them (-1 for an empty range)."""
    nonempty = np.flatnonzero(hi > lo)
    run_lo, run_hi, inverse = slices.unique_pairs(lo[nonempty], hi[nonempty])
    run_of = np.full(len(lo), -1, dtype=np.int64)
    run_of[nonempty] = inverse
    return run_lo, run_hi, run_of


SLICED: dict[str, Callable[[_Pieces, Feature], np.ndarray]] = {
    "count": lambda p, f: p.counts,
    "sum": lambda p, f: p.sum(f.field),
    "mean": lambda p, f: p.mean(f.field),
    "min": lambda p, f: p.reduce(np.minimum, f"min:{f.field}"),
    "max": lambda p, f: p.reduce(np.maximum, f"max:{f.field}"),
    "std": lambda p, f: p.std(f.field),
    "distinct_count": lambda p, f: p.distinct(f.field),
    "last": lambda p, f: p.last(f.field),
    "seconds_since_previous": lambda p, f: p.seconds_since_previous(),
}


def evaluate(table: RowTable, queries: Queries, features: Sequence[Feature],
             caches: Mapping[Window, SliceCache]) -> np.ndarray:
    """``(len(queries), len(features))`` float64 values; features sharing a window share work.

    ``caches`` holds the `SliceCache` of each long window, refreshed after every earlier batch
    (`FeatureEngine` does this); other windows are read row by row."""
    # Sorted queries make every searchsorted and row gather walk the table in order, which is
    # several times faster than arrival order; results are permuted back at the end.
    order = np.lexsort((queries.time, queries.entity))
    queries = queries.take(order)
    out = np.empty((len(queries), len(features)))
    by_window: dict[Window, list[int]] = {}
    for i, feature in enumerate(features):
        by_window.setdefault(feature.window, []).append(i)
    for window, columns in by_window.items():
        if window in caches:
            pieces = _Pieces(table, queries, window, caches[window])
            for i in columns:
                out[:, i] = SLICED[features[i].aggregation](pieces, features[i])
        else:
            selection = _Selection(table, queries, window)
            for i in columns:
                out[:, i] = AGGREGATORS[features[i].aggregation](selection, features[i])
    unsorted = np.empty_like(out)
    unsorted[order] = out
    return unsorted
