"""Initial model training from demo history: features, labels, fit, ONNX export, registration.

Offline and deterministic for a seed. Features come from the very `FeatureEngine` the streaming
path runs, so the model sees online and offline the same values. The model is a scikit-learn
pipeline (NaN -> -1 imputation, then gradient boosting) exported whole with skl2onnx: the ONNX
graph takes the view's raw feature values, NaN included, as float32 ``features[N, n_features]``
and returns ``probabilities[N, 2]``. Export is trusted only after onnxruntime reproduces
scikit-learn's probabilities on the held-out rows. The result is registered and promoted to
Production. Needs the ``train`` extra (scikit-learn, skl2onnx).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, FeatureEngine, FeatureView
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.registry import ModelRegistry, ModelVersion

MISSING_VALUE = -1.0  # what an undefined feature (NaN) becomes inside the model
PARITY_TOLERANCE = 1e-5
INPUT_NAME = "features"


class ParityError(RuntimeError):
    """The exported ONNX model does not reproduce scikit-learn's probabilities."""


@dataclass(frozen=True)
class TrainingReport:
    """What `train_initial` did, for the CLI and the logs."""

    model_name: str
    version: int
    n_events: int
    n_train: int
    n_test: int
    training_range: tuple[int, int]
    holdout_range: tuple[int, int]
    metrics: dict[str, float]
    parity_max_abs_diff: float
    parity_rows: int

    def summary(self) -> str:
        m = self.metrics
        return (f"{self.model_name} v{self.version}: trained on {self.n_train} events, held out "
                f"{self.n_test}; ROC AUC {m['roc_auc']:.4f}, log loss {m['log_loss']:.4f}, "
                f"positive rate {m['positive_rate']:.4f}; ONNX parity max |diff| "
                f"{self.parity_max_abs_diff:.2e} over {self.parity_rows} rows")


@dataclass(frozen=True)
class TrainingSet:
    """Feature rows (view column order) with labels and event times, in event-time order."""

    X: np.ndarray  # float64, NaN where undefined
    y: np.ndarray  # int64 0/1
    event_time_ms: np.ndarray  # int64
    slices: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # str per row


def demo_training_set(view: FeatureView, events: Sequence[dict[str, Any]],
                      labels: Sequence[dict[str, Any]]) -> TrainingSet:
    """Point-in-time features of ``events`` (one engine, seq = index) joined to labels."""
    batch = EventBatch.from_records(events, seqs=range(len(events)), view=view)
    features = FeatureEngine(view).process(batch)
    by_id = {label["event_id"]: int(label["label"]) for label in labels}
    keep = features.applied & np.array([e["event_id"] in by_id for e in events], dtype=bool)
    y = np.array([by_id[e["event_id"]] for e, k in zip(events, keep, strict=True) if k],
                 dtype=np.int64)
    times = batch.event_time_ms[keep]
    order = np.argsort(times, kind="stable")
    # Rounded to float32 as served, so scikit-learn and ONNX split on the same values.
    X = features.values[keep].astype(np.float32).astype(np.float64)
    kept = [e for e, k in zip(events, keep, strict=True) if k]
    slices = {s: np.array([str(e[s]) for e in kept])[order] for s in view.slices}
    return TrainingSet(X[order], y[order], times[order], slices)


def reference_profile(view: FeatureView, data: TrainingSet, rows: slice,
                      scores: np.ndarray) -> ReferenceProfile:
    """The monitor's data-drift baseline: the training rows' features, scores (as the ONNX
    model computes them), slices and labels, binned (``driftline.core.monitoring.profile``)."""
    return ReferenceProfile.from_columns(
        {name: data.X[rows, j] for j, name in enumerate(view.feature_names)}, score=scores,
        slices={s: values[rows] for s, values in data.slices.items()}, label=data.y[rows])


