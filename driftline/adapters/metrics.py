"""Prometheus metrics of every Driftline process, declared once.

Label values are bounded sets (topics, DLQ reason codes, view names), never entity ids, so the
series count stays small however many entities flow through.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily

MESSAGES_CONSUMED = Counter(
    "driftline_messages_consumed_total", "Kafka messages read, by topic", ["topic"])
RECORDS_DECODED = Counter(
    "driftline_records_decoded_total", "Records decoded and validated, by topic", ["topic"])
DEAD_LETTERS = Counter(
    "driftline_dead_letters_total",
    "Records sent to the dead-letter topic instead of being processed, by source and reason",
    ["topic", "reason"])
BATCH_SECONDS = Histogram(
    "driftline_batch_seconds", "Wall time to process one consumed batch, by stage",
    ["stage"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH_FAILURES = Counter(
    "driftline_batch_failures_total",
    "Batches whose processing failed and were retried from the last committed state",
    ["topic", "error"])
ONLINE_ROWS_OUTSIDE_PARTITION = Counter(
    "driftline_online_rows_outside_partition_total",
    "Online rows whose entity the configured partitioner places outside the partition that "
    "computed them (a producer with another partitioner or partition count); on a Redis "
    "Cluster they are written just after their batch's commit instead of in it, by view",
    ["view"])
FEATURE_ROWS = Counter(
    "driftline_feature_rows_total", "Per-event feature rows computed, by view", ["view"])
LATE_EVENTS = Counter(
    "driftline_late_events_total", "Events beyond allowed lateness, not applied, by view",
    ["view"])
STATE_ROWS = Gauge(
    "driftline_state_rows", "Window-state rows held in memory, by view", ["view"])
class BulkHistogram:
    """A Prometheus histogram fed a whole batch at once (``observe_many``).

    prometheus_client's ``observe`` costs ~2 us a call, as much as computing a feature row;
    here a batch is one ``searchsorted`` and one ``bincount``. Exposed like any histogram.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: +Inf
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        slots = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self.counts))
        with self._lock:
            self.counts += counts
            self.total += float(values.sum())

    def collect(self):
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.total
        family = HistogramMetricFamily(self.name, self.documentation)
        labels = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        family.add_metric([], list(zip(labels, cumulative.tolist(), strict=True)), total)
        yield family


CONSUMER_LAG = Gauge(
    "driftline_consumer_lag_messages", "Messages behind the high watermark, by topic and "
    "partition (needs a broker whose watermarks are right: not the embedded one)",
    ["topic", "partition"])
DEPENDENCY_ERRORS = Counter(
    "driftline_dependency_errors_total", "Failed batches by the dependency that failed them "
    "(redis, kafka, other); each batch is retried from the last committed state",
    ["dependency"])
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FEATURE_TO_PREDICTION_SECONDS = BulkHistogram(
    "driftline_feature_to_prediction_seconds",
    "From a feature record's Kafka append time to its prediction being produced and flushed",
    buckets=_LATENCY_BUCKETS)
LABEL_TO_OUTCOME_SECONDS = BulkHistogram(
    "driftline_label_to_outcome_seconds",
    "From a label's Kafka append time to the monitor committing the batch that joined it "
    "(the wait for the label itself is driftline_label_delay_seconds)",
    buckets=_LATENCY_BUCKETS)
EVENT_TO_STORE_SECONDS = BulkHistogram(
    "driftline_event_to_store_seconds",
    "From the event's Kafka append time to its features being committed to Redis",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PREDICTIONS = Counter(
    "driftline_predictions_total", "Predictions produced, by model, version and rollout arm "
    "(production, candidate; shadow: scored beside Production, published on the shadow topic "
    "only)", ["model", "version", "arm"])
ONLINE_REQUESTS = Counter(
    "driftline_online_requests_total", "Online /predict requests, by outcome status",
    ["status"])
ONLINE_SECONDS = Histogram(
    "driftline_online_predict_seconds", "Server-side latency of /predict",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
MODEL_SWAPS = Counter("driftline_model_swaps_total", "Hot swaps of the served model")
MODEL_INFO = Gauge(
    "driftline_model_info", "1 for each model version a scorer serves now, by rollout arm "
    "(production; candidate or shadow while a rollout runs)", ["model", "version", "arm"])

# -- the retrain controller ---------------------------------------------------------------------
RETRAIN_JOBS = Counter(
    "driftline_retrain_jobs_total", "Retraining jobs by how they ended (registered, rejected, "
    "failed) or started (started, retried)", ["model", "status"])
GATE_VALUE = Gauge(
    "driftline_gate_value", "The number each promotion gate measured in the model's last "
    "judged job", ["model", "gate"])
GATE_PASSED = Gauge(
    "driftline_gate_passed", "1 if the gate passed in the model's last judged job, 0 if not",
    ["model", "gate"])
ROLLOUT_SHARE = Gauge(
    "driftline_rollout_share", "The candidate's published share of entities while a rollout "
    "runs (0 for shadow; absent when none runs)", ["model", "kind"])
ROLLOUT_OUTCOMES = Gauge(
    "driftline_rollout_outcomes", "Outcomes counted per arm in the running rollout",
    ["model", "arm"])
ROLLOUT_ERRORS = Gauge(
    "driftline_rollout_errors", "Wrong decisions counted per arm in the running rollout",
    ["model", "arm"])

# -- the monitor --------------------------------------------------------------------------------
OUTCOMES = Counter(
    "driftline_outcomes_total", "Predictions joined with their label (outcomes)")
UNMATCHED = Gauge(
    "driftline_join_expired", "Predictions that expired unlabelled and labels that expired "
    "without a prediction, since the partition's join began", ["partition", "side"])
LABEL_COVERAGE = Gauge(
    "driftline_label_coverage_ratio",
    "Joined predictions / (joined + expired unlabelled), by partition", ["partition"])
JOIN_STATE_ROWS = Gauge(
    "driftline_join_state_rows", "Predictions, early labels and joined ids the label join "
    "holds, by partition", ["partition"])
LABEL_DELAY_SECONDS = BulkHistogram(
    "driftline_label_delay_seconds", "From a prediction's event time to its label's time",
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400))
DRIFT_EVENTS = Counter(
    "driftline_drift_events_total", "Drift events raised, by detector and kind",
    ["detector", "kind"])
DRIFT_STATISTIC = Gauge(
    "driftline_drift_statistic", "The latest value of each detector statistic: psi per "
    "subject (every model input, the score, the slices, the label), fairness_<metric>[_low|"
    "_high] per slice attribute, slice_<rate> per slice value (top values only), error_rate",
    ["model", "version", "statistic", "subject"])
DRIFT_ALARMING = Gauge(
    "driftline_drift_alarming", "1 while a detector's alarm on a subject is open (raised, not "
    "yet recovered)", ["model", "version", "detector", "subject"])


def exposition() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
