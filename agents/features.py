"""The feature stage of the worker: decoded events in, features to Redis, Kafka and Parquet out.

For each consumed batch, in this order:
1. per partition, the core :class:`FeatureEngine` of (view, partition) computes a row per event
   and the online values of every entity the batch touched; late events go to the DLQ with
   reason ``late``;
2. the raw events and the feature rows are written to Parquet as pending files;
3. one ``driftline.FeatureRecord`` per applied event is produced to the features topic;
4. one Redis MULTI writes the online values, appends each engine's state delta to its
   partition's state log and records the next offsets and the batch's extent;
5. the pending Parquet files are renamed into place.
Step 4 is the commit point. It is guarded by a per-partition epoch: a worker claims a partition
(``INCR``) when it is assigned, and the MULTI runs under ``WATCH`` of those epochs, so a worker
that lost its partitions without noticing (paused past the group's timeout) cannot commit over
the new owner. On assignment the engine is rebuilt from the state log, the Parquet files are
settled against the last commit, and consumption resumes at the committed offset: a crash,
an outage or a rebalance at any point neither loses nor double-counts an event in Redis or
Parquet. The features topic is at-least-once: records of a batch that did not commit are
produced again, identical, and carry ``event_id`` for de-duplication.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence

import numpy as np
import redis

from driftline.agents.ingest import PartitionBatch
from driftline.codec.feature_records import FeatureRecordEncoder
from driftline.codec.schema_set import SchemaSet
from driftline.dlq import DeadLetterSink
from driftline.features import EventBatch, FeatureEngine, FeatureView
from driftline.kafka import CheckedProducer
from driftline.metrics import (
    BATCH_SECONDS,
    EVENT_TO_STORE_SECONDS,
    FEATURE_ROWS,
    LATE_EVENTS,
    STATE_ROWS,
)
from driftline.offline_store import OfflineStore, publish
from driftline.online_store import RedisOnlineStore

log = logging.getLogger(__name__)

# The state log is compacted into one snapshot after this many deltas.
COMPACT_EVERY = 200


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class StreamState:
    """Per-partition engine state log and committed offsets, kept in Redis."""

    def __init__(self, client: redis.Redis, group: str, topic: str) -> None:
        self.client = client
        self.offsets_key = f"dl:offsets:{group}:{topic}"
        self.commits_key = f"dl:commits:{group}:{topic}"
        self.prefix = f"dl:state:{group}:{topic}"
        self.epoch_prefix = f"dl:epoch:{group}:{topic}"

    def epoch_key(self, partition: int) -> str:
        return f"{self.epoch_prefix}:{partition}"

    def claim(self, partition: int) -> int:
        """Take ownership of `partition`: any earlier owner's next commit will fail."""
        return int(self.client.incr(self.epoch_key(partition)))

    def last_commit(self, partition: int) -> tuple[int, int, int] | None:
        """(epoch, first offset, last offset) of the partition's last committed batch."""
        raw = self.client.hget(self.commits_key, str(partition))
        return None if raw is None else tuple(int(x) for x in raw.split(b":"))

    def log_key(self, view: str, partition: int) -> str:
        return f"{self.prefix}:{view}:{partition}"

    def load(self, view: str, partition: int) -> tuple[int | None, list[dict[str, np.ndarray]]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.offsets_key, str(partition))
        pipe.lrange(self.log_key(view, partition), 0, -1)
        offset, blobs = pipe.execute()
        return (None if offset is None else int(offset)), [_unpack(b) for b in blobs]


class Fenced(RuntimeError):
    """Another worker has claimed a partition of this batch since we did: we must not commit."""


