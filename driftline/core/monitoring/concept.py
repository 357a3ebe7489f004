"""Concept drift on the outcome stream: river ADWIN and DDM per model version, one alarm a change.

For each (model name, model version) a `ConceptDriftMonitor` runs two river detectors over the
joined outcomes, in outcome order (`LabelJoin` emits them by label time):

* **ADWIN** (``river.drift.ADWIN``) on the absolute error ``|label - score|``, which lies in
  [0, 1] like the values ADWIN's bound is stated for; log loss was rejected because one
  confident mistake (``-log(1e-9)`` ~ 21) swamps the window mean, which is what makes ADWIN
  alarm on stationary streams.
* **DDM** (``river.drift.binary.DDM``) on the binary error ``decision != label``.

Alarm discipline, the answer to "the same drift reported again and again" (river#574):

* **Warm-up.** No ADWIN alarm before ``adwin_grace`` (100) outcomes and no DDM alarm before
  ``warmup`` (1,000) outcomes since the detectors (re)started: river's own ``grace_period``
  (ADWIN) and ``warm_start`` (DDM). DDM's baseline is the best error rate it has seen, so it
  needs the longer one; ADWIN's bound protects it on short windows.
* **One alarm per change.** The first alarm of either family restarts *both* detectors of that
  model version from scratch, and the warm-up starts again. A change therefore yields one
  event, from whichever family saw it first; the fresh detectors learn the new error level as
  their baseline instead of re-detecting the old change while their windows re-settle. (Both
  families may alarm on the very same outcome: then both are reported.)
* **Restart in event time.** After an alarm raised by an outcome labelled at time ``L``, the
  restarted detectors take only outcomes of events at or after ``L``: labels still arriving for
  older events belong to the period the alarm covered and would re-teach the old regime.

State goes through `snapshot()`/``state_delta``/`restore` in the partition-state format, with
no pickle. DDM's state is five numbers. ADWIN's is its exponential histogram, which river 0.26
keeps in Rust (``river._river_rust.drift.AdaptiveWindowing``) and serialises with bincode for
pickling; we decode that byte layout into plain arrays (bucket totals and variances per level,
window counters) and encode it back on restore, checking that the round trip reproduces
river's bytes exactly. A restored detector therefore continues bit for bit like one that never
stopped. (Replaying the errors since the last reset instead was rejected: ADWIN's window has no
maximum length, so that buffer would grow with every stationary outcome, while the histogram
stays at ``(max_buckets + 1) * log2(width)`` entries.)

>>> import numpy as np
>>> from driftline.core.monitoring.label_join import OutcomeBatch, rows_by_model
>>> rng = np.random.default_rng(0)
>>> n = 20_000
>>> x = rng.normal(size=n)
>>> score = 1 / (1 + np.exp(-2 * x))
>>> flipped = np.arange(n) >= 10_000  # from here on, labels follow -x instead of x
>>> label = (rng.random(n) < np.where(flipped, 1 - score, score)).astype(np.int64)
>>> outcomes = OutcomeBatch(
...     event_id=np.array([f"e{i}" for i in range(n)]), event_time_ms=np.arange(n) * 1000,
...     label_time_ms=np.arange(n) * 1000 + 60_000, score=score, decision=score >= 0.5,
...     label=label, model_name=np.full(n, "fraud"), model_version=np.full(n, 3),
...     slices={}, inputs=np.zeros((n, 0)))
>>> monitor = ConceptDriftMonitor()
>>> [(a.detector, a.event_id) for a in monitor.update(outcomes).alarms]
[('adwin', 'e10047')]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from typing import Any

import numpy as np
import river
from river.drift import ADWIN
from river.drift.binary import DDM

from driftline.core.monitoring.label_join import OutcomeBatch, rows_by_model

STATE_FORMAT = 1
_EARLIEST, _LATEST = np.iinfo(np.int64).max, np.iinfo(np.int64).min  # an empty time window


class DetectorStateError(RuntimeError):
    """river's detector internals are not laid out as this module expects (another river?)."""


