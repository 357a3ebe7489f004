"""Per-slice fairness of a model's outcomes over a rolling event-time window, with alarms.

An *outcome* is a prediction joined with its label: event time (ms), decision (bool), label (0/1)
and one value per slice attribute (``segment``, ``channel``, ``country``: the ``slices`` the
feature definitions declare). `FairnessMonitor` keeps, per (attribute, value) and per event-time
bucket, five mergeable counts (outcomes, selected, positives, true and false positives); a window
is the sum of its last ``window_buckets`` buckets, the newest one holding the newest outcome, so
evaluating costs O(buckets x values), never a pass over history, and nothing reads a clock.

`FairnessMonitor.evaluate` reports, per value, selection rate, TPR, FPR and accuracy with Wilson
intervals, and per attribute the demographic parity difference and ratio, the equal opportunity
difference and the equalized odds difference (fairlearn's ``between_groups`` definitions) with
simultaneous confidence intervals: Newcombe's hybrid score interval for every pairwise difference
and Katz's log interval for every pairwise ratio, Bonferroni-adjusted over all the pairwise
intervals of all attributes. Only values with at least ``min_support`` outcomes in the rate's
denominator are compared. A gap alarms when its whole interval is past the threshold; alarms are
keyed by (attribute, rate), so one sustained change makes one event until it recovers. The
method, the error budget and the export cap are described in ``docs/fairness.md``.

>>> import numpy as np
>>> monitor = FairnessMonitor(FairnessConfig(attributes=("channel",), min_support=2))
>>> _ = monitor.update(
...     event_time_ms=np.array([0, 1, 2, 3]), decision=np.array([1, 0, 1, 1], dtype=bool),
...     label=np.array([1, 0, 0, 1]), slices={"channel": np.array(["web", "web", "app", "app"])})
>>> report = monitor.evaluate()
>>> [(s.value, s.n, s.selection_rate.value) for s in report.slices]
[('app', 2, 1.0), ('web', 2, 0.5)]
>>> report.gap("channel", DP_DIFFERENCE).statistic, report.events
(0.5, ())
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np
from scipy.stats import norm

from driftline.core.monitoring.intervals import (
    katz_log_interval,
    newcombe_interval,
    wilson_interval,
)

DP_DIFFERENCE = "demographic_parity_difference"
DP_RATIO = "demographic_parity_ratio"
EO_DIFFERENCE = "equal_opportunity_difference"
EODDS_DIFFERENCE = "equalized_odds_difference"
FPR_DIFFERENCE = "false_positive_rate_difference"  # reported: the FPR half of equalized odds
METRICS = (DP_DIFFERENCE, DP_RATIO, EO_DIFFERENCE, EODDS_DIFFERENCE, FPR_DIFFERENCE)

SELECTION, TPR, FPR = "selection_rate", "true_positive_rate", "false_positive_rate"
RATES = (SELECTION, TPR, FPR)  # what alarms are keyed on, with the attribute

COUNTS = ("n", "selected", "positives", "true_positives", "false_positives")
_N, _SEL, _POS, _TP, _FP = range(len(COUNTS))
NO_TIME = -(2**62)  # "no outcome yet"
_NO_BUCKET = np.iinfo(np.int64).min


@dataclass(frozen=True)
class FairnessConfig:
    """What to slice, how long the window is, and when a gap alarms.

    ``bucket_ms`` x ``window_buckets`` is the window length (default 5 min x 12 = 1 h).
    ``min_support`` applies to each rate's denominator (outcomes for selection rate and accuracy,
    positives for TPR, negatives for FPR). ``family_confidence`` is the simultaneous coverage of
    all gap intervals of one evaluation. Difference thresholds alarm when an interval's lower
    bound exceeds them, ``dp_ratio`` when the ratio interval's upper bound is below it (the 0.8
    rule). An alarm recovers once its bound is back past the threshold by ``recovery_margin``.
    """

    attributes: tuple[str, ...] = ("segment", "channel", "country")
    bucket_ms: int = 5 * 60_000
    window_buckets: int = 12
    min_support: int = 200
    family_confidence: float = 0.95
    dp_difference: float = 0.1
    dp_ratio: float = 0.8
    eo_difference: float = 0.1
    eodds_difference: float = 0.1
    recovery_margin: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))
        if not self.attributes or len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes must be distinct and non-empty: {self.attributes}")
        if self.bucket_ms < 1 or self.window_buckets < 1 or self.min_support < 1:
            raise ValueError("bucket_ms, window_buckets and min_support must be >= 1")
        if not 0 < self.family_confidence < 1:
            raise ValueError(f"family_confidence must be in (0, 1): {self.family_confidence}")
        for name in ("dp_difference", "eo_difference", "eodds_difference"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0 < self.dp_ratio <= 1 or self.recovery_margin < 0:
            raise ValueError("dp_ratio must be in (0, 1] and recovery_margin >= 0")


@dataclass(frozen=True)
class Estimate:
    """A proportion and its Wilson interval (NaN when the denominator is zero)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class SliceStats:
    """One value of one attribute in the window. ``supported`` lists the rates whose
    denominator reaches ``min_support``; only those take part in gaps and alarms."""

    attribute: str
    value: str
    n: int
    selected: int
    positives: int
    true_positives: int
    false_positives: int
    selection_rate: Estimate
    tpr: Estimate
    fpr: Estimate
    accuracy: Estimate
    supported: tuple[str, ...]


