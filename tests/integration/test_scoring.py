"""The scorer against a real broker and Redis: stream scoring, hot swap, HTTP API, refusals."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import fastavro
import numpy as np
import onnxruntime as ort
import pytest

from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.commands import local_servers
from driftline.core.codec.single_object import encode
from driftline.core.features import load_definitions
from driftline.core.online import OnlineWrite
from driftline.feature_defs import DEFINITIONS_DIR
from tests.integration.conftest import start_scorer_process
from tests.integration.helpers import avro_schema, consume_all, get_json, produce, wait_for

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
NAMES = list(VIEW.feature_names)


@pytest.fixture
def scorer_settings(settings, trained_registry):
    shutil.copytree(trained_registry, settings.data_dir / "registry")
    return settings.replace(scorer_port=local_servers.free_port(), group_scorer=
                            f"{settings.group_features}-scorer", batch_size=500)


@pytest.fixture
def scorer(scorer_settings, tmp_path):
    proc = start_scorer_process(scorer_settings, tmp_path / "logs")
    yield proc
    proc.stop()


def feature_records(n: int, start: int = 0, seed: int = 0, version: str | None = None):
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    values[rng.random((n, len(NAMES))) < 0.05] = np.nan
    for i in range(n):
        yield {"event_id": f"ev-{start + i}", "entity_id": f"card-{(start + i) % 97}",
               "event_time": 1_700_000_000_000 + start + i, "view": VIEW.name,
               "view_version": version or VIEW.version,
               "values": {k: (None if np.isnan(v) else float(v))
                          for k, v in zip(NAMES, values[i], strict=True)},
               "slices": {"segment": "student", "channel": "pos", "country": "DE"}}


def send(settings, records) -> list[dict]:
    records = list(records)
    produce(settings.kafka_bootstrap, settings.topic_features,
            [(r["entity_id"].encode(), encode("driftline.FeatureRecord", r)) for r in records])
    return records


def read_predictions(settings, expected: int, linger: float = 0.0) -> list[dict]:
    schema = avro_schema("Prediction")
    messages = consume_all(settings.kafka_bootstrap, settings.topic_predictions, expected, 60,
                           linger)
    out = []
    for m in messages:
        p = fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema)
        p["_partition"], p["_offset"] = m.partition(), m.offset()
        out.append(p)
    return out


def onnx_scores(settings, version: int, predictions: list[dict]) -> np.ndarray:
    """Independent recomputation: raw onnxruntime on the logged inputs of each prediction."""
    path = settings.data_dir / "registry" / "fraud" / "versions" / str(version) / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the scorer's setting; threads change float32 sum order
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    X = np.array([[np.nan if p["inputs"][n] is None else p["inputs"][n] for n in NAMES]
                  for p in predictions], dtype=np.float32)
    return session.run(["probabilities"], {"features": X})[0][:, 1]


def serving_version(scorer) -> int:
    return get_json(f"{scorer.address}/health")["model"]["model_version"]


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_every_record_gets_one_prediction_equal_to_onnxruntime(scorer_settings, scorer):
    s = scorer_settings
    good = send(s, feature_records(3000))
    send(s, feature_records(5, start=10_000, version="000000000000"))
    produce(s.kafka_bootstrap, s.topic_features, [(b"x", b"\x00\x01garbage")])
    predictions = read_predictions(s, len(good))
    assert sorted(p["event_id"] for p in predictions) == sorted(r["event_id"] for r in good)
    assert {p["model_version"] for p in predictions} == {1}
    by_id = {r["event_id"]: r for r in good}
    for p in predictions[:50]:
        assert p["inputs"] == by_id[p["event_id"]]["values"]
        assert p["slices"]["segment"] == "student" and p["view_version"] == VIEW.version
    np.testing.assert_allclose([p["score"] for p in predictions],
                               onnx_scores(s, 1, predictions), rtol=1e-6, atol=1e-7)
    assert all(p["decision"] == (p["score"] >= p["threshold"]) for p in predictions)
    dead = consume_all(s.kafka_bootstrap, s.topic_dlq, 6)
    reasons = sorted(fastavro.schemaless_reader(io.BytesIO(m.value()[10:]),
                                                avro_schema("DeadLetter"))["reason"]
                     for m in dead)
    assert reasons == ["decode_error"] + ["view_mismatch"] * 5
    # No duplicates: once every input record is committed (predictions are flushed before
    # their inputs commit), the topic holds exactly one prediction per good record.
    sent = len(good) + 5 + 1  # the good records, the other version's five, the garbage
    wait_for(lambda: get_json(f"{scorer.address}/health")["stream"]["messages"] == sent,
             timeout=30, what="every input record to be committed")
    assert len(read_predictions(s, len(good), linger=2.0)) == len(good)


def test_promotion_under_load_switches_cleanly_and_rollback_too(scorer_settings, scorer):
    s = scorer_settings
    env = local_servers.child_env(s.to_env())
    sent: list[dict] = []
    swapped = threading.Event()

    def producer():
        # Keep records flowing until well after the scorer reports the new version.
        k, after = 0, 0
        while after < 4 and k < 400:
            sent.extend(send(s, feature_records(500, start=k * 500, seed=k)))
            k += 1
            after += swapped.is_set()
            time.sleep(0.1)

    thread = threading.Thread(target=producer)
    thread.start()
    while len(sent) < 3000:
        time.sleep(0.05)
    promoted = subprocess.run(local_servers.python_argv("models", "promote", "fraud", "2"), env=env,
                              capture_output=True, text=True, timeout=60)
    assert promoted.returncode == 0, promoted.stderr
    wait_for(lambda: serving_version(scorer) == 2, timeout=30, interval=0.05,
             what="the promotion to be picked up")
    swapped.set()
    thread.join()
    total = len(sent)
    predictions = read_predictions(s, total)
    ids = [p["event_id"] for p in predictions]
    assert len(ids) == total == len(set(ids)), "a record lost or scored twice"
    versions = {p["model_version"] for p in predictions}
    assert versions == {1, 2}
    for part in {p["_partition"] for p in predictions}:
        seq = [p["model_version"] for p in sorted(predictions, key=lambda p: p["_offset"])
               if p["_partition"] == part]
        assert seq == sorted(seq), f"partition {part} went back to v1 after v2: no clean switch"
    for version in (1, 2):
        mine = [p for p in predictions if p["model_version"] == version]
        np.testing.assert_allclose([p["score"] for p in mine], onnx_scores(s, version, mine),
                                   rtol=1e-6, atol=1e-7)
    assert serving_version(scorer) == 2
    rolled = subprocess.run(local_servers.python_argv("models", "rollback", "fraud"), env=env,
                            capture_output=True, text=True, timeout=60)
    assert rolled.returncode == 0, rolled.stderr
    wait_for(lambda: serving_version(scorer) == 1, timeout=20, what="the rollback")


def test_http_api_scores_refuses_precisely_and_keeps_serving(scorer_settings, scorer,
                                                              redis_client):
    s, url = scorer_settings, scorer.address
    record = next(feature_records(1, seed=3))
    status, body = post(f"{url}/predict", {"features": record["values"]})
    assert status == 200 and body["model_version"] == 1
    expected = onnx_scores(s, 1, [{"inputs": record["values"]}])[0]
    assert body["score"] == pytest.approx(expected, rel=1e-6)
    # Features from the online store.
    store = RedisOnlineStore(redis_client, 60, OnlineKeys.for_settings(s))
    row = np.array([[np.nan if record["values"][n] is None else record["values"][n]
                     for n in NAMES]])
    store.write(OnlineWrite(VIEW.name, VIEW.version, tuple(NAMES), ["card-http"], row, [123]))
    status, online = post(f"{url}/predict", {"entity_id": "card-http"})
    assert status == 200 and online["score"] == pytest.approx(body["score"], rel=1e-6)
    assert online["features_event_time"] == 123 and online["source"] == "online_store"
    assert get_json(f"{url}/features/card-http")["view_version"] == VIEW.version
    # Precise refusals.
    cases = [
        ({"entity_id": "nobody"}, None, 404, "no online features for entity 'nobody'"),
        (None, b"{not json", 400, "not valid JSON"),
        ([1, 2], None, 400, "must be a JSON object"),
        ({"features": {"txn_count_5m": 1}}, None, 422, "missing"),
        ({"features": {**record["values"], "bogus": 1}}, None, 422, "unknown ['bogus']"),
        ({"features": {**record["values"], "txn_count_5m": "many"}}, None, 422,
         "'txn_count_5m' must be a finite number"),
        ({"entity": "x"}, None, 422, "unknown field(s) ['entity']"),
        ({}, None, 422, "needs either 'entity_id'"),
    ]
    for body_in, raw, want_status, fragment in cases:
        status, err = post(f"{url}/predict", body_in, raw)
        assert status == want_status and fragment in err["error"], (body_in, status, err)
    spec = get_json(f"{url}/openapi.json")
    assert {"/predict", "/health", "/features/{entity_id}", "/metrics", "/model/reload"} <= \
        set(spec["paths"])


def test_bad_models_are_refused_and_the_old_one_keeps_serving(scorer_settings, scorer):
    from driftline.core.registry import ModelRegistry

    s, url = scorer_settings, scorer.address
    registry = ModelRegistry(s.data_dir / "registry")
    onnx_bytes = registry.model_bytes("fraud", 1)
    drifted = registry.register("fraud", onnx_bytes, view=VIEW.name, view_version="0123456789ab",
                                inputs=NAMES, training_range=(0, 1), metrics={}, parent=1,
                                created_at_ms=5)
    status, body = post(f"{url}/model/reload", {"version": drifted.version})
    assert status == 409 and "feature schema drift" in body["error"]
    assert body["serving"]["model_version"] == 1
    corrupt = registry.register("fraud", onnx_bytes, view=VIEW.name, view_version=VIEW.version,
                                inputs=NAMES, training_range=(0, 1), metrics={}, parent=1,
                                created_at_ms=6)
    registry.model_path("fraud", corrupt.version).write_bytes(b"\x08\x01garbage")
    status, body = post(f"{url}/model/reload", {"version": corrupt.version})
    assert status == 409 and "sha256" in body["error"]
    status, body = post(f"{url}/model/reload", {"version": "two"})
    assert status == 422
    status, body = post(f"{url}/predict", {"features": next(feature_records(1))["values"]})
    assert status == 200 and body["model_version"] == 1
    status, body = post(f"{url}/model/reload", {"version": 2})
    assert status == 200 and body["serving"]["model_version"] == 2


def test_redis_down_gives_503_with_reason_quickly(scorer_settings, tmp_path):
    redis_proc = local_servers.start_redis(tmp_path / "own-redis")
    s = scorer_settings.replace(redis_url=redis_proc.address)
    proc = start_scorer_process(s, tmp_path / "logs")
    try:
        redis_proc.stop()
        started = time.monotonic()
        status, body = post(f"{proc.address}/predict", {"entity_id": "card-1"})
        elapsed = time.monotonic() - started
        assert status == 503 and "online store unavailable" in body["error"]
        assert elapsed < 2.0
        status, _ = post(f"{proc.address}/predict",
                         {"features": next(feature_records(1))["values"]})
        assert status == 200, "explicit features need no Redis"
    finally:
        proc.stop()
        redis_proc.stop()