@dataclass(frozen=True)
class DetectorConfig:
    """Hyperparameters of the detectors, under river's names where river has them."""

    warmup: int = 1_000
    """Outcomes after each (re)start before DDM may alarm (its warm_start): DDM's baseline is
    the best error rate it has seen, which needs many outcomes to be trustworthy."""
    adwin_grace: int = 100
    """Outcomes after each (re)start before ADWIN may alarm (its grace_period; river's default
    is 10). ADWIN compares sub-windows with its own bound, so it needs no long warm-up, and a
    long one blinds it to a change that follows an alarm closely (bench/README.md)."""
    adwin_delta: float = 0.002
    adwin_clock: int = 32
    adwin_max_buckets: int = 5
    adwin_min_window_length: int = 5
    ddm_warning_threshold: float = 2.0
    ddm_drift_threshold: float = 5.0
    """river's default is 3.0. Measured on stationary streams, within 30,000 outcomes of a
    (re)start DDM false-alarms after 15-30% of restarts at 3.0, 3-7% at 4.0 and 0-3% at 5.0
    (docs/label-join-and-concept-drift.md); ADWIN stays the fast detector."""

    ddm_min_errors: int = 30
    """Errors since DDM's (re)start below which a DDM drift is not an alarm: DDM's test is a
    normal approximation of the binomial, meaningless on a handful of errors. At an error rate
    that was 0 over the warm-up (a model that is almost always right), river's DDM otherwise
    fires on the first error (p_min + k * s_min = 0). Such a firing resets DDM silently."""

    def as_array(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.float64)


@dataclass(frozen=True)
class DriftAlarm:
    """One concept-drift event of one model version."""

    detector: str  # "adwin" or "ddm"
    model_name: str
    model_version: int
    statistic: str  # what `before` and `after` measure
    before: float  # adwin: mean error of the older part of its window; ddm: best error rate
    after: float  # adwin: mean error of the recent part it kept; ddm: error rate since restart
    threshold: float  # adwin: its delta; ddm: the error rate + sd it had to exceed
    outcomes_since_reset: int  # including the alarming one
    recent_outcomes: int  # adwin: size of the recent part; ddm: outcomes since restart
    window_start_ms: int  # earliest event time among the outcomes since restart
    window_end_ms: int  # latest event time among them
    event_id: str  # the outcome that raised the alarm
    event_time_ms: int
    label_time_ms: int  # when the alarm could first be raised, in event time
    summary: str


@dataclass(frozen=True)
class ConceptResult:
    """What one `ConceptDriftMonitor.update` call produced."""

    alarms: list[DriftAlarm]
    state_delta: dict[str, np.ndarray]  # in `ConceptDriftMonitor.snapshot` format


def absolute_error(outcomes: OutcomeBatch) -> np.ndarray:
    """``|label - score|`` per outcome, what ADWIN is fed (scores are probabilities)."""
    return np.abs(outcomes.label - outcomes.score)


def decision_error(outcomes: OutcomeBatch) -> np.ndarray:
    """1 where the decision disagrees with the label, else 0: what DDM is fed."""
    return (outcomes.decision.astype(np.int64) != outcomes.label).astype(np.int64)


# ---------------------------------------------------------------- river state without pickle

# river 0.26's AdaptiveWindowing as bincode writes it (little-endian, fixed-width integers):
# delta f64, clock i32, max_buckets u64, min_window_length f64, grace_period f64, total,
# variance, width, total_width f64, n_buckets, max_n_buckets, tick, n_detections i32; then the
# bucket list (u64 length; per level max_size u64, current_idx u64, totals and variances as
# u64 length + f64s); then the constructor arguments again (f64, i32, u64, i32, i32).
_HEAD = struct.Struct("<diQddddddiiii")
_U64 = struct.Struct("<Q")
_LEVEL = struct.Struct("<QQ")
_TAIL = struct.Struct("<diQii")


def _adwin_fresh(config: DetectorConfig) -> ADWIN:
    return ADWIN(
        delta=config.adwin_delta,
        clock=config.adwin_clock,
        max_buckets=config.adwin_max_buckets,
        min_window_length=config.adwin_min_window_length,
        grace_period=config.adwin_grace,
    )


def _adwin_params(config: DetectorConfig) -> tuple[Any, ...]:
    return (config.adwin_delta, config.adwin_clock, config.adwin_max_buckets,
            config.adwin_min_window_length, config.adwin_grace)


