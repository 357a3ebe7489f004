"""Redis online store: the latest feature values per entity and view.

Key layout (``redis_layout.py``, documented in docs/online-store.md):
    dl:f:{<topic>:<p>}:<view>:<entity_id>   hash   one field per feature (shortest float
                                            text, 'nan' when undefined), plus _event_time (ms of the
                                            entity's latest applied event) and _version (the
                                            view version that computed the values)
``<topic>`` is the events topic and ``<p>`` the partition the producers' partitioner gives the
entity id, so readers find the key from the id alone and, on a Redis Cluster, it lives in the
hash slot of the partition whose commit writes it. Keys carry a TTL (``DRIFTLINE_REDIS_TTL_S``),
refreshed on every write. A batch is one hash write per entity, in one Lua call per partition
(a script's keys must share a slot on a cluster). The feature worker does not call
:meth:`RedisOnlineStore.write`: its writes go through the partition state
(``adapters/redis_state.py``), which queues them with :meth:`RedisOnlineStore.queue` inside the
same MULTI as the stream state and offsets, so a crash never leaves them apart.
:class:`AsyncRedisOnlineReader` is the HTTP API's bounded-time reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import redis

from driftline.adapters.redis_client import AsyncClient, SyncClient, connect_async, is_cluster
from driftline.adapters.redis_layout import OnlineKeys
from driftline.core.online import OnlineRow, OnlineWrite, StoreUnavailable, value_block

EVENT_TIME_FIELD = "_event_time"
VERSION_FIELD = "_version"

# One Lua call writes a whole batch: redis-py's per-argument packing, not Redis, was the cost of
# a pipeline of thousands of HSET + PEXPIRE, so the loop runs server-side, and the values travel
# as one comma-separated block (``value_block``) and the event times as another, not as an
# argument each (for 2,600 entities, 20 ms of the worker's time to pack, against 3.5 ms for the
# blocks; Redis splits them in about the time it took to read the arguments). It is sent with
# EVAL, not EVALSHA: a server restarted since the script was loaded answers NOSCRIPT, and inside
# a MULTI that error would skip the online values while the rest of the commit landed.
# ARGV: TTL in ms (0: none), field count n, the n field names (the features, then the event-time
# and version fields), the values block (n - 2 per key, row by row), the event-times block (one
# per key), the version.
_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local nfields = tonumber(ARGV[2])
local width = nfields - 2
local args = {}
for i = 1, nfields do args[2 * i - 1] = ARGV[2 + i] end
local values = string.gmatch(ARGV[3 + nfields], "[^,]+")
local times = string.gmatch(ARGV[4 + nfields], "[^,]+")
args[2 * nfields] = ARGV[5 + nfields]
for k = 1, #KEYS do
  for i = 1, width do args[2 * i] = values() end
  args[2 * width + 2] = times()
  redis.call('HSET', KEYS[k], unpack(args))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) end
end
return #KEYS
"""


class RedisOnlineStore:
    """The :class:`~driftline.core.online.OnlineStore` on Redis or a Redis Cluster; `keys`
    names the keys (build it with :meth:`OnlineKeys.for_settings`, as every reader does)."""

    def __init__(self, client: SyncClient, ttl_s: int, keys: OnlineKeys) -> None:
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self.keys = keys

    def write(self, batch: OnlineWrite) -> None:
        """Write `batch` now: one MULTI on one Redis, one per partition on a cluster."""
        groups = [[batch]] if not is_cluster(self.client) else \
            [[part] for part in self.by_partition(batch).values()]
        try:
            for group in groups:
                pipe = self.client.pipeline(transaction=True)
                for part in group:
                    self.queue(pipe, part)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"online store write failed: {exc}") from exc

    def by_partition(self, batch: OnlineWrite) -> dict[int, OnlineWrite]:
        """`batch`'s rows grouped by their entity's partition (one hash slot each)."""
        rows: dict[int, list[int]] = {}
        for i, entity in enumerate(batch.entities):
            rows.setdefault(self.keys.partition(entity), []).append(i)
        if len(rows) == 1:  # already one partition's (a cluster commit's part): no copy
            return {p: batch for p in rows}
        return {p: batch.select(positions) for p, positions in sorted(rows.items())}

    def queue(self, pipe, batch: OnlineWrite) -> None:
        """Queue `batch` on a pipeline the caller executes (the partition state's MULTI): one
        script call per partition, whose keys share that partition's slot."""
        if len(batch.entities) == 0:
            return
        for keys, argv in self._script_calls(batch):
            # execute_command: redis-py's cluster pipeline has no eval() method.
            pipe.execute_command("EVAL", _WRITE_SCRIPT, len(keys), *keys, *argv)

    def _script_calls(self, batch: OnlineWrite) -> Iterator[tuple[list[str], list]]:
        names = [*batch.feature_names, EVENT_TIME_FIELD, VERSION_FIELD]
        for p, part in self.by_partition(batch).items():
            times = ",".join(map(str, np.asarray(part.event_times_ms, dtype=np.int64).tolist()))
            argv = [self.ttl_ms, len(names), *names, value_block(part.values), times,
                    part.version]
            yield [self.keys.feature_in(p, part.view, e) for e in part.entities], argv

    def read(self, view: str, entity_id: str) -> OnlineRow | None:
        try:
            raw = self.client.hgetall(self.keys.feature(view, entity_id))
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"online store unavailable: {exc}") from exc
        return parse_row(view, entity_id, raw) if raw else None


class AsyncRedisOnlineReader:
    """The :class:`~driftline.core.online.OnlineReader` on Redis or a Redis Cluster: one
    HGETALL of the entity's key, at most `timeout_s`, then :class:`StoreUnavailable`."""

    def __init__(self, client: AsyncClient, timeout_s: float, keys: OnlineKeys) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.keys = keys

    @classmethod
    def from_url(cls, url: str, timeout_s: float, keys: OnlineKeys) -> AsyncRedisOnlineReader:
        return cls(connect_async(url, socket_timeout=timeout_s,
                                 socket_connect_timeout=timeout_s), timeout_s, keys)

    async def read(self, view: str, entity_id: str) -> OnlineRow | None:
        try:
            raw = await asyncio.wait_for(self.client.hgetall(self.keys.feature(view, entity_id)),
                                         self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise StoreUnavailable("online store unavailable: timed out") from exc
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"online store unavailable: {exc}") from exc
        return parse_row(view, entity_id, raw) if raw else None

    async def close(self) -> None:
        await self.client.aclose()


def parse_row(view: str, entity_id: str, raw: dict[bytes, bytes]) -> OnlineRow:
    """An HGETALL reply as an :class:`OnlineRow`."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    version = fields.pop(VERSION_FIELD)
    event_time = int(fields.pop(EVENT_TIME_FIELD))
    return OnlineRow(view, entity_id, version, event_time,
                     {name: float(text) for name, text in fields.items()})
