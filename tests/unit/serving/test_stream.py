"""ScoringPipeline without a broker: one prediction per feature record, refusals to the DLQ.

Predictions and dead letters are read back from the produced bytes with fastavro and the
checked-in schemas (not Driftline's codec), and every score is recomputed with a fresh
onnxruntime session on the registered model bytes. Records without nulls take the fast path,
records with a null the generic decoder; a batch holds both.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import numpy as np
import pytest

from driftline.adapters.dead_letters import DeadLetterSink
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import DECODE_ERROR, VIEW_MISMATCH
from driftline.core.codec.feature_records import FeatureRecordReader
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.registry import ModelRegistry
from driftline.serving.models import ModelHolder, ModelUnavailable
from driftline.serving.stream import ScoringPipeline
from tests.fakes import RecordingProducer, batches, messages
from tests.unit.serving.conftest import MODEL, NAMES, THRESHOLD, VIEW, VIEWS, onnx_scores

FEATURES, PREDICTIONS, DLQ = "t.features", "t.predictions", "t.dlq"
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"
SCHEMAS = SchemaSet.load()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SLICES = {"segment": "student", "channel": "pos", "country": "DE"}


def avro_schema(name: str):
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def read_all(values: list[bytes], schema_name: str) -> list[dict]:
    """Decode single-object messages (10-byte header skipped); timestamps as epoch ms."""
    schema = avro_schema(schema_name)
    out = []
    for v in values:
        record = fastavro.schemaless_reader(io.BytesIO(v[10:]), schema)
        out.append({k: (x - EPOCH) // timedelta(milliseconds=1) if isinstance(x, datetime)
                    else x for k, x in record.items()})
    return out


def records(n: int, start: int = 0, seed: int = 0, view_version: str = VIEW.version):
    """Feature records; about one in four has a null value, and about one in five its values
    map in reverse order (a layout the fast reader leaves to the generic path)."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    X[rng.random(n) < 0.25, rng.integers(0, len(NAMES))] = np.nan
    generic = rng.random(n) < 0.2
    return [{"event_id": f"ev-{start + i}", "entity_id": f"card-{(start + i) % 7}",
             "event_time": 1_700_000_000_000 + start + i, "view": VIEW.name,
             "view_version": view_version,
             "values": dict(list({k: (None if np.isnan(v) else float(v))
                                  for k, v in zip(NAMES, row, strict=True)}.items())
                            [::-1 if generic[i] else 1]),
             "slices": dict(SLICES, segment=f"s{(start + i) % 3}")}
            for i, row in enumerate(X)]


def on_partition(partition: int, recs: list[dict], extra: list[bytes] = ()):
    values = [encode("driftline.FeatureRecord", r) for r in recs] + list(extra)
    keys = [r["entity_id"].encode() for r in recs] + [b"bad"] * len(extra)
    return messages(FEATURES, partition, values, keys=keys)


def pipeline(holder: ModelHolder) -> tuple[ScoringPipeline, RecordingProducer]:
    producer = RecordingProducer()
    return ScoringPipeline(holder, Decoder("driftline.FeatureRecord", SCHEMAS), producer,
                           DeadLetterSink(producer, DLQ, SCHEMAS), PREDICTIONS), producer


def inputs_matrix(predictions: list[dict]) -> np.ndarray:
    return np.array([[np.nan if p["inputs"][n] is None else p["inputs"][n] for n in NAMES]
                     for p in predictions])


def test_every_record_gets_one_prediction_equal_to_onnxruntime(holder, registry):
    part0, part1 = records(40, start=0, seed=1), records(35, start=100, seed=2)
    sent = part0 + part1
    fast = FeatureRecordReader(VIEW.name, VIEW.version, NAMES, SCHEMAS).read(
        [encode("driftline.FeatureRecord", r) for r in sent])
    assert 0 < len(fast.index) < len(sent), "the batch must exercise both paths"
    scorer, producer = pipeline(holder)

    scorer.process(batches(on_partition(0, part0), on_partition(1, part1)))

    assert producer.on(DLQ) == [] and producer.flushes == 1
    produced = producer.on(PREDICTIONS)
    predictions = read_all([v for v, _ in produced], "Prediction")
    assert sorted(p["event_id"] for p in predictions) == sorted(r["event_id"] for r in sent)
    by_id = {r["event_id"]: r for r in sent}
    for (_, key), p in zip(produced, predictions, strict=True):
        r = by_id[p["event_id"]]
        assert key == r["entity_id"].encode()
        assert (p["entity_id"], p["event_time"], p["slices"]) == \
            (r["entity_id"], r["event_time"], r["slices"])
        assert p["inputs"] == r["values"]
        assert (p["model_name"], p["model_version"], p["view"], p["view_version"]) == \
            (MODEL, 1, VIEW.name, VIEW.version)
        assert p["threshold"] == THRESHOLD and p["decision"] == (p["score"] >= THRESHOLD)
    scores = np.array([p["score"] for p in predictions])
    np.testing.assert_allclose(scores, onnx_scores(registry, 1, inputs_matrix(predictions)),
                               rtol=0, atol=1e-6)
    assert np.ptp(scores) > 1e-3, "scores must vary, or the comparison proves little"
    assert {p["arm"] for p in predictions} == {"production"}
    assert all(p["latency_ms"] > 0 for p in predictions)
    assert scorer.stats() == {"predictions": len(sent), "shadow_predictions": 0,
                              "dead_letters": 0}


