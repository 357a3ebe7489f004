"""One contract, every backend: the partition state behaves the same in memory and on Redis.

Each test takes the ``kit`` fixture, which builds :class:`PartitionState` objects sharing one
backend instance of the parametrised kind (two of them model two workers of one group): in
memory, committing whole or partition by partition; on one real redis-server; on a real local
Redis Cluster of three nodes (one MULTI per partition). The Redis variants carry the
``integration`` marker.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from driftline.adapters.redis_client import connect
from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.adapters.redis_state import RedisStateBackend
from driftline.core.online import MemoryOnlineStore, OnlineWrite, StoreUnavailable
from driftline.core.state import (
    CommitRecord,
    Fenced,
    MemoryStateBackend,
    PartitionState,
    Restored,
)

TOPIC, OTHER = "events", "labels"
ONLINE_KEYS = OnlineKeys(TOPIC, partitions=4)  # where online rows go, in memory as on Redis
PER_PARTITION = ("memory-per-partition", "redis-cluster")  # kinds that commit a partition at a
# time: a failure midway leaves the partitions before it committed


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
        if kind.startswith("memory"):
            self.online = MemoryOnlineStore()
            self.backend = MemoryStateBackend(online=self.online,
                                              per_partition=kind == "memory-per-partition",
                                              partition_of=ONLINE_KEYS.partition)
        else:
            url = request.getfixturevalue("redis_cluster_url" if kind == "redis-cluster"
                                          else "redis_url")
            self.client = connect(url)
            request.addfinalizer(self.client.close)
            self.online = RedisOnlineStore(self.client, ttl_s=60, keys=ONLINE_KEYS)
            self.backend = RedisStateBackend(self.client, f"g-{uuid.uuid4().hex[:8]}", TOPIC,
                                             online=self.online)

    def state(self, stores=("a", "b"), topics=(TOPIC,), compact_every=3,
              files: Files | None = None) -> PartitionState:
        return PartitionState(self.backend, topics=topics, stores=stores, files=files,
                              compact_every=compact_every)


@pytest.fixture(params=["memory", "memory-per-partition",
                        pytest.param("redis", marks=pytest.mark.integration),
                        pytest.param("redis-cluster", marks=pytest.mark.integration)])
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


def entity_in(partition: int, prefix: str = "e") -> str:
    """An entity id the online keys place in `partition`, unique to this call."""
    stem = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return next(f"{stem}-{i}" for i in range(1000) if ONLINE_KEYS.partition(f"{stem}-{i}")
                == partition)


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


def rows(i: int, n: int) -> dict[str, np.ndarray]:
    """A log entry of `n` rows (16 bytes each)."""
    return {"time": np.arange(n, dtype=np.int64) + i, "x": np.full(n, i / 2)}


def commit_rows(state: PartitionState, i: int, n: int, snapshot_rows: int = 5_000) -> None:
    txn = state.begin([0])
    state.append(txn, 0, "a", rows(i, n), lambda: rows(-i, snapshot_rows))
    txn.consumed(TOPIC, 0, i, i)
    state.commit(txn)


def test_a_log_is_compacted_once_its_deltas_outweigh_its_first_entry(kit):
    """Weighed, not counted: 1,000 rows first, then deltas of 100 rows; with ratio 2 the 21st
    delta finds 20 deltas (2,000 rows) behind it and writes a snapshot instead."""
    def state():
        return PartitionState(kit.backend, topics=(TOPIC,), stores=("a", "b"),
                              compact_every=1_000, compact_ratio=2.0)

    first = state()
    first.assign([0])
    commit_rows(first, 0, 1_000)
    for i in range(1, 11):
        commit_rows(first, i, 100)
    successor = state()  # takes over half way: it weighs the log it loads
    assert len(successor.assign([0])[0].logs["a"]) == 11
    for i in range(11, 21):
        commit_rows(successor, i, 100)
    def log() -> list:  # read without claiming the partition from its owner
        return kit.backend.load(0, [TOPIC], ["a", "b"]).logs["a"]

    assert len(log()) == 21  # 1,000 rows and 20 x 100
    commit_rows(successor, 21, 100, snapshot_rows=5_000)
    assert_log(log(), [rows(-21, 5_000)])
    for i in range(22, 32):  # weighed against the 5,000-row snapshot now: no compaction yet
        commit_rows(successor, i, 100)
    assert len(log()) == 11


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
    """Two entities of partition 0 and one the partitioner puts in partition 3 (its events came
    from partition 0 all the same: a producer with another partitioner). All three are
    readable after the commit, none before; a cluster writes the third just after it."""
    state = kit.state()
    state.assign([0])
    txn = state.begin([0])
    e1, e2, stray = entity_in(0), entity_in(0), entity_in(3)
    values = np.array([[1.5, np.nan], [-2.0, 3.25], [4.0, 5.0]])
    txn.write_online(OnlineWrite("view", "7", ("f1", "f2"), [e1, e2, stray], values,
                                 [10, 20, 30]))
    txn.consumed(TOPIC, 0, 0, 2)
    assert kit.online.read("view", e1) is None
    state.commit(txn)
    row = kit.online.read("view", e2)
    assert (row.version, row.event_time_ms, row.values) == ("7", 20, {"f1": -2.0, "f2": 3.25})
    assert np.isnan(kit.online.read("view", e1).values["f2"])
    assert kit.online.read("view", stray).values == {"f1": 4.0, "f2": 5.0}


def test_every_online_value_of_a_large_batch_reads_back_exactly(kit):
    """A batch of 600 entities over two partitions (Redis receives each partition's values as
    one block): every double, NaN, infinity and signed zero comes back bit for bit, with its
    own entity's event time (large ones too) and the view version."""
    rng = np.random.default_rng(3)
    state = kit.state()
    state.assign([0, 1])
    txn = state.begin([0, 1])
    entities = [entity_in(i % 2, prefix=f"e{i}") for i in range(600)]  # distinct ids
    values = rng.normal(size=(600, 5)) * 10.0 ** rng.integers(-300, 300, size=(600, 5))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[0, :4] = [np.inf, -np.inf, -0.0, 5e-324]
    times = rng.integers(0, 2**62, 600).tolist()
    names = ("a", "b", "c", "d", "e")
    txn.write_online(OnlineWrite("view", "v9", names, entities, values, times))
    for p in (0, 1):
        txn.consumed(TOPIC, p, 0, 0)
    state.commit(txn)
    rows = [kit.online.read("view", e) for e in entities]
    assert [r.event_time_ms for r in rows] == times
    assert {r.version for r in rows} == {"v9"}
    read = np.array([[r.values[n] for n in names] for r in rows])
    np.testing.assert_array_equal(read.view(np.int64)[~np.isnan(values)],
                                  values.view(np.int64)[~np.isnan(values)])
    assert np.array_equal(np.isnan(read), np.isnan(values))


