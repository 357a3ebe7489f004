"""The retained applied events of one partition, as a sorted columnar table.

Rows are sorted by (entity code, event_time, seq), so all rows of an entity inside a time
interval form one contiguous run that two ``np.searchsorted`` calls on a composite int64 key
``entity << bits | (time - t0)`` find for every query at once. New rows are merged in with
``np.insert`` (linear, no re-sort of the retained rows); since a new row's seq exceeds every
retained seq, inserting after equal (entity, time) keys keeps the seq order. The keys are kept
with the rows: their layout leaves room for four times the entity codes and thousands of years
around the rows' times, so a batch computes the keys of its own rows only, and the whole column
is re-encoded only when a row falls outside that room or the entity codes are compacted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_KEY_BITS = 62  # leave the sign bit and one spare so clipped query keys never overflow
_INT64_MIN = int(np.iinfo(np.int64).min)


class RowTable:
    """Columns ``entity``/``time``/``seq`` (int64) plus one value column per used field."""

    def __init__(self, value_dtypes: Mapping[str, np.dtype]) -> None:
        self.entity = np.zeros(0, dtype=np.int64)
        self.time = np.zeros(0, dtype=np.int64)
        self.seq = np.zeros(0, dtype=np.int64)
        self.values = {name: np.zeros(0, dtype=dt) for name, dt in value_dtypes.items()}
        self._key: PairIndex | None = None

    def __len__(self) -> int:
        return len(self.seq)

    def insert(
        self,
        entity: np.ndarray,
        time: np.ndarray,
        seq: np.ndarray,
        values: Mapping[str, np.ndarray],
    ) -> None:
        """Merge rows whose seqs all exceed the retained ones."""
        if len(seq) == 0:
            return
        order = np.lexsort((seq, time, entity))
        entity, time, seq = entity[order], time[order], seq[order]
        values = {name: col[order] for name, col in values.items()}
        if len(self) == 0:
            self.entity, self.time, self.seq, self.values = entity, time, seq, values
            self._key = None
            return
        index = self.index()
        keys, new_keys, kept = index.keys_with(self.entity, self.time, entity, time)
        at = np.searchsorted(keys, new_keys, side="right")
        if kept:
            index.keys = np.insert(index.keys, at, new_keys)
        else:  # re-encode every key on the next lookup
            self._key = None
        self.entity = np.insert(self.entity, at, entity)
        self.time = np.insert(self.time, at, time)
        self.seq = np.insert(self.seq, at, seq)
        self.values = {n: np.insert(c, at, values[n]) for n, c in self.values.items()}

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (expiry)."""
        self.entity, self.time, self.seq = self.entity[mask], self.time[mask], self.seq[mask]
        self.values = {n: c[mask] for n, c in self.values.items()}
        if self._key is not None:
            self._key.keys = self._key.keys[mask]

    def remap(self, column: str, remap: np.ndarray) -> None:
        """Apply an order-preserving code remap (vocabulary compaction) to a code column."""
        if column == "entity":
            self.entity = remap[self.entity]
            self._key = None
        else:
            self.values[column] = remap[self.values[column]]

    def index(self) -> PairIndex:
        """The (entity, time) keys of the rows, with room to grow (see the module docstring)."""
        if self._key is None:
            self._key = PairIndex(self.entity, self.time, headroom=True)
        return self._key

    def ranges(
        self, entity: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row range ``[lo, hi)`` of ``entity`` with ``start <= time < end``, per query."""
        return self.index().ranges(entity, start, end)

    def last_row(self, entity: np.ndarray) -> np.ndarray:
        """Index of each entity's greatest (time, seq) row; the entities must have rows."""
        return np.searchsorted(self.entity, entity, side="right") - 1


class PairIndex:
    """Range lookups in columns sorted by (entity, value): ``[lo, hi)`` of ``entity`` with
    ``start <= value < end``, per query, on one composite int64 key built once. With
    ``headroom``, the key layout leaves room for more rows (`fits`), which their owner then
    merges into ``keys`` itself."""

    def __init__(self, entity: np.ndarray, value: np.ndarray, headroom: bool = False) -> None:
        self.empty = len(value) == 0
        if not self.empty:
            self.coder = _KeyCoder(value, int(entity.max()), 0, headroom=headroom)
            self.keys = self.coder.key(entity, value)

    def keys_with(self, old_entity: np.ndarray, old_value: np.ndarray, entity: np.ndarray,
                  value: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Keys of the indexed pairs (``old_*``, the columns this index was built from) and of
        new pairs, comparable with each other, to place the new ones. In this layout when the
        new pairs fit it (True: the index stays valid once its owner merges the new keys into
        ``keys``); else from a one-off layout over both (False: build the index anew)."""
        if not self.empty and self.coder.fits(entity, value):
            return self.keys, self.coder.key(entity, value), True
        coder = _KeyCoder(np.concatenate([old_value, value]), int(old_entity.max(initial=0)),
                          int(entity.max()))
        return coder.key(old_entity, old_value), coder.key(entity, value), False

    def ranges(
        self, entity: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.empty:
            zero = np.zeros(len(entity), dtype=np.int64)
            return zero, zero
        lo = np.searchsorted(self.keys, self.coder.key(entity, start), side="left")
        hi = np.searchsorted(self.keys, self.coder.key(entity, end), side="left")
        return lo, np.maximum(hi, lo)


class _KeyCoder:
    """Packs (entity, time) into one order-preserving int64 for a given set of row times.

    Row times are offsets from ``t0`` in ``[0, span - 2]``; query times outside are clipped to
    ``0`` or ``span - 1``, just outside the rows, which keeps every comparison with a row time
    exact. Without headroom, ``t0`` is the earliest row time and the span just covers the rows;
    with it, entity codes get two spare bits and the times every bit left, the rows centred in
    it (for 5,000 entities, thousands of years either side). If the rows' span does not fit
    next to the entity codes, times are replaced by their rank among the row times instead.
    """

    def __init__(self, row_times: np.ndarray, max_entity_a: int, max_entity_b: int,
                 headroom: bool = False) -> None:
        lo, hi = int(row_times.min()), int(row_times.max())
        entity_bits = max(max_entity_a, max_entity_b, 1).bit_length() + (2 if headroom else 0)
        self.entity_limit = 1 << entity_bits
        self.ranks: np.ndarray | None = None
        self.t0 = lo
        span = hi - lo + 2  # room for "before" (0 after clip) and "after"
        self.bits = span.bit_length()
        if self.bits + entity_bits > _KEY_BITS:
            self.ranks = np.unique(row_times)
            span = len(self.ranks) + 1
            self.bits = span.bit_length()
        elif headroom:  # every bit the entity codes leave, the rows in the middle
            self.bits = _KEY_BITS - entity_bits
            span = 1 << self.bits
            self.t0 = max(lo - (span - 2 - (hi - lo)) // 2, _INT64_MIN)
        self.span = span
        if self.bits + entity_bits > _KEY_BITS:
            raise OverflowError("too many entities and distinct times for a 62-bit key")

    def fits(self, entity: np.ndarray, time: np.ndarray) -> bool:
        """Whether these rows get keys in order with the rows this layout was made for."""
        return (self.ranks is None and int(entity.max()) < self.entity_limit
                and int(time.min()) >= self.t0 and int(time.max()) - self.t0 <= self.span - 2)

    def key(self, entity: np.ndarray, time: np.ndarray) -> np.ndarray:
        if self.ranks is not None:
            offset = np.searchsorted(self.ranks, time, side="left")
        else:
            offset = np.clip(time - self.t0, 0, self.span - 1)
        return (entity.astype(np.int64) << self.bits) | offset