def adwin_export(detector: ADWIN, config: DetectorConfig) -> dict[str, np.ndarray]:
    """ADWIN's window as arrays: ``scalars`` (total, variance, width, total_width),
    ``counters`` (n_buckets, max_n_buckets, tick, n_detections), and per histogram level
    ``bucket_count``, ``bucket_total`` and ``bucket_variance`` (level i sums 2**i errors)."""
    raw = detector._helper.__getstate__()
    slots = config.adwin_max_buckets + 1
    try:
        head = _HEAD.unpack_from(raw, 0)
        offset = _HEAD.size
        (levels,) = _U64.unpack_from(raw, offset)
        offset += _U64.size
        count = np.zeros(levels, dtype=np.int64)
        total = np.zeros((levels, slots))
        variance = np.zeros((levels, slots))
        for level in range(levels):
            size, count[level] = _LEVEL.unpack_from(raw, offset)
            offset += _LEVEL.size
            for out in (total, variance):
                (length,) = _U64.unpack_from(raw, offset)
                if size != config.adwin_max_buckets or length != slots:
                    raise ValueError(f"level {level} holds {size}/{length} slots")
                out[level] = np.frombuffer(raw, "<f8", slots, offset + _U64.size)
                offset += _U64.size + 8 * slots
        tail = _TAIL.unpack_from(raw, offset)
        offset += _TAIL.size
    except (struct.error, ValueError) as exc:
        raise _layout_error(str(exc)) from None
    params = _adwin_params(config)
    if offset != len(raw) or tail != params or head[:5] != (*params[:3], *map(float, params[3:])):
        raise _layout_error(f"{len(raw) - offset} bytes left over or parameters differ")
    return {
        "scalars": np.array(head[5:9], dtype=np.float64),
        "counters": np.array(head[9:13], dtype=np.int64),
        "bucket_count": count,
        "bucket_total": total,
        "bucket_variance": variance,
    }


def adwin_import(arrays: Mapping[str, np.ndarray], config: DetectorConfig) -> ADWIN:
    """The ADWIN that `adwin_export` described, continuing exactly where it stopped."""
    _check_adwin_layout(config)
    detector = _adwin_fresh(config)
    detector._helper.__setstate__(_adwin_bytes(arrays, config))
    return detector


def _adwin_bytes(arrays: Mapping[str, np.ndarray], config: DetectorConfig) -> bytes:
    params = _adwin_params(config)
    parts = [
        _HEAD.pack(*params[:3], *map(float, params[3:]),
                   *(float(v) for v in arrays["scalars"]), *(int(v) for v in arrays["counters"])),
        _U64.pack(len(arrays["bucket_count"])),
    ]
    for count, total, variance in zip(arrays["bucket_count"], arrays["bucket_total"],
                                      arrays["bucket_variance"], strict=True):
        parts.append(_LEVEL.pack(config.adwin_max_buckets, int(count)))
        for values in (total, variance):
            parts.append(_U64.pack(len(values)) + np.asarray(values, "<f8").tobytes())
    parts.append(_TAIL.pack(*params))
    return b"".join(parts)


_LAYOUT_CHECKED: set[DetectorConfig] = set()


def _check_adwin_layout(config: DetectorConfig) -> None:
    """Once per config and process: export then import must give back river's very bytes.
    Otherwise refuse, rather than hand river bytes it may misread (its decoder panics)."""
    if config in _LAYOUT_CHECKED:
        return
    probe = _adwin_fresh(config)
    for i in range(300):
        probe._helper.update((i % 7) / 7.0)
    raw = probe._helper.__getstate__()
    rebuilt = _adwin_fresh(config)
    try:
        rebuilt._helper.__setstate__(_adwin_bytes(adwin_export(probe, config), config))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic (pyo3 PanicException) is a BaseException
        raise _layout_error(f"river rejected the rebuilt state: {exc!r}") from None
    if rebuilt._helper.__getstate__() != raw:
        raise _layout_error("export and import do not reproduce river's bytes")
    _LAYOUT_CHECKED.add(config)


def _layout_error(detail: str) -> DetectorStateError:
    return DetectorStateError(
        f"river {river.__version__}'s ADWIN state is not laid out as this module expects "
        f"(written against river 0.26): {detail}"
    )


def _ddm_fresh(config: DetectorConfig) -> DDM:
    return DDM(warm_start=config.warmup, warning_threshold=config.ddm_warning_threshold,
               drift_threshold=config.ddm_drift_threshold)


