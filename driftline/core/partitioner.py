"""Which Kafka partition a producer puts a key in, computed the way the producer does.

Readers of the online store need an entity's partition without asking Kafka: on a Redis Cluster
an entity's online values live in the hash slot of the partition that commits them
(``adapters/redis_layout.py``), so ``/predict`` and ``driftline features get`` recompute the
partition from the entity id. That only works if this function agrees with the producers'
partitioner, so Driftline's own producers are configured with the same one
(``DRIFTLINE_PARTITIONER``, ``adapters/kafka.py``):

- ``consistent_random``: librdkafka's default (confluent-kafka, Driftline's producers): CRC-32 of
  the key modulo the partition count (``zlib.crc32``, the same polynomial).
- ``murmur2_random``: the Java client's default partitioner (and librdkafka's Java-compatible
  one): Kafka's murmur2 of the key, made positive with ``& 0x7fffffff``, modulo the count.

Both pick a random partition for a missing key (and ``consistent_random`` for an empty one);
entity ids are never missing, so that case does not arise here. Pure: no Kafka client.

>>> partition_for("card-000002", 6, "consistent_random")
4
>>> partition_for("card-000002", 6, "murmur2_random")
0
>>> murmur2(b"21")  # Kafka's UtilsTest.testMurmur2
-973932308
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache

CONSISTENT_RANDOM = "consistent_random"
MURMUR2_RANDOM = "murmur2_random"
PARTITIONERS = (CONSISTENT_RANDOM, MURMUR2_RANDOM)

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit
    int like Java's. Java's ``int`` arithmetic wraps at 32 bits; here every step is masked."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n_words = length // 4
    for i in range(0, n_words * 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[n_words * 4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _crc32_partition(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def _murmur2_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_BY_NAME: dict[str, Callable[[bytes, int], int]] = {
    CONSISTENT_RANDOM: _crc32_partition,
    MURMUR2_RANDOM: _murmur2_partition,
}


def partition_for(key: str | bytes, partitions: int, partitioner: str = CONSISTENT_RANDOM) -> int:
    """The partition (0 .. partitions-1) `partitioner` gives `key` (text is UTF-8 encoded, as
    Driftline's producers encode entity ids)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    try:
        hash_partition = _BY_NAME[partitioner]
    except KeyError:
        raise ValueError(f"unknown partitioner {partitioner!r}: expected one of "
                         f"{', '.join(PARTITIONERS)}") from None
    return hash_partition(key.encode() if isinstance(key, str) else key, partitions)


def partition_function(partitions: int, partitioner: str = CONSISTENT_RANDOM,
                       cache_size: int = 1 << 16) -> Callable[[str], int]:
    """``partition_for`` with the count and partitioner fixed, memoised per entity id: the
    feature worker asks for every entity of every batch, and entities recur (murmur2 in pure
    Python costs microseconds a key, CRC-32 a fraction of one)."""
    partition_for("", partitions, partitioner)  # refuse a bad count or name now, not later

    @lru_cache(maxsize=cache_size)
    def partition_of(entity_id: str) -> int:
        return partition_for(entity_id, partitions, partitioner)

    return partition_of
