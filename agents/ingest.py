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

from confluent_kafka import Message

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import RECORDS_DECODED
from driftline.core.event_time import EventTimeGuard


@dataclass
class PartitionBatch:
    """Decoded records of one partition, in offset order.

    `consumed` is the first and last offset of every message of the partition in this batch,
    dead-lettered ones included (None: those of `offsets`), so the commit moves past a batch
    that ends in, or consists only of, bad messages and a restart does not dead-letter them
    again."""

    partition: int
    records: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    append_times_ms: list[int] = field(default_factory=list)
    consumed: tuple[int, int] | None = None

    @property
    def consumed_range(self) -> tuple[int, int]:
        return self.consumed if self.consumed is not None else (self.offsets[0], self.offsets[-1])


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
    """`guard` is the event-time guard of the topic's source (None: no guard); `clock_ms` the
    wall clock it compares with, read once per batch."""

    def __init__(self, decoder, dead_letters: DeadLetterSink, producer: CheckedProducer,
                 downstream: Downstream, *, guard: EventTimeGuard | None = None,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.producer = producer
        self.downstream = downstream
        self.guard = guard
        self.clock_ms = clock_ms

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
        """Decode the batch (dead letters are produced now) and have the downstream stage
        compute it; nothing of its output is sent before ``send``."""
        messages = [m for batch in batches for m in batch.messages]
        if not messages:
            return StagedIngest(self, None)
        good, records = decode_or_dead_letter(messages, self.decoder, self.dead_letters,
                                              self.guard, self.clock_ms)
        by_partition = {b.partition: PartitionBatch(
            b.partition, consumed=(b.messages[0].offset(), b.messages[-1].offset()))
            for b in batches if b.messages}
        for msg, record in zip(good, records, strict=True):
            batch = by_partition[msg.partition()]
            batch.records.append(record)
            batch.offsets.append(msg.offset())
            batch.messages.append(msg)
            batch.append_times_ms.append(msg.timestamp()[1])
        return StagedIngest(self, self.downstream.prepare(list(by_partition.values())))


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
