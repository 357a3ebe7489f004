"""Parquet offline store: features as served, and the raw events they were computed from.

Layout under ``$DRIFTLINE_DATA_DIR/offline/``:
    features/view={view}/date=YYYY-MM-DD/p{partition}-{first offset}-{last offset}.parquet
    events/topic={topic}/date=YYYY-MM-DD/p{partition}-{first offset}-{last offset}.parquet
Hive-partitioned by the event date (UTC). A batch's files are written as
``….parquet.pending-{epoch}`` (invisible to readers, who read ``*.parquet``) and renamed into
place only after the batch's Redis transaction committed. On (re)assignment ``settle`` finishes
that rename for the partition's last committed batch and deletes every other pending file (a
crash, a failed commit, or a fenced-off former owner), so a reader never sees a half-written,
uncommitted or duplicated row.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from driftline.core.state import CommitRecord, Restored

log = logging.getLogger(__name__)

MS_PER_DAY = 86_400_000
_NAME = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")
_PENDING = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet\.pending-(\d+)$")


def publish(paths: Sequence[Path]) -> None:
    """Rename committed pending files into place (each rename is atomic)."""
    for path in paths:
        os.replace(path, path.with_name(path.name.rsplit(".pending-", 1)[0]))


def _day(ms: np.ndarray) -> np.ndarray:
    return (ms // MS_PER_DAY).astype("datetime64[D]").astype(str)


def day_of(ms: int) -> str:
    """The ``date=`` folder name (UTC day) an event time is filed under."""
    return str(_day(np.asarray([ms], dtype=np.int64))[0])


class OfflineStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def features_dir(self, view: str) -> Path:
        return self.root / "features" / f"view={view}"

    def events_dir(self, topic: str) -> Path:
        return self.root / "events" / f"topic={topic}"

    def outcomes_dir(self, named_by: str) -> Path:
        """The monitor's outcomes (each prediction joined with its label: training data) in
        files named by the offsets of topic `named_by` (see ``agents/monitor.py``)."""
        return self.root / "outcomes" / f"by={named_by}"

    def outcomes_dirs(self) -> list[Path]:
        """Every folder of outcomes, whichever topic names its files."""
        return sorted((self.root / "outcomes").glob("by=*"))

    def published_days(self, base: Path) -> list[Path]:
        """The ``date=…`` folders of `base` holding published files, newest first (a day
        holds ``*.parquet`` files; pending ones end in ``.pending-<epoch>``)."""
        if not base.is_dir():
            return []
        return sorted({p.parent for p in base.glob("date=*/*.parquet")}, key=lambda p: p.name,
                      reverse=True)

    def write(self, base: Path, partition: int, columns: Mapping[str, np.ndarray | Sequence],
              pending_epoch: int, event_time_column: str = "event_time",
              offset_column: str = "offset", span: tuple[int, int] | None = None) -> list[Path]:
        """Write rows (all of one partition, in offset order) split by event date, as pending
        files of `pending_epoch`. Returns their paths, for :func:`publish` after the commit.

        Files are named by the rows' offsets, or by `span` (first, last offset of the consumed
        batch) for rows that have no offset of their own, such as the monitor's outcomes."""
        table = pa.table(dict(columns))
        written: list[Path] = []
        if table.num_rows == 0:
            return written
        days = np.asarray(columns[event_time_column], dtype=np.int64) // MS_PER_DAY
        offsets = None if span else np.asarray(columns[offset_column], dtype=np.int64)
        # Dictionaries for strings (ids and slices repeat; a feature value rarely does) and
        # min/max statistics for integers (event time, offset: what readers prune on) only:
        # half the write time of the defaults, and smaller files.
        options = {
            "compression": "snappy",
            "use_dictionary": [f.name for f in table.schema if pa.types.is_string(f.type)],
            "write_statistics": [f.name for f in table.schema if pa.types.is_integer(f.type)],
        }
        unique_days = np.unique(days)
        for day in unique_days:
            mask = days == day
            part = table if len(unique_days) == 1 else table.filter(pa.array(mask))
            first, last = span if span else (int(offsets[mask].min()), int(offsets[mask].max()))
            name = f"p{partition}-{first:020d}-{last:020d}.parquet.pending-{pending_epoch}"
            target = base / f"date={np.datetime64(int(day), 'D')}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(part, tmp, **options)
            os.replace(tmp, target)
            written.append(target)
        return written

    def settle(self, base: Path, partition: int, committed_offset: int,
               last_commit: CommitRecord | None) -> tuple[int, int]:
        """Make `partition`'s files agree with its committed state.

        ``last_commit`` is the extent and epoch of the last committed batch: its pending files
        are published; every other pending file, and any published file holding offsets at or
        past `committed_offset`, is removed. Returns (published, removed).
        """
        published = removed = 0
        if not base.exists():
            return 0, 0
        for path in base.glob(f"date=*/p{partition}-*.parquet.pending-*"):
            match = _PENDING.match(path.name)
            if match is None or int(match[1]) != partition:
                continue
            epoch, first, last = int(match[4]), int(match[2]), int(match[3])
            if last_commit is not None and epoch == last_commit.epoch and \
                    last_commit.first_offset <= first and last <= last_commit.last_offset:
                publish([path])
                published += 1
            else:
                path.unlink(missing_ok=True)
                removed += 1
        for path in base.glob(f"date=*/p{partition}-*.parquet"):
            match = _NAME.match(path.name)
            if match and int(match[1]) == partition and int(match[3]) >= committed_offset:
                path.unlink()
                removed += 1
        for tmp in base.glob("date=*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        return published, removed

    def published_files(self, base: Path) -> list[Path]:
        """Every published file under `base`, in name order (pending ones excluded)."""
        return sorted(base.glob("date=*/*.parquet")) if base.exists() else []

    def read(self, base: Path, columns: Sequence[str] | None = None,
             where: ds.Expression | None = None, from_day: str | None = None) -> pa.Table:
        """Every published row under `base` (empty table when nothing was written). Pending
        files are not read: a dataset over the folder would include them.

        ``columns`` reads only those; ``where`` filters rows as they are read (a pyarrow
        expression, pushed down to the Parquet row groups); ``from_day`` skips the ``date=``
        folders before that day (`day_of`), so a reader of recent rows opens recent files only.
        """
        files = sorted(str(path) for path in base.glob("date=*/*.parquet")
                       if from_day is None or path.parent.name >= f"date={from_day}") \
            if base.exists() else []
        if not files:
            return pa.table({})
        dataset = ds.dataset(files, format="parquet", partitioning="hive",
                             partition_base_dir=str(base))
        return dataset.to_table(columns=None if columns is None else list(columns),
                                filter=where)


class PendingParquet:
    """The :class:`~driftline.core.state.PendingFiles` of a stage that archives one topic:
    Parquet files under `bases`, named by that topic's offsets (a stage that archives by
    several topics combines several, see :class:`AllPending`)."""

    def __init__(self, store: OfflineStore, topic: str, bases: Sequence[Path]) -> None:
        self.store = store
        self.topic = topic
        self.bases = list(bases)

    def settle(self, restored: Restored) -> None:
        offset = restored.offsets.get(self.topic, 0)
        last_commit = restored.last_commits.get(self.topic)
        published = removed = 0
        for base in self.bases:
            done = self.store.settle(base, restored.partition, offset, last_commit)
            published += done[0]
            removed += done[1]
        if published or removed:
            log.warning("partition %d: published %d committed and removed %d uncommitted "
                        "Parquet files (resuming at offset %d)", restored.partition, published,
                        removed, offset)

    def publish(self, pending: Sequence[Path]) -> None:
        publish(pending)


class AllPending:
    """Several :class:`PendingParquet` as one: each settles the files named by its topic."""

    def __init__(self, parts: Sequence[PendingParquet]) -> None:
        self.parts = list(parts)

    def settle(self, restored: Restored) -> None:
        for part in self.parts:
            part.settle(restored)

    def publish(self, pending: Sequence[Path]) -> None:
        publish(pending)
