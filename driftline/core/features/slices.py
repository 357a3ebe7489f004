"""Long windows by slices: a 24 h window costs its slices, not its rows.

A rolling window of `SLICED_FROM_MS` or more is cut into epoch-aligned slices of
``size / SLICES_PER_WINDOW`` (15 min for 24 h). A query's interval ``[a, b)`` is then a partial
slice at its start, whole slices, and the slices at its end. For each entity with at least
`CACHED_FROM_ROWS` retained rows, `SliceCache` keeps, per (entity, slice), the aggregates of the
slice's rows (count, sum, two-pass M2, min, max, last value and time, and the distinct codes of
each ``distinct_count`` field); it is refreshed at the end of every batch for the slices that
batch added rows to. A whole slice before the slice of the entity's earliest row in the current
batch holds only rows of earlier batches, which every query sees, so its cached aggregates are
exact for every query; the rest of the interval (the start edge, and everything from that slice
on; for a lighter entity, everything) is read row by row, with the per-query visibility of the
current batch's rows, and aggregated per slice by the same code.

Numerically, a sliced window's aggregation is defined per slice first, then across slices in
time order: a slice's sum is its included rows added in (event_time, seq) order, the interval's
sum is the slices' sums added in slice order; ``std`` combines each slice's two-pass M2 with the
exact identity ``M2 = sum(M2_s + n_s (mean_s - mean)^2)``. That names which numbers are added in
which order from the data alone, so values are bit-for-bit the same however the stream is
batched, restored or expired; count, min, max, last, distinct_count and seconds_since_previous
are exact. Shorter windows are read row by row (`aggregations._Selection`), where a slice would
hold too few rows to pay for itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.core.features.table import PairIndex, RowTable
from driftline.core.features.windows import Window

SLICED_FROM_MS = 6 * 3_600_000
SLICES_PER_WINDOW = 96
# Only entities with at least this many retained rows have their slices cached; a lighter
# entity's query reads its rows (the values are the same either way: a slice's aggregates are
# computed from its rows by the same code), which costs less than keeping its slices.
CACHED_FROM_ROWS = SLICES_PER_WINDOW // 2
# Distinct (group, code) pairs are found by marking a dense groups x codes table when it is at
# most this many times larger than the pairs, and by sorting them otherwise.
DENSE_DISTINCT_FACTOR = 4

Stats = dict[str, np.ndarray]  # one array per aggregate ("count", "sum:amount", ...), per group


def slice_ms(window: Window) -> int | None:
    """The slice width of a long rolling window; None for a window read row by row."""
    spec = window.spec()
    size = int(spec["size_ms"])
    if spec["kind"] != "rolling" or size < SLICED_FROM_MS:
        return None
    return size // SLICES_PER_WINDOW


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten index ranges ``[lo[i], hi[i])`` into ``(i, index)`` pairs, grouped by ``i``."""
    lengths = hi - lo
    owner = np.repeat(np.arange(len(lo), dtype=np.int64), lengths)
    # Index of element k = lo[i] + (k - first element of i).
    shift = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    return owner, np.arange(len(owner), dtype=np.int64) + shift


def take(stats: Stats, index: np.ndarray) -> Stats:
    return {name: values[index] for name, values in stats.items()}


