"""`dependency_of`: which dependency failed a batch, for driftline_dependency_errors_total."""

from __future__ import annotations

import redis
from confluent_kafka import KafkaException

from driftline.adapters.batch_loop import dependency_of
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
