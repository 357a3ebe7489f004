"""`Transaction.split`: one transaction as one per partition, for a backend that commits a
partition at a time (a Redis Cluster), and the online rows that belong to no partition of it."""

from __future__ import annotations

import numpy as np

from driftline.core.online import OnlineWrite
from driftline.core.state import CommitRecord, LogWrite, Transaction

PARTITION_OF = {"a0": 0, "b0": 0, "c1": 1, "d2": 2, "x5": 5}.__getitem__


def write(entities: list[str]) -> OnlineWrite:
    values = np.arange(len(entities) * 2, dtype=float).reshape(len(entities), 2)
    return OnlineWrite("v", "1", ("f", "g"), entities, values,
                       [100 + i for i in range(len(entities))])


def test_each_part_holds_its_partitions_logs_offsets_and_online_rows():
    txn = Transaction({2: 7, 0: 5, 1: 6})
    txn.logs += [LogWrite(0, "s", {"x": np.array([1])}, replace=False),
                 LogWrite(2, "s", {"x": np.array([2])}, replace=True)]
    for p in (0, 1, 2):
        txn.consumed("events", p, p * 10, p * 10 + 9)
    txn.consumed("labels", 0, 3, 4)
    txn.write_online(write(["a0", "c1", "b0", "x5", "d2"]))
    txn.pending.append("file")

    parts, strays = txn.split(PARTITION_OF)

    assert [part.epochs for part in parts] == [{0: 5}, {1: 6}, {2: 7}]
    assert [[w.partition for w in part.logs] for part in parts] == [[0], [], [2]]
    assert parts[0].offsets == {("events", 0): CommitRecord(5, 0, 9),
                                ("labels", 0): CommitRecord(5, 3, 4)}
    assert parts[2].offsets == {("events", 2): CommitRecord(7, 20, 29)}
    rows = [[(e, t, list(v)) for part in p.online
             for e, t, v in zip(part.entities, part.event_times_ms, part.values, strict=True)]
            for p in parts]
    assert rows == [[("a0", 100, [0.0, 1.0]), ("b0", 102, [4.0, 5.0])],
                    [("c1", 101, [2.0, 3.0])],
                    [("d2", 104, [8.0, 9.0])]]
    assert [list(s.entities) for s in strays] == [["x5"]]
    assert strays[0].values.tolist() == [[6.0, 7.0]] and strays[0].event_times_ms == [103]
    assert all(part.pending == [] for part in parts)  # pending files follow the whole


def test_a_batch_of_one_partition_is_passed_through_whole():
    batch = write(["a0", "b0"])
    txn = Transaction({0: 1})
    txn.write_online(batch)
    parts, strays = txn.split(PARTITION_OF)
    assert parts[0].online == [batch] and strays == []
