"""ScoringPipeline under a rollout: routing by entity hash, shadow scoring, candidate failures.

The registry holds ``fraud`` v1 (Production) and v2 (another seed), both real ONNX models; a
serving plan in the registry makes the holder load v2 beside v1. Arms are checked against
``rollout.bucket`` (the documented hash), scores against a fresh onnxruntime session per
version, and the fast path against the generic one byte for byte (with a fixed clock, so even
``latency_ms`` is the same).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftline.adapters.dead_letters import DeadLetterSink
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.feature_records import FastBatch
from driftline.core.codec.single_object import encode
from driftline.core.registry import ModelRegistry
from driftline.core.rollout import ServingPlan, bucket
from driftline.serving.models import LoadedModel, ModelHolder, Serving
from driftline.serving.stream import ScoringPipeline
from tests.fakes import RecordingProducer, batches, messages
from tests.unit.serving.conftest import MODEL, NAMES, THRESHOLD, VIEW, VIEWS, onnx_scores
from tests.unit.serving.test_stream import (
    DLQ,
    FEATURES,
    PREDICTIONS,
    SCHEMAS,
    inputs_matrix,
    read_all,
)

SHADOW = "t.shadow"
SALT = "fraud-rollout-1"


def records(n: int, start: int = 0, seed: int = 0, entities: int = 300,
            generic_rate: float = 0.2) -> list[dict]:
    """Feature records of `entities` distinct entities, one in ten with a null; at
    `generic_rate` their values map is in reverse order (a layout the fast reader leaves to the
    generic path), the others take the fast path."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    X[rng.random(n) < 0.1, rng.integers(0, len(NAMES))] = np.nan
    generic = rng.random(n) < generic_rate
    return [{"event_id": f"ev-{start + i}", "entity_id": f"card-{(start + i) % entities}",
             "event_time": 1_700_000_000_000 + start + i, "view": VIEW.name,
             "view_version": VIEW.version,
             "values": dict(list({k: (None if np.isnan(v) else float(v))
                                  for k, v in zip(NAMES, row, strict=True)}.items())
                            [::-1 if generic[i] else 1]),
             "slices": {"segment": f"s{i % 3}", "channel": "pos", "country": "DE"}}
            for i, row in enumerate(X)]


def feed(scorer: ScoringPipeline, recs: list[dict], partition: int = 0) -> None:
    values = [encode("driftline.FeatureRecord", r) for r in recs]
    keys = [r["entity_id"].encode() for r in recs]
    scorer.process(batches(messages(FEATURES, partition, values, keys=keys)))


def pipeline(holder) -> tuple[ScoringPipeline, RecordingProducer]:
    producer = RecordingProducer()
    return ScoringPipeline(holder, Decoder("driftline.FeatureRecord", SCHEMAS), producer,
                           DeadLetterSink(producer, DLQ, SCHEMAS), PREDICTIONS,
                           shadow_topic=SHADOW), producer


def set_plan(registry: ModelRegistry, kind: str, share: float) -> None:
    registry.set_serving_plan(MODEL, ServingPlan(MODEL, kind, 2, share, SALT).to_mapping())


@pytest.fixture
def rollout(registry_copy) -> tuple[ModelRegistry, ModelHolder]:
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    holder.reload()
    return registry_copy, holder


def predictions_on(producer: RecordingProducer, topic: str) -> list[dict]:
    return read_all([v for v, _ in producer.on(topic)], "Prediction")


def counted(version: int, arm: str) -> float:
    return REGISTRY.get_sample_value("driftline_predictions_total",
                                     {"model": MODEL, "version": str(version), "arm": arm}) or 0.0


def check_scores(registry: ModelRegistry, predictions: list[dict]) -> None:
    for version in (1, 2):
        mine = [p for p in predictions if p["model_version"] == version]
        if mine:
            np.testing.assert_allclose([p["score"] for p in mine],
                                       onnx_scores(registry, version, inputs_matrix(mine)),
                                       rtol=0, atol=1e-6)


def test_canary_routes_each_record_by_its_entity_bucket(rollout):
    registry, holder = rollout
    set_plan(registry, "canary", 0.3)
    holder.reload()
    scorer, producer = pipeline(holder)
    sent = records(600, seed=1)
    before = {arm: counted(v, arm) for v, arm in ((1, "production"), (2, "candidate"))}

    feed(scorer, sent)

    predictions = predictions_on(producer, PREDICTIONS)
    assert [p["event_id"] for p in predictions] == [r["event_id"] for r in sent]  # in order
    to_candidate = bucket([r["entity_id"] for r in sent], SALT) < 0.3
    assert [p["arm"] for p in predictions] == \
        ["candidate" if c else "production" for c in to_candidate]
    assert [p["model_version"] for p in predictions] == [2 if c else 1 for c in to_candidate]
    assert 0.2 < to_candidate.mean() < 0.4, "both arms must be well represented"
    check_scores(registry, predictions)
    assert not np.allclose(*(onnx_scores(registry, v, inputs_matrix(predictions[:50]))
                             for v in (1, 2))), "v1 and v2 must be told apart"
    assert all(p["latency_ms"] > 0 for p in predictions)
    assert producer.on(SHADOW) == [] and producer.on(DLQ) == []
    n_candidate = int(to_candidate.sum())
    assert scorer.stats() == {"predictions": 600, "shadow_predictions": 0, "dead_letters": 0}
    assert counted(2, "candidate") - before["candidate"] == n_candidate
    assert counted(1, "production") - before["production"] == 600 - n_candidate


