"""Parquet offline store: features as served, and the raw events they were computed from.

Layout under ``$DRIFTLINE_DATA_DIR/offline/``:
    features/view={view}/date=YYYY-MM-DD/p{partition}-{first offset}-{last offset}.parquet
    events/topic={topic}/date=YYYY-MM-DD/p{partition}-{first offset}-{last offset}.parquet
Hive-partitioned by the event date (UTC). Each file is written under a temporary name and renamed
into place, so a reader never sees a half-written file. File names carry the Kafka offsets they
hold: after a crash, files past the offset recovered from the stream state were never committed
and are removed before the partition is replayed (``discard_from``), so nothing is duplicated.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

MS_PER_DAY = 86_400_000
_NAME = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")


def _day(ms: np.ndarray) -> np.ndarray:
    return (ms // MS_PER_DAY).astype("datetime64[D]").astype(str)


class OfflineStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def features_dir(self, view: str) -> Path:
        return self.root / "features" / f"view={view}"

    def events_dir(self, topic: str) -> Path:
        return self.root / "events" / f"topic={topic}"

    def write(self, base: Path, partition: int, columns: Mapping[str, np.ndarray | Sequence],
              event_time_column: str = "event_time", offset_column: str = "offset") -> int:
        """Write rows (all of one partition, in offset order) split by event date. Returns rows."""
        table = pa.table(dict(columns))
        if table.num_rows == 0:
            return 0
        days = _day(np.asarray(columns[event_time_column], dtype=np.int64))
        offsets = np.asarray(columns[offset_column], dtype=np.int64)
        for day in np.unique(days):
            mask = days == day
            part = table.filter(pa.array(mask))
            first, last = int(offsets[mask].min()), int(offsets[mask].max())
            target = base / f"date={day}" / f"p{partition}-{first:020d}-{last:020d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(part, tmp, compression="snappy")
            os.replace(tmp, target)
        return table.num_rows

    def discard_from(self, base: Path, partition: int, offset: int) -> int:
        """Remove files of `partition` holding offsets >= `offset` (never committed)."""
        removed = 0
        if not base.exists():
            return 0
        for path in base.glob("date=*/*.parquet"):
            match = _NAME.match(path.name)
            if match and int(match[1]) == partition and int(match[3]) >= offset:
                path.unlink()
                removed += 1
        for tmp in base.glob("date=*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        return removed

    def read(self, base: Path) -> pa.Table:
        """Every row under `base` (empty table when nothing was written)."""
        if not base.exists() or not any(base.glob("date=*/*.parquet")):
            return pa.table({})
        dataset = ds.dataset(base, format="parquet", partitioning="hive")
        return dataset.to_table()
