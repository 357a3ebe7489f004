"""Thin confluent-kafka adapter: client configs from Settings, and the topic bootstrap.

Nothing here knows about features or models; it turns settings into client configuration and
creates Driftline's topics idempotently on any Kafka-compatible broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.settings import Settings

# DescribeConfigs on the embedded broker only returns configs set explicitly at creation, and
# some clients (Quix Streams) need retention.ms, so every topic is created with it set.
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    config = {
        "bootstrap.servers": settings.kafka_bootstrap_or_fail,
        "linger.ms": 5,
        "compression.type": "lz4",
        "enable.idempotence": True,  # no duplicates from producer retries
        "acks": "all",
        # Explicit, not librdkafka's default by accident: readers of the online store compute
        # an entity's partition with the same function (driftline/core/partitioner.py).
        "partitioner": settings.partitioner,
    }
    config.update(extra)
    return config


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    config = {
        "bootstrap.servers": settings.kafka_bootstrap_or_fail,
        "group.id": group_id,
        "enable.auto.commit": False,  # offsets are committed after the batch's effects land
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        # A broker that does not answer a fetch early when data arrives (Tansu) holds it for
        # the whole wait; librdkafka's 500 ms default then dominates event-to-store latency.
        "fetch.wait.max.ms": 50,
        # Once a partition's local queue is past librdkafka's thresholds, its next fetch is
        # postponed by this much (default 1,000 ms): a reader that then drains the queue in
        # less (the scorer in a backlog) sat idle waiting for data. bench/README.md measures it.
        "fetch.queue.backoff.ms": 10,
    }
    config.update(extra)
    return config


class DeliveryFailed(RuntimeError):
    """Messages the broker did not acknowledge (``CheckedProducer.flush_or_raise``)."""


class CheckedProducer(Producer):
    """A producer whose ``flush_or_raise`` fails if any message since the last flush was lost.

    ``flush()`` returning 0 only means the queue drained; a delivery can still have failed, and
    offsets must not be committed past a batch whose output did not land.

    Delivery reports come for failed messages only (``delivery.report.only.error``), so a
    per-message ``on_delivery`` sees only failures too; a caller that needs every report (the
    partition each message landed in) passes ``delivery.report.only.error=False``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.failures: list[str] = []
        # Reports for failed messages only: a report is a Python call holding the GIL, and one
        # per acknowledged message cost the worker and the scorer ~1 us a record.
        super().__init__({"delivery.report.only.error": True, **config,
                          "on_delivery": self._on_delivery})

    def produce(self, *args: Any, **kwargs: Any) -> None:
        """Like ``Producer.produce``, but waits for room when the local queue is full instead of
        raising ``BufferError`` (a large batch must not fail for want of queue space)."""
        while True:
            try:
                return super().produce(*args, **kwargs)
            except BufferError:
                self.poll(0.05)

    def produce_many(self, topic: str, values: Sequence[bytes],
                     keys: Sequence[bytes | None]) -> None:
        """Produce ``values[i]`` keyed ``keys[i]``, in order, waiting for room like `produce`;
        the client's own ``produce`` is called directly, with no Python frame per message."""
        produce, start = super().produce, 0
        while start < len(values):
            at = start
            try:
                for at in range(start, len(values)):
                    produce(topic, values[at], keys[at])
            except BufferError:  # the local queue is full: message `at` goes again after this
                self.poll(0.05)
                start = at
                continue
            start = len(values)

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def flush_or_raise(self, timeout: float = 30.0) -> None:
        remaining = self.flush(timeout)
        failures, self.failures = self.failures, []
        if remaining or failures:
            raise DeliveryFailed(
                f"{remaining} messages undelivered after {timeout:.0f}s, "
                f"{len(failures)} failed: {failures[:3]}")


def make_producer(settings: Settings, **extra: Any) -> CheckedProducer:
    return CheckedProducer(producer_config(settings, **extra))


def make_consumer(settings: Settings, group_id: str, **extra: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **extra))


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create every Driftline topic that does not exist yet. Returns topic -> 'created'|'exists'."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_or_fail})
    existing = set(admin.list_topics(timeout=timeout).topics)
    outcome = {t: "exists" for t in settings.topics.values() if t in existing}
    wanted = [
        NewTopic(topic, num_partitions=settings.partitions,
                 replication_factor=settings.replication_factor,
                 config={"retention.ms": str(DEFAULT_RETENTION_MS)})
        for topic in settings.topics.values() if topic not in existing
    ]
    if wanted:
        for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result(timeout)
                outcome[topic] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                outcome[topic] = "exists"
    return outcome


def list_topics(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Topic -> partition count, as the broker reports it."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_or_fail})
    metadata = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in metadata.topics.items()}
