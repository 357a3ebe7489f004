"""In-memory stand-ins for the Kafka edge, for unit tests of the stages (no broker).

`FakeMessage` answers what the stages ask of a confluent-kafka ``Message``; `RecordingProducer`
keeps what a stage produced and can be told to fail its next flush, like a broker outage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from driftline.adapters.batch_loop import MessageBatch, group_by_partition


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _timestamp_ms: int = 0

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)  # TIMESTAMP_CREATE_TIME

    def error(self) -> None:
        return None


def messages(topic: str, partition: int, values: list[bytes], first_offset: int = 0,
             keys: list[bytes] | None = None) -> list[FakeMessage]:
    keys = keys or [None] * len(values)
    return [FakeMessage(topic, partition, first_offset + i, v, k)
            for i, (v, k) in enumerate(zip(values, keys, strict=True))]


def batches(*message_lists: list[FakeMessage]) -> list[MessageBatch]:
    """What the batch loop hands a pipeline for these messages."""
    return group_by_partition([m for ms in message_lists for m in ms])


@dataclass
class RecordingProducer:
    """Keeps every produced (topic, value, key); ``fail_next_flush`` makes the next
    ``flush_or_raise`` raise as a lost delivery would."""

    produced: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    fail_next_flush: str | None = None
    flushes: int = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **_: object) -> None:
        self.produced.append((topic, value, key))

    def produce_many(self, topic: str, values: Sequence[bytes],
                     keys: Sequence[bytes | None]) -> None:
        self.produced += [(topic, value, key) for value, key in zip(values, keys, strict=True)]

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush_or_raise(self, timeout: float = 30.0) -> None:
        self.flushes += 1
        if self.fail_next_flush is not None:
            reason, self.fail_next_flush = self.fail_next_flush, None
            raise RuntimeError(reason)

    def on(self, topic: str) -> list[tuple[bytes, bytes | None]]:
        return [(value, key) for t, value, key in self.produced if t == topic]
