"""The Parquet offline store: pending files stay invisible until published, and settling a
partition keeps exactly its committed batches."""

from __future__ import annotations

import numpy as np

from driftline.adapters.offline_store import OfflineStore, PendingParquet, publish
from driftline.core.state import CommitRecord, Restored

DAY_MS = 86_400_000


def rows(first: int, last: int) -> dict:
    offsets = np.arange(first, last + 1)
    return {"event_time": 1_700_000_000_000 + offsets * 1000, "offset": offsets,
            "x": offsets * 0.5}


def test_pending_files_are_not_read_until_published(tmp_path):
    store = OfflineStore(tmp_path)
    base = store.features_dir("v")
    publish(store.write(base, 0, rows(0, 9), pending_epoch=1))
    pending = store.write(base, 0, rows(10, 19), pending_epoch=1)
    assert store.read(base).column("offset").to_pylist() == list(range(10))
    publish(pending)
    assert sorted(store.read(base).column("offset").to_pylist()) == list(range(20))


def test_rows_are_split_by_event_date_and_read_back_with_the_date(tmp_path):
    store = OfflineStore(tmp_path)
    base = store.events_dir("t")
    columns = rows(0, 3)
    columns["event_time"] = np.array([0, 1, DAY_MS, DAY_MS + 1]) + 1_700_000_000_000
    paths = store.write(base, 2, columns, pending_epoch=7)
    assert len(paths) == 2 and all(p.name.endswith(".pending-7") for p in paths)
    publish(paths)
    table = store.read(base).to_pandas()
    assert sorted(table["date"].astype(str).unique()) == ["2023-11-14", "2023-11-15"]
    assert sorted(table["offset"]) == [0, 1, 2, 3]


def test_settle_publishes_the_last_commit_and_removes_everything_else(tmp_path):
    store = OfflineStore(tmp_path)
    base = store.features_dir("v")
    publish(store.write(base, 0, rows(0, 9), pending_epoch=1))    # committed and published
    store.write(base, 0, rows(10, 19), pending_epoch=1)            # committed, crash before publish
    store.write(base, 0, rows(20, 29), pending_epoch=1)            # never committed
    store.write(base, 0, rows(10, 19), pending_epoch=2)            # a fenced zombie's copy
    store.write(base, 1, rows(0, 4), pending_epoch=1)              # another partition: untouched
    restored = Restored(0, 3, offsets={"t": 20}, last_commits={"t": CommitRecord(1, 10, 19)})
    PendingParquet(store, "t", [base]).settle(restored)
    assert sorted(store.read(base).column("offset").to_pylist()) == list(range(20))
    left = sorted(p.name for p in base.rglob("*.pending-*"))
    assert left == ["p1-00000000000000000000-00000000000000000004.parquet.pending-1"]


def test_a_read_can_skip_earlier_days_columns_and_rows(tmp_path):
    import pyarrow.dataset as ds

    from driftline.adapters.offline_store import day_of

    store = OfflineStore(tmp_path)
    base = store.events_dir("t")
    columns = rows(0, 3)
    columns["event_time"] = np.array([0, 1, DAY_MS, DAY_MS + 1]) + 1_700_000_000_000
    publish(store.write(base, 0, columns, pending_epoch=1))
    second_day = day_of(1_700_000_000_000 + DAY_MS)
    recent = store.read(base, columns=["offset"], from_day=second_day)
    assert recent.column_names == ["offset"] and recent.column("offset").to_pylist() == [2, 3]
    assert store.read(base, where=ds.field("offset") >= 1).num_rows == 3
    assert store.read(base, from_day="2999-01-01").num_rows == 0
