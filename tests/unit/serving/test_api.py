"""ScorerApi over HTTP (aiohttp's test server), with an in-memory online store.

Checks each endpoint's success body against independently computed values (scores from a fresh
onnxruntime session) and each refusal's status and exact message, as the integration tests
assert them against a real Redis. No pytest-asyncio: each request runs in ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from driftline.core.online import MemoryOnlineStore, OnlineWrite
from driftline.core.registry import ModelRegistry
from driftline.core.rollout import ServingPlan, bucket
from driftline.serving.api import ScorerApi
from driftline.serving.models import ModelHolder, ModelUnavailable
from tests.unit.serving.conftest import (
    MODEL,
    NAMES,
    THRESHOLD,
    VIEW,
    VIEWS,
    feature_rows,
    onnx_scores,
)

STREAM_OK = {"status": "ok", "lag": 0}
ROW = feature_rows(1, seed=11)[0]
ROW[[2, 5]] = np.nan  # undefined features: NaN in the store, null in JSON
FEATURES = {n: (None if math.isnan(v) else float(v)) for n, v in zip(NAMES, ROW, strict=True)}


def call(api: ScorerApi, method: str, path: str, body: Any = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    """One request against a fresh test server; the JSON body (or text) of the answer."""
    async def go():
        async with TestClient(TestServer(api.app())) as client:
            if raw is not None:
                resp = await client.request(method, path, data=raw,
                                            headers={"Content-Type": "application/json"})
            else:
                resp = await client.request(method, path, json=body)
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()
    return asyncio.run(go())


@pytest.fixture
def store() -> MemoryOnlineStore:
    store = MemoryOnlineStore()
    store.write(OnlineWrite(VIEW.name, VIEW.version, NAMES, ["card-1"], ROW[None, :], [123]))
    store.write(OnlineWrite(VIEW.name, "000000000000", NAMES, ["card-old"], ROW[None, :], [7]))
    return store


@pytest.fixture
def api(holder, store) -> ScorerApi:
    return ScorerApi(holder, store.reader(), lambda: dict(STREAM_OK))


@pytest.fixture
def no_model_api(store, tmp_path) -> ScorerApi:
    empty = ModelHolder(ModelRegistry(tmp_path / "empty"), MODEL, THRESHOLD, VIEWS)
    return ScorerApi(empty, store.reader(), lambda: dict(STREAM_OK))


# -- /predict ----------------------------------------------------------------------------------

def test_predict_by_entity_scores_the_stored_features(api, registry):
    status, body = call(api, "POST", "/predict", {"entity_id": "card-1"})
    assert status == 200, body
    expected = float(onnx_scores(registry, 1, ROW[None, :])[0])
    assert body["score"] == pytest.approx(expected, abs=1e-6)
    assert body["decision"] == (body["score"] >= THRESHOLD) and body["threshold"] == THRESHOLD
    assert {k: body[k] for k in ("model_name", "model_version", "view", "view_version",
                                 "source", "entity_id", "features_event_time")} == {
        "model_name": MODEL, "model_version": 1, "view": VIEW.name,
        "view_version": VIEW.version, "source": "online_store", "entity_id": "card-1",
        "features_event_time": 123}
    assert body["arm"] == "production" and body["latency_ms"] >= 0


def test_predict_by_explicit_features_scores_them(api, registry):
    status, body = call(api, "POST", "/predict", {"features": FEATURES})
    assert status == 200, body
    assert body["source"] == "request" and "entity_id" not in body
    assert body["score"] == pytest.approx(float(onnx_scores(registry, 1, ROW[None, :])[0]),
                                          abs=1e-6)
    other = feature_rows(1, seed=12)[0]
    status, body2 = call(api, "POST", "/predict",
                         {"features": dict(zip(NAMES, other.tolist(), strict=True))})
    assert status == 200
    assert body2["score"] == pytest.approx(float(onnx_scores(registry, 1, other[None, :])[0]),
                                           abs=1e-6)


def test_unknown_entity_is_404(api):
    assert call(api, "POST", "/predict", {"entity_id": "nobody"}) == (
        404, {"error": f"no online features for entity 'nobody' in view {VIEW.name}"})


def test_features_of_another_view_version_are_409(api):
    assert call(api, "POST", "/predict", {"entity_id": "card-old"}) == (409, {"error": (
        f"entity 'card-old' has features of {VIEW.name}@000000000000 but {MODEL} v1 takes "
        f"{VIEW.name}@{VIEW.version}")})


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "request body is not valid JSON"),
    (b"", "request body is missing: send a JSON object"),
    (b"[1, 2]", "request body must be a JSON object, got list"),
    (b'"card-1"', "request body must be a JSON object, got str"),
])
def test_a_body_that_is_not_a_json_object_is_400(api, raw, message):
    status, body = call(api, "POST", "/predict", raw=raw)
    assert status == 400 and body["error"].startswith(message), body


@pytest.mark.parametrize("body, message", [
    ({"entity": "x"}, "unknown field(s) ['entity']; allowed: entity_id, features"),
    ({}, "body needs either 'entity_id' (a string) or 'features' (an object of feature name "
         "-> number or null)"),
    ({"entity_id": ""}, "'entity_id' must be a non-empty string"),
    ({"entity_id": 5}, "'entity_id' must be a non-empty string"),
    ({"features": [1, 2]}, "'features' must be an object of feature name -> number or null"),
    ({"features": {"txn_count_5m": 1}},
     f"features do not match the model's inputs: missing {list(NAMES[1:])}"),
    ({"features": {**FEATURES, "bogus": 1}},
     "features do not match the model's inputs: unknown ['bogus']"),
    ({"features": {**FEATURES, "txn_count_5m": "many"}},
     "feature 'txn_count_5m' must be a finite number or null, got 'many'"),
    ({"features": {**FEATURES, "txn_count_5m": True}},
     "feature 'txn_count_5m' must be a finite number or null, got True"),
], ids=["unknown-field", "empty", "empty-entity", "entity-not-string", "features-not-object",
        "missing", "unknown-feature", "string-value", "bool-value"])
def test_invalid_requests_are_422_with_the_reason(api, body, message):
    assert call(api, "POST", "/predict", body) == (422, {"error": message})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_feature_values_are_422(api, literal):
    features = json.dumps({**FEATURES, "amount_sum_1h": 0}).replace(
        '"amount_sum_1h": 0', f'"amount_sum_1h": {literal}')
    status, body = call(api, "POST", "/predict", raw=f'{{"features": {features}}}'.encode())
    assert status == 422
    assert body["error"].startswith("feature 'amount_sum_1h' must be a finite number or null")


def test_store_outage_is_503_with_its_reason_but_explicit_features_still_score(api, store):
    store.unavailable = "online store unavailable: connection refused"
    assert call(api, "POST", "/predict", {"entity_id": "card-1"}) == (
        503, {"error": "online store unavailable: connection refused"})
    assert call(api, "GET", "/features/card-1") == (
        503, {"error": "online store unavailable: connection refused"})
    status, body = call(api, "POST", "/predict", {"features": FEATURES})
    assert status == 200 and body["model_version"] == 1


def test_without_a_model_predict_and_features_are_503(no_model_api):
    for method, path, body in (("POST", "/predict", {"entity_id": "card-1"}),
                               ("POST", "/predict", {"features": FEATURES}),
                               ("GET", "/features/card-1", None)):
        status, answer = call(no_model_api, method, path, body)
        assert status == 503, (path, answer)
        assert answer["error"] == ("no model to score with: no Production version of model "
                                   "'fraud' is loaded")


# -- /features, /health, /metrics, /openapi.json ----------------------------------------------

def test_features_returns_the_stored_values_with_nan_as_null(api):
    status, body = call(api, "GET", "/features/card-1")
    assert status == 200
    assert body == {"entity_id": "card-1", "view": VIEW.name, "view_version": VIEW.version,
                    "event_time": 123, "values": FEATURES}
    assert body["values"][NAMES[2]] is None and body["values"][NAMES[5]] is None
    assert call(api, "GET", "/features/nobody") == (
        404, {"error": f"no online features for entity 'nobody' in view {VIEW.name}"})


def test_health_is_200_with_a_model_and_503_without(api, no_model_api, holder, store):
    status, body = call(api, "GET", "/health")
    assert (status, body) == (200, {
        "status": "ok", "model_error": None, "stream": STREAM_OK, "rollout": None,
        "model": {"model_name": MODEL, "model_version": 1, "view": VIEW.name,
                  "view_version": VIEW.version}})
    status, body = call(no_model_api, "GET", "/health")
    assert status == 503 and body["status"] == "failing" and body["model"] is None
    failing = ScorerApi(holder, store.reader(), lambda: {"status": "failed", "error": "boom"})
    status, body = call(failing, "GET", "/health")
    assert status == 503 and body["status"] == "failing" and body["model"]["model_version"] == 1


def test_health_reports_the_last_model_error(registry_copy, store):
    registry_copy.model_path(MODEL, 1).write_bytes(b"garbage")
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    with pytest.raises(ModelUnavailable):
        holder.reload()
    status, body = call(ScorerApi(holder, store.reader(), lambda: STREAM_OK), "GET", "/health")
    assert status == 503 and body["model"] is None
    assert "fraud v1: cannot load model.onnx" in body["model_error"]


def test_metrics_count_predict_outcomes(api):
    call(api, "POST", "/predict", {"entity_id": "nobody"})
    status, text = call(api, "GET", "/metrics")
    assert status == 200
    counted = [line for line in text.splitlines()
               if line.startswith('driftline_online_requests_total{status="404"}')]
    assert counted and float(counted[0].split()[-1]) >= 1


def test_openapi_lists_every_route_of_the_app(api):
    status, spec = call(api, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    routes = {(r.resource.canonical, r.method.lower()) for r in api.app().router.routes()
              if r.method != "HEAD"}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == routes
    assert len(routes) == 6


# -- /model/reload -----------------------------------------------------------------------------

def test_reload_swaps_to_a_version_and_predict_uses_it(api, holder, registry):
    status, body = call(api, "POST", "/model/reload", {"version": 2})
    assert status == 200
    assert body["serving"]["model_version"] == 2 and body["previous"]["model_version"] == 1
    assert holder.current.version == 2
    status, body = call(api, "POST", "/predict", {"features": FEATURES})
    assert status == 200 and body["model_version"] == 2
    assert body["score"] == pytest.approx(float(onnx_scores(registry, 2, ROW[None, :])[0]),
                                          abs=1e-6)
    # No body: back to the Production version.
    status, body = call(api, "POST", "/model/reload")
    assert status == 200 and body["serving"]["model_version"] == 1


def test_a_refused_reload_is_409_and_the_old_model_keeps_serving(api, holder):
    before = holder.current
    status, body = call(api, "POST", "/model/reload", {"version": 99})
    assert status == 409 and "unknown model version fraud v99" in body["error"]
    assert body["serving"]["model_version"] == 1 and holder.current is before


@pytest.mark.parametrize("version", ["two", 0, -1, 1.5])
def test_reload_with_a_bad_version_is_422(api, holder, version):
    assert call(api, "POST", "/model/reload", {"version": version}) == (
        422, {"error": f"'version' must be a positive integer, got {version!r}"})
    assert holder.current.version == 1


# -- regressions: both were bugs found by these tests --

def test_reload_refuses_a_boolean_version(api, holder):
    holder.reload(2)
    status, body = call(api, "POST", "/model/reload", {"version": True})
    assert (status, holder.current.version) == (422, 2), body


def test_an_integer_too_large_for_a_double_is_422(api):
    features = json.dumps({**FEATURES, "amount_sum_1h": 0}).replace(
        '"amount_sum_1h": 0', '"amount_sum_1h": 1' + "0" * 400)
    status, body = call(api, "POST", "/predict", raw=f'{{"features": {features}}}'.encode())
    assert status == 422, body


# -- rollouts ----------------------------------------------------------------------------------

def test_during_a_canary_an_entity_is_answered_by_its_arm_and_features_by_production(
        registry_copy, store):
    entities = [f"card-r{i}" for i in range(40)]
    rows = feature_rows(len(entities), seed=13)
    store.write(OnlineWrite(VIEW.name, VIEW.version, NAMES, entities, rows, [5] * len(entities)))
    registry_copy.set_serving_plan(MODEL, ServingPlan(MODEL, "canary", 2, 0.5, "x").to_mapping())
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    holder.reload()
    api = ScorerApi(holder, store.reader(), lambda: dict(STREAM_OK))
    to_candidate = bucket(entities, "x") < 0.5
    assert 0 < to_candidate.sum() < len(entities)
    for entity, row, candidate in zip(entities, rows, to_candidate, strict=True):
        status, body = call(api, "POST", "/predict", {"entity_id": entity})
        version = 2 if candidate else 1
        assert status == 200, body
        assert (body["arm"], body["model_version"]) == \
            ("candidate" if candidate else "production", version)
        assert body["score"] == pytest.approx(
            float(onnx_scores(registry_copy, version, row[None, :])[0]), abs=1e-6)
    status, body = call(api, "POST", "/predict", {"features": FEATURES})
    assert (status, body["arm"], body["model_version"]) == (200, "production", 1)
    status, body = call(api, "GET", "/health")
    assert status == 200 and body["model"]["model_version"] == 1
    assert body["rollout"] == {"kind": "canary", "candidate_version": 2, "share": 0.5,
                               "salt": "x"}


def test_under_shadow_the_api_answers_with_production(registry_copy, store):
    registry_copy.set_serving_plan(MODEL, ServingPlan(MODEL, "shadow", 2, 0.0).to_mapping())
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    holder.reload()
    api = ScorerApi(holder, store.reader(), lambda: dict(STREAM_OK))
    status, body = call(api, "POST", "/predict", {"entity_id": "card-1"})
    assert (status, body["arm"], body["model_version"]) == (200, "production", 1)
    assert call(api, "GET", "/health")[1]["rollout"]["kind"] == "shadow"
