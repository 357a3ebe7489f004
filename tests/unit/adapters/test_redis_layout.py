"""The Redis key layout: every key one partition's commit touches is in one hash slot (so a
Redis Cluster runs that commit as one MULTI), and readers find an entity's key from its id."""

from __future__ import annotations

from redis.crc import key_slot

from driftline.adapters.redis_layout import LegacyStateKeys, OnlineKeys, StateKeys
from driftline.core.partitioner import MURMUR2_RANDOM, partition_for

TOPIC = "driftline.events"


def slot(key: str) -> int:
    return key_slot(key.encode())


def entities_of(keys: OnlineKeys, partition: int, n: int = 5) -> list[str]:
    found = (f"card-{i:06d}" for i in range(10_000))
    return [e for e in found if keys.partition(e) == partition][:n]


def test_a_partitions_state_and_online_keys_share_one_slot():
    state = StateKeys("driftline-features", TOPIC)
    online = OnlineKeys(TOPIC, partitions=6)
    for p in range(6):
        keys = [state.epoch(p), state.log("transactions_v1", p), state.log("other_view", p),
                state.offsets(p), state.commits(p),
                *(online.feature("transactions_v1", e) for e in entities_of(online, p))]
        assert {slot(k) for k in keys} == {slot(state.epoch(p))}, p
    # and the partitions spread over the slots (a cluster's nodes)
    assert len({slot(state.epoch(p)) for p in range(6)}) == 6


def test_a_cross_partition_stage_keeps_all_its_partitions_in_one_slot():
    state = StateKeys("driftline-monitor", "driftline.predictions", cross_partition=True)
    keys = [k for p in range(6) for k in (state.epoch(p), state.log("join", p),
                                          state.offsets(p), state.commits(p))]
    assert len({slot(k) for k in keys}) == 1
    assert len(set(keys)) == len(keys)  # one slot, still one key per partition


def test_the_key_names():
    state = StateKeys("g", TOPIC)
    assert state.epoch(3) == "dl:epoch:{driftline.events:3}:g"
    assert state.log("v", 3) == "dl:state:{driftline.events:3}:g:v"
    assert state.offsets(3) == "dl:offsets:{driftline.events:3}:g"
    assert state.commits(3) == "dl:commits:{driftline.events:3}:g"
    assert StateKeys("g", "t", cross_partition=True).epoch(3) == "dl:epoch:{t}:3:g"
    online = OnlineKeys(TOPIC, 6)
    p = partition_for("card-000001", 6)
    assert online.feature("v", "card-000001") == f"dl:f:{{driftline.events:{p}}}:v:card-000001"
    legacy = LegacyStateKeys("g", TOPIC)
    assert [legacy.epoch(3), legacy.log("v", 3), legacy.offsets(TOPIC), legacy.commits(TOPIC)] \
        == ["dl:epoch:g:driftline.events:3", "dl:state:g:driftline.events:v:3",
            "dl:offsets:g:driftline.events", "dl:commits:g:driftline.events"]


def test_online_keys_follow_the_configured_partitioner_and_count():
    crc, murmur = OnlineKeys(TOPIC, 6), OnlineKeys(TOPIC, 6, MURMUR2_RANDOM)
    entity = next(e for e in (f"card-{i:06d}" for i in range(100))
                  if crc.partition(e) != murmur.partition(e))
    assert crc.feature("v", entity) != murmur.feature("v", entity)
    assert murmur.partition(entity) == partition_for(entity, 6, MURMUR2_RANDOM)
    assert OnlineKeys(TOPIC, 12).partition(entity) == partition_for(entity, 12)


def test_an_entity_id_with_braces_and_colons_keeps_its_partitions_slot():
    """The hash tag is the first ``{...}`` of a key, so an id cannot move its key elsewhere."""
    online = OnlineKeys(TOPIC, 6)
    for entity in ("a:b:c", "{x}", "}:v:", "x{y:1}z"):
        key = online.feature("v", entity)
        assert slot(key) == slot(StateKeys("g", TOPIC).epoch(online.partition(entity)))
        assert OnlineKeys.entity_of(key, "v") == entity
        assert OnlineKeys.entity_of(key.encode(), "v") == entity
