"""Redis online store: the latest feature values per entity and view.

Key layout (documented in docs/online-store.md):
    dl:f:{view}:{entity_id}   hash   one field per feature (float text, 'nan' when undefined),
                                     plus _event_time (ms of the entity's latest applied event)
                                     and _version (the view version that computed the values)
Keys carry a TTL (``DRIFTLINE_REDIS_TTL_S``), refreshed on every write. Writes for a batch are
coalesced to one hash write per entity and sent in one pipeline, inside the same MULTI as the
stream state and offsets (see ``agents/features.py``), so a crash never leaves them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

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


@dataclass(frozen=True)
class OnlineRow:
    view: str
    entity_id: str
    version: str
    event_time_ms: int
    values: dict[str, float]


def feature_key(view: str, entity_id: str) -> str:
    return f"dl:f:{view}:{entity_id}"


def _text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


class RedisOnlineStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self._write = client.register_script(_WRITE_SCRIPT)

    def write(self, pipe: redis.client.Pipeline, view: str, version: str,
              feature_names: Sequence[str], entities: Sequence[str], values: np.ndarray,
              event_times_ms: Sequence[int]) -> None:
        """Queue one hash write per entity on `pipe` (the caller executes it)."""
        if len(entities) == 0:
            return
        names = [*feature_names, EVENT_TIME_FIELD, VERSION_FIELD]
        argv: list[str | int] = [self.ttl_ms, len(names), *names]
        for row, event_time in zip(values.tolist(), event_times_ms, strict=True):
            argv.extend(_text(v) for v in row)
            argv.append(int(event_time))
            argv.append(version)
        keys = [feature_key(view, e) for e in entities]
        self._write(keys=keys, args=argv, client=pipe)

    def read(self, view: str, entity_id: str) -> OnlineRow | None:
        raw = self.client.hgetall(feature_key(view, entity_id))
        return parse_row(view, entity_id, raw) if raw else None

    def read_many(self, view: str, entity_ids: Sequence[str]) -> list[OnlineRow | None]:
        pipe = self.client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hgetall(feature_key(view, entity_id))
        return [parse_row(view, e, raw) if raw else None
                for e, raw in zip(entity_ids, pipe.execute(), strict=True)]


def parse_row(view: str, entity_id: str, raw: dict[bytes, bytes]) -> OnlineRow:
    """An HGETALL reply as an :class:`OnlineRow`."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    version = fields.pop(VERSION_FIELD)
    event_time = int(fields.pop(EVENT_TIME_FIELD))
    return OnlineRow(view, entity_id, version, event_time,
                     {name: float(text) for name, text in fields.items()})
