"""The row table's range lookups against brute force, while rows are merged in, expired and
their entity codes compacted: keys kept from batch to batch must answer like keys built anew,
and a batch that does not fit the key layout (new entity codes past its room, a time thousands
of years away, or so far that times are keyed by their rank) must be re-encoded, not
mis-ordered."""

from __future__ import annotations

import numpy as np

from driftline.core.features.table import RowTable


def brute_ranges(table: RowTable, entity: np.ndarray, start: np.ndarray, end: np.ndarray):
    for e, s, t in zip(entity.tolist(), start.tolist(), end.tolist(), strict=True):
        yield np.flatnonzero((table.entity == e) & (table.time >= s) & (table.time < t))


def check(table: RowTable, rng: np.random.Generator) -> None:
    keys = list(zip(table.entity.tolist(), table.time.tolist(), table.seq.tolist(), strict=True))
    assert keys == sorted(keys)
    n = 300
    entity = rng.integers(0, int(table.entity.max()) + 2, n)
    anchor = table.time[rng.integers(0, len(table), n)]
    start = anchor - rng.integers(-5, 3_600_000, n)
    end = anchor + rng.integers(-5, 3_600_000, n)
    lo, hi = table.ranges(entity, start, end)
    for i, expected in enumerate(brute_ranges(table, entity, start, end)):
        assert np.array_equal(np.arange(lo[i], hi[i]), expected), i


def test_ranges_stay_exact_through_inserts_expiry_compaction_and_re_encoding():
    rng = np.random.default_rng(11)
    table = RowTable({"x": np.dtype(np.float64)})
    seq, now, entities = 0, 1_700_000_000_000, 4
    kept = re_encoded = 0
    for step in range(120):
        if step % 17 == 16:
            entities *= 5  # codes past the layout's room
        if step == 60:
            now += 2**50  # ~36,000 years on: beyond the times' room
        if step == 90:
            now += 2**58  # so far that the times are keyed by rank until the old rows expire
        m = int(rng.integers(1, 60))
        entity = rng.integers(0, entities, m)
        time = now + rng.integers(-120_000, 60_000, m)  # some before rows already there
        if step == 75:
            time -= 2**53  # ~285,000 years back
        table.insert(entity, time, np.arange(seq, seq + m), {"x": rng.normal(size=m)})
        seq, now = seq + m, now + int(rng.integers(0, 600_000))
        had_keys = table._key is not None
        check(table, rng)
        kept, re_encoded = kept + had_keys, re_encoded + (not had_keys)
        if step % 9 == 8:  # expiry
            table.keep(table.time >= now - 3_000_000)
            if len(table):
                check(table, rng)
        if step % 23 == 22 and len(table):  # entity vocabulary compaction (order-preserving)
            used = np.unique(table.entity)
            remap = np.zeros(int(table.entity.max()) + 1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            table.remap("entity", remap)
            entities = max(len(used), 1)
            check(table, rng)
    assert kept > 60 and re_encoded >= 4, (kept, re_encoded)