def test_an_entity_keeps_its_arm_and_moves_to_the_candidate_only_when_the_share_rises(rollout):
    registry, holder = rollout
    scorer, producer = pipeline(holder)
    arms_at: list[dict[str, str]] = []
    for step, share in enumerate((0.1, 0.1, 0.5, 0.5, 1.0)):
        set_plan(registry, "canary", share)
        holder.reload()
        feed(scorer, records(400, start=1000 * step, seed=step, entities=150))
        got = predictions_on(producer, PREDICTIONS)[-400:]
        arms = {}
        for p in got:
            assert arms.setdefault(p["entity_id"], p["arm"]) == p["arm"], "one arm per batch"
        arms_at.append(arms)
    for earlier, later in itertools.pairwise(arms_at):
        for entity, arm in earlier.items():
            assert (arm, later[entity]) != ("candidate", "production"), entity
    assert arms_at[0] == arms_at[1] and arms_at[2] == arms_at[3]
    moved = [e for e in arms_at[1] if arms_at[1][e] != arms_at[2][e]]
    assert moved and all(0.1 <= bucket([e], SALT)[0] < 0.5 for e in moved)
    assert set(arms_at[4].values()) == {"candidate"}
    assert holder.swaps == 4  # v1; then 0.1, 0.5, 1.0: a repeated share is no swap


def test_shadow_publishes_production_only_and_every_shadow_prediction_on_its_topic(rollout):
    registry, holder = rollout
    set_plan(registry, "shadow", 0.0)
    holder.reload()
    scorer, producer = pipeline(holder)
    sent = records(300, seed=3)
    stale = dict(records(1, start=9000)[0], view_version="000000000000")

    feed(scorer, sent + [stale])

    published = predictions_on(producer, PREDICTIONS)
    shadow = predictions_on(producer, SHADOW)
    ids = [r["event_id"] for r in sent]
    assert [p["event_id"] for p in published] == ids == [p["event_id"] for p in shadow]
    assert {(p["arm"], p["model_version"]) for p in published} == {("production", 1)}
    assert {(p["arm"], p["model_version"]) for p in shadow} == {("shadow", 2)}
    assert [k for _, k in producer.on(SHADOW)] == [k for _, k in producer.on(PREDICTIONS)]
    assert [p["inputs"] for p in shadow] == [p["inputs"] for p in published]
    check_scores(registry, published + shadow)
    # The stale record is dead-lettered once, not once per arm.
    assert len(producer.on(DLQ)) == 1
    assert scorer.stats() == {"predictions": 300, "shadow_predictions": 300, "dead_letters": 1}


def test_a_candidate_that_cannot_load_leaves_production_scoring_everything(rollout):
    registry, holder = rollout
    registry.model_path(MODEL, 2).write_bytes(b"\x08\x01garbage")
    set_plan(registry, "canary", 0.9)
    holder.reload()
    assert "canary candidate fraud v2" in holder.last_error
    scorer, producer = pipeline(holder)
    feed(scorer, records(200, seed=4))
    predictions = predictions_on(producer, PREDICTIONS)
    assert len(predictions) == 200
    assert {(p["arm"], p["model_version"]) for p in predictions} == {("production", 1)}
    check_scores(registry, predictions)


class _Broken:
    """An onnxruntime session that fails every call."""

    def get_outputs(self):
        raise RuntimeError("onnxruntime: out of memory")


class _Fixed:
    """A holder stand-in serving one given snapshot."""

    def __init__(self, serving: Serving) -> None:
        self._serving = serving

    def serving(self) -> Serving:
        return self._serving


@pytest.mark.parametrize("kind", ["canary", "shadow"])
def test_a_candidate_failing_at_scoring_time_hands_its_records_to_production(holder, kind,
                                                                            registry):
    v1 = holder.get()
    v2 = ModelHolder(registry, MODEL, THRESHOLD, VIEWS).reload(2)
    broken = LoadedModel(v2.meta, _Broken(), THRESHOLD)
    scorer, producer = pipeline(_Fixed(Serving(v1, ServingPlan(MODEL, kind, 2, 0.5), broken)))
    sent = records(200, seed=5)
    feed(scorer, sent)
    predictions = predictions_on(producer, PREDICTIONS)
    assert [p["event_id"] for p in predictions] == [r["event_id"] for r in sent]
    assert {(p["arm"], p["model_version"]) for p in predictions} == {("production", 1)}
    check_scores(registry, predictions)
    assert producer.on(SHADOW) == [] and producer.on(DLQ) == []


@pytest.mark.parametrize("kind, share", [(None, 0.0), ("canary", 0.4), ("ab", 0.5),
                                         ("shadow", 0.0)])
def test_fast_and_generic_paths_write_the_same_bytes(rollout, monkeypatch, kind, share):
    registry, holder = rollout
    if kind is not None:
        set_plan(registry, kind, share)
        holder.reload()
    ticks = itertools.count()
    # A clock of exact binary steps: every model call takes exactly 3.90625 ms on both paths.
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 2.0 ** -8)
    sent = records(250, seed=6, generic_rate=0.0)
    fast_scorer, fast_out = pipeline(holder)
    feed(fast_scorer, sent)
    generic_scorer, generic_out = pipeline(holder)
    every = list(range(len(sent)))
    generic_scorer._reader_for = lambda model: _NoFastPath(every)
    feed(generic_scorer, sent)
    assert fast_out.produced == generic_out.produced
    published = predictions_on(fast_out, PREDICTIONS)
    assert len(published) == len(sent) and {p["latency_ms"] for p in published} == {3.90625}
    assert len(fast_out.on(SHADOW)) == (len(sent) if kind == "shadow" else 0)


class _NoFastPath:
    """A reader that leaves every record to the generic decoder."""

    def __init__(self, others: list[int]) -> None:
        self.others = others

    def read(self, values) -> FastBatch:
        return FastBatch(matrix=np.zeros((0, len(NAMES))), others=list(self.others))
