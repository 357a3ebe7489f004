"""A running scorer follows the registry's serving plan: canary routing, then a shadow.

The plan is written to the registry and announced with a ``driftline.ModelEvent``
(``rollout_started``), as the retrain controller does; the scorer reloads on the event. The
checking side reads the topics with raw confluent-kafka and fastavro and recomputes the arm of
every entity with the documented hash (``rollout.bucket``) and every score with onnxruntime.
"""

from __future__ import annotations

import io
import shutil
import time

import fastavro
import numpy as np
import pytest

from driftline.commands import local_servers
from driftline.core.codec.single_object import encode
from driftline.core.registry import ModelRegistry
from driftline.core.rollout import ServingPlan, bucket
from tests.integration.conftest import start_scorer_process
from tests.integration.helpers import avro_schema, consume_all, get_json, produce
from tests.integration.test_scoring import feature_records, onnx_scores, send

SALT = "fraud-it"


@pytest.fixture
def scorer_settings(settings, trained_registry):
    shutil.copytree(trained_registry, settings.data_dir / "registry")
    return settings.replace(scorer_port=local_servers.free_port(),
                            group_scorer=f"{settings.group_features}-scorer", batch_size=200)


@pytest.fixture
def scorer(scorer_settings, tmp_path):
    proc = start_scorer_process(scorer_settings, tmp_path / "logs")
    yield proc
    proc.stop()


def start_rollout(settings, scorer, plan: ServingPlan, timeout: float = 30.0) -> dict:
    """Write `plan` to the registry, announce it, and wait until the scorer's /health shows it.

    The scorer's model watcher reads ``driftline.models`` from the latest offset: an event sent
    before its partitions are assigned is covered by the reload it makes on assignment, but
    one sent in between could be missed, so the announcement is repeated until it is seen."""
    ModelRegistry(settings.data_dir / "registry").set_serving_plan(plan.model_name,
                                                                   plan.to_mapping())
    event = encode("driftline.ModelEvent", {
        "event": "rollout_started", "model_name": plan.model_name,
        "version": plan.candidate_version, "from_stage": "None", "to_stage": "None",
        "at": int(time.time() * 1000), "reason": f"{plan.kind} at share {plan.share}"})
    expected = {"kind": plan.kind, "candidate_version": plan.candidate_version,
                "share": plan.share, "salt": plan.salt}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        produce(settings.kafka_bootstrap, settings.topic_models, [(b"fraud", event)])
        for _ in range(15):
            health = get_json(f"{scorer.address}/health")
            if health["rollout"] == expected:
                return health
            time.sleep(0.2)
    raise AssertionError(f"the scorer never served {expected} (last /health: {health})")


def read(settings, topic: str, expected: int, timeout: float = 30.0) -> list[dict]:
    schema = avro_schema("Prediction")
    return [fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema)
            for m in consume_all(settings.kafka_bootstrap, topic, expected, timeout)]


def check_scores(settings, predictions: list[dict]) -> None:
    for version in {p["model_version"] for p in predictions}:
        mine = [p for p in predictions if p["model_version"] == version]
        np.testing.assert_allclose([p["score"] for p in mine], onnx_scores(settings, version, mine),
                                   rtol=1e-6, atol=1e-7)


def test_a_running_scorer_serves_a_canary_then_a_shadow(scorer_settings, scorer):
    s = scorer_settings
    assert get_json(f"{scorer.address}/health")["rollout"] is None

    # Canary at 0.5: each entity's records go to the arm its hash bucket says.
    health = start_rollout(s, scorer, ServingPlan("fraud", "canary", 2, 0.5, SALT))
    assert health["model"]["model_version"] == 1 and health["model_error"] is None
    canary = send(s, feature_records(600, seed=1))
    predictions = read(s, s.topic_predictions, len(canary))
    assert sorted(p["event_id"] for p in predictions) == sorted(r["event_id"] for r in canary)
    for p in predictions:
        candidate = bool(bucket([p["entity_id"]], SALT)[0] < 0.5)
        assert (p["arm"], p["model_version"]) == \
            (("candidate", 2) if candidate else ("production", 1)), p["entity_id"]
        assert p["latency_ms"] > 0
    assert {p["arm"] for p in predictions} == {"candidate", "production"}
    check_scores(s, predictions)

    # Shadow: Production publishes everything; v2's predictions go to the shadow topic only.
    start_rollout(s, scorer, ServingPlan("fraud", "shadow", 2, 0.0, SALT))
    shadowed = send(s, feature_records(400, start=10_000, seed=2))
    shadow = read(s, s.topic_shadow, len(shadowed))
    ids = sorted(r["event_id"] for r in shadowed)
    assert sorted(p["event_id"] for p in shadow) == ids
    assert {(p["arm"], p["model_version"]) for p in shadow} == {("shadow", 2)}
    # Flushed with the shadow predictions of the same batches: all there, and nothing else.
    published = read(s, s.topic_predictions, len(canary) + len(shadowed) + 1, timeout=4)
    later = [p for p in published if p["event_id"] in set(ids)]
    assert len(published) == len(canary) + len(shadowed)
    assert sorted(p["event_id"] for p in later) == ids
    assert {(p["arm"], p["model_version"]) for p in later} == {("production", 1)}
    check_scores(s, shadow + later)
    stream = get_json(f"{scorer.address}/health")["stream"]
    assert stream["predictions"] == len(canary) + len(shadowed)
    assert stream["shadow_predictions"] == len(shadowed)

    # The rollout ends: Production alone again.
    ModelRegistry(s.data_dir / "registry").set_serving_plan("fraud", None)
    produce(s.kafka_bootstrap, s.topic_models, [(b"fraud", encode("driftline.ModelEvent", {
        "event": "rolled_back", "model_name": "fraud", "version": 2, "from_stage": "None",
        "to_stage": "None", "at": int(time.time() * 1000)}))])
    deadline = time.monotonic() + 20
    while get_json(f"{scorer.address}/health")["rollout"] is not None:
        assert time.monotonic() < deadline, "the scorer kept the ended rollout"
        time.sleep(0.2)
