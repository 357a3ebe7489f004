"""What the monitor saw over the last hour, kept in memory for its status page.

`StatusHistory` is a bounded ring of `Point` s: at a time the caller passes in (the monitor's
wall clock; nothing here reads a clock), each compared subject's PSI and the cumulative
prediction and outcome counters, from which throughput is derived. Beside it, the drift events
the monitor raised (`DriftMark`, at most ``max_events``, de-duplicated by ``drift_id``: a replay
after a crash repeats an id) and the latest fairness gaps with their intervals (`GapReading`).

Bounds: a point is appended at most every ``min_interval_ms`` (default ``max_age_ms /
max_points``, so the ring covers ``max_age_ms`` with ``max_points`` points however fast batches
come); points older than ``max_age_ms`` before the newest are dropped. Nothing is persisted: a
restarted monitor starts an empty page (the drift topic and the metrics keep the record).

>>> history = StatusHistory(max_age_ms=10_000, max_points=10)
>>> history.record(0, {("fraud", 1, "amount"): 0.02}, predictions=0, outcomes=0)
True
>>> history.record(500, {("fraud", 1, "amount"): 0.03}, predictions=50, outcomes=0)
False
>>> history.record(2_000, {("fraud", 1, "amount"): 0.4}, predictions=200, outcomes=100)
True
>>> [p.psi[("fraud", 1, "amount")] for p in history.points(now_ms=2_000)]
[0.02, 0.4]
>>> history.rates(now_ms=2_000, predictions=200, outcomes=100)
(100.0, 50.0)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SeriesKey = tuple[str, int, str]  # (model name, model version, subject)


@dataclass(frozen=True)
class Point:
    """The monitor's state at ``at_ms``: finite PSI per series, and cumulative counters."""

    at_ms: int
    psi: Mapping[SeriesKey, float]
    predictions: int
    outcomes: int


@dataclass(frozen=True)
class DriftMark:
    """A drift event the monitor raised: the ``driftline.DriftEvent`` fields the page shows.
    ``at_ms`` is when it was raised (the caller's clock), ``detected_at_ms`` its event time."""

    drift_id: str
    at_ms: int
    detector: str
    kind: str
    subject: str
    statistic: float
    threshold: float
    model_name: str
    model_version: int
    detected_at_ms: int
    severity: str
    summary: str


@dataclass(frozen=True)
class GapReading:
    """One fairness gap of one slice attribute with its simultaneous interval (NaN when fewer
    than two values have the support to be compared); see ``fairness.Gap``."""

    model_name: str
    model_version: int
    attribute: str
    metric: str
    statistic: float
    low: float
    high: float
    threshold: float
    values: tuple[str, str]
    compared: int


class StatusHistory:
    """Bounded history for the status page; see the module docstring."""

    def __init__(self, max_age_ms: int = 3_600_000, max_points: int = 3_600,
                 max_events: int = 200, min_interval_ms: int | None = None) -> None:
        if max_age_ms < 1 or max_points < 2 or max_events < 1:
            raise ValueError("need max_age_ms >= 1, max_points >= 2 and max_events >= 1")
        self.max_age_ms = max_age_ms
        self.max_points = max_points
        self.min_interval_ms = max_age_ms // max_points if min_interval_ms is None \
            else min_interval_ms
        if self.min_interval_ms < 0:
            raise ValueError("min_interval_ms must be >= 0")
        self._points: deque[Point] = deque(maxlen=max_points)
        self._marks: deque[DriftMark] = deque(maxlen=max_events)
        self.gaps: tuple[GapReading, ...] = ()

    def record(self, at_ms: int, psi: Mapping[SeriesKey, float], predictions: int,
               outcomes: int) -> bool:
        """Append a point unless the newest is younger than ``min_interval_ms``; returns whether
        it was appended. NaN PSI (a window not yet full) is left out. A clock that stepped back
        drops the points now in its future, so the ring stays in time order."""
        while self._points and self._points[-1].at_ms > at_ms:
            self._points.pop()
        if self._points and at_ms - self._points[-1].at_ms < self.min_interval_ms:
            return False
        finite = {k: float(v) for k, v in psi.items() if math.isfinite(v)}
        self._points.append(Point(int(at_ms), finite, int(predictions), int(outcomes)))
        self._expire(at_ms)
        return True

    def add_drift(self, mark: DriftMark) -> bool:
        """Keep a raised drift event; False if its ``drift_id`` is already kept (a replay)."""
        if any(m.drift_id == mark.drift_id for m in self._marks):
            return False
        self._marks.append(mark)
        return True

    def set_gaps(self, gaps: Iterable[GapReading]) -> None:
        """Replace the fairness gaps with the latest evaluation's."""
        self.gaps = tuple(gaps)

    def points(self, now_ms: int) -> tuple[Point, ...]:
        """The points of the last ``max_age_ms`` up to `now_ms`, oldest first."""
        return tuple(p for p in self._points if now_ms - self.max_age_ms <= p.at_ms <= now_ms)

    def drift_marks(self) -> tuple[DriftMark, ...]:
        """The kept drift events, oldest first (bounded by count, not age: they are rare)."""
        return tuple(self._marks)

    def rates(self, now_ms: int, predictions: int, outcomes: int,
              window_ms: int = 10_000) -> tuple[float, float] | None:
        """(predictions, outcomes) per second from the counters now against the newest point at
        least `window_ms` old (else the oldest point); None without a point before `now_ms`."""
        older = [p for p in self._points if p.at_ms < now_ms]
        if not older:
            return None
        base = next((p for p in reversed(older) if now_ms - p.at_ms >= window_ms), older[0])
        seconds = (now_ms - base.at_ms) / 1000
        return ((predictions - base.predictions) / seconds, (outcomes - base.outcomes) / seconds)

    def _expire(self, newest_ms: int) -> None:
        while self._points and self._points[0].at_ms < newest_ms - self.max_age_ms:
            self._points.popleft()