def ddm_export(detector: DDM) -> dict[str, np.ndarray]:
    """DDM's state: ``scalars`` (n, mean error, p_min, s_min, p_min + s_min; NaN = not yet)
    and ``warning``."""
    try:
        values = (detector._p.n, detector._p._mean, detector._p_min, detector._s_min,
                  detector._ps_min)
    except AttributeError as exc:
        raise DetectorStateError(f"river {river.__version__}'s DDM has no {exc.name}") from None
    return {
        "scalars": np.array([math.nan if v is None else v for v in values], dtype=np.float64),
        "warning": np.array([detector._warning_detected], dtype=bool),
    }


def ddm_import(arrays: Mapping[str, np.ndarray], config: DetectorConfig) -> DDM:
    """The DDM that `ddm_export` described."""
    detector = _ddm_fresh(config)
    n, mean, p_min, s_min, ps_min = (float(v) for v in arrays["scalars"])
    detector._p.n, detector._p._mean = n, mean
    detector._p_min = None if math.isnan(p_min) else p_min
    detector._s_min = None if math.isnan(s_min) else s_min
    detector._ps_min = ps_min
    detector._warning_detected = bool(arrays["warning"][0])
    return detector


# ---------------------------------------------------------------- the monitor


@dataclass
class _ModelDetectors:
    """Both detectors of one model version and what happened since they (re)started."""

    adwin: ADWIN
    ddm: DDM
    seen: int = 0  # outcomes fed since the last (re)start
    first_ms: int = _EARLIEST  # earliest and latest event time among them
    last_ms: int = _LATEST
    since_ms: int = _LATEST  # outcomes of events before this are not fed (see `_restart`)
    outcomes: int = 0  # outcomes ever received, which orders the pieces of a restore
    alarms: dict[str, int] = field(default_factory=lambda: {"adwin": 0, "ddm": 0})


