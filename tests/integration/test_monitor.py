"""The monitor service end to end: `driftline monitor` on the real broker and Redis.

The test writes the predictions itself, resampling the very rows the registered model was
trained on (so every statistic is stationary against the stored reference profile) and, from a
known point on, multiplying one input by five: exactly one drift event must name that input.
Labels follow (some before their prediction is read), plus bad ones for the DLQ; every label
must become exactly one outcome row in Parquet, across a kill -9 of the monitor.
"""

from __future__ import annotations

import io
import json
import signal
import urllib.request
import zlib

import fastavro
import numpy as np
import pytest
from confluent_kafka import Producer

from driftline.adapters.offline_store import OfflineStore
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.commands.training import demo_training_set
from driftline.core.codec.single_object import encode
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR
from tests.integration.conftest import start_monitor_process
from tests.integration.helpers import avro_schema, consume_all, get_json, metric_value, wait_for

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
SHIFTED = "amount_max_1h"
N, SHIFT_AT = 16_000, 8_000
T0 = 1_700_000_000_000


def stream(registry_root, seed: int = 5) -> tuple[list[dict], list[dict]]:
    """Predictions resampled from fraud v1's training rows (its profile's data), SHIFTED x5
    from SHIFT_AT on (scores from the unshifted rows), and one label per prediction."""
    generator = DemoGenerator(DemoConfig(seed=1))  # the fixture trained v1 on seed 1, 6000
    events = generator.events(6000)
    data = demo_training_set(VIEW, events, generator.labels_for(events))
    n_train = int(round(len(data.y) * 0.75))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_train, N)
    # Slices from other training rows: the same mix as in training, independent of the label,
    # so no slice gets a selection rate of its own (a real disparity the fairness check reports).
    slice_rows = rng.integers(0, n_train, N)
    X = data.X[rows]
    scores = predict_scores(load_session(ModelRegistry(registry_root).model_bytes("fraud", 1)), X)
    X = X.copy()
    X[SHIFT_AT:, VIEW.feature_names.index(SHIFTED)] *= 5
    predictions, labels = [], []
    for i in range(N):
        entity = f"card-{i % 97}"
        t = T0 + i * 1000
        predictions.append({
            "event_id": f"ev-{i}", "entity_id": entity, "event_time": t,
            "score": float(scores[i]), "decision": bool(scores[i] >= 0.5), "threshold": 0.5,
            "model_name": "fraud", "model_version": 1, "view": VIEW.name,
            "view_version": VIEW.version,
            "slices": {s: str(data.slices[s][slice_rows[i]]) for s in VIEW.slices},
            "inputs": {n: None if np.isnan(v) else float(v)
                       for n, v in zip(VIEW.feature_names, X[i], strict=True)},
            "arm": "production", "latency_ms": 0.25 * (i % 8)})
        labels.append({"event_id": f"ev-{i}", "entity_id": entity,
                       "label": int(data.y[rows[i]]), "label_time": t + 300_000})
    return predictions, labels


def produce(settings, topic: str, records: list[dict], schema: str) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for r in records:
        key = r["entity_id"].encode()
        producer.produce(topic, encode(schema, r), key=key,
                         partition=zlib.crc32(key) % settings.partitions)
    assert producer.flush(30) == 0


def drift_events(settings, expected: int, timeout: float = 10) -> list[dict]:
    messages = consume_all(settings.kafka_bootstrap, settings.topic_drift, expected, timeout)
    return [fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), avro_schema("DriftEvent"))
            for m in messages]


def outcomes(settings):
    store = OfflineStore(settings.data_dir / "offline")
    tables = [store.read(d).to_pandas() for d in store.outcomes_dirs()]
    import pandas as pd

    return pd.concat([t for t in tables if len(t)], ignore_index=True) if tables else None


@pytest.fixture
def monitor_settings(settings, trained_registry, tmp_path):
    (settings.data_dir).mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "registry").symlink_to(trained_registry)
    return settings


def check_outcomes(settings, labels: list[dict]) -> None:
    table = outcomes(settings)
    assert table is not None and len(table) == len(labels)
    assert not table["event_id"].duplicated().any()
    by_id = {label["event_id"]: label for label in labels}
    assert set(table["event_id"]) == set(by_id)
    row = table.iloc[0]
    label = by_id[row["event_id"]]
    assert row["label"] == label["label"] and row["label_time"] == label["label_time"]
    assert row["label_delay_ms"] == 300_000 and row["model_version"] == 1
    assert set(VIEW.feature_names) <= set(table.columns) and "segment" in table.columns
    # Each outcome carries its prediction's arm and latency (the stream's: 0.25 * (i % 8)).
    assert set(table["arm"]) == {"production"}
    number = table["event_id"].str.removeprefix("ev-").astype(int)
    assert (table["latency_ms"] == 0.25 * (number % 8)).all()


