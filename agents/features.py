"""The feature stage of the worker: decoded events in, features to Redis, Kafka and Parquet out.

For each consumed batch, in this order:
1. per partition, the core :class:`FeatureEngine` of (view, partition) computes a row per event
   and the online values of every entity the batch touched; late events go to the DLQ with
   reason ``late``;
2. one ``driftline.FeatureRecord`` per applied event is produced to the features topic;
3. once the broker has acknowledged them, the raw events and the feature rows are written to
   Parquet as pending files;
4. one transaction of the partition state (``core/state.py``) commits the online values, each
   engine's state delta and the next offsets, fenced by the partitions' ownership epochs;
5. the pending Parquet files are published.
Step 4 is the commit point. The stage runs in three calls so that the batch loop can compute
batch N+1 (``prepare``: step 1 and the encoding of step 2) while batch N is acknowledged,
written and committed on its commit thread (``send``: step 2; ``finish``: steps 3 to 5; pyarrow
writes without holding the GIL, so the files cost the next batch little); ``process`` does all
three. On assignment the partition state claims each partition, the engines are rebuilt from
their state logs, the Parquet files are settled against the last commit, and consumption
resumes at the committed offset: a crash, an outage or a rebalance at any point neither loses
nor double-counts an event in Redis or Parquet. The features topic is at-least-once: records of
a batch that did not commit are produced again, identical, and carry ``event_id`` for
de-duplication.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import (
    BATCH_SECONDS,
    EVENT_TO_STORE_SECONDS,
    FEATURE_ROWS,
    LATE_EVENTS,
    STATE_ROWS,
)
from driftline.adapters.offline_store import OfflineStore
from driftline.agents.ingest import PartitionBatch
from driftline.core.codec.columnar import RecordColumns
from driftline.core.codec.errors import LATE
from driftline.core.codec.feature_records import FeatureRecordEncoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.features import EventBatch, FeatureEngine, FeatureView
from driftline.core.online import OnlineWrite
from driftline.core.state import PartitionState, Transaction

log = logging.getLogger(__name__)


class FeatureStage:
    """The :class:`Downstream` of :class:`IngestPipeline` that computes and stores features.

    `state` is the stage's :class:`PartitionState` over the events topic, with one store per
    view (named by the view) and the Parquet files as its pending output; its backend commits
    the online values too.
    """

    def __init__(self, views: Sequence[FeatureView], topic: str, state: PartitionState,
                 offline: OfflineStore, producer: CheckedProducer, features_topic: str,
                 dead_letters: DeadLetterSink, schemas: SchemaSet) -> None:
        self.views = list(views)
        self.topic = topic
        self.state = state
        self.offline = offline
        self.producer = producer
        self.features_topic = features_topic
        self.dead_letters = dead_letters
        self.schemas = schemas
        self.engines: dict[tuple[str, int], FeatureEngine] = {}
        self.encoders: dict[str, FeatureRecordEncoder] = {}
        self.rows = 0  # feature rows committed (per view), for /health
        self.late = 0

    def stats(self) -> dict[str, int]:
        return {"feature_rows": self.rows, "late_events": self.late}

    # -- rebalance -------------------------------------------------------------------------
    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]:
        """Claim each partition, rebuild its engines from the state logs, settle its files."""
        resume: dict[int, int] = {}
        for p, restored in self.state.assign(partitions).items():
            for view in self.views:  # every view of a partition commits in the same transaction
                snapshots = restored.logs[view.name]
                self.engines[(view.name, p)] = FeatureEngine.restore(view, snapshots) \
                    if snapshots else FeatureEngine(view)
            if self.topic in restored.offsets:
                resume[p] = restored.offsets[self.topic]
        return resume

    def on_revoke(self, partitions: Sequence[int]) -> None:
        for key in [k for k in self.engines if k[1] in partitions]:
            del self.engines[key]
        self.state.revoke(partitions)

    # -- processing --------------------------------------------------------------------------
    def process(self, batches: Sequence[PartitionBatch]) -> None:
        """All partitions of one consumed batch, committed by one state transaction, which
        raises ``Fenced`` if another worker has claimed one of them since."""
        staged = self.prepare(batches)
        if staged is not None:
            self.send(staged)
            self.finish(staged)

    def prepare(self, batches: Sequence[PartitionBatch]) -> StagedFeatures | None:
        """Step 1 and the encoding of step 2: everything but sending, writing and committing.
        The engines have applied the batch when this returns; if it is never committed the
        batch loop rebuilds them from the committed state."""
        start = time.perf_counter()
        batches = [b for b in batches if len(b) or b.consumed is not None]
        if not batches:
            return None
        staged = StagedFeatures(self.state.begin(b.partition for b in batches))
        txn = staged.txn
        for batch in batches:
            p = batch.partition
            if len(batch):  # else only dead letters: the offsets still move past them
                staged.files.append((self.offline.events_dir(self.topic), p,
                                     _event_columns(batch)))
                for view in self.views:
                    applied = self._process_view(view, batch, staged)
                    staged.rows += applied
                    staged.late += len(batch) - applied
            txn.consumed(self.topic, p, *batch.consumed_range)
        staged.append_times_ms = np.concatenate(
            [b.append_times_ms.astype(np.float64) for b in batches])
        staged.seconds = time.perf_counter() - start
        return staged

    def send(self, staged: StagedFeatures) -> None:
        """Step 2: produce the batch's FeatureRecords (not yet acknowledged)."""
        self.producer.produce_many(self.features_topic, staged.records, staged.keys)

    def finish(self, staged: StagedFeatures) -> None:
        """Steps 3 to 5: once every record is acknowledged, the pending files, then the commit
        point."""
        start = time.perf_counter()
        self.producer.flush_or_raise()
        txn = staged.txn
        self.state.check(txn)  # a fenced worker learns it before writing files for nothing
        for base, partition, columns in staged.files:
            txn.pending += self.offline.write(base, partition, columns, txn.epochs[partition])
        self.state.commit(txn)  # the commit point; then the pending files are published
        self.rows += staged.rows
        self.late += staged.late
        now_ms = time.time() * 1000
        if len(staged.append_times_ms):
            EVENT_TO_STORE_SECONDS.observe_many(
                np.maximum(now_ms - staged.append_times_ms, 0) / 1000)
        BATCH_SECONDS.labels("features").observe(staged.seconds + time.perf_counter() - start)

    def _process_view(self, view: FeatureView, batch: PartitionBatch,
                      staged: StagedFeatures) -> int:
        """Compute, archive and encode one view's rows; add its online values and state delta
        to the transaction. Returns the number of events applied."""
        txn = staged.txn
        engine = self.engines[(view.name, batch.partition)]
        result = engine.process(EventBatch.from_columns(batch.rows.columns, batch.offsets, view))
        times = batch.rows[view.source.event_time_field]
        for i in np.flatnonzero(~result.applied).tolist():
            self.dead_letters.send(batch.messages[i], LATE,
                                   f"event_time {int(times[i])} "
                                   f"is before the watermark {result.watermark_ms} "
                                   f"(allowed lateness {view.source.allowed_lateness_ms} ms)")
        LATE_EVENTS.labels(view.name).inc(int((~result.applied).sum()))
        applied = np.flatnonzero(result.applied)
        FEATURE_ROWS.labels(view.name).inc(len(applied))
        STATE_ROWS.labels(view.name).set(engine.state_rows)
        rows = batch.rows.take(applied)
        staged.files.append((self.offline.features_dir(view.name), batch.partition,
                             _feature_columns(view, batch, rows, result.values, applied)))
        messages, keys = self._encode(view, rows, result.values[applied])
        staged.records += messages
        staged.keys += keys
        txn.write_online(OnlineWrite(
            view.name, view.version, tuple(view.feature_names), result.online_entity.tolist(),
            result.online_values, result.online_event_time_ms.tolist()))
        self.state.append(txn, batch.partition, view.name, result.state_delta, engine.snapshot)
        return len(applied)

    def _encode(self, view: FeatureView, rows: RecordColumns,
                values: np.ndarray) -> tuple[list[bytes], list[bytes]]:
        """The FeatureRecords of the applied events `rows` (`values`: their feature rows) and
        their keys."""
        encoder = self.encoders.get(view.name)
        if encoder is None:
            encoder = self.encoders[view.name] = FeatureRecordEncoder(
                view.name, view.version, view.feature_names, view.slices, self.schemas)
        return encoder.encode_keyed(
            rows.as_str("event_id"), rows.as_str(view.entity.key),
            rows[view.source.event_time_field], values, [rows.as_str(s) for s in view.slices])


