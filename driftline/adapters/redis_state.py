"""The Redis :class:`~driftline.core.state.StateBackend`: partition state, offsets and online
values committed in MULTI/EXEC transactions fenced by per-partition epochs, on one Redis or a
Redis Cluster.

Keys (``redis_layout.py``; ``<name>`` is the stage's state name, the feature stage's events
topic): every key of partition p carries the hash tag ``{<name>:<p>}``, so all of a partition's
commit lives in one hash slot:
    dl:epoch:{<name>:<p>}:<group>           string  ownership epoch of partition p (INCR to claim)
    dl:state:{<name>:<p>}:<group>:<store>   list    the store's log: a snapshot, then deltas
                                                    (each an ``np.savez`` blob, no pickles)
    dl:offsets:{<name>:<p>}:<group>         hash    topic -> next offset to consume
    dl:commits:{<name>:<p>}:<group>         hash    topic -> "epoch:first:last" of the last batch
A commit WATCHes the epochs of its partitions, checks them, then queues everything in MULTI/EXEC:
another owner's claim in between makes EXEC fail and nothing is written.

- **One Redis**: the whole transaction, every partition of the batch, is one MULTI (one round
  trip, and the batch lands whole).
- **A Redis Cluster**: a MULTI may only touch one slot, so the transaction is split
  (:meth:`~driftline.core.state.Transaction.split`) and each partition commits in its own
  WATCH/MULTI/EXEC, in ascending order, stopping at the first that fails. Each partition stays
  exactly-once; a batch that committed some partitions and then failed is rebuilt like any
  failed batch (``core/state.py``). A stage created with ``cross_partition`` (the monitor,
  whose detectors span partitions) keeps one tag for all its partitions and so still commits
  whole, in one slot.

Online rows go with the partition the configured partitioner gives their entity, which is where
readers look, and which is the partition their events came from while the producers use that
partitioner. If they do not (another partitioner or partition count), a row commits with its
entity's partition's part when the batch has one, else it is written just after the commit
(counted in ``driftline_online_rows_outside_partition_total`` and logged); either way a failure
between parts can lose that one update until the entity's next event. On one Redis every row
commits with the rest.

Upgrading from the layout before hash tags (one Redis only): claiming a partition seeds its new
epoch from the old one (epochs only grow) and bumps the old one (an old-version worker still
holding the partition is fenced); loading a partition whose state is empty under the new layout
moves its old state over, in one script, so engine state and offsets survive the upgrade.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import redis

from driftline.adapters.metrics import ONLINE_ROWS_OUTSIDE_PARTITION
from driftline.adapters.redis_client import SyncClient, is_cluster
from driftline.adapters.redis_layout import LegacyStateKeys, StateKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.core.online import OnlineWrite
from driftline.core.state import CommitRecord, Fenced, Restored, Snapshot, Transaction

log = logging.getLogger(__name__)

STRAYS_LOG_INTERVAL_S = 60.0


class WatchFenced(Fenced, redis.WatchError):
    """Fenced, detected by Redis itself: an epoch changed between our check and EXEC."""

    def __init__(self, *args: object) -> None:
        # RuntimeError's __init__ comes first in the MRO and skips redis-py's, whose __repr__
        # (redis-py >= 6) reads the `error_type` that only its __init__ sets: without this,
        # repr() raises AttributeError and the batch loop's "batch failed (%r)" log is lost.
        redis.WatchError.__init__(self, *args)

    __repr__ = Exception.__repr__  # with the message (redis-py's repr drops it)


def pack(arrays: Snapshot) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# Claim on one Redis: seed the new epoch from the pre-hash-tag one (KEYS[2]) if the new one does
# not exist yet, bump the old one if it exists (fencing an old-version owner), INCR the new one.
_CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local old = redis.call('GET', KEYS[2])
  if old then redis.call('SET', KEYS[1], old) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
return redis.call('INCR', KEYS[1])
"""