@dataclass(frozen=True)
class Gap:
    """One fairness gap of one attribute over its supported values, with its simultaneous
    interval. ``values`` is (worst value, counterpart): the pair that drives the bound, worst
    being the one farther from the pooled rate of the other values. NaN with fewer than two
    supported values. ``threshold`` is NaN for the FPR component, which alarms as equalized odds.
    """

    attribute: str
    metric: str
    statistic: float
    low: float
    high: float
    threshold: float
    values: tuple[str, str]
    compared: int
    past_threshold: bool


@dataclass(frozen=True)
class OpenAlarm:
    """A sustained gap already announced: no new event for (attribute, rate) until recovery."""

    attribute: str
    rate: str
    value: str
    metric: str
    since_ms: int  # window end (event time) of the evaluation that raised it


@dataclass(frozen=True)
class FairnessEvent:
    """An alarm raised (``kind="alarm"``) or closed (``kind="recovered"``)."""

    kind: Literal["alarm", "recovered"]
    subject: str  # "country=DE"
    attribute: str
    value: str
    counterpart: str
    rate: str
    metric: str
    metrics: tuple[str, ...]  # every metric on this rate past its threshold
    statistic: float
    interval: tuple[float, float]
    threshold: float
    window_start_ms: int
    window_end_ms: int
    severity: Literal["warning", "critical", "info"]
    summary: str


@dataclass(frozen=True)
class FairnessReport:
    """What one `FairnessMonitor.evaluate` saw and decided.

    ``family_size`` is the number of pairwise intervals the Bonferroni adjustment covered and
    ``z`` their critical value. ``state_delta`` is the alarm state after this evaluation, in
    `FairnessMonitor.snapshot` format (its keys are disjoint from an `update` delta's).
    """

    window_start_ms: int | None
    window_end_ms: int | None
    slices: tuple[SliceStats, ...]
    gaps: tuple[Gap, ...]
    events: tuple[FairnessEvent, ...]
    open_alarms: tuple[OpenAlarm, ...]
    family_size: int
    z: float
    state_delta: dict[str, np.ndarray]

    def gap(self, attribute: str, metric: str) -> Gap:
        return next(g for g in self.gaps if g.attribute == attribute and g.metric == metric)

    def slice(self, attribute: str, value: str) -> SliceStats:
        return next(s for s in self.slices if s.attribute == attribute and s.value == value)


