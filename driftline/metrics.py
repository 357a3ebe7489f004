"""Prometheus metrics of every Driftline process, declared once.

Label values are bounded sets (topics, DLQ reason codes, view names), never entity ids, so the
series count stays small however many entities flow through.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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
FEATURE_ROWS = Counter(
    "driftline_feature_rows_total", "Per-event feature rows computed, by view", ["view"])
LATE_EVENTS = Counter(
    "driftline_late_events_total", "Events beyond allowed lateness, not applied, by view",
    ["view"])
STATE_ROWS = Gauge(
    "driftline_state_rows", "Window-state rows held in memory, by view", ["view"])
EVENT_TO_STORE_SECONDS = Histogram(
    "driftline_event_to_store_seconds",
    "From the event's Kafka append time to its features being written to Redis",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PREDICTIONS = Counter(
    "driftline_predictions_total", "Predictions produced, by model and version",
    ["model", "version"])
ONLINE_REQUESTS = Counter(
    "driftline_online_requests_total", "Online /predict requests, by outcome status",
    ["status"])
ONLINE_SECONDS = Histogram(
    "driftline_online_predict_seconds", "Server-side latency of /predict",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
MODEL_SWAPS = Counter("driftline_model_swaps_total", "Hot swaps of the served model")


def exposition() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