def test_a_shift_in_one_input_raises_one_drift_event_naming_it(monitor_settings, tmp_path):
    settings = monitor_settings
    predictions, labels = stream(settings.data_dir / "registry")
    bad = [b"not a label", json.dumps({**labels[0], "label": 7}).encode(),
           json.dumps({**labels[1], "event_id": "ev-future",
                       "label_time": 4_000_000_000_000}).encode()]
    produce(settings, settings.topic_predictions, predictions, "driftline.Prediction")
    proc = start_monitor_process(settings, tmp_path / "logs")
    try:
        produce(settings, settings.topic_labels, labels, "driftline.Label")
        from tests.integration.helpers import produce as produce_raw

        produce_raw(settings.kafka_bootstrap, settings.topic_labels,
                    [(b"card-0", value) for value in bad])
        wait_for(lambda: get_json(f"{proc.address}/health")["outcomes"] == N, timeout=120,
                 what=f"{N} outcomes")
        health = get_json(f"{proc.address}/health")
        metrics = urllib.request.urlopen(f"{proc.address}/metrics", timeout=5).read().decode()
    finally:
        proc.stop()
    events = drift_events(settings, health["drift_events"])
    assert [(e["detector"], e["kind"], e["subject"], e["details"]["summary"])
            for e in events] == [("psi", "feature", SHIFTED, events[0]["details"]["summary"])]
    assert health["detectors"] == "running" and health["drift_events"] == 1
    event = events[0]
    assert event["model_name"] == "fraud" and event["model_version"] == 1
    window_end_ms = round(event["window_end"].timestamp() * 1000)  # timestamp-millis
    assert window_end_ms >= T0 + SHIFT_AT * 1000, "no alarm before the change"
    assert event["statistic"] > event["threshold"]
    assert event["details"]["drift_id"].startswith(f"psi:fraud:1:{SHIFTED}:")
    check_outcomes(settings, labels)
    dead = consume_all(settings.kafka_bootstrap, settings.topic_dlq, 3, timeout=10)
    letters = sorted(fastavro.schemaless_reader(io.BytesIO(m.value()[10:]),
                                                avro_schema("DeadLetter"))["reason"]
                     for m in dead)
    assert letters == ["decode_error", "future_event_time", "validation_error"]
    assert metric_value(metrics, "driftline_outcomes_total") == N
    assert metric_value(metrics, "driftline_drift_events_total", detector="psi",
                        kind="feature") == 1
    assert metric_value(metrics, "driftline_drift_statistic", model="fraud", version="1",
                        statistic="psi", subject=SHIFTED) > 0.25
    assert metric_value(metrics, "driftline_drift_alarming", model="fraud", version="1",
                        detector="psi", subject=SHIFTED) == 1
    assert metric_value(metrics, "driftline_label_coverage_ratio", partition="0") == 1
    # Parity is supported (thousands of outcomes per segment); equal opportunity is not (about
    # 240 positives in all, under the 200 per value it needs), so it is not exported at all.
    assert metric_value(metrics, "driftline_drift_statistic", model="fraud", version="1",
                        statistic="fairness_demographic_parity_difference",
                        subject="segment") >= 0
    assert 'statistic="fairness_equal_opportunity_difference"' not in metrics


def test_kill_9_mid_stream_then_restart_keeps_outcomes_exact_and_repeats_no_event(
        monitor_settings, tmp_path):
    """Traffic arrives as it would live, chunk by chunk (predictions, then their labels); the
    monitor is killed after the drift event, restarted, and the stream goes on."""
    settings = monitor_settings.replace(batch_size=500)
    predictions, labels = stream(settings.data_dir / "registry", seed=6)
    chunk = 2_000
    proc = start_monitor_process(settings, tmp_path / "logs")
    try:
        for lo in range(0, N, chunk):
            if lo == SHIFT_AT + 2 * chunk:  # the alarm is out: kill -9, restart
                assert get_json(f"{proc.address}/health")["drift_events"] == 1
                proc.proc.send_signal(signal.SIGKILL)
                proc.proc.wait(10)
                proc.stop()
                proc = start_monitor_process(settings, tmp_path / "logs", name="monitor-2")
            produce(settings, settings.topic_predictions, predictions[lo:lo + chunk],
                    "driftline.Prediction")
            produce(settings, settings.topic_labels, labels[lo:lo + chunk], "driftline.Label")
            want = _expected_offsets(settings, predictions[:lo + chunk])
            wait_for(lambda want=want: _committed(settings, settings.topic_predictions) == want
                     == _committed(settings, settings.topic_labels),
                     timeout=120, what=f"the first {lo + chunk} of both topics committed")
    finally:
        proc.stop()
    check_outcomes(settings, labels)
    events = drift_events(settings, 1)
    ids = {e["details"]["drift_id"] for e in events}
    assert len(ids) == 1 and {e["subject"] for e in events} == {SHIFTED}, \
        [e["details"]["summary"] for e in events]


def _expected_offsets(settings, records: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in records:
        p = zlib.crc32(r["entity_id"].encode()) % settings.partitions
        counts[p] = counts.get(p, 0) + 1
    return counts


def _committed(settings, topic: str) -> dict[int, int]:
    from driftline.adapters.redis_client import connect
    from driftline.adapters.redis_layout import StateKeys

    # The monitor's state is cross-partition: its detectors span partitions (monitor_service).
    keys = StateKeys(settings.group_monitor, settings.topic_predictions, cross_partition=True)
    with connect(settings.redis_url) as client:
        raw = {p: client.hget(keys.offsets(p), topic) for p in range(settings.partitions)}
    return {p: int(v) for p, v in raw.items() if v is not None}
