"""Driftline's producers place keys where ``driftline/core/partitioner.py`` says, for both
partitioners it supports: readers of the online store rely on it to find an entity's partition
without asking Kafka. librdkafka itself does the placing here (through the broker), so a
mismatch in the murmur2 port or in the producer configuration fails this test."""

from __future__ import annotations

import pytest

from driftline.adapters import kafka
from driftline.core.partitioner import PARTITIONERS, partition_for

KEYS = [f"card-{i:06d}" for i in range(300)] + ["é-ünï", "x" * 70, "a", "ab", "abc"]


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_the_producer_places_every_key_where_readers_look(settings, partitioner):
    settings = settings.replace(partitioner=partitioner)
    # Every delivery's report, not only the failed ones' (CheckedProducer's default).
    producer = kafka.make_producer(settings, **{"delivery.report.only.error": False})
    placed: dict[str, int] = {}

    def delivered(err, msg) -> None:
        assert err is None, err
        placed[msg.key().decode()] = msg.partition()

    for key in KEYS:
        producer.produce(settings.topic_events, b"{}", key=key.encode(), on_delivery=delivered)
    producer.flush_or_raise()
    assert len(placed) == len(KEYS)
    wrong = {k: (p, partition_for(k, settings.partitions, partitioner))
             for k, p in placed.items() if p != partition_for(k, settings.partitions, partitioner)}
    assert not wrong, f"librdkafka placed / we compute: {wrong}"
    assert len(set(placed.values())) == settings.partitions  # every partition was used
