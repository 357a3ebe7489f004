"""Exactly-once state of a stateful stream stage's partitions, behind one small interface.

A stage (the feature stage today, the label join and the detectors next) owns some Kafka
partitions. For each one it keeps *stores*: named logs of array snapshots (``dict[str,
ndarray]``, the ``snapshot()``/``state_delta`` format of the core's engines). Per consumed batch
it builds one :class:`Transaction` (each store's delta, the batch's offsets, the online values
the batch produced, the files it wrote as pending) and :meth:`PartitionState.commit` applies it
atomically through a :class:`StateBackend`. That commit is the stage's commit point:

- **Offsets live with the state.** On assignment :meth:`PartitionState.assign` returns, per
  partition, the committed next offset of each topic and each store's log, and the stage resumes
  there. A crash at any point replays exactly the uncommitted batches.
- **Ownership epochs fence zombies.** Assigning a partition claims it (a new, larger epoch); a
  commit succeeds only while every partition in it still carries the epoch this owner claimed,
  checked atomically with the writes. Otherwise it raises :class:`Fenced` and writes nothing.
- **Logs stay short.** A store's log is a snapshot followed by deltas; once the deltas weigh
  ``compact_ratio`` times the snapshot (in array bytes), or after ``compact_every`` entries, the
  transaction replaces the log with one fresh snapshot. Weighing makes a snapshot's cost (the
  whole state) amortised over a fixed multiple of delta bytes, however often a stage commits:
  small frequent commits (a partition's turn at low load) no longer snapshot more often.
- **Side files follow the commit.** Files written before the commit are *pending*; they are
  published after it, and on assignment :class:`PendingFiles` settles them against the last
  commit record (publish that batch's, delete the rest).
- **Atomic per partition, at least.** A backend commits a whole transaction at once (one Redis)
  or partition by partition (a Redis Cluster, where one ``MULTI`` covers one hash slot; see
  :meth:`Transaction.split`). Each partition's part, with its epoch check, lands whole or not at
  all, and nothing about one partition's resume point depends on another's, so a transaction
  that landed for some partitions and then failed is recovered like any failed batch: rebuild
  from the backend, each partition resumes from its own committed offset and settles its own
  pending files. A stage whose state spans partitions (the monitor's detectors) must use a
  backend that commits its transactions whole (on Redis: ``cross_partition``, one hash tag for
  the whole stage).

Backends: :class:`MemoryStateBackend` below (tests, in-process runs) and the Redis backend in
``adapters/redis_state.py``. One contract suite (``tests/unit/state/``) runs over both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driftline.core.online import MemoryOnlineStore, OnlineWrite, StoreUnavailable

Snapshot = Mapping[str, np.ndarray]

# A store's log is compacted into one snapshot once its deltas weigh this many times its first
# entry (the last snapshot), or once it holds this many entries (bounding what a restore reads).
COMPACT_RATIO = 4.0
COMPACT_EVERY = 1000


@dataclass(frozen=True)
class _LogSize:
    """A store log's entries, its first entry's array bytes and the bytes of the rest."""

    entries: int
    first_bytes: int
    delta_bytes: int

    @classmethod
    def of(cls, log: Sequence[Snapshot]) -> _LogSize:
        if not log:
            return cls(0, 0, 0)
        return cls(len(log), _nbytes(log[0]), sum(map(_nbytes, log[1:])))

    def add(self, nbytes: int) -> _LogSize:
        if not self.entries:  # the first entry is what later ones are weighed against
            return _LogSize(1, nbytes, 0)
        return _LogSize(self.entries + 1, self.first_bytes, self.delta_bytes + nbytes)


def _nbytes(piece: Snapshot) -> int:
    return sum(np.asarray(value).nbytes for value in piece.values())


class Fenced(RuntimeError):
    """Another owner has claimed a partition of this commit since we did: nothing was written."""


@dataclass(frozen=True)
class CommitRecord:
    """The extent of the last committed batch of one topic-partition, and who committed it."""

    epoch: int
    first_offset: int
    last_offset: int


@dataclass
class Restored:
    """What a partition's state holds when it is assigned."""

    partition: int
    epoch: int = 0  # the epoch this owner claimed; set by PartitionState.assign
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset to consume
    last_commits: dict[str, CommitRecord] = field(default_factory=dict)  # topic -> last batch
    logs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # store -> log


@dataclass
class LogWrite:
    """Append `arrays` to a store's log, or (``replace``) make them the whole log."""

    partition: int
    store: str
    arrays: Snapshot
    replace: bool


