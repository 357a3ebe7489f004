"""The Redis :class:`~driftline.core.state.StateBackend`: partition state, offsets and online
values committed in one MULTI, fenced by per-partition epochs.

Key layout (``group`` is the stage's consumer group, ``name`` its state name; the feature stage
uses its events topic as the name):
    dl:epoch:{group}:{name}:{p}          string  ownership epoch of partition p (INCR to claim)
    dl:state:{group}:{name}:{store}:{p}  list    the store's log: a snapshot, then deltas
                                                 (each an ``np.savez`` blob, no pickles)
    dl:offsets:{group}:{topic}           hash    p -> next offset to consume
    dl:commits:{group}:{topic}           hash    p -> "epoch:first:last" of the last batch
A commit WATCHes the epochs of its partitions, checks them, then queues everything in one
MULTI/EXEC: another owner's claim in between makes EXEC fail and nothing is written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import redis

from driftline.adapters.redis_online import RedisOnlineStore
from driftline.core.state import CommitRecord, Fenced, Restored, Snapshot, Transaction


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


class RedisStateBackend:
    def __init__(self, client: redis.Redis, group: str, name: str,
                 online: RedisOnlineStore | None = None) -> None:
        self.client = client
        self.group = group
        self.name = name
        self.online = online

    def epoch_key(self, partition: int) -> str:
        return f"dl:epoch:{self.group}:{self.name}:{partition}"

    def log_key(self, store: str, partition: int) -> str:
        return f"dl:state:{self.group}:{self.name}:{store}:{partition}"

    def offsets_key(self, topic: str) -> str:
        return f"dl:offsets:{self.group}:{topic}"

    def commits_key(self, topic: str) -> str:
        return f"dl:commits:{self.group}:{topic}"

    def claim(self, partition: int) -> int:
        return int(self.client.incr(self.epoch_key(partition)))

    def load(self, partition: int, topics: Sequence[str], stores: Sequence[str]) -> Restored:
        pipe = self.client.pipeline(transaction=True)
        for topic in topics:
            pipe.hget(self.offsets_key(topic), str(partition))
            pipe.hget(self.commits_key(topic), str(partition))
        for store in stores:
            pipe.lrange(self.log_key(store, partition), 0, -1)
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

    def check(self, epochs: Mapping[int, int]) -> None:
        partitions = sorted(epochs)
        values = self.client.mget([self.epoch_key(p) for p in partitions])
        _check(partitions, values, epochs)

    def commit(self, txn: Transaction) -> None:
        if txn.online and self.online is None:
            raise ValueError("this backend has no online store to write the batch's values to")
        partitions = sorted(txn.epochs)
        keys = [self.epoch_key(p) for p in partitions]
        pipe = self.client.pipeline(transaction=True)
        try:
            pipe.watch(*keys)  # EXEC fails if any is claimed between now and then
            _check(partitions, pipe.mget(keys), txn.epochs)
            pipe.multi()
            for batch in txn.online:
                self.online.queue(pipe, batch)
            for write in txn.logs:
                key = self.log_key(write.store, write.partition)
                if write.replace:
                    pipe.delete(key)
                pipe.rpush(key, pack(write.arrays))
            for (topic, p), record in txn.offsets.items():
                pipe.hset(self.offsets_key(topic), str(p), record.last_offset + 1)
                pipe.hset(self.commits_key(topic), str(p),
                          f"{record.epoch}:{record.first_offset}:{record.last_offset}")
            try:
                pipe.execute()  # the commit point
            except redis.WatchError as exc:
                raise WatchFenced(f"a partition of {partitions} was claimed by another owner "
                                  "during the commit; nothing was committed") from exc
        finally:
            pipe.reset()


def _check(partitions: list[int], values: list[bytes | None], epochs: Mapping[int, int]) -> None:
    for p, value in zip(partitions, values, strict=True):
        if value is None or int(value) != epochs[p]:
            raise WatchFenced(f"partition {p} was claimed by another owner (epoch {value!r}, "
                              f"ours {epochs[p]}); nothing was committed")
