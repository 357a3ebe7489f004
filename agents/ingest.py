"""Decode a batch of raw event messages; route what fails to the dead-letter topic.

``IngestPipeline`` is the :class:`BatchPipeline` the worker's reader drives. It decodes every
message (JSON, Avro single-object or Confluent wire format), checks each decoded event time
against the source's event-time guard (``driftline.core.event_time``: too far ahead of this
process's clock, or before the plausible floor), sends each failure to the DLQ with its reason,
groups the good records by partition in offset order and hands them to the downstream stage (the
feature pipeline). A bad message never stops the batch, and a guarded one never reaches a
watermark or the offline store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Message

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import RECORDS_DECODED
from driftline.core.codec.columnar import ColumnarDecoder, RecordColumns
from driftline.core.event_time import EventTimeGuard


@dataclass
class PartitionBatch:
    """Decoded records of one partition, in offset order, as columns.

    `rows` holds one column per schema field; `offsets`, `messages` and `append_times_ms` one
    entry per row. `consumed` is the first and last offset of every message of the partition in
    this batch, dead-lettered ones included (None: those of `offsets`), so the commit moves
    past a batch that ends in, or consists only of, bad messages and a restart does not
    dead-letter them again."""

    partition: int
    rows: RecordColumns
    offsets: np.ndarray  # int64
    messages: list[Message] = field(default_factory=list)
    append_times_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    consumed: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def of_records(cls, partition: int, records: Sequence[dict[str, Any]],
                   offsets: Sequence[int], messages: Sequence[Message] | None = None,
                   append_times_ms: Sequence[int] | None = None) -> PartitionBatch:
        """A batch from decoded dicts (tests, and sources without a columnar decoder)."""
        n = len(records)
        return cls(partition, RecordColumns.of_records(records), np.asarray(offsets, np.int64),
                   list(messages) if messages is not None else [None] * n,
                   np.asarray(append_times_ms if append_times_ms is not None else [0] * n,
                              dtype=np.int64))

    @property
    def consumed_range(self) -> tuple[int, int]:
        if self.consumed is not None:
            return self.consumed
        return int(self.offsets[0]), int(self.offsets[-1])


class Downstream(Protocol):
    """The stage after decoding. ``prepare`` computes a batch, ``send`` produces its output,
    ``finish`` waits for that output and commits (``FeatureStage`` is the one in use)."""

    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]: ...
    def on_revoke(self, partitions: Sequence[int]) -> None: ...
    def prepare(self, batches: Sequence[PartitionBatch]) -> Any: ...
    def send(self, staged: Any) -> None: ...
    def finish(self, staged: Any) -> None: ...
    def stats(self) -> dict[str, int]: ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def decode_or_dead_letter(messages: Sequence[Message], decoder, dead_letters: DeadLetterSink,
                          guard: EventTimeGuard | None = None,
                          clock_ms: Callable[[], int] = wall_clock_ms,
                          ) -> tuple[list[Message], list[dict[str, Any]]]:
    """Decode one topic's `messages`; send each one that fails, and each record `guard` refuses
    at the clock's time (read once), to the DLQ with its reason. Returns the good messages and
    their records, in order. Counts the records decoded for the topic (the batch loop counts
    the messages consumed)."""
    if not messages:
        return [], []
    topic = messages[0].topic()
    records, failures = decoder.decode_many([m.value() or b"" for m in messages])
    failed = {index for index, _ in failures}
    for index, error in failures:
        dead_letters.send(messages[index], error.reason, error.detail)
    RECORDS_DECODED.labels(topic).inc(len(records))
    good = [m for i, m in enumerate(messages) if i not in failed]
    if guard is not None:
        rejected = guard.reject(records, clock_ms())
        if rejected:
            for r in rejected:
                dead_letters.send(good[r.index], r.reason, r.detail)
            drop = {r.index for r in rejected}
            good = [m for i, m in enumerate(good) if i not in drop]
            records = [rec for i, rec in enumerate(records) if i not in drop]
    return good, records


class IngestPipeline:
    """`decoder` is the topic's `Decoder` (or a `ColumnarDecoder` over one); `guard` the
    event-time guard of the topic's source (None: no guard); `clock_ms` the wall clock it
    compares with, read once per batch."""

    def __init__(self, decoder, dead_letters: DeadLetterSink, producer: CheckedProducer,
                 downstream: Downstream, *, guard: EventTimeGuard | None = None,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.producer = producer
        self.downstream = downstream
        self.guard = guard
        self.clock_ms = clock_ms
        # Flat record schemas (every event source today) decode straight into columns.
        self.columnar: ColumnarDecoder | None
        if isinstance(decoder, ColumnarDecoder):
            self.columnar, self.decoder = decoder, decoder.decoder
        else:
            try:
                self.columnar = ColumnarDecoder(decoder)
            except ValueError:
                self.columnar = None

    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        resume = self.downstream.on_assign([p.partition for p in partitions])
        return {p: resume[p.partition] for p in partitions if p.partition in resume}

    def stats(self) -> dict[str, int]:
        return {"dead_letters": self.dead_letters.sent, **self.downstream.stats()}

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        self.downstream.on_revoke([p.partition for p in partitions])

    def process(self, batches: Sequence[MessageBatch]) -> None:
        staged = self.prepare(batches)
        staged.send()
        staged.finish()

    def prepare(self, batches: Sequence[MessageBatch]) -> StagedIngest:
        """Decode the batch into columns (dead letters are produced now) and have the
        downstream stage compute it; nothing of its output is sent before ``send``."""
        messages = [m for batch in batches for m in batch.messages]
        if not messages:
            return StagedIngest(self, None)
        rows = self._decode(messages)
        partitions = np.fromiter((m.partition() for m in messages), np.int64, len(messages))
        offsets = np.fromiter((m.offset() for m in messages), np.int64, len(messages))
        appended = np.fromiter((m.timestamp()[1] for m in messages), np.int64, len(messages))
        row_partitions = partitions[rows.index]
        parts = []
        for b in batches:
            if not b.messages:
                continue
            part = rows.take(row_partitions == b.partition)  # offset order: rows keep input order
            parts.append(PartitionBatch(
                b.partition, part, offsets[part.index], [messages[i] for i in part.index.tolist()],
                appended[part.index], consumed=(b.messages[0].offset(), b.messages[-1].offset())))
        return StagedIngest(self, self.downstream.prepare(parts))

    def _decode(self, messages: list[Message]) -> RecordColumns:
        """The batch's good records as columns; every failure and every record the event-time
        guard refuses goes to the DLQ with its reason."""
        values = [m.value() or b"" for m in messages]
        if self.columnar is not None:
            rows, failures = self.columnar.decode_columns(values)
        else:
            records, failures = self.decoder.decode_many(values)
            failed = {i for i, _ in failures}
            good = np.asarray([i for i in range(len(values)) if i not in failed], np.int64)
            rows = RecordColumns(RecordColumns.of_records(records).columns, good)
        for index, error in failures:
            self.dead_letters.send(messages[index], error.reason, error.detail)
        RECORDS_DECODED.labels(messages[0].topic()).inc(len(rows))
        if self.guard is not None and len(rows):
            rejected = self.guard.reject_columns(rows[self.guard.field], self.clock_ms())
            for r in rejected:
                self.dead_letters.send(messages[int(rows.index[r.index])], r.reason, r.detail)
            rows = rows.drop([r.index for r in rejected])
        return rows


@dataclass
class StagedIngest:
    """A decoded and computed batch (a :class:`~driftline.adapters.batch_loop.StagedBatch`)."""

    pipeline: IngestPipeline
    downstream: Any  # what the downstream stage's prepare returned (None: nothing to commit)

    def send(self) -> None:
        if self.downstream is not None:
            self.pipeline.downstream.send(self.downstream)

    def finish(self) -> None:
        if self.downstream is not None:
            self.pipeline.downstream.finish(self.downstream)
        # Dead letters and downstream output are durable before the reader commits the offsets.
        self.pipeline.producer.flush_or_raise()