def test_a_commit_that_fails_midway_leaves_every_partition_whole_or_untouched(kit):
    """Partition 1 is claimed by another owner while this one computes a batch of 0 and 1. A
    backend that commits whole refuses all of it; one that commits partition by partition (a
    Redis Cluster) lands partition 0 and refuses 1. Either way no partition is half-written,
    nothing is published, and the next owner resumes each partition from its own commit."""
    files = Files()
    owner = kit.state(files=files)
    owner.assign([0, 1])
    txn = owner.begin([0, 1])
    e0, e1 = entity_in(0), entity_in(1)
    for p in (0, 1):
        owner.append(txn, p, "a", arrays(p), lambda: arrays(-1))
        txn.consumed(TOPIC, p, 0, 9)
        txn.pending.append(f"p{p}-0-9.parquet.pending")
    txn.write_online(OnlineWrite("v", "1", ("f",), [e0, e1], np.array([[1.0], [2.0]]), [1, 2]))
    kit.state().assign([1])
    with pytest.raises(Fenced):
        owner.commit(txn)
    assert files.published == []  # what did land is published by the next owner's settling
    landed = kit.kind in PER_PARTITION
    restored = kit.state().assign([0, 1])
    assert restored[0].offsets == ({TOPIC: 10} if landed else {})
    assert restored[0].last_commits.get(TOPIC) == \
        (CommitRecord(owner.epochs[0], 0, 9) if landed else None)
    assert_log(restored[0].logs["a"], [arrays(0)] if landed else [])
    assert (kit.online.read("v", e0) is not None) == landed
    assert restored[1].offsets == {} and restored[1].logs["a"] == []
    assert kit.online.read("v", e1) is None


def test_an_unreachable_partition_store_fails_its_operations():
    """The in-memory simulation of a Redis node that is down (``unreachable``): claims, loads,
    checks and commits of its partitions raise, the other partitions carry on. (On Redis this is
    the outage test in tests/integration/test_features.py.)"""
    backend = MemoryStateBackend(per_partition=True)
    state = PartitionState(backend, [TOPIC], ["a"])
    state.assign([0, 1])
    backend.unreachable = {1}
    for attempt in (lambda: state.begin([0, 1]),
                    lambda: PartitionState(backend, [TOPIC], ["a"]).assign([1])):
        with pytest.raises(StoreUnavailable):
            attempt()
    commit_batch(state, 0, 0, 0, 1)  # partition 0's store is up


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