# Move one partition's state from the pre-hash-tag layout to the current one, if the current one
# holds none of it. KEYS: new offsets, new commits, old epoch, then per topic the old offsets
# and commits hashes, then per store the new and the old log. ARGV: partition, topic count,
# the topics. Returns how many pieces of state moved.
_MIGRATE_SCRIPT = """
local p, n = ARGV[1], tonumber(ARGV[2])
local stores = (#KEYS - 3 - 2 * n) / 2
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
for s = 1, stores do
  if redis.call('EXISTS', KEYS[3 + 2 * n + 2 * s - 1]) == 1 then return 0 end
end
local moved = 0
for t = 1, n do
  local offset = redis.call('HGET', KEYS[3 + 2 * t - 1], p)
  local commit = redis.call('HGET', KEYS[3 + 2 * t], p)
  if offset then
    redis.call('HSET', KEYS[1], ARGV[2 + t], offset)
    redis.call('HDEL', KEYS[3 + 2 * t - 1], p)
    moved = moved + 1
  end
  if commit then
    redis.call('HSET', KEYS[2], ARGV[2 + t], commit)
    redis.call('HDEL', KEYS[3 + 2 * t], p)
    moved = moved + 1
  end
end
for s = 1, stores do
  local new, old = KEYS[3 + 2 * n + 2 * s - 1], KEYS[3 + 2 * n + 2 * s]
  if redis.call('EXISTS', old) == 1 then
    redis.call('RENAME', old, new)
    moved = moved + 1
  end
end
if moved > 0 then redis.call('DEL', KEYS[3]) end
return moved
"""


