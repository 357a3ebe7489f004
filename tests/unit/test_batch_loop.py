"""The batch loop without a broker: adaptive batches, and `dependency_of` (which dependency
failed a batch, for driftline_dependency_errors_total)."""

from __future__ import annotations

import redis
from confluent_kafka import KafkaException

from driftline.adapters.batch_loop import BatchLoop, dependency_of
from driftline.adapters.kafka import DeliveryFailed


def test_failures_are_attributed_to_their_dependency():
    assert dependency_of(redis.ConnectionError("down")) == "redis"
    assert dependency_of(redis.WatchError()) == "redis"
    assert dependency_of(KafkaException("broker gone")) == "kafka"
    assert dependency_of(DeliveryFailed("3 messages undelivered")) == "kafka"
    assert dependency_of(ValueError("a bug")) == "other"
    try:
        try:
            raise redis.TimeoutError("slow")
        except redis.TimeoutError as exc:
            raise RuntimeError("commit failed") from exc
    except RuntimeError as wrapped:
        assert dependency_of(wrapped) == "redis"


class BufferedConsumer:
    """``consume`` as librdkafka's: up to n of the messages already fetched, and when there are
    fewer than n it blocks for the whole timeout (counted in ``waited``, nothing arrives)."""

    def __init__(self, fetched: int) -> None:
        self.fetched = list(range(fetched))
        self.waited = 0.0

    def consume(self, num_messages: int, timeout: float) -> list[int]:
        taken, self.fetched = self.fetched[:num_messages], self.fetched[num_messages:]
        if len(taken) < num_messages:
            self.waited += timeout
        return taken


def loop(batch_size: int = 100, linger_s: float = 0.0) -> BatchLoop:
    return BatchLoop(lambda: None, "events", pipeline=None, batch_size=batch_size,
                     batch_timeout_s=0.1, batch_linger_s=linger_s)


def test_a_batch_is_what_has_arrived_without_waiting_for_it_to_fill():
    consumer = BufferedConsumer(30)
    assert loop()._consume(consumer) == list(range(30))
    assert consumer.waited == 0


def test_batches_grow_to_batch_size_under_load():
    consumer, batches = BufferedConsumer(250), loop()
    assert [len(batches._consume(consumer)) for _ in range(3)] == [100, 100, 50]
    assert consumer.waited == 0


def test_an_idle_loop_waits_the_batch_timeout_and_a_linger_waits_for_more():
    consumer = BufferedConsumer(0)
    assert loop()._consume(consumer) == []
    assert consumer.waited == 0.1
    consumer = BufferedConsumer(30)
    assert loop(linger_s=0.02)._consume(consumer) == list(range(30))
    assert consumer.waited == 0.02
