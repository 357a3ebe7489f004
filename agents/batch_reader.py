"""Read a high-volume topic in batches inside the Faust worker.

Faust's agent loop costs several event-loop turns per message (FIELD-NOTES: ~12k msgs/s here),
while confluent-kafka hands out thousands of messages per call. ``BatchReader`` is a Faust
(mode) service: the worker starts and stops it with the app, and it runs a confluent-kafka
consumer in its own thread, so Faust's event loop, timers and web server stay responsive.

Contract with the pipeline it drives (everything runs on the reader thread, never concurrently):
- ``on_assign(partitions) -> {partition: offset}``: load state; return the offset to resume each
  partition from (state-backed), or omit a partition to resume from the group's committed offset.
- ``process(messages)``: when it returns, the batch's effects have landed.
- ``on_revoke(partitions)``: drop state for partitions this worker no longer owns.
Offsets are committed to Kafka only after ``process`` returns, so a crash replays, never skips.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import mode
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Message, TopicPartition

log = logging.getLogger(__name__)


class BatchPipeline(Protocol):
    def on_assign(self, partitions: Sequence[int]) -> dict[int, int]: ...
    def on_revoke(self, partitions: Sequence[int]) -> None: ...
    def process(self, messages: Sequence[Message]) -> None: ...


class BatchReader(mode.Service):
    """A Faust-managed service that feeds one topic to a pipeline in batches."""

    def __init__(self, consumer_factory, topic: str, pipeline: BatchPipeline,
                 batch_size: int, batch_timeout_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._consumer_factory = consumer_factory
        self.topic = topic
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.assigned: set[int] = set()
        self.batches = 0
        self.messages = 0
        self.failure: BaseException | None = None
        self.lag: dict[int, int] = {}
        self._lag_measured_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    async def on_start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"batch-reader:{self.topic}",
                                        daemon=True)
        self._thread.start()

    async def on_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await self.loop.run_in_executor(None, self._thread.join, 30.0)

    @property
    def healthy(self) -> bool:
        return self.failure is None and self._thread is not None and self._thread.is_alive()

    def _measure_lag(self, consumer: Consumer) -> None:
        """Messages behind the high watermark per assigned partition; runs on the reader thread
        at most once a second (the consumer is not shared with the web handlers)."""
        now = time.monotonic()
        if now - self._lag_measured_at < 1.0:
            return
        self._lag_measured_at = now
        lag = {}
        positions = consumer.position([TopicPartition(self.topic, p) for p in self.assigned])
        for tp in positions:
            low, high = consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            position = tp.offset if tp.offset >= 0 else low
            lag[tp.partition] = max(high - position, 0)
        self.lag = lag

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        resume = self.pipeline.on_assign(numbers)
        for tp in partitions:
            if tp.partition in resume:
                tp.offset = resume[tp.partition]
        consumer.assign(partitions)
        self.assigned.update(numbers)
        log.info("assigned %s partitions %s (resume %s)", self.topic, numbers, resume)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self.pipeline.on_revoke(numbers)
        self.assigned.difference_update(numbers)
        consumer.unassign()
        log.info("revoked %s partitions %s", self.topic, numbers)

    def _run(self) -> None:
        try:
            consumer = self._consumer = self._consumer_factory()
            consumer.subscribe([self.topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_revoke)
            try:
                while not self._stop.is_set():
                    self._step(consumer)
            finally:
                consumer.close()
        except BaseException as exc:  # surfaced by /health; the worker must not hide it
            self.failure = exc
            log.exception("batch reader for %s failed", self.topic)

    def _step(self, consumer: Consumer) -> None:
        raw = consumer.consume(num_messages=self.batch_size, timeout=self.batch_timeout_s)
        self._measure_lag(consumer)
        if not raw:
            return
        messages = []
        for msg in raw:
            err = msg.error()
            if err is None:
                messages.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error on %s: %s", self.topic, err)
        if not messages:
            return
        self.pipeline.process(messages)
        consumer.commit(offsets=_next_offsets(messages), asynchronous=False)
        self.batches += 1
        self.messages += len(messages)


def _next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for msg in messages:
        last[(msg.topic(), msg.partition())] = msg.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items() if o != OFFSET_INVALID]
