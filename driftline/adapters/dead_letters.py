"""The dead-letter topic: where a record that cannot be processed goes, with the reason.

Every drop in Driftline goes through :class:`DeadLetterSink`: the original bytes and key, the
source topic/partition/offset, a machine-readable reason and a readable detail, Avro
single-object encoded as ``driftline.DeadLetter``. Each one is counted in
``driftline_dead_letters_total{topic,reason}``. The reason must be one of
``driftline.core.codec.errors.ALL_REASONS``, the one list of reason codes.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Message, Producer

from driftline.adapters.metrics import DEAD_LETTERS
from driftline.core.codec.errors import ALL_REASONS
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode

DEAD_LETTER_SCHEMA = "driftline.DeadLetter"


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                reason: str, detail: str, failed_at_ms: int) -> dict[str, Any]:
    return {
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "original": value or b"",
        "reason": reason,
        "detail": detail,
        "failed_at": failed_at_ms,
    }


class DeadLetterSink:
    """Produces dead letters; the caller flushes with the rest of its batch's output."""

    def __init__(self, producer: Producer, topic: str, schemas: SchemaSet) -> None:
        self.producer = producer
        self.topic = topic
        self.schemas = schemas
        self.sent = 0

    def send(self, msg: Message, reason: str, detail: str) -> None:
        """Produce `msg` as a dead letter; ValueError for a reason not in ``ALL_REASONS``."""
        if reason not in ALL_REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; the reasons are "
                             f"{', '.join(ALL_REASONS)} (driftline.core.codec.errors)")
        record = dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                             reason, detail, int(time.time() * 1000))
        self.producer.produce(self.topic, encode(DEAD_LETTER_SCHEMA, record, self.schemas),
                              key=msg.key())
        DEAD_LETTERS.labels(msg.topic(), reason).inc()
        self.sent += 1
