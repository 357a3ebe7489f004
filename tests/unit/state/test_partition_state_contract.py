"""One contract, every backend: the partition state behaves the same in memory and on Redis.

Each test takes the ``make`` fixture, which builds :class:`PartitionState` objects sharing one
backend instance of the parametrised kind (two of them model two workers of one group). The
Redis variant talks to a real redis-server and carries the ``integration`` marker.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from driftline.adapters.redis_online import RedisOnlineStore
from driftline.adapters.redis_state import RedisStateBackend
from driftline.commands import local_servers
from driftline.core.online import MemoryOnlineStore, OnlineWrite
from driftline.core.state import (
    CommitRecord,
    Fenced,
    MemoryStateBackend,
    PartitionState,
    Restored,
)

TOPIC, OTHER = "events", "labels"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    url = os.environ.get("DRIFTLINE_REDIS_URL")
    if url:
        yield url
        return
    server = local_servers.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.address
    finally:
        server.stop()


class Files:
    """A PendingFiles that records what it was asked to do."""

    def __init__(self) -> None:
        self.settled: list[Restored] = []
        self.published: list[list] = []

    def settle(self, restored: Restored) -> None:
        self.settled.append(restored)

    def publish(self, pending) -> None:
        self.published.append(list(pending))


class Kit:
    """Backend-specific plumbing behind one interface for the tests."""

    def __init__(self, kind: str, request) -> None:
        self.kind = kind
        if kind == "memory":
            self.online = MemoryOnlineStore()
            self.backend = MemoryStateBackend(online=self.online)
        else:
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            request.addfinalizer(client.close)
            self.online = RedisOnlineStore(client, ttl_s=60)
            self.backend = RedisStateBackend(client, f"g-{uuid.uuid4().hex[:8]}", TOPIC,
                                             online=self.online)

    def state(self, stores=("a", "b"), topics=(TOPIC,), compact_every=3,
              files: Files | None = None) -> PartitionState:
        return PartitionState(self.backend, topics=topics, stores=stores, files=files,
                              compact_every=compact_every)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def kit(request) -> Kit:
    return Kit(request.param, request)


def arrays(i: int) -> dict[str, np.ndarray]:
    return {"time": np.array([i, i + 1], dtype=np.int64), "x": np.array([i / 2, np.nan]),
            "entity": np.array([f"e{i}", "é-ünï"])}


def assert_log(log: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]]) -> None:
    assert len(log) == len(expected)
    for got, want in zip(log, expected, strict=True):
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name])


def commit_batch(state: PartitionState, p: int, first: int, last: int, i: int,
                 snapshot=None, topic: str = TOPIC) -> None:
    txn = state.begin([p])
    state.append(txn, p, "a", arrays(i), snapshot or (lambda: arrays(-i)))
    txn.consumed(topic, p, first, last)
    state.commit(txn)


def test_a_fresh_partition_has_no_offsets_and_empty_logs(kit):
    restored = kit.state().assign([0, 1])
    assert sorted(restored) == [0, 1]
    for p, r in restored.items():
        assert r.partition == p and r.epoch >= 1
        assert r.offsets == {} and r.last_commits == {}
        assert r.logs == {"a": [], "b": []}


def test_commits_are_restored_by_the_next_owner_in_order(kit):
    first = kit.state()
    first.assign([0])
    commit_batch(first, 0, 0, 9, 1)
    commit_batch(first, 0, 10, 14, 2)
    restored = kit.state().assign([0])[0]
    assert restored.offsets == {TOPIC: 15}
    assert restored.last_commits[TOPIC].first_offset == 10
    assert restored.last_commits[TOPIC].last_offset == 14
    assert restored.last_commits[TOPIC] == CommitRecord(first.epochs[0], 10, 14)
    assert_log(restored.logs["a"], [arrays(1), arrays(2)])
    assert restored.logs["b"] == []


def test_a_log_is_compacted_into_one_snapshot(kit):
    state = kit.state(compact_every=3)
    state.assign([0])
    for i in range(1, 8):
        commit_batch(state, 0, i * 10, i * 10 + 9, i, snapshot=lambda i=i: arrays(100 + i))
    # deltas 1, 2, 3; then snapshot 104 replaces them, deltas 5, 6; then snapshot 107.
    restored = kit.state().assign([0])[0]
    assert_log(restored.logs["a"], [arrays(107)])
    assert restored.offsets[TOPIC] == 80


def test_compaction_counts_survive_a_new_owner(kit):
    state = kit.state(compact_every=3)
    state.assign([0])
    commit_batch(state, 0, 0, 0, 1)
    commit_batch(state, 0, 1, 1, 2)
    successor = kit.state(compact_every=3)
    successor.assign([0])  # two entries in the log: one more delta, then a snapshot
    commit_batch(successor, 0, 2, 2, 3)
    commit_batch(successor, 0, 3, 3, 4, snapshot=lambda: arrays(40))
    assert_log(kit.state().assign([0])[0].logs["a"], [arrays(40)])


def test_a_claim_fences_the_earlier_owner_and_its_commit_writes_nothing(kit):
    zombie, owner = kit.state(), kit.state()
    zombie.assign([0])
    commit_batch(zombie, 0, 0, 4, 1)
    txn = zombie.begin([0])
    zombie.append(txn, 0, "a", arrays(2), lambda: arrays(-2))
    txn.consumed(TOPIC, 0, 5, 9)
    txn.write_online(OnlineWrite("v", "1", ("f",), ["zombie"], np.array([[1.0]]), [1]))
    owner.assign([0])  # the group moved the partition while the zombie was busy
    with pytest.raises(Fenced):
        zombie.commit(txn)
    assert kit.online.read("v", "zombie") is None
    with pytest.raises(Fenced):  # and it learns so before computing its next batch
        zombie.begin([0])
    commit_batch(owner, 0, 5, 9, 3)
    restored = kit.state().assign([0])[0]
    assert_log(restored.logs["a"], [arrays(1), arrays(3)])
    assert restored.offsets[TOPIC] == 10


def test_a_claim_between_begin_and_commit_fences_the_transaction(kit):
    a, b = kit.state(), kit.state()
    a.assign([0, 1])
    txn = a.begin([0, 1])
    a.append(txn, 1, "a", arrays(1), lambda: arrays(-1))
    txn.consumed(TOPIC, 1, 0, 0)
    b.assign([0])  # only partition 0 moves, but the whole transaction must fail
    with pytest.raises(Fenced):
        a.commit(txn)
    assert kit.state().assign([1])[1].logs["a"] == []


def test_a_revoked_partition_cannot_be_committed(kit):
    state = kit.state()
    state.assign([0, 1])
    state.revoke([0])
    with pytest.raises(Fenced):
        state.begin([0])
    commit_batch(state, 1, 0, 0, 1)  # the partition it kept still commits


def test_online_values_land_with_the_commit(kit):
    state = kit.state()
    state.assign([0])
    txn = state.begin([0])
    values = np.array([[1.5, np.nan], [-2.0, 3.25]])
    txn.write_online(OnlineWrite("view", "7", ("f1", "f2"), ["e1", "e2"], values, [10, 20]))
    txn.consumed(TOPIC, 0, 0, 1)
    assert kit.online.read("view", "e1") is None
    state.commit(txn)
    row = kit.online.read("view", "e2")
    assert (row.version, row.event_time_ms, row.values) == ("7", 20, {"f1": -2.0, "f2": 3.25})
    assert np.isnan(kit.online.read("view", "e1").values["f2"])


def test_pending_files_are_settled_on_assignment_and_published_after_a_commit(kit):
    files = Files()
    state = kit.state(files=files)
    state.assign([2])
    assert [r.partition for r in files.settled] == [2]
    txn = state.begin([2])
    txn.pending += ["p2-0-4.parquet.pending"]
    txn.consumed(TOPIC, 2, 0, 4)
    state.commit(txn)
    assert files.published == [["p2-0-4.parquet.pending"]]
    # A fenced commit publishes nothing; the next owner settles against the last commit.
    txn = state.begin([2])
    txn.pending += ["p2-5-9.parquet.pending"]
    kit.state().assign([2])
    with pytest.raises(Fenced):
        state.commit(txn)
    assert files.published == [["p2-0-4.parquet.pending"]]
    later = Files()
    kit.state(files=later).assign([2])
    assert later.settled[0].last_commits[TOPIC].last_offset == 4


def test_offsets_of_several_topics_are_kept_apart(kit):
    state = kit.state(topics=(TOPIC, OTHER))
    state.assign([0])
    txn = state.begin([0])
    txn.consumed(TOPIC, 0, 0, 99)
    txn.consumed(OTHER, 0, 0, 9)
    state.commit(txn)
    commit_batch(state, 0, 10, 19, 1, topic=OTHER)
    restored = kit.state(topics=(TOPIC, OTHER)).assign([0])[0]
    assert restored.offsets == {TOPIC: 100, OTHER: 20}
    assert restored.last_commits[OTHER].first_offset == 10


def test_partitions_are_independent(kit):
    state = kit.state()
    state.assign([0, 1])
    commit_batch(state, 0, 0, 4, 1)
    restored = kit.state().assign([0, 1])
    assert restored[0].offsets == {TOPIC: 5}
    assert restored[1].offsets == {} and restored[1].logs["a"] == []


def test_an_unknown_store_is_refused(kit):
    state = kit.state(stores=("a",))
    state.assign([0])
    with pytest.raises(KeyError):
        state.append(state.begin([0]), 0, "nope", arrays(1), lambda: arrays(1))


def test_pending_files_path_type_round_trips(tmp_path: Path):
    """The state never looks inside pending items: paths go through untouched."""
    files = Files()
    state = PartitionState(MemoryStateBackend(), [TOPIC], ["a"], files=files)
    state.assign([0])
    txn = state.begin([0])
    txn.pending.append(tmp_path / "x.parquet.pending-1")
    state.commit(txn)
    assert files.published == [[tmp_path / "x.parquet.pending-1"]]
