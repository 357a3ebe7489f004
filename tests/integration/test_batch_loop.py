"""The batch loop over two co-partitioned topics on a real broker: what the monitor will use to
join predictions with labels without a consumer of its own."""

from __future__ import annotations

import threading
import time

from driftline.adapters import kafka
from driftline.adapters.batch_loop import BatchLoop, MessageBatch, PartitionId
from tests.integration.helpers import produce, wait_for


class Recorder:
    """A pipeline that keeps what it is handed; it can fail once, and it resumes each
    partition from its own record of what it has processed (as a state-backed stage does)."""

    def __init__(self, fail_once_at: int | None = None) -> None:
        self.batches: list[MessageBatch] = []
        self.assigned: list[list[PartitionId]] = []
        self.next_offset: dict[PartitionId, int] = {}
        self.fail_once_at = fail_once_at
        self.lock = threading.Lock()

    def on_assign(self, partitions):
        self.assigned.append(list(partitions))
        return {p: self.next_offset[p] for p in partitions if p in self.next_offset}

    def on_revoke(self, partitions):
        pass

    def process(self, batches):
        with self.lock:
            seen = sum(len(b.messages) for b in self.batches)
            if self.fail_once_at is not None and seen >= self.fail_once_at:
                self.fail_once_at = None
                raise ConnectionError("state store went away")
            self.batches.extend(batches)
            for b in batches:
                self.next_offset[PartitionId(b.topic, b.partition)] = b.messages[-1].offset() + 1

    def received(self) -> int:
        with self.lock:
            return sum(len(b.messages) for b in self.batches)


def run_loop(settings, pipeline, expected: int) -> None:
    loop = BatchLoop(lambda: kafka.make_consumer(settings, f"{settings.group_features}-join"),
                     [settings.topic_predictions, settings.topic_labels], pipeline,
                     batch_size=50, batch_timeout_s=0.1, max_backoff_s=1.0)
    loop.start()
    try:
        wait_for(lambda: pipeline.received() >= expected, timeout=60,
                 what=f"{expected} messages")
        time.sleep(0.5)  # anything extra would arrive now
        health = loop.health()
    finally:
        loop.stop()
    assert health["status"] == "ok", health
    assert health["assigned"] == sorted(
        f"{t}/{p}" for t in (settings.topic_predictions, settings.topic_labels)
        for p in range(settings.partitions))


def produce_both(settings, n: int) -> None:
    for topic in (settings.topic_predictions, settings.topic_labels):
        produce(settings.kafka_bootstrap, topic,
                [(f"card-{i % 17}".encode(), f"{topic}:{i}".encode()) for i in range(n)])


def check_batches(settings, pipeline: Recorder, n: int) -> None:
    values: dict[str, list[bytes]] = {settings.topic_predictions: [], settings.topic_labels: []}
    partition_of: dict[bytes, set[int]] = {}
    for batch in pipeline.batches:
        offsets = [m.offset() for m in batch.messages]
        assert offsets == sorted(offsets), "a partition's batch is out of offset order"
        for m in batch.messages:
            assert (m.topic(), m.partition()) == (batch.topic, batch.partition)
            values[batch.topic].append(m.value())
            partition_of.setdefault(m.key(), set()).add(m.partition())
    for topic, got in values.items():
        assert sorted(got) == sorted(f"{topic}:{i}".encode() for i in range(n)), topic
    # Co-partitioned: a key lands on the same partition number in both topics.
    assert all(len(parts) == 1 for parts in partition_of.values())


def test_two_topics_are_handed_over_per_partition_with_their_topic(settings):
    n = 400
    produce_both(settings, n)
    pipeline = Recorder()
    run_loop(settings, pipeline, 2 * n)
    assert pipeline.received() == 2 * n
    check_batches(settings, pipeline, n)
    first = {(p.topic, p.partition) for p in pipeline.assigned[0]}
    assert first == {(t, p) for t in (settings.topic_predictions, settings.topic_labels)
                     for p in range(settings.partitions)}


def test_a_failed_batch_over_two_topics_is_replayed_from_the_pipeline_state(settings):
    n = 400
    produce_both(settings, n)
    pipeline = Recorder(fail_once_at=200)
    run_loop(settings, pipeline, 2 * n)
    assert pipeline.received() == 2 * n, "a message was lost or delivered twice"
    assert len(pipeline.assigned) >= 2, "the failure did not rebuild the pipeline's state"
    check_batches(settings, pipeline, n)