@dataclass
class Transaction:
    """Everything one batch commits; built by the stage, applied by `PartitionState.commit`."""

    epochs: dict[int, int]
    logs: list[LogWrite] = field(default_factory=list)
    offsets: dict[tuple[str, int], CommitRecord] = field(default_factory=dict)
    online: list[OnlineWrite] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # published after the commit
    _sizes: dict[tuple[str, int], _LogSize] = field(default_factory=dict)

    def consumed(self, topic: str, partition: int, first_offset: int, last_offset: int) -> None:
        """This batch consumed `topic`/`partition` from `first_offset` to `last_offset`."""
        self.offsets[(topic, partition)] = CommitRecord(self.epochs[partition], first_offset,
                                                        last_offset)

    def write_online(self, batch: OnlineWrite) -> None:
        self.online.append(batch)

    def split(self, partition_of: Callable[[str], int]) -> tuple[list[Transaction],
                                                                 list[OnlineWrite]]:
        """This transaction as one per partition (ascending), for a backend that commits a
        partition at a time, and the online rows that belong to none of them.

        Each part holds its partition's epoch, log writes and offsets, and the online rows of
        the entities `partition_of` places in that partition: where readers look for them
        (``core/partitioner.py``), and the partition whose events computed them as long as the
        producers use that partitioner. Rows it places in a partition outside this transaction
        ("strays": a producer with another partitioner, or events sent to a partition by hand)
        are returned apart, for the backend to write after the parts; pending files stay with
        the whole transaction.
        """
        parts = {p: Transaction({p: epoch}) for p, epoch in sorted(self.epochs.items())}
        for write in self.logs:
            parts[write.partition].logs.append(write)
        for (topic, p), record in self.offsets.items():
            parts[p].offsets[(topic, p)] = record
        strays: list[OnlineWrite] = []
        for batch in self.online:
            rows: dict[int, list[int]] = {}
            for i, entity in enumerate(batch.entities):
                rows.setdefault(partition_of(entity), []).append(i)
            for p, positions in sorted(rows.items()):
                part = batch if len(positions) == len(batch.entities) else batch.select(positions)
                (parts[p].online if p in parts else strays).append(part)
        return list(parts.values()), strays


class StateBackend(Protocol):
    """Where partition state lives. ``commit`` is atomic per partition at least: each
    partition's part of a transaction lands whole or not at all (see the module docstring)."""

    def claim(self, partition: int) -> int:
        """A new epoch for `partition`, larger than any before; earlier owners are fenced."""

    def load(self, partition: int, topics: Sequence[str], stores: Sequence[str]) -> Restored:
        """The partition's committed offsets, last commit records and store logs."""

    def check(self, epochs: Mapping[int, int]) -> None:
        """Raise :class:`Fenced` if a partition's epoch is no longer the one given."""

    def commit(self, txn: Transaction) -> None:
        """Apply `txn` if every partition's epoch is still ``txn.epochs[p]``; else raise
        :class:`Fenced`, having written nothing of that partition (a backend that commits
        partition by partition may have committed the partitions before it)."""


class PendingFiles(Protocol):
    """Output written before the commit and made visible after it (the Parquet files)."""

    def settle(self, restored: Restored) -> None:
        """On assignment: publish what the last commit covered, delete everything else."""

    def publish(self, pending: Sequence[Any]) -> None:
        """After a commit: make the transaction's pending output visible."""


class PartitionState:
    """The exactly-once state of one stage: its partitions' epochs, offsets and store logs."""

    def __init__(self, backend: StateBackend, topics: Sequence[str], stores: Sequence[str],
                 files: PendingFiles | None = None, compact_every: int = COMPACT_EVERY,
                 compact_ratio: float = COMPACT_RATIO) -> None:
        if compact_every < 1:
            raise ValueError(f"compact_every must be >= 1, got {compact_every}")
        if compact_ratio <= 0:
            raise ValueError(f"compact_ratio must be > 0, got {compact_ratio}")
        self.backend = backend
        self.topics = list(topics)
        self.stores = list(stores)
        self.files = files
        self.compact_every = compact_every
        self.compact_ratio = compact_ratio
        self.epochs: dict[int, int] = {}
        self._sizes: dict[tuple[str, int], _LogSize] = {}  # each store log's entries and bytes

    def assign(self, partitions: Iterable[int]) -> dict[int, Restored]:
        """Claim each partition, load its committed state and settle its pending files."""
        restored = {}
        for p in partitions:
            epoch = self.backend.claim(p)  # before loading: later commits are ours alone
            state = self.backend.load(p, self.topics, self.stores)
            state.epoch = epoch  # backends load what was committed; the claim is ours
            self.epochs[p] = epoch
            for store in self.stores:
                self._sizes[(store, p)] = _LogSize.of(state.logs.get(store, []))
            if self.files is not None:
                self.files.settle(state)
            restored[p] = state
        return restored

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.epochs.pop(p, None)
            for store in self.stores:
                self._sizes.pop((store, p), None)

    def begin(self, partitions: Iterable[int]) -> Transaction:
        """A transaction over `partitions`, all of which this owner must still hold: a fenced
        owner learns it here, before computing a batch it could not commit."""
        epochs = {}
        for p in partitions:
            if p not in self.epochs:
                raise Fenced(f"partition {p} is not assigned to this owner")
            epochs[p] = self.epochs[p]
        self.backend.check(epochs)
        return Transaction(epochs)

    def check(self, txn: Transaction) -> None:
        """Raise :class:`Fenced` if another owner has claimed a partition of `txn` since it
        began: a stage checks before writing output that only a commit would make visible
        (pending files), so a fenced owner does not leave files behind for the next owner."""
        self.backend.check(txn.epochs)

    def append(self, txn: Transaction, partition: int, store: str, delta: Snapshot,
               snapshot: Callable[[], Snapshot]) -> None:
        """Add `delta` to the store's log in `txn`, or, when the log is due for compaction,
        replace the log with ``snapshot()`` (the store's whole state after this batch)."""
        key = (store, partition)
        if key not in self._sizes:
            raise KeyError(f"unknown store {store!r} or partition {partition} not assigned")
        size = txn._sizes.get(key, self._sizes[key])
        if (size.entries >= self.compact_every
                or size.delta_bytes >= self.compact_ratio * size.first_bytes > 0):
            fresh = snapshot()
            txn.logs.append(LogWrite(partition, store, fresh, replace=True))
            txn._sizes[key] = _LogSize(1, _nbytes(fresh), 0)
        else:
            txn.logs.append(LogWrite(partition, store, delta, replace=False))
            txn._sizes[key] = size.add(_nbytes(delta))

    def commit(self, txn: Transaction) -> None:
        """Apply `txn` atomically (raises :class:`Fenced` if we lost a partition), then publish
        its pending files. A crash between the two is finished by the next assignment."""
        self.backend.commit(txn)
        for key, size in txn._sizes.items():
            if key in self._sizes:
                self._sizes[key] = size
        if self.files is not None and txn.pending:
            self.files.publish(txn.pending)


