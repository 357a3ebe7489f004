"""Redis online store: the latest feature values per entity and view.

Key layout (documented in docs/online-store.md):
    dl:f:{view}:{entity_id}   hash   one field per feature (float text, 'nan' when undefined),
                                     plus _event_time (ms of the entity's latest applied event)
                                     and _version (the view version that computed the values)
Keys carry a TTL (``DRIFTLINE_REDIS_TTL_S``), refreshed on every write. A batch is one hash
write per entity in one Lua call. The feature worker does not call :meth:`RedisOnlineStore.write`:
its writes go through the partition state (``adapters/redis_state.py``), which queues them with
:meth:`RedisOnlineStore.queue` inside the same MULTI as the stream state and offsets, so a crash
never leaves them apart. :class:`AsyncRedisOnlineReader` is the HTTP API's bounded-time reader.
"""

from __future__ import annotations

import asyncio
import math

import redis
import redis.asyncio as aioredis

from driftline.core.online import OnlineRow, OnlineWrite, StoreUnavailable

EVENT_TIME_FIELD = "_event_time"
VERSION_FIELD = "_version"

# One Lua call writes a whole batch: redis-py's per-command packing, not Redis, is the cost of a
# pipeline of thousands of HSET + PEXPIRE, so the loop runs server-side instead.
_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local nfields = tonumber(ARGV[2])
local names = {}
for i = 1, nfields do names[i] = ARGV[2 + i] end
local pos = 3 + nfields
for k = 1, #KEYS do
  local args = {}
  for i = 1, nfields do
    args[2 * i - 1] = names[i]
    args[2 * i] = ARGV[pos]
    pos = pos + 1
  end
  redis.call('HSET', KEYS[k], unpack(args))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) end
end
return #KEYS
"""


def feature_key(view: str, entity_id: str) -> str:
    return f"dl:f:{view}:{entity_id}"


def _text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


class RedisOnlineStore:
    """The :class:`~driftline.core.online.OnlineStore` on Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self._write = client.register_script(_WRITE_SCRIPT)

    def write(self, batch: OnlineWrite) -> None:
        pipe = self.client.pipeline(transaction=True)
        self.queue(pipe, batch)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"online store write failed: {exc}") from exc

    def queue(self, pipe: redis.client.Pipeline, batch: OnlineWrite) -> None:
        """Queue `batch` on a pipeline the caller executes (the partition state's MULTI)."""
        if len(batch.entities) == 0:
            return
        names = [*batch.feature_names, EVENT_TIME_FIELD, VERSION_FIELD]
        argv: list[str | int] = [self.ttl_ms, len(names), *names]
        for row, event_time in zip(batch.values.tolist(), batch.event_times_ms, strict=True):
            argv.extend(_text(v) for v in row)
            argv.append(int(event_time))
            argv.append(batch.version)
        keys = [feature_key(batch.view, e) for e in batch.entities]
        self._write(keys=keys, args=argv, client=pipe)

    def read(self, view: str, entity_id: str) -> OnlineRow | None:
        try:
            raw = self.client.hgetall(feature_key(view, entity_id))
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"online store unavailable: {exc}") from exc
        return parse_row(view, entity_id, raw) if raw else None


class AsyncRedisOnlineReader:
    """The :class:`~driftline.core.online.OnlineReader` on Redis: one HGETALL, at most
    `timeout_s`, then :class:`StoreUnavailable`."""

    def __init__(self, client: aioredis.Redis, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> AsyncRedisOnlineReader:
        return cls(aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s), timeout_s)

    async def read(self, view: str, entity_id: str) -> OnlineRow | None:
        try:
            raw = await asyncio.wait_for(self.client.hgetall(feature_key(view, entity_id)),
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
