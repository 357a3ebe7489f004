"""The event-time guard: an event time the stream cannot be right about never reaches a watermark.

A partition's watermark is the greatest event time seen minus the allowed lateness, and it never
moves back. One event stamped a century ahead by a producer with a broken clock would therefore
make every later event of its partition late, for good. The guard stops such events before any
engine sees them, with two rules per source (``feature_defs``, docs/feature-definitions.md):

* ``future_event_time``: the event time is more than ``max_future_skew`` (default 5 minutes)
  ahead of the wall clock of the process that reads it;
* ``invalid_event_time``: the event time is before ``min_event_time`` (default 2000-01-01; a
  negative or zero time always is).

A rejected event goes to the dead-letter topic with that reason and a detail naming the time,
the clock and the limit; it is counted with every other dead letter and changes no state. The
guard is pure: the caller passes ``now_ms``, so the backfill and the demo, which replay past
event times from the offline store, never consult a clock, and the tests choose theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from driftline.core.codec.errors import FUTURE_EVENT_TIME, INVALID_EVENT_TIME

DEFAULT_MAX_FUTURE_SKEW_MS = 5 * 60_000
DEFAULT_MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Rejection:
    """One guarded record: its index in the checked sequence, the DLQ reason and the detail."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class EventTimeGuard:
    """Rejects records whose ``field`` (epoch ms) is implausibly far ahead or behind."""

    field: str
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
    min_event_time_ms: int = DEFAULT_MIN_EVENT_TIME_MS

    def __post_init__(self) -> None:
        if self.max_future_skew_ms < 0:
            raise ValueError(f"max_future_skew_ms must be >= 0, got {self.max_future_skew_ms}")
        if self.min_event_time_ms < 1:
            raise ValueError(f"min_event_time_ms must be >= 1, got {self.min_event_time_ms}")

    @classmethod
    def strictest(cls, sources: Iterable[Any]) -> EventTimeGuard:
        """One guard for several sources read from one topic: the smallest skew and the latest
        floor of them all. Sources are ``driftline.core.features.Source`` objects."""
        sources = list(sources)
        fields = {s.event_time_field for s in sources}
        if len(fields) != 1:
            raise ValueError(f"sources read from one topic name different event-time fields: "
                             f"{sorted(fields)}")
        return cls(fields.pop(),
                   min(s.max_future_skew_ms for s in sources),
                   max(s.min_event_time_ms for s in sources))

    def reject(self, records: Sequence[Mapping[str, Any]], now_ms: int) -> list[Rejection]:
        """The records this guard refuses, in order; the others are left to the engine.

        The decoder has already checked that every event time is an int (schema validation), so
        the two comparisons are all there is to do."""
        limit = now_ms + self.max_future_skew_ms
        floor = self.min_event_time_ms
        out: list[Rejection] = []
        field = self.field
        for index, record in enumerate(records):
            t = record[field]
            if t > limit:
                out.append(Rejection(index, FUTURE_EVENT_TIME, (
                    f"{field} {t} ({format_ms(t)}) is {_ahead(t - now_ms)} ahead of this "
                    f"worker's clock {now_ms} ({format_ms(now_ms)}); at most "
                    f"{self.max_future_skew_ms} ms is allowed (max_future_skew)")))
            elif t < floor:
                out.append(Rejection(index, INVALID_EVENT_TIME, (
                    f"{field} {t} ({format_ms(t)}) is before the earliest plausible event time "
                    f"{floor} ({format_ms(floor)}) (min_event_time)")))
        return out

    def reject_columns(self, event_times_ms: np.ndarray | Sequence[int],
                       now_ms: int) -> list[Rejection]:
        """`reject` for an event-time column (int64 epoch ms, one per record): the same
        rejections with the same indices, for a batch held as columns.

        Two array comparisons find a superset of the rejected rows (bounds are clamped to
        int64, and equality is included, so no clock or floor can wrap around); `reject`
        then decides on those few, in Python ints, and words their details."""
        times = np.asarray(event_times_ms, dtype=np.int64)
        limit = _clamp(now_ms + self.max_future_skew_ms)
        suspect = np.flatnonzero((times >= limit) | (times <= _clamp(self.min_event_time_ms)))
        flagged = [{self.field: t} for t in times[suspect].tolist()]
        return [Rejection(int(suspect[r.index]), r.reason, r.detail)
                for r in self.reject(flagged, now_ms)]


def format_ms(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC time, or a note when the value is outside datetime's range."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "outside the calendar range"


def _clamp(ms: int) -> int:
    return min(max(ms, _INT64[0]), _INT64[1])


def _ahead(ms: int) -> str:
    days = ms / 86_400_000
    return f"{days:.1f} days" if days >= 1 else f"{ms / 1000:.1f} s"