class FairnessMonitor:
    """Rolling per-slice fairness of one model's outcomes (one partition; `merge` combines)."""

    def __init__(self, config: FairnessConfig | None = None) -> None:
        self.config = config or FairnessConfig()
        buckets = self.config.window_buckets
        self._bucket = np.full(buckets, _NO_BUCKET, dtype=np.int64)  # ring slot -> bucket id
        self._values = {a: np.array([], dtype=str) for a in self.config.attributes}  # sorted
        self._counts = {a: np.zeros((buckets, 0, len(COUNTS)), np.int64)
                        for a in self.config.attributes}
        self._newest = NO_TIME
        self._late = 0
        self._open: dict[tuple[str, str], OpenAlarm] = {}

    @property
    def newest_event_time_ms(self) -> int | None:
        return None if self._newest == NO_TIME else self._newest

    @property
    def late_outcomes(self) -> int:
        """Outcomes that arrived already older than the window; they changed nothing."""
        return self._late

    @property
    def state_cells(self) -> int:
        """Non-empty (bucket, attribute, value) cells held: the state size."""
        return int(sum(np.count_nonzero(c[:, :, _N]) for c in self._counts.values()))

    @property
    def window_ms(self) -> tuple[int, int] | None:
        """[start, end) event times of the window: whole buckets ending with the newest one."""
        if self._newest == NO_TIME:
            return None
        newest = self._newest // self.config.bucket_ms
        return ((newest - self.config.window_buckets + 1) * self.config.bucket_ms,
                (newest + 1) * self.config.bucket_ms)

    def update(self, event_time_ms: np.ndarray, decision: np.ndarray, label: np.ndarray,
               slices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add a batch of outcomes; returns the counts it added, as a state delta.

        The window first moves to the batch's newest event time; outcomes then older than the
        window are counted in `late_outcomes` and dropped. ``slices`` maps every configured
        attribute to one string per outcome (give a missing value an explicit name).
        """
        times = np.asarray(event_time_ms, dtype=np.int64)
        decision = np.asarray(decision)
        label = np.asarray(label)
        n = len(times)
        if decision.shape != (n,) or label.shape != (n,):
            raise ValueError("event_time_ms, decision and label must be 1-d of one length")
        if decision.dtype != bool or not np.isin(label, (0, 1)).all():
            raise ValueError("decision must be bool and label 0/1")
        label = label.astype(bool)
        columns = {}
        for attribute in self.config.attributes:
            if attribute not in slices:
                raise KeyError(f"outcomes lack slice attribute {attribute!r}")
            columns[attribute] = np.asarray(slices[attribute]).astype(str)
            if columns[attribute].shape != (n,):
                raise ValueError(f"slice {attribute!r} must hold one value per outcome")
        if n:
            self._advance(int(times.max()))
        bucket = times // self.config.bucket_ms
        live = bucket >= self._oldest_bucket()
        self._late += int(n - np.count_nonzero(live))
        delta = self._header("delta")
        for attribute, values in columns.items():
            cells = _cells(bucket[live], values[live], decision[live], label[live])
            self._add(attribute, *cells)
            _put_cells(delta, attribute, *cells)
        return delta

    def merge(self, other: FairnessMonitor) -> None:
        """Add another monitor's window counts (another partition of the same outcomes).

        Both windows end at the newer of the two newest event times; alarm state is not merged.
        """
        if (other.config.attributes, other.config.bucket_ms, other.config.window_buckets) != \
                (self.config.attributes, self.config.bucket_ms, self.config.window_buckets):
            raise ValueError("can only merge monitors with the same attributes and buckets")
        self._apply(other.snapshot(), additive=True)

    def evaluate(self) -> FairnessReport:
        """Per-value metrics, per-attribute gaps with simultaneous intervals, and alarm events."""
        cfg = self.config
        totals = {a: self._counts[a].sum(axis=0) for a in cfg.attributes}
        supported = {a: _supported(t, cfg.min_support) for a, t in totals.items()}
        family = sum(2 * _pairs(s[SELECTION]) + _pairs(s[TPR]) + _pairs(s[FPR])
                     for s in supported.values())
        alpha = 1 - cfg.family_confidence
        z = float(norm.isf(alpha / (2 * family))) if family else float("inf")
        z_value = float(norm.isf(alpha / 2))  # per-value intervals are marginal: they never alarm
        slices: list[SliceStats] = []
        gaps: list[Gap] = []
        events = []
        window = self.window_ms
        for attribute in cfg.attributes:
            t, ok = totals[attribute], supported[attribute]
            values = self._values[attribute]
            slices.extend(_slice_stats(attribute, values, t, ok, z_value))
            num_den = _num_den(t)
            diff = {r: _difference(attribute, values, *num_den[r], ok[r], z) for r in RATES}
            ratio = _ratio(attribute, values, *num_den[SELECTION], ok[SELECTION], z)
            checks = self._checks(diff, ratio)
            gaps.extend(_report_gaps(attribute, checks, diff[FPR]))
            for rate in RATES:
                event = self._step(attribute, rate, checks[rate], ok[rate], values, window)
                if event is not None:
                    events.append(event)
        return FairnessReport(
            window_start_ms=None if window is None else window[0],
            window_end_ms=None if window is None else window[1],
            slices=tuple(slices), gaps=tuple(gaps), events=tuple(events),
            open_alarms=tuple(self._open.values()), family_size=family, z=z,
            state_delta=self._alarm_arrays())

    def snapshot(self) -> dict[str, np.ndarray]:
        """All state as plain arrays (``np.savez`` without pickle): the window's non-empty
        cells in (bucket, value) order, the newest event time and the open alarms."""
        out = self._header("snapshot")
        out["config"] = np.array([self.config.bucket_ms, self.config.window_buckets], np.int64)
        out["attributes"] = np.array(self.config.attributes, dtype=str)
        order = np.argsort(self._bucket, kind="stable")
        order = order[self._bucket[order] != _NO_BUCKET]
        for attribute in self.config.attributes:
            counts = self._counts[attribute][order]  # (slots, values, counts)
            slot, code = np.nonzero(counts[:, :, _N])
            _put_cells(out, attribute, self._bucket[order][slot],
                       self._values[attribute][code], counts[slot, code])
        out.update(self._alarm_arrays())
        return out

    @classmethod
    def restore(cls, config: FairnessConfig,
                pieces: Sequence[Mapping[str, np.ndarray]]) -> FairnessMonitor:
        """Rebuild from a snapshot followed by the later `update` deltas and evaluation
        ``state_delta``s, in order (a per-batch delta may be the union of the two dicts)."""
        monitor = cls(config)
        for piece in pieces:
            if str(piece.get("kind", ["delta"])[0]) == "snapshot":
                found = (tuple(np.asarray(piece["attributes"]).tolist()),
                         tuple(int(x) for x in piece["config"]))
                wanted = (config.attributes, (config.bucket_ms, config.window_buckets))
                if found != wanted:
                    raise ValueError(f"snapshot is for {found}, not {wanted}")
                monitor = cls(config)
            monitor._apply(piece, additive=False)
        return monitor

    # Internals.

    def _checks(self, diff: Mapping[str, _Pairwise], ratio: _Pairwise) -> dict[str, list[Gap]]:
        """The alarm tests of each rate. Equalized odds is tested on each of its components
        (TPR and FPR gaps) against its threshold, so it alarms with the rate that carries it."""
        cfg = self.config
        sel, tpr, fpr = diff[SELECTION], diff[TPR], diff[FPR]
        return {
            SELECTION: [sel.gap(DP_DIFFERENCE, cfg.dp_difference, sel.low > cfg.dp_difference),
                        ratio.gap(DP_RATIO, cfg.dp_ratio, ratio.high < cfg.dp_ratio)],
            TPR: [tpr.gap(EO_DIFFERENCE, cfg.eo_difference, tpr.low > cfg.eo_difference),
                  tpr.gap(EODDS_DIFFERENCE, cfg.eodds_difference,
                          tpr.low > cfg.eodds_difference)],
            FPR: [fpr.gap(EODDS_DIFFERENCE, cfg.eodds_difference,
                          fpr.low > cfg.eodds_difference)],
        }

    def _step(self, attribute: str, rate: str, gaps: list[Gap], supported: np.ndarray,
              values: np.ndarray, window: tuple[int, int] | None) -> FairnessEvent | None:
        """Open, keep or close the alarm of (attribute, rate): the de-duplication."""
        key = (attribute, rate)
        crossing = [g for g in gaps if g.past_threshold]
        if key not in self._open:
            if not crossing:
                return None
            first = crossing[0]
            self._open[key] = OpenAlarm(attribute, rate, first.values[0], first.metric,
                                        window[1])
            return _event("alarm", rate, first, crossing, window)
        alarm = self._open[key]
        still_supported = bool(supported[values == alarm.value].any())
        if crossing or not still_supported or not all(
                _recovered(g, self.config.recovery_margin) for g in gaps):
            return None  # no evidence of recovery yet (possibly no evidence at all)
        del self._open[key]
        primary = next((g for g in gaps if g.metric == alarm.metric), gaps[0])
        return _event("recovered", rate, primary, [], window, value=alarm.value)

    def _oldest_bucket(self) -> int:
        if self._newest == NO_TIME:
            return _NO_BUCKET
        return self._newest // self.config.bucket_ms - self.config.window_buckets + 1

    def _advance(self, newest: int) -> None:
        """Move the window end to `newest` (never back), emptying buckets that left it."""
        if newest <= self._newest:
            return
        self._newest = newest
        stale = self._bucket < self._oldest_bucket()
        if not stale[self._bucket != _NO_BUCKET].any():
            return
        self._bucket[stale] = _NO_BUCKET
        for attribute, counts in self._counts.items():
            counts[stale] = 0
            keep = counts[:, :, _N].any(axis=0)  # values seen in no live bucket are forgotten
            if not keep.all():
                self._counts[attribute] = counts[:, keep]
                self._values[attribute] = self._values[attribute][keep]

    def _add(self, attribute: str, bucket: np.ndarray, values: np.ndarray,
             counts: np.ndarray) -> None:
        """Add cells whose buckets lie in the current window."""
        if not len(bucket):
            return
        known = self._values[attribute]
        if not np.isin(values, known).all():
            merged = np.union1d(known, values)
            grown = np.zeros((len(self._bucket), len(merged), len(COUNTS)), np.int64)
            grown[:, np.searchsorted(merged, known)] = self._counts[attribute]
            self._values[attribute], self._counts[attribute] = merged, grown
        slot = bucket % len(self._bucket)
        held = self._bucket[slot]
        if not np.all((held == bucket) | (held == _NO_BUCKET)):
            raise AssertionError("a bucket outside the window reached the ring")
        self._bucket[slot] = bucket
        code = np.searchsorted(self._values[attribute], values)
        np.add.at(self._counts[attribute], (slot, code), counts)

    def _apply(self, piece: Mapping[str, np.ndarray], additive: bool) -> None:
        if "newest_ms" in piece:
            self._advance(int(piece["newest_ms"][0]))
        oldest = self._oldest_bucket()
        for attribute in self.config.attributes:
            if f"cells.{attribute}.bucket" not in piece:
                continue
            bucket = np.asarray(piece[f"cells.{attribute}.bucket"], dtype=np.int64)
            live = bucket >= oldest
            self._add(attribute, bucket[live],
                      np.asarray(piece[f"cells.{attribute}.value"]).astype(str)[live],
                      np.asarray(piece[f"cells.{attribute}.counts"], dtype=np.int64)[live])
        if additive:
            return
        if "late_outcomes" in piece:
            self._late = int(piece["late_outcomes"][0])
        if "alarm.attribute" in piece:
            self._open = {}
            for a, r, v, m, t in zip(*(np.asarray(piece[f"alarm.{k}"]).tolist()
                                       for k in ("attribute", "rate", "value", "metric",
                                                 "since_ms")), strict=True):
                self._open[(a, r)] = OpenAlarm(a, r, v, m, int(t))

    def _header(self, kind: str) -> dict[str, np.ndarray]:
        return {"kind": np.array([kind]),
                "newest_ms": np.array([self._newest], dtype=np.int64),
                "late_outcomes": np.array([self._late], dtype=np.int64)}

    def _alarm_arrays(self) -> dict[str, np.ndarray]:
        alarms = sorted(self._open.values(), key=lambda a: (a.attribute, a.rate))
        out = {f"alarm.{k}": np.array([getattr(a, k) for a in alarms], dtype=str)
               for k in ("attribute", "rate", "value", "metric")}
        out["alarm.since_ms"] = np.array([a.since_ms for a in alarms], dtype=np.int64)
        return out


def export_values(report: FairnessReport, max_values: int) -> dict[str, tuple[str, ...]]:
    """At most `max_values` values per attribute to export as metric labels.

    Values named by an open alarm come first, then the largest by outcomes in the window (ties by
    name), so Prometheus cardinality stays bounded while whatever is alarming stays visible.
    """
    if max_values < 1:
        raise ValueError("max_values must be >= 1")
    alarmed = {(a.attribute, a.value) for a in report.open_alarms}
    chosen: dict[str, tuple[str, ...]] = {}
    for attribute in dict.fromkeys(s.attribute for s in report.slices):
        ranked = sorted((s for s in report.slices if s.attribute == attribute),
                        key=lambda s: ((attribute, s.value) not in alarmed, -s.n, s.value))
        chosen[attribute] = tuple(s.value for s in ranked[:max_values])
    return chosen


# Module internals.

_LABELS = {DP_DIFFERENCE: "demographic parity difference", DP_RATIO: "demographic parity ratio",
           EO_DIFFERENCE: "equal opportunity difference",
           EODDS_DIFFERENCE: "equalized odds difference", FPR_DIFFERENCE: "FPR difference"}


@dataclass(frozen=True)
class _Pairwise:
    """A max-min gap (or min/max ratio) over supported values with its simultaneous bounds."""

    attribute: str
    statistic: float
    low: float
    high: float
    values: tuple[str, str]
    compared: int

    def gap(self, metric: str, threshold: float, past: bool) -> Gap:
        return Gap(self.attribute, metric, self.statistic, self.low, self.high, threshold,
                   self.values, self.compared, bool(past))


def _cells(bucket: np.ndarray, values: np.ndarray, decision: np.ndarray,
           label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty (bucket, value) cells of a batch and their five counts."""
    buckets, b = np.unique(bucket, return_inverse=True)
    names, v = np.unique(values, return_inverse=True)
    flat = b.reshape(-1) * len(names) + v.reshape(-1)
    size = len(buckets) * len(names)
    counts = np.stack([np.bincount(flat[m], minlength=size) for m in (
        slice(None), decision, label, decision & label, decision & ~label)], axis=1)
    cell = np.flatnonzero(counts[:, _N])
    return buckets[cell // len(names)], names[cell % len(names)], counts[cell].astype(np.int64)


def _report_gaps(attribute: str, checks: Mapping[str, list[Gap]], fpr: _Pairwise) -> list[Gap]:
    """The gaps as fairlearn defines them; equalized odds is the larger of its components."""
    dp, ratio = checks[SELECTION]
    eo, eodds_tpr = checks[TPR]
    (eodds_fpr,) = checks[FPR]
    driver = eodds_fpr if eodds_fpr.low > eodds_tpr.low else eodds_tpr
    eodds = Gap(attribute, EODDS_DIFFERENCE, float(np.fmax(eo.statistic, fpr.statistic)),
                float(np.fmax(eodds_tpr.low, eodds_fpr.low)),
                float(np.fmax(eodds_tpr.high, eodds_fpr.high)), eodds_tpr.threshold,
                driver.values, max(eo.compared, fpr.compared),
                eodds_tpr.past_threshold or eodds_fpr.past_threshold)
    return [dp, ratio, eo, eodds, fpr.gap(FPR_DIFFERENCE, float("nan"), False)]


def _put_cells(out: dict[str, np.ndarray], attribute: str, bucket: np.ndarray,
               values: np.ndarray, counts: np.ndarray) -> None:
    out[f"cells.{attribute}.bucket"] = np.asarray(bucket, dtype=np.int64)
    # Narrowest width, so the arrays do not depend on longer values seen earlier.
    out[f"cells.{attribute}.value"] = np.array(np.asarray(values).tolist(), dtype=str)
    out[f"cells.{attribute}.counts"] = np.asarray(counts, dtype=np.int64).reshape(-1, len(COUNTS))


def _num_den(t: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {SELECTION: (t[:, _SEL], t[:, _N]), TPR: (t[:, _TP], t[:, _POS]),
            FPR: (t[:, _FP], t[:, _N] - t[:, _POS])}


def _supported(t: np.ndarray, min_support: int) -> dict[str, np.ndarray]:
    return {rate: den >= min_support for rate, (_, den) in _num_den(t).items()}


def _pairs(mask: np.ndarray) -> int:
    m = int(np.count_nonzero(mask))
    return m * (m - 1) // 2


def _slice_stats(attribute: str, values: np.ndarray, t: np.ndarray,
                 ok: Mapping[str, np.ndarray], z: float) -> Iterable[SliceStats]:
    correct = t[:, _TP] + (t[:, _N] - t[:, _POS] - t[:, _FP])
    pairs = [*_num_den(t).values(), (correct, t[:, _N])]  # selection, TPR, FPR, accuracy
    columns = []
    for num, den in pairs:
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = num / den
        columns.append(zip(rate.tolist(), *(b.tolist() for b in wilson_interval(num, den, z)),
                           strict=True))
    for i, (value, *estimates) in enumerate(zip(values.tolist(), *columns, strict=True)):
        sel, tpr, fpr, accuracy = (Estimate(*e) for e in estimates)
        yield SliceStats(attribute, value, *(int(x) for x in t[i]), selection_rate=sel, tpr=tpr,
                         fpr=fpr, accuracy=accuracy,
                         supported=tuple(r for r in RATES if ok[r][i]))


def _worst(num: np.ndarray, den: np.ndarray, pair: tuple[int, int]) -> tuple[int, int]:
    """Order a pair as (worst, counterpart): worst is the one farther from the pooled rate of
    the other compared values (an outlier low slice, not the many slices it is compared to)."""
    total_num, total_den = num.sum(), den.sum()

    def distance(i: int) -> float:
        rest = total_den - den[i]
        return abs(num[i] / den[i] - (total_num - num[i]) / rest) if rest else 0.0

    a, b = pair
    return (a, b) if distance(a) >= distance(b) else (b, a)


def _difference(attribute: str, values: np.ndarray, num: np.ndarray, den: np.ndarray,
                ok: np.ndarray, z: float) -> _Pairwise:
    """max - min of the rate over supported values; bounds from Newcombe intervals of every
    ordered pair: true gap >= max lower bound, <= max upper bound (simultaneously)."""
    idx = np.flatnonzero(ok)
    if len(idx) < 2:
        return _Pairwise(attribute, float("nan"), float("nan"), float("nan"), ("", ""), len(idx))
    k, n = num[idx], den[idx]
    rate = k / n
    low, high = newcombe_interval(k[:, None], n[:, None], k[None, :], n[None, :], z)
    off = ~np.eye(len(idx), dtype=bool)
    low, high = np.where(off, low, -np.inf), np.where(off, high, -np.inf)
    pair = np.unravel_index(int(np.argmax(low)), low.shape)
    worst, other = _worst(k, n, (int(pair[0]), int(pair[1])))
    return _Pairwise(attribute, float(rate.max() - rate.min()), max(float(low.max()), 0.0),
                     min(float(high.max()), 1.0), (str(values[idx[worst]]),
                                                   str(values[idx[other]])), len(idx))


def _ratio(attribute: str, values: np.ndarray, num: np.ndarray, den: np.ndarray,
           ok: np.ndarray, z: float) -> _Pairwise:
    """min / max of the rate over supported values; bounds from Katz intervals of every
    ordered pair: true ratio <= min upper bound, >= min lower bound (simultaneously)."""
    idx = np.flatnonzero(ok)
    if len(idx) < 2 or not num[idx].any():
        return _Pairwise(attribute, float("nan"), float("nan"), float("nan"), ("", ""), len(idx))
    k, n = num[idx], den[idx]
    rate = k / n
    low, high = katz_log_interval(k[:, None], n[:, None], k[None, :], n[None, :], z)
    off = ~np.eye(len(idx), dtype=bool)
    low, high = np.where(off, low, np.inf), np.where(off, high, np.inf)
    pair = np.unravel_index(int(np.argmin(high)), high.shape)
    worst, other = _worst(k, n, (int(pair[0]), int(pair[1])))
    return _Pairwise(attribute, float(rate.min() / rate.max()), min(float(low.min()), 1.0),
                     min(float(high.min()), 1.0), (str(values[idx[worst]]),
                                                   str(values[idx[other]])), len(idx))


def _recovered(gap: Gap, margin: float) -> bool:
    if np.isnan(gap.statistic):
        return False
    if gap.metric == DP_RATIO:
        return gap.high >= min(gap.threshold + margin, 1.0)
    return gap.low <= max(gap.threshold - margin, 0.0)


def _severity(gap: Gap) -> Literal["warning", "critical"]:
    """Critical when the bound is past twice the threshold's distance from parity."""
    if gap.metric == DP_RATIO:
        return "critical" if gap.high < 2 * gap.threshold - 1 else "warning"
    return "critical" if gap.low > 2 * gap.threshold else "warning"


def _event(kind: Literal["alarm", "recovered"], rate: str, gap: Gap, crossing: list[Gap],
           window: tuple[int, int], value: str | None = None) -> FairnessEvent:
    value = gap.values[0] if value is None else value
    counterpart = gap.values[1] if gap.values[0] == value else gap.values[0]
    subject = f"{gap.attribute}={value}"
    start, end = (datetime.fromtimestamp(t / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M")
                  for t in window)
    bound = "upper bound" if gap.metric == DP_RATIO else "lower bound"
    if kind == "alarm":
        side = "<" if gap.metric == DP_RATIO else ">"
        text = f"{bound} {side} {gap.threshold:.2f}"
        severity = _severity(gap)
    else:
        text = "back within threshold"
        severity = "info"
    summary = (f"{subject}: {_LABELS[gap.metric]} {gap.statistic:.3f} "
               f"[{gap.low:.3f}, {gap.high:.3f}] vs {gap.attribute}={counterpart}, {text} "
               f"(window {start}..{end} UTC)")
    return FairnessEvent(
        kind=kind, subject=subject, attribute=gap.attribute, value=value,
        counterpart=counterpart, rate=rate, metric=gap.metric,
        metrics=tuple(g.metric for g in crossing), statistic=gap.statistic,
        interval=(gap.low, gap.high), threshold=gap.threshold, window_start_ms=window[0],
        window_end_ms=window[1], severity=severity, summary=summary)
