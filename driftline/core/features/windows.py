"""Window kinds: pure functions from a query event time to the half-open ms interval it covers.

Every window maps a query time ``t`` (event time, integer milliseconds) to ``[start, end)``:

* ``RollingWindow(size)``: ``(t - size, t]``, i.e. ``[t - size + 1, t + 1)``;
* ``TumblingWindow(size)``: the aligned bucket holding ``t``,
  ``[floor(t / size) * size, ... + size)``;
* ``HoppingWindow(size, hop)``: of the overlapping windows holding ``t`` (one starts every
  ``hop``), the one that ends soonest: ``end = floor(t / hop) * hop + hop``, ``[end - size, end)``.

Start is non-decreasing in ``t`` for all kinds, which is what lets the engine expire state: a row
older than ``earliest_start(watermark)`` can never be inside a future query's interval.

>>> import numpy as np
>>> HoppingWindow(size_ms=60_000, hop_ms=15_000).interval(np.array([61_000]))
(array([15000]), array([75000]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

WINDOW_KINDS = ("rolling", "tumbling", "hopping")


class Window(Protocol):
    """What the engine needs from a window kind."""

    kind: str
    size_ms: int

    def interval(self, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` arrays of the half-open interval for each query time."""
        ...

    def spec(self) -> dict[str, int | str]:
        """Canonical, JSON-able description (used in the view version hash)."""
        ...


@dataclass(frozen=True)
class RollingWindow:
    """The last ``size_ms`` milliseconds up to and including the query time."""

    size_ms: int
    kind: str = "rolling"

    def interval(self, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t_ms, dtype=np.int64)
        return t - self.size_ms + 1, t + 1

    def spec(self) -> dict[str, int | str]:
        return {"kind": self.kind, "size_ms": self.size_ms}


@dataclass(frozen=True)
class TumblingWindow:
    """Aligned, non-overlapping buckets of ``size_ms`` (epoch-aligned)."""

    size_ms: int
    kind: str = "tumbling"

    def interval(self, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = np.floor_divide(np.asarray(t_ms, dtype=np.int64), self.size_ms) * self.size_ms
        return start, start + self.size_ms

    def spec(self) -> dict[str, int | str]:
        return {"kind": self.kind, "size_ms": self.size_ms}


@dataclass(frozen=True)
class HoppingWindow:
    """Overlapping windows of ``size_ms`` starting every ``hop_ms``; size is a multiple of hop."""

    size_ms: int
    hop_ms: int
    kind: str = "hopping"

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.size_ms % self.hop_ms:
            raise ValueError("hopping window size must be a positive multiple of hop")

    def interval(self, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t_ms, dtype=np.int64)
        end = np.floor_divide(t, self.hop_ms) * self.hop_ms + self.hop_ms
        return end - self.size_ms, end

    def spec(self) -> dict[str, int | str]:
        return {"kind": self.kind, "size_ms": self.size_ms, "hop_ms": self.hop_ms}


def earliest_start(window: Window, watermark_ms: int) -> int:
    """Smallest interval start of any query time ``>= watermark_ms``.

    Interval starts are non-decreasing in the query time, so the start at the watermark itself
    is the minimum; rows strictly before it are dead for this window.
    """
    return int(window.interval(np.array([watermark_ms], dtype=np.int64))[0][0])