@dataclass(frozen=True)
class StatsPlan:
    """Which aggregates of which fields a window's features need."""

    sums: tuple[str, ...] = ()
    m2: tuple[str, ...] = ()
    maxima: tuple[str, ...] = ()
    minima: tuple[str, ...] = ()
    last: tuple[str, ...] = ()
    distinct: tuple[str, ...] = ()

    @classmethod
    def for_features(cls, features: Sequence) -> StatsPlan:
        """The aggregates ``features`` (`Feature`s of one window) need."""
        need: dict[str, set[str]] = {k: set() for k in cls.__dataclass_fields__}
        for f in features:
            agg = f.aggregation
            for key, wanted in (("sums", ("sum", "mean", "std")), ("m2", ("std",)),
                                ("maxima", ("max",)), ("minima", ("min",)), ("last", ("last",)),
                                ("distinct", ("distinct_count",))):
                if agg in wanted:
                    need[key].add(f.field)
        return cls(**{k: tuple(sorted(v)) for k, v in need.items()})

    def empty(self, with_distinct: bool = True) -> Stats:
        """No groups: every aggregate's array, empty (distinct runs' pointers optional)."""
        integers = ["count", "last_time"]
        if with_distinct:
            integers += [f"{p}:{f}" for f in self.distinct for p in ("dstart", "dcount")]
        floats = [f"{prefix}:{f}"
                  for prefix, fields in (("sum", self.sums), ("m2", self.m2), ("max", self.maxima),
                                         ("min", self.minima), ("last", self.last))
                  for f in fields]
        return {**{n: np.zeros(0, dtype=np.int64) for n in integers},
                **{n: np.zeros(0, dtype=np.float64) for n in floats}}

    def compute(self, table: RowTable, rows: np.ndarray, group: np.ndarray,
                with_distinct: bool = False) -> tuple[Stats, dict[str, np.ndarray]]:
        """Aggregates of ``rows`` (table row indices in table order, grouped contiguously by the
        dense, non-decreasing ``group`` ids ``0..n-1``, every group non-empty) and, with
        ``with_distinct``, each distinct field's codes per group (flat, ``dcount:<field>``
        codes a group; ``dstart`` is left to the caller)."""
        stats = self.empty(with_distinct)
        codes: dict[str, np.ndarray] = {f: np.zeros(0, dtype=np.int64) for f in self.distinct}
        if len(group) == 0:
            return stats, codes
        n = int(group[-1]) + 1
        starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        ends = np.append(starts[1:], len(group))
        count = ends - starts
        stats["count"], stats["last_time"] = count, table.time[rows[ends - 1]]
        column = {f: table.values[f][rows]
                  for f in {*self.sums, *self.maxima, *self.minima, *self.last}}
        for f in self.sums:  # bincount adds in row order: the sequential sum of each group
            stats[f"sum:{f}"] = np.bincount(group, column[f], minlength=n)
        for f in self.m2:
            deviation = column[f] - (stats[f"sum:{f}"] / count)[group]
            stats[f"m2:{f}"] = np.bincount(group, deviation * deviation, minlength=n)
        for f in self.maxima:
            stats[f"max:{f}"] = np.maximum.reduceat(column[f], starts)
        for f in self.minima:
            stats[f"min:{f}"] = np.minimum.reduceat(column[f], starts)
        for f in self.last:
            stats[f"last:{f}"] = column[f][ends - 1]
        for f in self.distinct if with_distinct else ():
            owner, codes[f] = distinct_pairs(group, table.values[f][rows], n)
            stats[f"dcount:{f}"] = np.bincount(owner, minlength=n)
            stats[f"dstart:{f}"] = np.zeros(n, dtype=np.int64)
        return stats, codes