def build_model(seed: int) -> Pipeline:
    """The initial model: impute NaN as -1, then a modest gradient-boosted tree ensemble."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_VALUE,
                                 keep_empty_features=True)),
        # Row and column subsampling keep a 45k-row fit near 5 s on two cores (exact-split
        # boosting; HistGradientBoosting would be faster but skl2onnx cannot export it).
        ("model", GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1,
                                             subsample=0.5, max_features=0.5,
                                             random_state=seed)),
    ])


def fit_gradient_boosting(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """The retraining job's default trainer (``DEFAULT_TRAINER``): `build_model` fit on X, y.

    A trainer is any ``module:function`` with this signature (X float64 in view order, NaN where
    undefined; y 0/1; a seed) returning a fitted model with ``predict_proba``, which the job
    exports with `to_onnx`; see ``driftline.commands.retrain_job`` for the full contract."""
    return build_model(seed).fit(X, y)


def to_onnx(model: Pipeline, n_features: int) -> bytes:
    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
    )
    return onx.SerializeToString()


def check_parity(model: Pipeline, onnx_bytes: bytes, X: np.ndarray) -> float:
    """Max |P_onnx - P_sklearn| over ``X``; raises `ParityError` above the tolerance."""
    onnx_scores = predict_scores(load_session(onnx_bytes), X)
    sk_scores = model.predict_proba(X.astype(np.float32).astype(np.float64))[:, 1]
    diff = float(np.max(np.abs(onnx_scores - sk_scores))) if len(X) else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"ONNX export differs from scikit-learn by {diff:.3e} "
                          f"(> {PARITY_TOLERANCE:g}) on {len(X)} held-out rows")
    return diff


def train_initial(
    registry: ModelRegistry, view: FeatureView, *, n_events: int = 60_000, seed: int = 11,
    created_at_ms: int, model_name: str = "fraud", test_fraction: float = 0.25,
    demo: DemoConfig | None = None,
) -> tuple[ModelVersion, TrainingReport]:
    """Train on demo history, export, verify, register and promote to Production.

    The holdout is the last ``test_fraction`` of events by event time. ``demo`` overrides the
    generator configuration (its seed is replaced by ``seed``).
    """
    config = DemoConfig(seed=seed) if demo is None else dataclasses.replace(demo, seed=seed)
    generator = DemoGenerator(config)
    events = generator.events(n_events)
    data = demo_training_set(view, events, generator.labels_for(events))
    cut = int(round(len(data.y) * (1.0 - test_fraction)))
    train, test = slice(0, cut), slice(cut, None)
    y_train, y_test = data.y[train], data.y[test]
    if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
        raise ValueError(f"need both classes in train and holdout ({n_events} events is too few)")

    model = build_model(seed).fit(data.X[train], y_train)
    onnx_bytes = to_onnx(model, len(view.feature_names))
    diff = check_parity(model, onnx_bytes, data.X[test])
    profile = reference_profile(view, data, train,
                                predict_scores(load_session(onnx_bytes), data.X[train]))
    scores = model.predict_proba(data.X[test])[:, 1]
    metrics = {
        "roc_auc": float(roc_auc_score(y_test, scores)),
        "log_loss": float(log_loss(y_test, scores, labels=[0, 1])),
        "positive_rate": float(y_test.mean()),
        "train_positive_rate": float(y_train.mean()),
        "n_train": float(cut),
        "n_test": float(len(y_test)),
    }
    train_times, test_times = data.event_time_ms[train], data.event_time_ms[test]
    training_range = (int(train_times[0]), int(train_times[-1]))
    version = registry.register(
        model_name, onnx_bytes, view=view.name, view_version=view.version,
        inputs=view.feature_names, training_range=training_range, metrics=metrics, parent=None,
        created_at_ms=created_at_ms,
        tags={"trainer": "driftline.commands.training.train_initial",
              "estimator": "GradientBoosting",
              "missing_value": str(MISSING_VALUE), "demo_seed": str(seed),
              "holdout_from_ms": str(int(test_times[0]))},
        reference_profile=profile.to_json())
    registry.promote(model_name, version.version, at_ms=created_at_ms,
                     reason="initial model trained on demo history",
                     current_views={view.name: view})
    report = TrainingReport(
        model_name=model_name, version=version.version, n_events=n_events, n_train=cut,
        n_test=len(y_test), training_range=training_range,
        holdout_range=(int(test_times[0]), int(test_times[-1])), metrics=metrics,
        parity_max_abs_diff=diff, parity_rows=len(y_test))
    return registry.get(model_name, version.version), report
