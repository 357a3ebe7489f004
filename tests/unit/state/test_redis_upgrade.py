"""Upgrading a deployment from the Redis layout before hash tags (one Redis only).

The old keys are written here by hand, exactly as Driftline wrote them before (per topic one hash
of offsets and one of commit records across partitions; epochs and logs named
``dl:<kind>:<group>:<name>:...:<p>``): a partition loaded for the first time after the upgrade
keeps its engine state, offsets and commit record, and an old-version owner is fenced.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from driftline.adapters.redis_client import connect, is_cluster_url
from driftline.adapters.redis_layout import LegacyStateKeys, StateKeys
from driftline.adapters.redis_state import RedisStateBackend, pack
from driftline.core.state import CommitRecord, PartitionState

pytestmark = pytest.mark.integration

TOPIC = "events"


@pytest.fixture
def client(redis_url):
    if is_cluster_url(redis_url):
        pytest.fail("the upgrade tests need one Redis: the old layout never ran on a cluster")
    client = connect(redis_url)
    yield client
    client.close()


def arrays(i: int) -> dict[str, np.ndarray]:
    return {"time": np.array([i, i + 1], dtype=np.int64), "x": np.array([i / 2, np.nan])}


def names() -> tuple[str, str]:
    return f"g-{uuid.uuid4().hex[:8]}", f"{TOPIC}-{uuid.uuid4().hex[:8]}"


def test_a_partition_keeps_its_old_state_offsets_and_commit_record(client):
    group, name = names()
    old, new = LegacyStateKeys(group, name), StateKeys(group, name)
    assert old.epoch(1) == f"dl:epoch:{group}:{name}:1"  # the old names, pinned
    assert old.offsets(TOPIC) == f"dl:offsets:{group}:{TOPIC}"
    client.set(old.epoch(1), 7)
    client.hset(old.offsets(TOPIC), mapping={"1": 50, "2": 99})
    client.hset(old.commits(TOPIC), mapping={"1": "7:40:49", "2": "3:90:98"})
    client.rpush(old.log("a", 1), pack(arrays(1)), pack(arrays(2)))

    state = PartitionState(RedisStateBackend(client, group, name), [TOPIC], ["a", "b"])
    restored = state.assign([1])[1]

    assert restored.epoch == 8  # epochs only grow across the upgrade
    assert restored.offsets == {TOPIC: 50}
    assert restored.last_commits == {TOPIC: CommitRecord(7, 40, 49)}
    assert [sorted(s) for s in restored.logs["a"]] == [["time", "x"]] * 2
    np.testing.assert_array_equal(restored.logs["a"][1]["x"], arrays(2)["x"])
    assert restored.logs["b"] == []
    # Moved, not copied: partition 1's old keys are gone, partition 2's wait for its own load.
    assert client.exists(old.log("a", 1), old.epoch(1)) == 0
    assert client.hget(old.offsets(TOPIC), "1") is None
    assert client.hget(old.offsets(TOPIC), "2") == b"99"
    assert client.llen(new.log("a", 1)) == 2

    txn = state.begin([1])  # and the next batch continues from it
    state.append(txn, 1, "a", arrays(3), lambda: arrays(-3))
    txn.consumed(TOPIC, 1, 50, 59)
    state.commit(txn)
    again = PartitionState(RedisStateBackend(client, group, name), [TOPIC], ["a", "b"])
    restored = again.assign([1, 2])
    assert restored[1].offsets == {TOPIC: 60} and len(restored[1].logs["a"]) == 3
    assert restored[1].last_commits[TOPIC] == CommitRecord(8, 50, 59)
    assert restored[2].offsets == {TOPIC: 99}
    assert restored[2].last_commits[TOPIC] == CommitRecord(3, 90, 98)


def test_an_old_version_owner_is_fenced_by_the_claim(client):
    """A worker of the previous version still holding the partition watches the old epoch; the
    new claim bumps it, so that worker's next EXEC fails (it found 7, now it is 8)."""
    group, name = names()
    old = LegacyStateKeys(group, name)
    client.set(old.epoch(0), 7)
    epoch = RedisStateBackend(client, group, name).claim(0)
    assert epoch == 8 and client.get(old.epoch(0)) == b"8"


def test_state_in_the_new_layout_wins_and_the_old_is_left_alone(client):
    group, name = names()
    old, new = LegacyStateKeys(group, name), StateKeys(group, name)
    client.hset(old.offsets(TOPIC), "0", 5)
    client.hset(new.offsets(0), TOPIC, 500)
    restored = PartitionState(RedisStateBackend(client, group, name), [TOPIC], ["a"]) \
        .assign([0])[0]
    assert restored.offsets == {TOPIC: 500}
    assert client.hget(old.offsets(TOPIC), "0") == b"5"
