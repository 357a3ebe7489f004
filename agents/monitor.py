"""The monitor: predictions and delayed labels in, outcomes, detector statistics and drift
events out (`driftline monitor`).

It reads ``driftline.predictions`` and ``driftline.labels`` together (both keyed by entity, so
partition p of each holds the same entities) in batches, and per consumed batch:

1. decodes both (labels in any accepted encoding; a bad one, or one whose ``label_time`` the
   event-time guard refuses, goes to the DLQ with its reason);
2. per partition, the core :class:`LabelJoin` joins labels to predictions by ``event_id``
   within the horizon; the joined pairs (outcomes) are written to Parquet as pending files
   (``offline/outcomes``: logged inputs + label, the retraining job's training data);
3. the core :class:`Monitor` (every detector) sees the batch's predictions and outcomes;
   its alarms are produced to ``driftline.drift`` as ``driftline.DriftEvent`` records, keyed by
   model name, each with a deterministic ``drift_id``;
4. one transaction of the partition state commits each partition's join delta, the detectors'
   state and both topics' offsets; then the Parquet files are published.

The detectors need one view of each model's whole stream, so they live in the process that owns
partition 0 and their state is a store of partition 0: run one monitor per consumer group (a
second one takes some partitions, whose outcomes it joins and stores, but the detectors then see
only partition 0's owner's share, which ``/health`` reports). Drift events are at-least-once:
a crash between their delivery and the commit produces them again with the same ``drift_id``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import (
    BATCH_SECONDS,
    DRIFT_ALARMING,
    DRIFT_EVENTS,
    DRIFT_STATISTIC,
    JOIN_STATE_ROWS,
    LABEL_COVERAGE,
    LABEL_DELAY_SECONDS,
    LABEL_TO_OUTCOME_SECONDS,
    OUTCOMES,
    UNMATCHED,
)
from driftline.adapters.offline_store import OfflineStore
from driftline.agents.ingest import decode_or_dead_letter
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.event_time import EventTimeGuard
from driftline.core.monitoring.history import DriftMark, GapReading, StatusHistory
from driftline.core.monitoring.label_join import (
    LabelBatch,
    LabelJoin,
    OutcomeBatch,
    PredictionBatch,
)
from driftline.core.monitoring.monitor import (
    LABEL,
    LABEL_THRESHOLDS,
    Alarm,
    Monitor,
    MonitorConfig,
    Profiles,
)
from driftline.core.state import PartitionState
from driftline.core.status_page import StatusData

log = logging.getLogger(__name__)

HOME = 0  # the partition whose state holds the detectors
MAX_SLICE_VALUES = 10  # slice values per attribute exported as metric labels (cardinality cap)
JOIN, DETECTORS = "join", "detectors"


# Every (detector, kind) a drift event can carry (driftline.core.monitoring.monitor).
DETECTOR_KINDS = (("psi", "feature"), ("psi", "score"), ("psi", "slice"), ("psi", "label"),
                  ("fairness", "fairness"), ("adwin", "error"), ("ddm", "error"))


@dataclass(frozen=True)
class MonitorTopics:
    predictions: str
    labels: str
    drift: str


class MonitorStage:
    """The :class:`BatchPipeline` of the monitor; see the module docstring."""

    def __init__(self, topics: MonitorTopics, state: PartitionState, offline: OfflineStore,
                 producer: CheckedProducer, dead_letters: DeadLetterSink, schemas: SchemaSet,
                 profiles: Profiles, input_names: Sequence[str], slice_names: Sequence[str],
                 horizon_ms: int, label_guard: EventTimeGuard | None,
                 clock_ms: Callable[[], int], prediction_decoder: Decoder,
                 label_decoder: Decoder) -> None:
        for detector, kind in DETECTOR_KINDS:  # at 0 from the start, so increase() sees the first
            DRIFT_EVENTS.labels(detector, kind)
        self.topics = topics
        self.state = state
        self.offline = offline
        self.producer = producer
        self.dead_letters = dead_letters
        self.schemas = schemas
        self.profiles = profiles
        self.input_names = tuple(input_names)
        self.slice_names = tuple(slice_names)
        self.horizon_ms = horizon_ms
        self.label_guard = label_guard
        self.clock_ms = clock_ms
        self.decoders = {topics.predictions: prediction_decoder, topics.labels: label_decoder}
        self.joins: dict[int, LabelJoin] = {}
        self.monitor: Monitor | None = None  # while partition 0 is ours
        self.outcomes = 0
        self.alarms = 0
        self.predictions = 0
        # The status page's history: written by the batch thread, read by the web handler.
        self.history = StatusHistory()
        self._status_lock = threading.Lock()
        self._active: set[tuple[str, int]] = set()  # versions with data since the last point
        self._seen: dict[tuple[str, int], int] = {}  # version -> when it last had data

    def stats(self) -> dict[str, object]:
        owned = sorted(self.joins)
        return {"outcomes": self.outcomes, "drift_events": self.alarms,
                "dead_letters": self.dead_letters.sent,
                "detectors": "running" if self.monitor is not None else
                f"not here: partition {HOME} is owned by another monitor",
                "partitions": owned}

    # -- rebalance ---------------------------------------------------------------------------
    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        assigned = set(partitions)
        numbers = sorted({p.partition for p in assigned})
        resume: dict[PartitionId, int] = {}
        for p, restored in self.state.assign(numbers).items():
            log_ = restored.logs[JOIN]
            self.joins[p] = LabelJoin.restore(log_, self.input_names, self.slice_names,
                                              self.horizon_ms) if log_ else \
                LabelJoin(self.input_names, self.slice_names, self.horizon_ms)
            if p == HOME:
                detectors = restored.logs[DETECTORS]
                self.monitor = Monitor.restore(detectors[-1], self.profiles,
                                               input_names=self.input_names,
                                               slice_names=self.slice_names) if detectors \
                    else Monitor(self.profiles, input_names=self.input_names,
                                 slice_names=self.slice_names)
            for topic, offset in restored.offsets.items():
                if PartitionId(topic, p) in assigned:
                    resume[PartitionId(topic, p)] = offset
        return resume

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        numbers = sorted({p.partition for p in partitions})
        for p in numbers:
            self.joins.pop(p, None)
            if p == HOME:
                self.monitor = None
        self.state.revoke(numbers)

    # -- processing --------------------------------------------------------------------------
    def process(self, batches: Sequence[MessageBatch]) -> None:
        start = time.perf_counter()
        batches = [b for b in batches if b.messages]
        if not batches:
            return
        if self.monitor is not None:
            for key in getattr(self.profiles, "changed", list)():
                log.warning("reference profile of %s v%d replaced: its PSI windows start afresh",
                            *key)
                self.monitor.reload_profile(key)
        decoded = {(b.topic, b.partition): self._decode(b) for b in batches}
        partitions = sorted({b.partition for b in batches})
        home = [HOME] if self.monitor is not None and HOME not in partitions else []
        txn = self.state.begin([*partitions, *home])
        alarms: list[Alarm] = []
        for p in partitions:
            predictions = PredictionBatch.from_records(
                decoded.get((self.topics.predictions, p), []), self.input_names,
                self.slice_names)
            labels = LabelBatch.from_records(decoded.get((self.topics.labels, p), []))
            join = self.joins[p]
            result = join.process(predictions, labels)
            self.state.append(txn, p, JOIN, result.state_delta, join.snapshot)
            txn.pending += self._archive(p, result.outcomes, batches, txn.epochs[p])
            if self.monitor is not None:
                alarms += self.monitor.observe(predictions, result.outcomes)
            self._count(p, result.outcomes, join)
            self.predictions += len(predictions)
            for batch in (predictions, result.outcomes):
                self._active.update(zip(batch.model_name.tolist(),
                                        batch.model_version.tolist(), strict=True))
        for b in batches:
            txn.consumed(b.topic, b.partition, b.messages[0].offset(), b.messages[-1].offset())
        if self.monitor is not None:
            snapshot = self.monitor.snapshot()
            self.state.append(txn, HOME, DETECTORS, snapshot, lambda: snapshot)
            self._export(self.monitor)
        for alarm in alarms:
            self.producer.produce(self.topics.drift, encode("driftline.DriftEvent",
                                                            alarm.as_record(), self.schemas),
                                  key=alarm.model_name.encode())
            DRIFT_EVENTS.labels(alarm.detector, alarm.kind).inc()
            log.warning("drift: %s", alarm.summary)
        self.producer.flush_or_raise()
        self.state.commit(txn)  # the commit point; then the outcome files are published
        label_times = [m.timestamp()[1] for b in batches if b.topic == self.topics.labels
                       for m in b.messages]
        if label_times:
            LABEL_TO_OUTCOME_SECONDS.observe_many(
                time.time() - np.asarray(label_times, dtype=np.float64) / 1000)
        self.alarms += len(alarms)
        self._remember(alarms)
        BATCH_SECONDS.labels("monitor").observe(time.perf_counter() - start)

    def _decode(self, batch: MessageBatch) -> list[dict]:
        """The batch's valid records, in offset order; the others dead-lettered (labels also
        when the event-time guard refuses their ``label_time``)."""
        guard = self.label_guard if batch.topic == self.topics.labels else None
        _, records = decode_or_dead_letter(batch.messages, self.decoders[batch.topic],
                                           self.dead_letters, guard, self.clock_ms)
        return records

    def _archive(self, p: int, outcomes: OutcomeBatch, batches: Sequence[MessageBatch],
                 epoch: int) -> list:
        """Outcome files of partition p, named by the labels' consumed offsets if this batch
        had labels of p, else by the predictions' (see :class:`AllPending`). A row per
        outcome: its columns (the prediction's rollout ``arm`` and ``latency_ms`` among them),
        its label delay and partition, a column per slice and one per input."""
        if not len(outcomes):
            return []
        by_topic = {b.topic: b for b in batches if b.partition == p}
        topic = self.topics.labels if self.topics.labels in by_topic else self.topics.predictions
        messages = by_topic[topic].messages
        columns: dict[str, object] = {
            "event_id": outcomes.event_id.tolist(), "event_time": outcomes.event_time_ms,
            "label_time": outcomes.label_time_ms, "label_delay_ms": outcomes.label_delay_ms,
            "score": outcomes.score, "decision": outcomes.decision, "label": outcomes.label,
            "model_name": outcomes.model_name.tolist(), "model_version": outcomes.model_version,
            "arm": outcomes.arm.tolist(), "latency_ms": outcomes.latency_ms,
            "partition": np.full(len(outcomes), p, dtype=np.int32),
        }
        for s in self.slice_names:
            columns[s] = outcomes.slices[s].tolist()
        for j, name in enumerate(self.input_names):
            columns[name] = outcomes.inputs[:, j]
        return self.offline.write(self.offline.outcomes_dir(topic), p, columns, epoch,
                                  span=(messages[0].offset(), messages[-1].offset()))

    def _count(self, p: int, outcomes: OutcomeBatch, join: LabelJoin) -> None:
        self.outcomes += len(outcomes)
        OUTCOMES.inc(len(outcomes))
        if len(outcomes):
            LABEL_DELAY_SECONDS.observe_many(np.maximum(outcomes.label_delay_ms, 0) / 1000)
        totals = join.totals
        UNMATCHED.labels(str(p), "prediction").set(totals.predictions_expired)
        UNMATCHED.labels(str(p), "label").set(totals.labels_expired)
        LABEL_COVERAGE.labels(str(p)).set(totals.coverage)
        JOIN_STATE_ROWS.labels(str(p)).set(sum(join.state_rows.values()))

    def _export(self, monitor: Monitor) -> None:
        """The detectors' statistics as gauges, replaced whole (a slice value that left the
        exported top values leaves no stale series)."""
        DRIFT_STATISTIC.clear()
        for s in monitor.statistics(MAX_SLICE_VALUES):
            if np.isfinite(s.value):
                DRIFT_STATISTIC.labels(s.model_name, str(s.model_version), s.statistic,
                                       s.subject).set(s.value)
        DRIFT_ALARMING.clear()
        for name, version, detector, subject in monitor.alarming():
            DRIFT_ALARMING.labels(name, str(version), detector, subject).set(1)

    # -- the status page ----------------------------------------------------------------------
    def _remember(self, alarms: Sequence[Alarm]) -> None:
        """Committed PSI, fairness gaps and drift events into the status page's history. PSI
        only of the versions that had predictions or outcomes since the last point (a replaced
        version's lines end where its traffic did), gaps of those that had some in the last
        hour."""
        now = self.clock_ms()
        monitor = self.monitor
        self._seen.update(dict.fromkeys(self._active, now))
        recent = {k for k, at in self._seen.items() if now - at <= self.history.max_age_ms}
        psi = {} if monitor is None else {
            (name, version, subject): value for name, version, subject, value in monitor.psi()
            if (name, version) in self._active}
        gaps = None if monitor is None else [
            GapReading(name, number, g.attribute, g.metric, g.statistic, g.low, g.high,
                       g.threshold, g.values, g.compared)
            for (name, number), version in sorted(monitor.versions.items())
            if version.report is not None and (name, number) in recent
            for g in version.report.gaps]
        with self._status_lock:
            if self.history.record(now, psi, self.predictions, self.outcomes):
                self._active.clear()
            if gaps is not None:
                self.history.set_gaps(gaps)
            for a in alarms:
                self.history.add_drift(DriftMark(
                    a.drift_id, now, a.detector, a.kind, a.subject, float(a.statistic),
                    float(a.threshold), a.model_name, a.model_version, a.detected_at_ms,
                    a.severity, a.summary))

    def status(self, now_ms: int | None = None) -> StatusData:
        """The detectors' part of the status page at `now_ms` (default: the stage's clock);
        ``agents/status.py`` adds the registry, the retrain controller's jobs and the lag."""
        now_ms = self.clock_ms() if now_ms is None else now_ms
        config = self.monitor.config if self.monitor is not None else MonitorConfig()
        thresholds = config.psi.thresholds
        label = config.label_psi.overrides.get(LABEL, LABEL_THRESHOLDS)
        with self._status_lock:
            history = self.history
            return StatusData(
                now_ms=now_ms, window_ms=history.max_age_ms, points=history.points(now_ms),
                marks=history.drift_marks(), gaps=history.gaps,
                psi_thresholds=(thresholds.warn, thresholds.drift),
                label_thresholds=(label.warn, label.drift),
                rates=history.rates(now_ms, self.predictions, self.outcomes),
                predictions=self.predictions, outcomes=self.outcomes,
                detectors=str(self.stats()["detectors"]))