def test_other_view_versions_and_garbage_go_to_the_dlq_and_the_rest_is_scored(holder):
    good0, good1 = records(30, seed=3), records(30, start=50, seed=4)
    stale = records(4, start=900, view_version="000000000000")
    truncated = encode("driftline.FeatureRecord", records(1, start=999)[0])[:30]
    garbage = [b"\x00\x01garbage", truncated]
    scorer, producer = pipeline(holder)
    batch0 = on_partition(0, good0 + stale[:2], extra=garbage[:1])
    batch1 = on_partition(1, stale[2:] + good1, extra=garbage[1:])

    scorer.process(batches(batch0, batch1))

    predictions = read_all([v for v, _ in producer.on(PREDICTIONS)], "Prediction")
    assert sorted(p["event_id"] for p in predictions) == \
        sorted(r["event_id"] for r in good0 + good1)
    dead = sorted(read_all([v for v, _ in producer.on(DLQ)], "DeadLetter"),
                  key=lambda d: (d["source_partition"], d["source_offset"]))
    sources = {(m.partition(), m.offset()): m for m in batch0 + batch1}
    assert [(d["source_partition"], d["source_offset"], d["reason"]) for d in dead] == [
        (0, 30, VIEW_MISMATCH), (0, 31, VIEW_MISMATCH), (0, 32, DECODE_ERROR),
        (1, 0, VIEW_MISMATCH), (1, 1, VIEW_MISMATCH), (1, 32, DECODE_ERROR)]
    for d in dead:
        source = sources[(d["source_partition"], d["source_offset"])]
        assert d["source_topic"] == FEATURES
        assert d["original"] == source.value() and d["key"] == source.key()
    mismatch = next(d for d in dead if d["reason"] == VIEW_MISMATCH)["detail"]
    assert mismatch == (f"record computed by {VIEW.name}@000000000000 but {MODEL} v1 takes "
                        f"{VIEW.name}@{VIEW.version}")
    assert "no schema registry is configured" in dead[2]["detail"]
    assert "is truncated" in dead[5]["detail"]
    assert scorer.stats() == {"predictions": 60, "shadow_predictions": 0, "dead_letters": 6}


def test_without_a_model_the_batch_fails_whole_and_succeeds_on_retry(registry, tmp_path):
    holder = ModelHolder(ModelRegistry(tmp_path / "empty"), MODEL, THRESHOLD, VIEWS)
    scorer, producer = pipeline(holder)
    work = batches(on_partition(0, records(10, seed=5) + records(1, view_version="0" * 12)),
                   on_partition(1, [], extra=[b"garbage"]))
    with pytest.raises(ModelUnavailable, match="no Production version"):
        scorer.process(work)
    assert producer.produced == [] and producer.flushes == 0 and scorer.scored == 0
    # The batch loop retries the same batch once a model is there.
    holder.registry = registry
    holder.reload()
    scorer.process(work)
    assert len(producer.on(PREDICTIONS)) == 10 and len(producer.on(DLQ)) == 2


def test_a_swap_takes_effect_at_the_next_batch(holder, registry):
    scorer, producer = pipeline(holder)
    first, second = records(20, seed=6), records(20, start=20, seed=7)
    scorer.process(batches(on_partition(0, first)))
    holder.reload(2)
    scorer.process(batches(on_partition(0, second)))
    predictions = read_all([v for v, _ in producer.on(PREDICTIONS)], "Prediction")
    assert [p["model_version"] for p in predictions] == [1] * 20 + [2] * 20
    for version, mine in ((1, predictions[:20]), (2, predictions[20:])):
        np.testing.assert_allclose([p["score"] for p in mine],
                                   onnx_scores(registry, version, inputs_matrix(mine)),
                                   rtol=0, atol=1e-6)
    assert sorted(p["event_id"] for p in predictions[20:]) == \
        sorted(r["event_id"] for r in second)


def test_a_lost_delivery_fails_the_batch_so_it_is_not_committed(holder):
    scorer, producer = pipeline(holder)
    producer.fail_next_flush = "broker gone"
    with pytest.raises(RuntimeError, match="broker gone"):
        scorer.process(batches(on_partition(0, records(5, seed=8))))
    assert scorer.scored == 0


def test_an_empty_batch_produces_nothing_even_without_a_model(tmp_path):
    holder = ModelHolder(ModelRegistry(tmp_path / "empty"), MODEL, THRESHOLD, VIEWS)
    scorer, producer = pipeline(holder)
    scorer.process([])
    assert producer.produced == [] and producer.flushes == 0