def distinct_pairs(group: np.ndarray, codes: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (group, code) pairs (groups ``0..n-1``, codes >= 0, in any order), sorted:
    by marking a dense groups x codes table when it is small, by sorting otherwise."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    base = int(codes.max()) + 1
    keys = group * base + codes
    if n * base <= DENSE_DISTINCT_FACTOR * len(codes):
        seen = np.zeros(n * base, dtype=bool)
        seen[keys] = True
        pairs = np.flatnonzero(seen)
    else:  # a plain sort beats np.unique (numpy 2's hash-based unique is slower on int64)
        pairs = np.sort(keys)
        first = np.ones(len(pairs), dtype=bool)
        np.not_equal(pairs[1:], pairs[:-1], out=first[1:])
        pairs = pairs[first]
    owner = pairs // base
    return owner, pairs - owner * base


def member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted, unique ``sorted_set``."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs of two int64 columns, sorted by (a, b), and each input pair's
    index among them."""
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.ones(len(a), dtype=bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    inverse = np.empty(len(a), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return a[new], b[new], inverse


class SliceCache:
    """Per (entity code, slice) aggregates of one long window, sorted by (entity, slice)."""

    def __init__(self, width_ms: int, plan: StatsPlan) -> None:
        self.width = width_ms
        self.plan = plan
        self.entity = np.zeros(0, dtype=np.int64)
        self.slice = np.zeros(0, dtype=np.int64)
        self.stats = plan.empty()
        # Each distinct field's codes, flat; entry i's are codes[dstart[i]:dstart[i]+dcount[i]].
        self.codes = {f: np.zeros(0, dtype=np.int64) for f in plan.distinct}
        # Entities whose slices are all in the cache (sorted codes).
        self.cached = np.zeros(0, dtype=np.int64)
        self._key: PairIndex | None = None
        self._buffers: dict[str, np.ndarray] = {}  # room behind each field's codes

    def __len__(self) -> int:
        return len(self.slice)

    def refresh(self, table: RowTable, entity: np.ndarray, time: np.ndarray) -> None:
        """Bring the cache up to date after rows at (``entity``, ``time``) were added: an entity
        that now has `CACHED_FROM_ROWS` rows gets all its slices cached, a cached one gets the
        touched slices recomputed, one that fell below is no longer cached."""
        if len(entity) == 0:
            return
        touched = np.unique(entity)
        first = np.searchsorted(table.entity, touched, side="left")
        rows = np.searchsorted(table.entity, touched, side="right") - first
        heavy = rows >= CACHED_FROM_ROWS
        was = self.holds(touched)
        # An entity that fell below stops being read from the cache; its entries, no longer
        # refreshed, are left to expire with their slices.
        dropped = touched[was & ~heavy]
        added = touched[heavy & ~was]
        self.cached = np.union1d(np.setdiff1d(self.cached, dropped, assume_unique=True), added)
        kept = member(entity, touched[heavy & was])
        ent, sl = entity[kept], time[kept] // self.width
        if len(added):  # every slice of a newly cached entity
            at = first[heavy & ~was]
            owner, row = expand_ranges(at, at + rows[heavy & ~was])
            ent = np.concatenate([ent, added[owner]])
            sl = np.concatenate([sl, table.time[row] // self.width])
        if len(ent) == 0:
            return
        ent, sl, _ = unique_pairs(ent, sl)
        lo, hi = table.ranges(ent, sl * self.width, (sl + 1) * self.width)
        present = hi > lo  # a slice can be expired as soon as it was written
        ent, sl, lo, hi = ent[present], sl[present], lo[present], hi[present]
        if len(ent):
            group, rows = expand_ranges(lo, hi)
            stats, codes = self.plan.compute(table, rows, group, with_distinct=True)
            self._store(ent, sl, stats, codes)

    def holds(self, entity: np.ndarray) -> np.ndarray:
        """Whether each entity's slices are all in the cache."""
        return member(entity, self.cached)

    def _store(self, ent: np.ndarray, sl: np.ndarray, fresh: Stats,
               codes: Mapping[str, np.ndarray]) -> None:
        """Set the aggregates of the unique, sorted (``ent``, ``sl``) pairs, adding new ones."""
        for f in self.plan.distinct:  # append the new code runs; entries point at them
            count = fresh[f"dcount:{f}"]
            fresh[f"dstart:{f}"] = len(self.codes[f]) + np.cumsum(count) - count
            self._append_codes(f, codes[f])
        if len(self) == 0:
            self.entity, self.slice, self.stats = ent, sl, fresh
            self._key = None
            self._compact_codes()
            return
        index = self._index()  # keys kept with the entries, as RowTable keeps its rows'
        keys, new_keys, kept = index.keys_with(self.entity, self.slice, ent, sl)
        if not kept:  # re-encoded on the next lookup
            self._key = index = None
        at = np.searchsorted(keys, new_keys, side="left")
        exists = at < len(keys)
        exists[exists] = keys[at[exists]] == new_keys[exists]
        for name, values in self.stats.items():
            values[at[exists]] = fresh[name][exists]
        insert = ~exists  # in key order already, as np.insert needs for equal positions
        if insert.any():
            where = at[insert]
            self.entity = np.insert(self.entity, where, ent[insert])
            self.slice = np.insert(self.slice, where, sl[insert])
            self.stats = {name: np.insert(values, where, fresh[name][insert])
                          for name, values in self.stats.items()}
            if index is not None:
                index.keys = np.insert(index.keys, where, new_keys[insert])
        self._compact_codes()

    def _append_codes(self, field: str, more: np.ndarray) -> None:
        """Append to a distinct field's codes in a buffer that doubles when full (a copy of
        every code per batch was a tenth of the cache's upkeep)."""
        codes, buffer = self.codes[field], self._buffers.get(field)
        n, end = len(codes), len(codes) + len(more)
        if buffer is None or codes.base is not buffer or end > len(buffer):
            buffer = np.empty(max(2 * end, 1024), dtype=np.int64)
            buffer[:n] = codes
            self._buffers[field] = buffer
        buffer[n:end] = more
        self.codes[field] = buffer[:end]

    def _compact_codes(self) -> None:
        """Drop code runs no entry points at any more once they outweigh the live ones."""
        for f in self.plan.distinct:
            start, count = self.stats[f"dstart:{f}"], self.stats[f"dcount:{f}"]
            if len(self.codes[f]) > 2 * int(count.sum()) + 4096:
                _, index = expand_ranges(start, start + count)
                self.codes[f] = self.codes[f][index]
                self.stats[f"dstart:{f}"] = np.cumsum(count) - count

    def drop_before(self, cutoff_ms: int) -> None:
        """Forget slices that end at or before ``cutoff_ms`` (their rows are all expired)."""
        if len(self) and int(self.slice.min()) < cutoff_ms // self.width:
            self._keep((self.slice + 1) * self.width > cutoff_ms)

    def remap_entity(self, remap: np.ndarray) -> None:
        """Apply an order-preserving entity code remap; entities without live rows (-1) go."""
        self.entity = remap[self.entity]
        self._key = None
        self._keep(self.entity >= 0)
        cached = remap[self.cached]
        self.cached = cached[cached >= 0]

    def remap_codes(self, field: str, remap: np.ndarray) -> None:
        """Apply a distinct field's vocabulary remap to its cached codes. A code without live
        rows (-1) can only sit in a partly expired slice, which no query reads whole."""
        if field in self.codes:
            self.codes[field] = remap[self.codes[field]]

    def _keep(self, mask: np.ndarray) -> None:
        self.entity, self.slice = self.entity[mask], self.slice[mask]
        self.stats = take(self.stats, mask)
        if self._key is not None:
            self._key.keys = self._key.keys[mask]
        self._compact_codes()

    def ranges(
        self, entity: np.ndarray, first: np.ndarray, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Entry range ``[lo, hi)`` of ``entity`` with ``first <= slice < end``, per query."""
        return self._index().ranges(entity, first, end)

    def _index(self) -> PairIndex:
        if self._key is None:
            self._key = PairIndex(self.entity, self.slice, headroom=True)
        return self._key


def caches_for(features: Sequence) -> dict[Window, SliceCache]:
    """One cache per long window of ``features``."""
    by_window: dict[Window, list] = {}
    for f in features:
        if slice_ms(f.window) is not None:
            by_window.setdefault(f.window, []).append(f)
    return {w: SliceCache(slice_ms(w), StatsPlan.for_features(fs))
            for w, fs in by_window.items()}
