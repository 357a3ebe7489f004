"""Aggregations of many queries at once, each over a window's rows in the sorted `RowTable`.

A query is (entity, time ``t``, visible seq bound, own seq, settled-before time). For one window,
every query's candidate rows are a contiguous run of the sorted `RowTable`, in (event_time, seq)
order; rows that arrived after the query (seq above its bound) do not count. A window read row
by row (`_Selection`) is aggregated by compiled loops over those runs (`kernels`), which add in
row order. A long window (`slices`) reads its settled whole slices from its `SliceCache` and
only the rest row by row (`_Pieces`), combining the pieces in slice order, also in compiled loops.
Empty selections give NaN, except count, distinct_count and sum which give 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.core.features import kernels
from driftline.core.features.definitions import Feature
from driftline.core.features.slices import SliceCache
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
    slice a piece), in that order, which is slice order. The pieces are aggregated and
    combined by compiled loops (`kernels.sliced` and its neighbours), per field on demand."""

    def __init__(self, table: RowTable, queries: Queries, window: Window, cache: SliceCache):
        width = cache.width
        start, end = window.interval(queries.time)
        first_whole = -(-start // width)  # the first slice starting at or after the start
        settled_end = np.maximum(
            first_whole, np.minimum(end // width, queries.settled_before // width))
        settled_end = np.where(cache.holds(queries.entity), settled_end, first_whole)
        lo1, hi1 = table.ranges(queries.entity, start, np.minimum(first_whole * width, end))
        lo2, hi2 = table.ranges(queries.entity, np.maximum(settled_end * width, start), end)
        clo, chi = cache.ranges(queries.entity, first_whole, settled_end)
        self.pieces = (lo1, hi1, clo, chi, lo2, hi2, table.seq, queries.visible_seq)
        self.n, self.width = len(queries), width
        self.table, self.queries, self.cache = table, queries, cache
        self._fields: dict[str, tuple[np.ndarray, ...]] = {}

    def _field(self, field: str) -> tuple[np.ndarray, ...]:
        """(count, sum, squared deviations, min, max, last) of `field` per query."""
        if field not in self._fields:
            stats = self.cache.stats
            names = [f"{kind}:{field}" for kind in ("sum", "m2", "min", "max", "last")]
            unused = None  # stands for what the plan does not keep (made only if needed)
            if not all(name in stats for name in names):
                unused = stats["count"].astype(np.float64)
            self._fields[field] = kernels.sliced(
                *self.pieces, self.table.time, self.width, self.table.values[field],
                stats["count"], *(stats.get(name, unused) for name in names))
        return self._fields[field]

    def count(self) -> np.ndarray:
        """Rows per query. Any field's pass counts them: the plan's first field, whose pass the
        window's other features then reuse; a window of counts alone passes over the times."""
        plan = self.cache.plan
        fields = [*plan.sums, *plan.m2, *plan.maxima, *plan.minima, *plan.last]
        if fields:
            return self._field(fields[0])[0]
        count = self.cache.stats["count"]
        return kernels.sliced(*self.pieces, self.table.time, self.width,
                              self.table.time.astype(np.float64), count,
                              *[count.astype(np.float64)] * 5)[0]

    def sum(self, field: str) -> np.ndarray:
        return self._field(field)[1]

    def mean(self, field: str) -> np.ndarray:
        count, total = self._field(field)[:2]
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count

    def std(self, field: str) -> np.ndarray:
        count, _, m2 = self._field(field)[:3]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(m2 / count)

    def distinct(self, field: str) -> np.ndarray:
        """Distinct codes of the union of a query's cached slices and its rows read."""
        codes, cached = self.table.values[field], self.cache.codes[field]
        top = int(max(codes.max(initial=-1), cached.max(initial=-1))) + 1
        return kernels.sliced_distinct(
            *self.pieces, codes, self.cache.stats[f"dstart:{field}"],
            self.cache.stats[f"dcount:{field}"], cached, top)

    def seconds_since_previous(self) -> np.ndarray:
        """(t - the greatest time among the included rows other than the query's own) / 1000;
        the own row is always read row by row (it is in the current batch)."""
        previous = kernels.sliced_previous(
            *self.pieces, self.queries.own_seq, self.table.time,
            self.cache.stats["last_time"], NONE)
        out = np.full(self.n, np.nan)
        has = previous != NONE
        out[has] = (self.queries.time[has] - previous[has]) / 1000.0
        return out


SLICED: dict[str, Callable[[_Pieces, Feature], np.ndarray]] = {
    "count": lambda p, f: p.count(),
    "sum": lambda p, f: p.sum(f.field),
    "mean": lambda p, f: p.mean(f.field),
    "min": lambda p, f: p._field(f.field)[3],
    "max": lambda p, f: p._field(f.field)[4],
    "std": lambda p, f: p.std(f.field),
    "distinct_count": lambda p, f: p.distinct(f.field),
    "last": lambda p, f: p._field(f.field)[5],
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
