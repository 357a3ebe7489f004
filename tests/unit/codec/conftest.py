"""One valid sample record per Driftline schema, shared by the codec tests."""

from __future__ import annotations

from typing import Any

import pytest

from driftline.core.codec import SchemaSet

T0 = 1_700_000_000_123

SAMPLES: dict[str, dict[str, Any]] = {
    "driftline.TransactionEvent": {
        "event_id": "ev-1",
        "entity_id": "card-1",
        "event_time": T0,
        "amount": 42.5,
        "merchant_id": "m-7",
        "channel": "online",
        "country": "GB",
        "segment": "student",
    },
    "driftline.Label": {"event_id": "ev-1", "entity_id": "card-1", "label": 1, "label_time": T0},
    "driftline.FeatureRecord": {
        "event_id": "ev-1",
        "entity_id": "card-1",
        "event_time": T0,
        "view": "card_activity",
        "view_version": "3",
        "values": {"amount_sum_1h": 120.0, "distinct_merchants_1d": None},
        "slices": {"segment": "student", "channel": "online"},
    },
    "driftline.Prediction": {
        "event_id": "ev-1",
        "entity_id": "card-1",
        "event_time": T0,
        "score": 0.91,
        "decision": True,
        "threshold": 0.5,
        "model_name": "fraud",
        "model_version": 4,
        "view": "card_activity",
        "view_version": "3",
        "slices": {"segment": "student"},
        "inputs": {"amount": 42.5, "amount_sum_1h": None},
        "arm": "candidate",
        "latency_ms": 1.25,
    },
    "driftline.DriftEvent": {
        "detector": "psi",
        "kind": "feature",
        "subject": "amount",
        "statistic": 0.31,
        "threshold": 0.2,
        "model_name": "fraud",
        "model_version": 4,
        "window_start": T0 - 3_600_000,
        "window_end": T0,
        "detected_at": T0,
        "details": {"bins": "10"},
    },
    "driftline.ModelEvent": {
        "event": "promoted",
        "model_name": "fraud",
        "version": 5,
        "from_stage": "Staging",
        "to_stage": "Production",
        "at": T0,
        "reason": "retrained after drift",
        "job_id": "fraud-1700000000000-a1b2c3",
        "drift_ids": ["d-1", "d-2"],
        "parent_version": 4,
        "training_range_start": T0 - 3_600_000,
        "training_range_end": T0,
        "details": {"share": "1"},
    },
    "driftline.DeadLetter": {
        "source_topic": "driftline.events",
        "source_partition": 3,
        "source_offset": 2**40,
        "key": b"card-1",
        "original": b"\x00\xffGARBAGE",
        "reason": "decode_error",
        "detail": "unrecognised encoding",
        "failed_at": T0,
    },
}


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return SchemaSet.load()


@pytest.fixture
def event() -> dict[str, Any]:
    return dict(SAMPLES["driftline.TransactionEvent"])
