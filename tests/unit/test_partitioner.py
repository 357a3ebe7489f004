"""The partitioner readers use to find an entity's partition, against Kafka's own values.

The murmur2 values are those of Kafka's ``UtilsTest.testMurmur2``
(clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java) and librdkafka's
``unittest_murmur2``; the partition is Kafka's ``toPositive(murmur2(key)) % numPartitions``.
tests/integration/test_partitioner.py checks both partitioners against librdkafka's, through a
broker.
"""

from __future__ import annotations

import zlib

import pytest

from driftline.core.partitioner import (
    CONSISTENT_RANDOM,
    MURMUR2_RANDOM,
    murmur2,
    partition_for,
    partition_function,
)

KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key, expected", KAFKA_MURMUR2.items())
def test_murmur2_equals_kafkas(key, expected):
    assert murmur2(key) == expected


# librdkafka's unittest_murmur2 (src/rdmurmur2.c), checked there against the Java client: these
# cover every tail length (0-3 bytes past a 4-byte word) and the empty key.
LIBRDKAFKA_MURMUR2 = {
    b"kafka": 0xD067CF64,
    b"giberish123456789": 0x8F552B0C,
    b"1234": 0x9FC97B14,
    b"234": 0xE7C009CA,
    b"34": 0x873930DA,
    b"4": 0x5A4B5CA1,
    b"PreAmbleWillBeRemoved,ThePrePartThatIs": 0x78424F1C,
    b"": 0x106E08D9,
}


@pytest.mark.parametrize("key, expected", LIBRDKAFKA_MURMUR2.items())
def test_murmur2_equals_librdkafkas_on_every_tail_length(key, expected):
    assert murmur2(key) & 0xFFFFFFFF == expected
    assert -(2 ** 31) <= murmur2(key) < 2 ** 31  # a Java int


@pytest.mark.parametrize("key, hashed", KAFKA_MURMUR2.items())
def test_murmur2_random_partition_is_kafkas_formula(key, hashed):
    for partitions in (1, 3, 6, 7, 100):
        assert partition_for(key, partitions, MURMUR2_RANDOM) == \
            (hashed & 0x7FFFFFFF) % partitions


def test_consistent_random_is_crc32_of_the_utf8_key():
    for entity in ("card-000001", "card-000042", "é-ünï", "x" * 100):
        for partitions in (1, 6, 12):
            assert partition_for(entity, partitions) == \
                zlib.crc32(entity.encode()) % partitions == \
                partition_for(entity.encode(), partitions, CONSISTENT_RANDOM)


def test_the_two_partitioners_disagree_somewhere():
    """Why the setting matters: a reader with the wrong one looks in the wrong partition."""
    keys = [f"card-{i:06d}" for i in range(50)]
    assert any(partition_for(k, 6, CONSISTENT_RANDOM) != partition_for(k, 6, MURMUR2_RANDOM)
               for k in keys)


def test_partition_function_is_partition_for_with_the_settings_fixed():
    partition_of = partition_function(6, MURMUR2_RANDOM)
    for i in range(100):
        assert partition_of(f"e{i}") == partition_for(f"e{i}", 6, MURMUR2_RANDOM)


@pytest.mark.parametrize("partitions, partitioner, message", [
    (0, CONSISTENT_RANDOM, "partitions must be >= 1"),
    (6, "murmur3", "unknown partitioner 'murmur3'"),
])
def test_bad_arguments_are_refused_up_front(partitions, partitioner, message):
    with pytest.raises(ValueError, match=message):
        partition_function(partitions, partitioner)