class FeatureStage:
    """The :class:`Downstream` of :class:`IngestPipeline` that computes and stores features."""

    def __init__(self, views: Sequence[FeatureView], topic: str, group: str,
                 client: redis.Redis, online: RedisOnlineStore, offline: OfflineStore,
                 producer: CheckedProducer, features_topic: str, dead_letters: DeadLetterSink,
                 schemas: SchemaSet) -> None:
        self.views = list(views)
        self.topic = topic
        self.client = client
        self.state = StreamState(client, group, topic)
        self.online = online
        self.offline = offline
        self.producer = producer
        self.features_topic = features_topic
        self.dead_letters = dead_letters
        self.schemas = schemas
        self.engines: dict[tuple[str, int], FeatureEngine] = {}
        self.deltas: dict[tuple[str, int], int] = {}
        self.epochs: dict[int, int] = {}
        self.encoders: dict[str, FeatureRecordEncoder] = {}
        self.rows = 0  # feature rows committed (per view), for /health
        self.late = 0

    def stats(self) -> dict[str, int]:
        return {"feature_rows": self.rows, "late_events": self.late}

    # -- rebalance -------------------------------------------------------------------------
    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]:
        """Claim each partition, rebuild its engines from the state log, settle its files."""
        resume: dict[int, int] = {}
        for p in partitions:
            self.epochs[p] = self.state.claim(p)  # before loading: later commits are ours alone
            for view in self.views:  # every view of a partition commits in the same MULTI
                offset, snapshots = self.state.load(view.name, p)
                engine = FeatureEngine.restore(view, snapshots) if snapshots \
                    else FeatureEngine(view)
                self.engines[(view.name, p)] = engine
                self.deltas[(view.name, p)] = len(snapshots)
            if offset is not None:
                resume[p] = offset
            self._settle_files(p, offset or 0)
        return resume

    def _settle_files(self, partition: int, offset: int) -> None:
        last_commit = self.state.last_commit(partition)
        bases = [self.offline.events_dir(self.topic),
                 *(self.offline.features_dir(v.name) for v in self.views)]
        published = removed = 0
        for base in bases:
            done = self.offline.settle(base, partition, offset, last_commit)
            published += done[0]
            removed += done[1]
        if published or removed:
            log.warning("partition %d: published %d committed and removed %d uncommitted "
                        "Parquet files (resuming at offset %d)", partition, published, removed,
                        offset)

    def on_revoke(self, partitions: Sequence[int]) -> None:
        for key in [k for k in self.engines if k[1] in partitions]:
            del self.engines[key]
            self.deltas.pop(key, None)
        for p in partitions:
            self.epochs.pop(p, None)

    # -- processing --------------------------------------------------------------------------
    def process(self, batches: Sequence[PartitionBatch]) -> None:
        """All partitions of one consumed batch, committed by one Redis transaction, which
        fails (``WatchError``/``Fenced``) if another worker has claimed one of them since."""
        start = time.perf_counter()
        batches = [b for b in batches if b.records]
        if not batches:
            return
        pipe = self.client.pipeline(transaction=True)
        try:
            self._check_ownership(pipe, [b.partition for b in batches])
            pipe.multi()
            pending: list = []
            rows = late = 0
            for batch in batches:
                p, epoch = batch.partition, self.epochs[batch.partition]
                offsets = np.asarray(batch.offsets, dtype=np.int64)
                pending += self.offline.write(self.offline.events_dir(self.topic), p,
                                              _event_columns(batch), epoch)
                for view in self.views:
                    applied = self._process_view(view, batch, offsets, pipe, pending)
                    rows += applied
                    late += len(batch.records) - applied
                first, last = int(offsets[0]), int(offsets[-1])
                pipe.hset(self.state.offsets_key, str(p), last + 1)
                pipe.hset(self.state.commits_key, str(p), f"{epoch}:{first}:{last}")
            self.producer.flush_or_raise()
            pipe.execute()  # the commit point
        finally:
            pipe.reset()
        publish(pending)  # a crash before this is finished by _settle_files
        self.rows += rows
        self.late += late
        now_ms = time.time() * 1000
        appended = np.concatenate([np.asarray(b.append_times_ms, dtype=np.float64)
                                   for b in batches])
        EVENT_TO_STORE_SECONDS.observe_many(np.maximum(now_ms - appended, 0) / 1000)
        BATCH_SECONDS.labels("features").observe(time.perf_counter() - start)

    def _check_ownership(self, pipe: redis.client.Pipeline, partitions: list[int]) -> None:
        keys = [self.state.epoch_key(p) for p in partitions]
        pipe.watch(*keys)  # EXEC fails if any is claimed between now and the commit
        for p, value in zip(partitions, pipe.mget(keys), strict=True):
            mine = self.epochs.get(p)
            if mine is None or value is None or int(value) != mine:
                raise Fenced(f"partition {p} was claimed by another worker (epoch {value!r}, "
                             f"ours {mine}); rebuilding from the committed state")

    def _process_view(self, view: FeatureView, batch: PartitionBatch, offsets: np.ndarray,
                      pipe: redis.client.Pipeline, pending: list) -> int:
        """Compute, archive and produce one view's rows; queue its Redis writes on `pipe`.
        Returns the number of events applied."""
        key = (view.name, batch.partition)
        engine = self.engines[key]
        events = EventBatch.from_records(batch.records, offsets, view)
        result = engine.process(events)
        for i in np.flatnonzero(~result.applied):
            self.dead_letters.send(batch.messages[i], "late",
                                   f"event_time {batch.records[i][view.source.event_time_field]} "
                                   f"is before the watermark {result.watermark_ms} "
                                   f"(allowed lateness {view.source.allowed_lateness_ms} ms)")
        LATE_EVENTS.labels(view.name).inc(int((~result.applied).sum()))
        applied = np.flatnonzero(result.applied)
        FEATURE_ROWS.labels(view.name).inc(len(applied))
        STATE_ROWS.labels(view.name).set(engine.state_rows)
        pending += self.offline.write(
            self.offline.features_dir(view.name), batch.partition,
            _feature_columns(view, batch, offsets, result.values, applied),
            self.epochs[batch.partition])
        self._produce(view, batch, result.values, applied)
        self.online.write(pipe, view.name, view.version, view.feature_names,
                          result.online_entity.tolist(), result.online_values,
                          result.online_event_time_ms.tolist())
        self._append_state(pipe, key, engine, result.state_delta)
        return len(applied)

    def _append_state(self, pipe, key, engine: FeatureEngine, delta) -> None:
        log_key = self.state.log_key(*key)
        if self.deltas[key] >= COMPACT_EVERY:
            pipe.delete(log_key)
            pipe.rpush(log_key, _pack(engine.snapshot()))
            self.deltas[key] = 1
        else:
            pipe.rpush(log_key, _pack(delta))
            self.deltas[key] += 1

    def _produce(self, view: FeatureView, batch: PartitionBatch, values: np.ndarray,
                 applied: np.ndarray) -> None:
        encoder = self.encoders.get(view.name)
        if encoder is None:
            encoder = self.encoders[view.name] = FeatureRecordEncoder(
                view.name, view.version, view.feature_names, view.slices, self.schemas)
        records = [batch.records[i] for i in applied.tolist()]
        key_field, time_field = view.entity.key, view.source.event_time_field
        entities = [str(r[key_field]) for r in records]
        messages = encoder.encode_batch(
            [r["event_id"] for r in records], entities, [r[time_field] for r in records],
            values[applied], [[str(r[s]) for r in records] for s in view.slices])
        produce, topic = self.producer.produce, self.features_topic
        for n, (message, entity) in enumerate(zip(messages, entities, strict=True)):
            produce(topic, message, key=entity.encode())
            if n % 5000 == 4999:
                self.producer.poll(0)  # serve delivery reports before the queue fills


def _event_columns(batch: PartitionBatch) -> dict[str, list]:
    columns: dict[str, list] = {name: [r[name] for r in batch.records]
                                for name in batch.records[0]}
    columns["partition"] = [batch.partition] * len(batch.records)
    columns["offset"] = list(batch.offsets)
    return columns


def _feature_columns(view: FeatureView, batch: PartitionBatch, offsets: np.ndarray,
                     values: np.ndarray, applied: np.ndarray) -> dict[str, object]:
    records = [batch.records[i] for i in applied.tolist()]
    columns: dict[str, object] = {
        "event_id": [r["event_id"] for r in records],
        "entity_id": [str(r[view.entity.key]) for r in records],
        "event_time": np.asarray([r[view.source.event_time_field] for r in records],
                                 dtype=np.int64),
        "view_version": [view.version] * len(records),
        "partition": np.full(len(records), batch.partition, dtype=np.int32),
        "offset": offsets[applied],
    }
    for s in view.slices:
        columns[s] = [str(r[s]) for r in records]
    for j, name in enumerate(view.feature_names):
        columns[name] = values[applied, j]
    return columns
