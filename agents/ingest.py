"""Decode a batch of raw event messages; route what fails to the dead-letter topic.

``IngestPipeline`` is the :class:`BatchPipeline` the worker's reader drives. It decodes every
message (JSON, Avro single-object or Confluent wire format), sends each failure to the DLQ with
its reason, groups the good records by partition in offset order and hands them to the
downstream stage (the feature pipeline). A bad message never stops the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Message

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import MESSAGES_CONSUMED, RECORDS_DECODED


@dataclass
class PartitionBatch:
    """Decoded records of one partition, in offset order."""

    partition: int
    records: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    append_times_ms: list[int] = field(default_factory=list)


class Downstream(Protocol):
    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]: ...
    def on_revoke(self, partitions: Sequence[int]) -> None: ...
    def process(self, batches: Sequence[PartitionBatch]) -> None: ...
    def stats(self) -> dict[str, int]: ...


class IngestPipeline:
    def __init__(self, decoder, dead_letters: DeadLetterSink, producer: CheckedProducer,
                 downstream: Downstream) -> None:
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.producer = producer
        self.downstream = downstream

    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        resume = self.downstream.on_assign([p.partition for p in partitions])
        return {p: resume[p.partition] for p in partitions if p.partition in resume}

    def stats(self) -> dict[str, int]:
        return {"dead_letters": self.dead_letters.sent, **self.downstream.stats()}

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        self.downstream.on_revoke([p.partition for p in partitions])

    def process(self, batches: Sequence[MessageBatch]) -> None:
        messages = [m for batch in batches for m in batch.messages]
        if not messages:
            return
        topic = messages[0].topic()
        MESSAGES_CONSUMED.labels(topic).inc(len(messages))
        records, failures = self.decoder.decode_many([m.value() or b"" for m in messages])
        failed = {index for index, _ in failures}
        for index, error in failures:
            self.dead_letters.send(messages[index], error.reason, error.detail)
        by_partition: dict[int, PartitionBatch] = {}
        good = (m for i, m in enumerate(messages) if i not in failed)
        for msg, record in zip(good, records, strict=True):
            batch = by_partition.get(msg.partition())
            if batch is None:
                batch = by_partition[msg.partition()] = PartitionBatch(msg.partition())
            batch.records.append(record)
            batch.offsets.append(msg.offset())
            batch.messages.append(msg)
            batch.append_times_ms.append(msg.timestamp()[1])
        RECORDS_DECODED.labels(topic).inc(len(records))
        self.downstream.process(list(by_partition.values()))
        # Dead letters and downstream output are durable before the reader commits the offsets.
        self.producer.flush_or_raise()