class ConceptDriftMonitor:
    """ADWIN and DDM per (model name, version) over outcome batches; see the module docstring."""

    FAMILIES = ("adwin", "ddm")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        if self.config.warmup < 1 or self.config.adwin_grace < 1:
            raise ValueError(f"warmup and adwin_grace must be >= 1, got {self.config.warmup} "
                             f"and {self.config.adwin_grace}")
        self._models: dict[tuple[str, int], _ModelDetectors] = {}

    @property
    def models(self) -> list[tuple[str, int]]:
        return sorted(self._models)

    def outcomes_since_reset(self, model_name: str, model_version: int) -> int:
        """Outcomes the model version's detectors were fed since they last (re)started."""
        return self._models[(model_name, model_version)].seen

    def error_estimate(self, model_name: str, model_version: int) -> float:
        """ADWIN's current estimate of the mean error |label - score| (its window's mean; NaN
        before the first outcome since the last restart)."""
        helper = self._models[(model_name, model_version)].adwin._helper
        width = helper.get_width()
        return helper.get_total() / width if width else math.nan

    def alarm_counts(self, model_name: str, model_version: int) -> dict[str, int]:
        return dict(self._models[(model_name, model_version)].alarms)

    def update(self, outcomes: OutcomeBatch) -> ConceptResult:
        """Feed a batch of outcomes, in order, to their model versions' detectors."""
        errors = absolute_error(outcomes)
        misses = decision_error(outcomes)
        found: list[tuple[int, int, DriftAlarm]] = []
        touched = []
        for key, rows in rows_by_model(outcomes.model_name, outcomes.model_version):
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = _ModelDetectors(_adwin_fresh(self.config),
                                                            _ddm_fresh(self.config))
            touched.append(key)
            for row, alarm in self._feed(key, model, outcomes, rows, errors, misses):
                found.append((row, self.FAMILIES.index(alarm.detector), alarm))
        found.sort(key=lambda item: item[:2])
        return ConceptResult([a for _, _, a in found], self._state_arrays(touched))

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every model version's detectors as plain arrays (``np.savez`` without pickle)."""
        return self._state_arrays(sorted(self._models))

    @classmethod
    def restore(
        cls, log: Sequence[Mapping[str, np.ndarray]], config: DetectorConfig | None = None
    ) -> ConceptDriftMonitor:
        """Rebuild from a snapshot and later `state_delta`s: per model version the piece that
        has seen the most outcomes wins, so the order of pieces and overlaps do not matter."""
        monitor = cls(config)
        for piece in log:
            monitor._apply(piece)
        return monitor

    # ------------------------------------------------------------ internals

    def _restart(self, model: _ModelDetectors, since_ms: int) -> None:
        """Fresh detectors that warm up again and take only outcomes of events at or after
        `since_ms`: after an alarm, labels still arriving for older events belong to the period
        the alarm already covered, and would teach the new baseline the old regime."""
        model.adwin, model.ddm = _adwin_fresh(self.config), _ddm_fresh(self.config)
        model.seen, model.first_ms, model.last_ms = 0, _EARLIEST, _LATEST
        model.since_ms = since_ms

    def _feed(
        self,
        key: tuple[str, int],
        model: _ModelDetectors,
        outcomes: OutcomeBatch,
        rows: np.ndarray,
        errors: np.ndarray,
        misses: np.ndarray,
    ) -> list[tuple[int, DriftAlarm]]:
        found = []
        model.outcomes += len(rows)
        while len(rows):
            rows = rows[outcomes.event_time_ms[rows] >= model.since_ms]
            total_before = model.adwin._helper.get_total()
            hit, adwin_hit, ddm_hit = _first_alarm(model.adwin, model.ddm, errors[rows],
                                                   misses[rows], self.config.ddm_min_errors)
            fed = rows if hit is None else rows[: hit + 1]
            if len(fed):
                times = outcomes.event_time_ms[fed]
                model.first_ms = min(model.first_ms, int(times.min()))
                model.last_ms = max(model.last_ms, int(times.max()))
                model.seen += len(fed)
            if hit is None:
                break
            row = int(rows[hit])
            window_sum = total_before + float(np.sum(errors[fed]))
            found += [(row, a) for a in self._alarms(key, model, outcomes, row, adwin_hit,
                                                     ddm_hit, window_sum)]
            self._restart(model, since_ms=int(outcomes.label_time_ms[row]))
            rows = rows[hit + 1 :]
        return found

    def _alarms(self, key: tuple[str, int], model: _ModelDetectors, outcomes: OutcomeBatch,
                row: int, adwin_hit: bool, ddm_hit: bool, window_sum: float
                ) -> list[DriftAlarm]:
        """The records of the alarm(s) the detectors just raised at `row`."""
        found = []
        helper, ddm, seen = model.adwin._helper, model.ddm, model.seen
        kept, kept_total = helper.get_width(), helper.get_total()  # the part ADWIN kept
        if adwin_hit:
            dropped = max(seen - kept, 1.0)  # an alarm always drops at least one bucket
            found.append(self._alarm(
                "adwin", key, "mean |label - score|", (window_sum - kept_total) / dropped,
                kept_total / kept if kept else math.nan, self.config.adwin_delta, model,
                int(kept), outcomes, row))
        if ddm_hit:
            found.append(self._alarm(
                "ddm", key, "error rate (decision != label)", ddm._p_min, ddm._p.get(),
                ddm._p_min + self.config.ddm_drift_threshold * ddm._s_min, model, seen,
                outcomes, row))
        for alarm in found:
            model.alarms[alarm.detector] += 1
        return found

    def _alarm(self, detector: str, key: tuple[str, int], statistic: str, before: float,
               after: float, threshold: float, model: _ModelDetectors, recent: int,
               outcomes: OutcomeBatch, row: int) -> DriftAlarm:
        name, version = key
        event_id = str(outcomes.event_id[row])
        summary = (
            f"{detector} on {name} v{version}: {statistic} {before:.4f} -> {after:.4f} "
            f"(threshold {threshold:.4g}) after {model.seen} outcomes since the last restart, "
            f"event times {model.first_ms}..{model.last_ms} ms; raised by outcome {event_id}"
        )
        return DriftAlarm(
            detector=detector, model_name=name, model_version=version, statistic=statistic,
            before=float(before), after=float(after), threshold=float(threshold),
            outcomes_since_reset=model.seen, recent_outcomes=recent,
            window_start_ms=model.first_ms, window_end_ms=model.last_ms, event_id=event_id,
            event_time_ms=int(outcomes.event_time_ms[row]),
            label_time_ms=int(outcomes.label_time_ms[row]), summary=summary,
        )

    def _state_arrays(self, keys: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
        models = [self._models[k] for k in keys]
        out = {
            "format": np.array([STATE_FORMAT], dtype=np.int64),
            "config": self.config.as_array(),
            "river_version": np.array([river.__version__]),
            "model_name": np.array([k[0] for k in keys], dtype=str).reshape(-1),
            "model_version": np.array([k[1] for k in keys], dtype=np.int64).reshape(-1),
            "outcomes": np.array([m.outcomes for m in models], dtype=np.int64).reshape(-1),
            "seen": np.array([m.seen for m in models], dtype=np.int64).reshape(-1),
            "times_ms": np.array([(m.first_ms, m.last_ms, m.since_ms) for m in models],
                                 dtype=np.int64).reshape(-1, 3),
            "alarms": np.array([[m.alarms[f] for f in self.FAMILIES] for m in models],
                               dtype=np.int64).reshape(-1, len(self.FAMILIES)),
        }
        out.update(_ragged("adwin", [adwin_export(m.adwin, self.config) for m in models]))
        out.update(_ragged("ddm", [ddm_export(m.ddm) for m in models]))
        return out

    def _apply(self, piece: Mapping[str, np.ndarray]) -> None:
        if int(piece["format"][0]) != STATE_FORMAT:
            raise ValueError(f"concept-drift state format {int(piece['format'][0])} is not "
                             f"{STATE_FORMAT}; it cannot be restored by this version")
        if not np.array_equal(piece["config"], self.config.as_array()):
            names = [f.name for f in fields(DetectorConfig)]
            stored = dict(zip(names, piece["config"].tolist(), strict=True))
            raise ValueError(f"state was written with {stored}, not {self.config}; restoring it "
                             "would not continue the same detectors")
        adwin = _unragged("adwin", piece)
        ddm = _unragged("ddm", piece)
        for k, (name, version) in enumerate(zip(piece["model_name"].tolist(),
                                                piece["model_version"].tolist(), strict=True)):
            key = (str(name), int(version))
            outcomes = int(piece["outcomes"][k])
            current = self._models.get(key)
            if current is not None and current.outcomes > outcomes:
                continue
            first, last, since = (int(v) for v in piece["times_ms"][k])
            self._models[key] = _ModelDetectors(
                adwin=adwin_import(adwin[k], self.config),
                ddm=ddm_import(ddm[k], self.config),
                seen=int(piece["seen"][k]),
                first_ms=first,
                last_ms=last,
                since_ms=since,
                outcomes=outcomes,
                alarms={f: int(n) for f, n in zip(self.FAMILIES, piece["alarms"][k], strict=True)},
            )


def _first_alarm(
    adwin: ADWIN, ddm: DDM, errors: np.ndarray, misses: np.ndarray, ddm_min_errors: int,
) -> tuple[int | None, bool, bool]:
    """Feed both detectors outcome by outcome up to the first alarm: its position (None if
    there was none) and which of ADWIN and DDM raised it. A DDM drift on fewer than
    `ddm_min_errors` errors is no alarm (river resets DDM on its next update)."""
    # river's ADWIN.update is `_helper.update` plus a reset on the call after a drift; callers
    # restart the detectors right after every alarm, so calling the helper is the same, faster.
    adwin_update, ddm_update = adwin._helper.update, ddm.update
    for i, (e, m) in enumerate(zip(errors.tolist(), misses.tolist(), strict=True)):
        hit = adwin_update(e)
        ddm_update(m)
        ddm_hit = ddm.drift_detected and ddm._p.get() * ddm._p.n >= ddm_min_errors
        if hit or ddm_hit:
            return i, hit, ddm_hit
    return None, False, False


def _ragged(family: str, pieces: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-detector arrays of any length, concatenated, with each detector's row count."""
    out = {}
    names = pieces[0].keys() if pieces else ()
    for name in names:
        arrays = [np.asarray(p[name]) for p in pieces]
        out[f"{family}.{name}"] = np.concatenate(arrays)
        out[f"{family}.{name}.rows"] = np.array([len(a) for a in arrays], dtype=np.int64)
    return out


def _unragged(family: str, piece: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    prefix = f"{family}."
    names = [k[len(prefix):] for k in piece if k.startswith(prefix) and not k.endswith(".rows")]
    detectors: list[dict[str, np.ndarray]] = [{} for _ in range(len(piece["model_name"]))]
    for name in names:
        bounds = np.cumsum(piece[f"{prefix}{name}.rows"])[:-1]
        for k, part in enumerate(np.split(piece[f"{prefix}{name}"], bounds)):
            detectors[k][name] = part
    return detectors