@dataclass
class StagedFeatures:
    """A batch the feature stage has computed but not yet sent or committed."""

    txn: Transaction
    files: list[tuple[Path, int, dict[str, object]]] = field(default_factory=list)  # to write:
    # (folder, partition, columns) of each Parquet file set (`OfflineStore.write`)
    records: list[bytes] = field(default_factory=list)  # FeatureRecords
    keys: list[bytes] = field(default_factory=list)  # their Kafka keys (the entity ids)
    rows: int = 0
    late: int = 0
    append_times_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    seconds: float = 0.0  # spent computing it


def _event_columns(batch: PartitionBatch) -> dict[str, object]:
    columns: dict[str, object] = dict(batch.rows.columns)
    columns["partition"] = np.full(len(batch), batch.partition, dtype=np.int64)
    columns["offset"] = batch.offsets
    return columns


def _feature_columns(view: FeatureView, batch: PartitionBatch, rows: RecordColumns,
                     values: np.ndarray, applied: np.ndarray) -> dict[str, object]:
    """The feature rows of the applied events `rows` (positions `applied` in the batch)."""
    columns: dict[str, object] = {
        "event_id": rows.as_str("event_id"),
        "entity_id": rows.as_str(view.entity.key),
        "event_time": np.asarray(rows[view.source.event_time_field], dtype=np.int64),
        "view_version": [view.version] * len(rows),
        "partition": np.full(len(rows), batch.partition, dtype=np.int32),
        "offset": batch.offsets[applied],
    }
    for s in view.slices:
        columns[s] = rows.as_str(s)
    for j, name in enumerate(view.feature_names):
        columns[name] = values[applied, j]
    return columns
