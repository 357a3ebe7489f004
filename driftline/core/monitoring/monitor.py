"""Every detector of the monitor behind one object: predictions and outcomes in, alarms out.

Per model version (the name and version each prediction carries):

* **data drift**: a :class:`PsiMonitor` over the version's predictions (every model input, the
  score and the slice attributes) against the reference profile stored with the version, and
  one over its outcomes' labels (label drift); a version registered without a profile is
  counted in ``unprofiled`` and not compared;
* **fairness**: a :class:`FairnessMonitor` over its outcomes, per slice attribute;

and, over all outcomes, a :class:`ConceptDriftMonitor` (ADWIN on the error, DDM on the binary
error) that keeps its own detectors per model version.

Each detector already de-duplicates (one alarm per sustained change) and is calibrated to its
share of the false-alarm budget (docs/data-drift.md, docs/fairness.md,
docs/label-join-and-concept-drift.md). This module adds no decision of its own: it routes
batches, turns each detector's event into one :class:`Alarm` (the fields of
``schemas/DriftEvent.avsc``) and keeps the state of all of them as one snapshot, small enough to
be written whole with every committed batch (``snapshot``/``restore``), so a restarted monitor
continues exactly where the last commit left it. Pure: no clock, no I/O; profiles come from
the ``profiles`` callable the service passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from driftline.core.monitoring.concept import ConceptDriftMonitor, DetectorConfig, DriftAlarm
from driftline.core.monitoring.fairness import (
    FairnessConfig,
    FairnessEvent,
    FairnessMonitor,
    FairnessReport,
    export_values,
)
from driftline.core.monitoring.label_join import OutcomeBatch, PredictionBatch, rows_by_model
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.monitoring.psi import DriftEvent, MonitorSettings, PsiMonitor, Thresholds

LABEL = "label"
# A rare positive class barely moves PSI (a 5% -> 10% positive rate is a PSI of 0.037), so the
# label's thresholds are lower than the features' by default (docs/data-drift.md).
LABEL_THRESHOLDS = Thresholds(warn=0.02, drift=0.05)

Profiles = Callable[[str, int], "ReferenceProfile | None"]


@dataclass(frozen=True)
class MonitorConfig:
    """The settings of every detector family; defaults are the documented ones (the fairness
    attributes default to the view's slice attributes, see `Monitor`)."""

    # The two PSI monitors of a version share one false-alarm budget (docs/data-drift.md).
    psi: MonitorSettings = field(default_factory=lambda: MonitorSettings(budget_share=0.5))
    label_psi: MonitorSettings = field(default_factory=lambda: MonitorSettings(
        overrides={LABEL: LABEL_THRESHOLDS}, budget_share=0.5))
    fairness: FairnessConfig | None = field(default_factory=FairnessConfig)  # None: no slices
    concept: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(frozen=True)
class Alarm:
    """One drift event, detector-independent: the fields of ``driftline.DriftEvent``."""

    detector: str  # psi | adwin | ddm | fairness
    kind: str  # feature | score | slice | label | error | fairness
    subject: str
    statistic: float
    threshold: float
    model_name: str
    model_version: int
    window_start_ms: int
    window_end_ms: int
    detected_at_ms: int  # event time at which the detector fired
    severity: str
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def drift_id(self) -> str:
        """Deterministic: the same alarm replayed after a crash has the same id."""
        return (f"{self.detector}:{self.model_name}:{self.model_version}:{self.subject}:"
                f"{self.detected_at_ms}")

    def as_record(self) -> dict[str, object]:
        """A ``driftline.DriftEvent`` record."""
        return {
            "detector": self.detector, "kind": self.kind, "subject": self.subject,
            "statistic": float(self.statistic), "threshold": float(self.threshold),
            "model_name": self.model_name, "model_version": int(self.model_version),
            "window_start": int(self.window_start_ms), "window_end": int(self.window_end_ms),
            "detected_at": int(self.detected_at_ms),
            "details": {"drift_id": self.drift_id, "severity": self.severity,
                        "summary": self.summary, **self.details},
        }


@dataclass
class _Version:
    """The per-version detectors; `psi` and `label_psi` are None without a profile."""

    psi: PsiMonitor | None
    label_psi: PsiMonitor | None
    fairness: FairnessMonitor | None  # None when the view declares no slice attributes
    report: FairnessReport | None = None  # the last fairness evaluation


@dataclass(frozen=True)
class Statistic:
    """One detector statistic for the metrics: ``statistic`` names what, ``subject`` of what."""

    model_name: str
    model_version: int
    statistic: str
    subject: str
    value: float


class Monitor:
    """All detectors of one monitor; see the module docstring."""

    def __init__(self, profiles: Profiles, config: MonitorConfig | None = None,
                 input_names: Sequence[str] = (), slice_names: Sequence[str] = ()) -> None:
        self.profiles = profiles
        self.config = config or MonitorConfig(
            fairness=FairnessConfig(attributes=tuple(slice_names)) if slice_names else None)
        self.input_names = tuple(input_names)
        self.slice_names = tuple(slice_names)
        self.concept = ConceptDriftMonitor(self.config.concept)
        self.versions: dict[tuple[str, int], _Version] = {}
        self.unprofiled = 0  # predictions of versions without a reference profile
        self.warnings = 0  # PSI past its warn threshold, not (yet) its drift threshold

    # -- the stream -------------------------------------------------------------------------
    def observe(self, predictions: PredictionBatch, outcomes: OutcomeBatch) -> list[Alarm]:
        """Feed one batch (predictions in arrival order, outcomes in join order); returns the
        alarms it raised, data drift first, then label drift, fairness and concept drift."""
        alarms: list[Alarm] = []
        for key, rows in rows_by_model(predictions.model_name, predictions.model_version):
            version = self._version(key)
            if version.psi is None:
                self.unprofiled += len(rows)
                continue
            columns = {name: predictions.inputs[rows, j]
                       for j, name in enumerate(self.input_names)}
            columns["score"] = predictions.score[rows]
            for s in self.slice_names:
                columns[s] = predictions.slices[s][rows]
            step = version.psi.update(columns, predictions.event_time_ms[rows])
            alarms += self._psi_alarms(step.events, key)
        for key, rows in rows_by_model(outcomes.model_name, outcomes.model_version):
            version = self._version(key)
            if version.label_psi is not None:
                step = version.label_psi.update({LABEL: outcomes.label[rows]},
                                                outcomes.event_time_ms[rows])
                alarms += self._psi_alarms(step.events, key)
            if version.fairness is not None:
                version.fairness.update(outcomes.event_time_ms[rows], outcomes.decision[rows],
                                        outcomes.label[rows],
                                        {a: outcomes.slices[a][rows]
                                         for a in self.config.fairness.attributes})
                report = version.report = version.fairness.evaluate()
                alarms += [_fairness_alarm(e, key) for e in report.events
                           if e.kind == "alarm"]
        if len(outcomes):
            alarms += [_concept_alarm(a) for a in self.concept.update(outcomes).alarms]
        return alarms

    def _psi_alarms(self, events: Sequence[DriftEvent], key: tuple[str, int]) -> list[Alarm]:
        """Drift-level PSI events; a warn-level one is counted (and its PSI is a metric) but is
        no drift event, so one sustained change is one event, not a warning then a drift."""
        self.warnings += sum(e.severity != "drift" for e in events)
        return [_psi_alarm(e, key) for e in events if e.severity == "drift"]

    def reload_profile(self, key: tuple[str, int]) -> None:
        """The version's reference profile was replaced (``driftline reference rebase``): its
        data-drift windows start afresh against the new one; fairness and concept state stay."""
        version = self.versions.get(key)
        if version is not None:
            fresh = self._fresh(key)
            version.psi, version.label_psi = fresh.psi, fresh.label_psi

    def _version(self, key: tuple[str, int]) -> _Version:
        version = self.versions.get(key)
        if version is None:
            version = self.versions[key] = self._fresh(key)
        return version

    def _fresh(self, key: tuple[str, int]) -> _Version:
        profile = self.profiles(*key)
        fairness = FairnessMonitor(self.config.fairness) if self.config.fairness else None
        if profile is None:
            return _Version(None, None, fairness)
        inputs = [n for n in profile.names if n != LABEL]
        label = PsiMonitor(profile.select([LABEL]), self.config.label_psi) \
            if LABEL in profile.names else None
        return _Version(PsiMonitor(profile.select(inputs), self.config.psi), label, fairness)

    # -- what the metrics show ----------------------------------------------------------------
    def psi(self) -> Iterator[tuple[str, int, str, float]]:
        """(model, version, subject, PSI at its last evaluation) for every compared subject."""
        for (name, number), version in sorted(self.versions.items()):
            for monitor in (version.psi, version.label_psi):
                if monitor is not None:
                    for subject, value in monitor.latest().items():
                        yield name, number, subject, value

    def statistics(self, max_slice_values: int = 10) -> Iterator[Statistic]:
        """Every statistic the detectors hold, for Prometheus: PSI per subject, each fairness
        gap with its interval (``fairness_<metric>``, ``_low``, ``_high`` per attribute), the
        rates of at most `max_slice_values` values per attribute (those in an alarm first, then
        the largest), and ADWIN's current mean error per version. NaN ones are left out."""
        for name, number, subject, value in self.psi():
            yield Statistic(name, number, "psi", subject, value)
        for (name, number), version in sorted(self.versions.items()):
            report = version.report
            if report is not None:
                for gap in report.gaps:
                    for suffix, value in (("", gap.statistic), ("_low", gap.low),
                                          ("_high", gap.high)):
                        yield Statistic(name, number, f"fairness_{gap.metric}{suffix}",
                                        gap.attribute, value)
                shown = export_values(report, max_slice_values) if report.slices else {}
                for stats in report.slices:
                    if stats.value in shown.get(stats.attribute, ()):
                        subject = f"{stats.attribute}={stats.value}"
                        for rate in ("selection_rate", "tpr", "fpr", "accuracy"):
                            yield Statistic(name, number, f"slice_{rate}", subject,
                                            getattr(stats, rate).value)
            if (name, number) in self.concept.models:
                yield Statistic(name, number, "error_rate", "adwin_window",
                                self.concept.error_estimate(name, number))

    def alarming(self) -> Iterator[tuple[str, int, str, str]]:
        """(model, version, detector, subject) of every open episode (alarmed, not recovered)."""
        for (name, number), version in sorted(self.versions.items()):
            for monitor in (version.psi, version.label_psi):
                if monitor is not None:
                    for subject in monitor.alarming():
                        yield name, number, "psi", subject
            if version.report is not None:
                for alarm in version.report.open_alarms:
                    yield name, number, "fairness", f"{alarm.attribute}={alarm.value}"

    # -- state --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Every detector's state as one flat dict of plain arrays (``np.savez``, no pickle)."""
        out: dict[str, np.ndarray] = {
            "unprofiled": np.array([self.unprofiled], np.int64),
            "warnings": np.array([self.warnings], np.int64)}
        keys = sorted(self.versions)
        out["versions.name"] = np.array([k[0] for k in keys], dtype=str)
        out["versions.number"] = np.array([k[1] for k in keys], dtype=np.int64)
        for i, key in enumerate(keys):
            version = self.versions[key]
            for part, monitor in (("psi", version.psi), ("label_psi", version.label_psi),
                                  ("fairness", version.fairness)):
                if monitor is not None:
                    out.update(_prefixed(f"v{i}.{part}.", monitor.snapshot()))
        out.update(_prefixed("concept.", self.concept.snapshot()))
        return out

    @classmethod
    def restore(cls, snapshot: Mapping[str, np.ndarray], profiles: Profiles,
                config: MonitorConfig | None = None, input_names: Sequence[str] = (),
                slice_names: Sequence[str] = ()) -> Monitor:
        """The monitor `snapshot` was taken of. A version whose profile was replaced since
        (``driftline reference rebase``) starts its data-drift windows afresh."""
        monitor = cls(profiles, config, input_names, slice_names)
        monitor.unprofiled = int(snapshot["unprofiled"][0])
        monitor.warnings = int(snapshot["warnings"][0])
        names, numbers = snapshot["versions.name"], snapshot["versions.number"]
        for i, key in enumerate(zip(names.tolist(), numbers.tolist(), strict=True)):
            version = monitor.versions[key] = monitor._fresh(key)
            if version.fairness is not None:
                version.fairness = FairnessMonitor.restore(
                    monitor.config.fairness, [_unprefixed(f"v{i}.fairness.", snapshot)])
            for part in ("psi", "label_psi"):
                current = getattr(version, part)
                piece = _unprefixed(f"v{i}.{part}.", snapshot)
                if current is not None and piece:
                    try:
                        setattr(version, part, PsiMonitor.restore(
                            current.profile, [piece], current.settings))
                    except ValueError:  # state of another profile: the reference was rebased
                        pass
        concept = _unprefixed("concept.", snapshot)
        if concept:
            monitor.concept = ConceptDriftMonitor.restore([concept], monitor.config.concept)
        return monitor


def _prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {prefix + k: v for k, v in arrays.items()}


def _unprefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _psi_alarm(e: DriftEvent, key: tuple[str, int]) -> Alarm:
    return Alarm(
        detector="psi", kind=e.kind, subject=e.subject, statistic=e.statistic,
        threshold=e.threshold, model_name=key[0], model_version=key[1],
        window_start_ms=e.window_start_ms, window_end_ms=e.window_end_ms,
        detected_at_ms=e.window_end_ms, severity=e.severity, summary=e.summary,
        details={"critical": f"{e.critical:.6g}", "unseen": str(e.unseen),
                 "missing": str(e.missing),
                 "outcomes": f"{e.first_outcome}..{e.last_outcome}"})


def _fairness_alarm(e: FairnessEvent, key: tuple[str, int]) -> Alarm:
    return Alarm(
        detector="fairness", kind="fairness", subject=e.subject, statistic=e.statistic,
        threshold=e.threshold, model_name=key[0], model_version=key[1],
        window_start_ms=e.window_start_ms, window_end_ms=e.window_end_ms,
        detected_at_ms=e.window_end_ms, severity=e.severity, summary=e.summary,
        details={"metric": e.metric, "metrics": ",".join(e.metrics), "rate": e.rate,
                 "counterpart": e.counterpart,
                 "interval": f"{e.interval[0]:.6g},{e.interval[1]:.6g}"})


def _concept_alarm(a: DriftAlarm) -> Alarm:
    return Alarm(
        detector=a.detector, kind="error", subject=a.statistic, statistic=a.after,
        threshold=a.threshold, model_name=a.model_name, model_version=a.model_version,
        window_start_ms=a.window_start_ms, window_end_ms=a.window_end_ms,
        detected_at_ms=a.label_time_ms, severity="drift", summary=a.summary,
        details={"before": f"{a.before:.6g}", "after": f"{a.after:.6g}",
                 "outcomes_since_reset": str(a.outcomes_since_reset),
                 "recent_outcomes": str(a.recent_outcomes), "event_id": a.event_id})