class MemoryStateBackend:
    """A :class:`StateBackend` in a dict, with an optional :class:`MemoryOnlineStore` that its
    commits write to. Shared by several :class:`PartitionState` objects it behaves like one
    Redis shared by several workers (claims fence earlier owners).

    With ``per_partition`` it commits like the Redis Cluster backend: one partition at a time
    in ascending order (online rows split by `partition_of`, strays written last), each
    partition's epoch checked only as that partition commits, so a claim or an outage during a
    commit leaves the partitions before it committed. ``unreachable`` simulates a Redis node
    that is down: claiming, loading, checking or committing one of those partitions raises
    :class:`StoreUnavailable`.
    """

    def __init__(self, online: MemoryOnlineStore | None = None, *, per_partition: bool = False,
                 partition_of: Callable[[str], int] | None = None) -> None:
        self.online = online
        self.per_partition = per_partition
        self.partition_of = partition_of
        self.unreachable: set[int] = set()
        self.epochs: dict[int, int] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.commits: dict[tuple[str, int], CommitRecord] = {}
        self.logs: dict[tuple[str, int], list[dict[str, np.ndarray]]] = {}
        self.commit_count = 0

    def claim(self, partition: int) -> int:
        self._reach([partition])
        self.epochs[partition] = self.epochs.get(partition, 0) + 1
        return self.epochs[partition]

    def load(self, partition: int, topics: Sequence[str], stores: Sequence[str]) -> Restored:
        self._reach([partition])
        restored = Restored(partition)
        for topic in topics:
            if (topic, partition) in self.offsets:
                restored.offsets[topic] = self.offsets[(topic, partition)]
            if (topic, partition) in self.commits:
                restored.last_commits[topic] = self.commits[(topic, partition)]
        for store in stores:
            restored.logs[store] = [_copy(s) for s in self.logs.get((store, partition), [])]
        return restored

    def check(self, epochs: Mapping[int, int]) -> None:
        self._reach(epochs)
        for p, epoch in epochs.items():
            if self.epochs.get(p) != epoch:
                raise Fenced(f"partition {p} was claimed by another owner (epoch "
                             f"{self.epochs.get(p)}, ours {epoch}); nothing was committed")

    def commit(self, txn: Transaction) -> None:
        if txn.online and self.online is None:
            raise ValueError("this backend has no online store to write the batch's values to")
        if not self.per_partition:
            self._apply(txn)
        else:
            if txn.online and self.partition_of is None:
                raise ValueError("a per-partition backend needs partition_of for online rows")
            parts, strays = txn.split(self.partition_of or _no_online_rows)
            for part in parts:
                self._apply(part)
            for batch in strays:
                self.online.write(batch)
        self.commit_count += 1

    def _reach(self, partitions: Iterable[int]) -> None:
        down = sorted(set(partitions) & self.unreachable)
        if down:
            raise StoreUnavailable(f"the store of partition(s) {down} is unreachable")

    def _apply(self, txn: Transaction) -> None:
        """Check `txn`'s epochs, then write all of it (nothing can fail after the check)."""
        self.check(txn.epochs)
        for batch in txn.online:
            self.online.write(batch)
        for write in txn.logs:
            key = (write.store, write.partition)
            if write.replace:
                self.logs[key] = []
            self.logs.setdefault(key, []).append(_copy(write.arrays))
        for (topic, p), record in txn.offsets.items():
            self.offsets[(topic, p)] = record.last_offset + 1
            self.commits[(topic, p)] = record


def _no_online_rows(entity_id: str) -> int:
    raise AssertionError("a transaction without online rows asks no entity's partition")


def _copy(arrays: Snapshot) -> dict[str, np.ndarray]:
    return {name: np.array(value, copy=True) for name, value in arrays.items()}