class RedisStateBackend:
    """Partition state of one stage (consumer `group`, state `name`) on `client`: one Redis
    or a Redis Cluster (see the module docstring). `online`, if given, receives the online
    values of each commit in the same transaction."""

    def __init__(self, client: SyncClient, group: str, name: str,
                 online: RedisOnlineStore | None = None, *, cross_partition: bool = False) -> None:
        if cross_partition and online is not None:
            raise ValueError("online values are written per partition; a cross-partition stage "
                             "cannot commit them in its one-slot transaction")
        if online is not None and online.keys.topic != name:
            # Their hash tags must be the partitions' own, or a cluster MULTI spans two slots.
            raise ValueError(f"online keys are tagged by topic {online.keys.topic!r}, the "
                             f"state by {name!r}: they must be the same (the events topic)")
        self.client = client
        self.cluster = is_cluster(client)
        self.keys = StateKeys(group, name, cross_partition)
        # The layout before hash tags only ever ran on one Redis.
        self.legacy = None if self.cluster else LegacyStateKeys(group, name)
        self.online = online
        self._strays_logged_at = -STRAYS_LOG_INTERVAL_S

    def claim(self, partition: int) -> int:
        if self.legacy is None:
            return int(self.client.incr(self.keys.epoch(partition)))
        return int(self.client.eval(_CLAIM_SCRIPT, 2, self.keys.epoch(partition),
                                    self.legacy.epoch(partition)))

    def load(self, partition: int, topics: Sequence[str], stores: Sequence[str]) -> Restored:
        if self.legacy is not None:
            self._migrate(partition, topics, stores)
        pipe = self.client.pipeline(transaction=True)  # one slot: a consistent snapshot
        for topic in topics:
            pipe.hget(self.keys.offsets(partition), topic)
            pipe.hget(self.keys.commits(partition), topic)
        for store in stores:
            pipe.lrange(self.keys.log(store, partition), 0, -1)
        replies = iter(pipe.execute())
        restored = Restored(partition)
        for topic in topics:
            offset, commit = next(replies), next(replies)
            if offset is not None:
                restored.offsets[topic] = int(offset)
            if commit is not None:
                restored.last_commits[topic] = CommitRecord(*(int(x) for x in commit.split(b":")))
        for store in stores:
            restored.logs[store] = [unpack(blob) for blob in next(replies)]
        return restored

    def _migrate(self, partition: int, topics: Sequence[str], stores: Sequence[str]) -> None:
        """Move the partition's pre-hash-tag state to the current layout (if there is any and
        the current layout holds none), atomically (see ``_MIGRATE_SCRIPT``)."""
        old, new = self.legacy, self.keys
        keys = [new.offsets(partition), new.commits(partition), old.epoch(partition)]
        for topic in topics:
            keys += [old.offsets(topic), old.commits(topic)]
        for store in stores:
            keys += [new.log(store, partition), old.log(store, partition)]
        moved = self.client.eval(_MIGRATE_SCRIPT, len(keys), *keys, partition, len(topics),
                                 *topics)
        if moved:
            log.warning("partition %d of %s: moved %d pieces of state from the layout before "
                        "hash tags to %s", partition, new.name, moved, new.scope(partition))

    def check(self, epochs: Mapping[int, int]) -> None:
        partitions = sorted(epochs)
        keys = [self.keys.epoch(p) for p in partitions]
        values = self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys)
        _check(partitions, values, epochs)

    def commit(self, txn: Transaction) -> None:
        if txn.online and self.online is None:
            raise ValueError("this backend has no online store to write the batch's values to")
        if not self.cluster or self.keys.cross_partition:
            self._commit(txn)  # every key in one MULTI: one Redis, or a one-slot stage
            return
        parts, strays = txn.split(self.online.keys.partition if self.online else _no_online)
        for part in parts:
            self._commit(part)
        if strays:
            self._write_strays(strays)

    def _commit(self, txn: Transaction) -> None:
        """One WATCH/MULTI/EXEC of everything in `txn` (on a cluster: keys of one slot)."""
        partitions = sorted(txn.epochs)
        keys = [self.keys.epoch(p) for p in partitions]
        pipe = self.client.pipeline(transaction=True)
        try:
            pipe.watch(*keys)  # EXEC fails if any is claimed between now and then
            # execute_command: redis-py's cluster pipeline refuses mget() (one slot here).
            _check(partitions, pipe.execute_command("MGET", *keys), txn.epochs)
            pipe.multi()
            for batch in txn.online:
                self.online.queue(pipe, batch)
            for write in txn.logs:
                key = self.keys.log(write.store, write.partition)
                if write.replace:
                    pipe.delete(key)
                pipe.rpush(key, pack(write.arrays))
            for (topic, p), record in txn.offsets.items():
                pipe.hset(self.keys.offsets(p), topic, record.last_offset + 1)
                pipe.hset(self.keys.commits(p), topic,
                          f"{record.epoch}:{record.first_offset}:{record.last_offset}")
            try:
                pipe.execute()  # the commit point
            except redis.WatchError as exc:
                raise WatchFenced(f"a partition of {partitions} was claimed by another owner "
                                  f"during the commit; nothing of {partitions} was committed"
                                  ) from exc
        finally:
            pipe.reset()

    def _write_strays(self, strays: list[OnlineWrite]) -> None:
        for batch in strays:
            ONLINE_ROWS_OUTSIDE_PARTITION.labels(batch.view).inc(len(batch.entities))
            self.online.write(batch)
        now = time.monotonic()
        if now - self._strays_logged_at >= STRAYS_LOG_INTERVAL_S:  # once a minute, not a batch
            self._strays_logged_at = now
            log.warning("%d online rows of this batch belong to partitions outside it: their "
                        "events came from another partition than DRIFTLINE_PARTITIONER and "
                        "DRIFTLINE_PARTITIONS give their entity; written after the commit, so "
                        "a crash in between can lose one update of each",
                        sum(len(b.entities) for b in strays))


def _no_online(entity_id: str) -> int:
    raise AssertionError("a transaction without an online store has no online rows")


def _check(partitions: list[int], values: list[bytes | None], epochs: Mapping[int, int]) -> None:
    for p, value in zip(partitions, values, strict=True):
        if value is None or int(value) != epochs[p]:
            raise WatchFenced(f"partition {p} was claimed by another owner (epoch {value!r}, "
                              f"ours {epochs[p]}); nothing of {partitions} was committed")
