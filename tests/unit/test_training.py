"""Initial training: features from the engine, ONNX export with parity, registration."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.commands.training import (
    ParityError,
    build_model,
    check_parity,
    demo_training_set,
    to_onnx,
    train_initial,
)
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, FeatureEngine, load_definitions
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR

CREATED = 1_700_500_000_000
N_EVENTS = 8_000
SEED = 11


@pytest.fixture(scope="module")
def view():
    return load_definitions(DEFINITIONS_DIR).view("transactions_v1")


@pytest.fixture(scope="module")
def trained(view, tmp_path_factory):
    registry = ModelRegistry(tmp_path_factory.mktemp("data") / "registry")
    version, report = train_initial(registry, view, n_events=N_EVENTS, seed=SEED,
                                    created_at_ms=CREATED)
    return registry, version, report


def test_small_run_trains_registers_and_promotes(trained, view):
    registry, version, report = trained
    assert registry.production("fraud") == version
    assert version.version == report.version == 1 and version.stage == "Production"
    assert version.view == "transactions_v1" and version.view_version == view.version
    assert version.inputs == view.feature_names and version.parent is None
    assert version.created_at_ms == CREATED
    history = registry.history("fraud")
    assert [(h.version, h.from_stage, h.to_stage, h.at_ms) for h in history] == [
        (1, "None", "Production", CREATED)]
    assert report.n_train + report.n_test == N_EVENTS  # in-order demo events: none late
    assert report.n_test == N_EVENTS // 4
    first, last = version.training_range
    assert first < last <= report.holdout_range[0] <= report.holdout_range[1]
    assert 0 <= report.parity_max_abs_diff <= 1e-5 and report.parity_rows == report.n_test
    metrics = version.metrics
    assert set(metrics) >= {"roc_auc", "log_loss", "positive_rate", "n_train", "n_test"}
    assert metrics["roc_auc"] > 0.7  # the demo fraud pattern is learnable
    assert 0 < metrics["positive_rate"] < 0.05 and metrics["n_test"] == report.n_test
    path = registry.model_path("fraud", 1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.onnx_sha256
    assert "ROC AUC" in report.summary()


def test_onnx_contract_is_features_float32_and_probabilities(trained, view):
    registry, version, _ = trained
    model = onnx.load_model(str(registry.model_path("fraud", version.version)))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "features"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not dims[0].HasField("dim_value") and dims[1].dim_value == len(view.feature_names)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]  # no ZipMap


def _independent_rows(view, n_rows: int = 40) -> np.ndarray:
    """Feature rows recomputed from scratch: a fresh generator and a fresh engine."""
    events = DemoGenerator(DemoConfig(seed=SEED)).events(N_EVENTS)[-n_rows:]
    batch = EventBatch.from_records(events, seqs=range(len(events)), view=view)
    return FeatureEngine(view).process(batch).values


def test_independent_onnxruntime_recomputation_equals_predict_scores(trained, view):
    registry, version, _ = trained
    path = registry.model_path("fraud", version.version)
    rows = _independent_rows(view)
    assert np.isnan(rows).any()  # NaN goes in raw: the imputation is inside the graph
    raw = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    label, proba = raw.run(None, {"features": rows.astype(np.float32)})
    expected = proba[:, 1].astype(np.float64)
    scores = predict_scores(load_session(path), rows)
    assert scores.shape == (len(rows),) and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(label, (proba[:, 1] > 0.5).astype(label.dtype))
    # Imputing by hand with the documented value gives the very same scores.
    np.testing.assert_array_equal(predict_scores(raw, np.nan_to_num(rows, nan=-1.0)), expected)
    assert np.all((scores >= 0) & (scores <= 1)) and np.ptp(scores) > 0


def test_parity_check_fails_on_a_different_model(view):
    generator = DemoGenerator(DemoConfig(seed=3))
    events = generator.events(4_000)
    data = demo_training_set(view, events, generator.labels_for(events))
    n = len(view.feature_names)
    model_a = build_model(1).fit(data.X[:3000], data.y[:3000])
    model_b = build_model(2).fit(data.X[1000:], data.y[1000:])
    assert check_parity(model_a, to_onnx(model_a, n), data.X[3000:]) <= 1e-5
    with pytest.raises(ParityError, match="ONNX export differs from scikit-learn"):
        check_parity(model_a, to_onnx(model_b, n), data.X[3000:])


def test_too_few_events_is_refused(view, tmp_path: Path):
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ValueError, match="need both classes"):
        train_initial(registry, view, n_events=20, created_at_ms=CREATED)
    assert registry.models() == []


def test_predict_scores_rejects_a_vector(trained):
    registry, version, _ = trained
    session = load_session(registry.model_path("fraud", version.version), threads=1)
    with pytest.raises(ValueError, match="2-d feature matrix"):
        predict_scores(session, np.zeros(19))


def test_the_reference_profile_is_the_training_rows_binned(trained, view):
    """Stored with the version: every feature, the ONNX score, the slices and the label of the
    training rows (not the holdout), so the monitor compares live traffic with what the model
    was fitted on."""
    from driftline.core.monitoring.profile import ReferenceProfile

    registry, version, report = trained
    profile = ReferenceProfile.from_json(registry.reference_profile("fraud", version.version))
    assert profile.names == [*view.feature_names, "score", *view.slices, "label"]
    assert profile.rows == report.n_train
    generator = DemoGenerator(DemoConfig(seed=SEED))
    events = generator.events(N_EVENTS)
    data = demo_training_set(view, events, generator.labels_for(events))
    train = slice(0, report.n_train)
    labels = profile["label"].histogram
    assert labels.counts.tolist()[:2] == [int((data.y[train] == 0).sum()),
                                          int((data.y[train] == 1).sum())]
    segments = profile["segment"].histogram
    assert segments.total == report.n_train and segments.unseen == 0
    scores = predict_scores(load_session(registry.model_bytes("fraud", 1)), data.X[train])
    again = profile.select(["score"]).recount({"score": scores})
    np.testing.assert_array_equal(again["score"].histogram.counts,
                                  profile["score"].histogram.counts)
