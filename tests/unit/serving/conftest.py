"""Shared fixtures for the scorer's unit tests: one small trained registry, trained once.

``trained_root`` holds model ``fraud`` v1 (Production) and v2 (registered, another seed), both
real GradientBoosting models exported to ONNX by ``train_initial``. Tests that only read it use
``registry``; tests that damage or extend it take ``registry_copy``, a private copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from driftline.adapters.onnx_model import predict_scores
from driftline.core.features import load_definitions
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.serving.models import ModelHolder

MODEL = "fraud"
THRESHOLD = 0.5
VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
VIEWS = {VIEW.name: VIEW}
NAMES = tuple(VIEW.feature_names)


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> Path:
    from driftline.commands.training import train_initial

    root = tmp_path_factory.mktemp("serving-registry") / "registry"
    registry = ModelRegistry(root)
    train_initial(registry, VIEW, n_events=4000, seed=1, created_at_ms=1)
    train_initial(registry, VIEW, n_events=4000, seed=2, created_at_ms=2)
    # train_initial promotes each; put v1 back in Production so every test starts from it.
    registry.rollback(MODEL, at_ms=3, reason="test setup", current_views=VIEWS)
    assert registry.production(MODEL).version == 1
    assert [v.version for v in registry.versions(MODEL)] == [1, 2]
    return root


@pytest.fixture
def registry(trained_root) -> ModelRegistry:
    """The shared registry: read it, never write it."""
    return ModelRegistry(trained_root)


@pytest.fixture
def registry_copy(trained_root, tmp_path) -> ModelRegistry:
    """A private copy of the trained registry, free to corrupt or extend."""
    return ModelRegistry(shutil.copytree(trained_root, tmp_path / "registry"))


@pytest.fixture
def holder(registry) -> ModelHolder:
    """A holder serving v1 (the Production version)."""
    h = ModelHolder(registry, MODEL, THRESHOLD, VIEWS)
    h.reload()
    return h


def onnx_scores(registry: ModelRegistry, version: int, X) -> np.ndarray:
    """Independent recomputation: a fresh onnxruntime session on the registered bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(registry.model_path(MODEL, version).read_bytes(), options,
                                   providers=["CPUExecutionProvider"])
    return predict_scores(session, np.asarray(X, dtype=np.float64))


def feature_rows(n: int, seed: int = 0, null_rate: float = 0.0) -> np.ndarray:
    """Plausible feature values (float64, NaN where undefined), ``n`` rows in view order."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    X[rng.random(X.shape) < null_rate] = np.nan
    return X
