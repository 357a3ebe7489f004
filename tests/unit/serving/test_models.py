"""ModelHolder: loads the Production version, swaps atomically, refuses unservable models.

A refused reload must leave the previous model serving (the very same object) and say why in
``last_error``; with nothing servable at all, ``get()`` raises ModelUnavailable.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from driftline.core.registry import ModelRegistry
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


def test_loads_the_production_version_and_scores_like_onnxruntime(registry):
    holder = ModelHolder(registry, MODEL, THRESHOLD, VIEWS)
    model = holder.reload()
    assert holder.get() is model and holder.current is model
    assert (model.name, model.version, model.threshold) == (MODEL, 1, THRESHOLD)
    assert model.inputs == NAMES
    assert (model.meta.view, model.meta.view_version) == (VIEW.name, VIEW.version)
    assert holder.swaps == 1 and holder.last_error is None
    X = feature_rows(50, seed=1, null_rate=0.1)
    np.testing.assert_allclose(model.score(X), onnx_scores(registry, 1, X), rtol=0, atol=1e-6)


def test_reload_to_a_version_swaps_the_reference(holder, registry):
    v1 = holder.current
    X = feature_rows(50, seed=2)
    v2 = holder.reload(2)
    assert holder.current is v2 and holder.get() is v2 and v2 is not v1
    assert v2.version == 2 and holder.swaps == 2 and holder.last_error is None
    np.testing.assert_allclose(v2.score(X), onnx_scores(registry, 2, X), rtol=0, atol=1e-6)
    assert not np.allclose(v2.score(X), v1.score(X)), "v1 and v2 must be told apart"
    # Reloading the version already served is a no-op: same object, no swap counted.
    assert holder.reload(2) is v2 and holder.swaps == 2
    # Back to Production (v1): a new load, not the old object resurrected.
    back = holder.reload()
    assert back.version == 1 and holder.current is back and holder.swaps == 3


def test_the_old_model_serves_until_the_new_one_is_completely_loaded(registry):
    """The swap happens only after load and checks: during them readers still get v1."""
    seen_during_load: list[int | None] = []

    class Watching(ModelRegistry):
        def model_bytes(self, name, version):
            current = holder.current
            seen_during_load.append(None if current is None else current.version)
            return super().model_bytes(name, version)

    holder = ModelHolder(Watching(registry.root), MODEL, THRESHOLD, VIEWS)
    holder.reload(1)
    holder.reload(2)
    assert seen_during_load == [None, 1]
    assert holder.get().version == 2


def test_a_corrupt_model_file_is_refused_and_the_old_model_keeps_serving(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    v1 = holder.reload()
    registry_copy.model_path(MODEL, 2).write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelUnavailable, match="fraud v2: cannot load model.onnx"):
        holder.reload(2)
    assert holder.current is v1 and holder.get() is v1 and holder.swaps == 1
    assert "fraud v2" in holder.last_error and "sha256" in holder.last_error
    np.testing.assert_allclose(holder.get().score(feature_rows(5)),
                               onnx_scores(registry_copy, 1, feature_rows(5)), atol=1e-6)


def test_a_successful_reload_clears_the_previous_error(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    holder.reload()
    good = registry_copy.model_path(MODEL, 2).read_bytes()
    registry_copy.model_path(MODEL, 2).write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable):
        holder.reload(2)
    assert holder.last_error is not None
    registry_copy.model_path(MODEL, 2).write_bytes(good)
    assert holder.reload(2).version == 2
    assert holder.last_error is None


def test_a_corrupt_production_model_at_start_leaves_nothing_to_serve(registry_copy):
    registry_copy.model_path(MODEL, 1).write_bytes(b"garbage")
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    with pytest.raises(ModelUnavailable, match="sha256"):
        holder.reload()
    assert holder.current is None
    with pytest.raises(ModelUnavailable, match="fraud v1: cannot load model.onnx"):
        holder.get()  # the reason is the load error, not a generic "nothing loaded"


def test_a_model_trained_on_another_view_version_is_refused(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    v1 = holder.reload()
    drifted = registry_copy.register(
        MODEL, registry_copy.model_bytes(MODEL, 1), view=VIEW.name,
        view_version="0123456789ab", inputs=NAMES, training_range=(0, 1), metrics={},
        parent=1, created_at_ms=5)
    with pytest.raises(ModelUnavailable) as refused:
        holder.reload(drifted.version)
    message = str(refused.value)
    assert "feature schema drift" in message
    assert f"trained on {VIEW.name}@0123456789ab" in message
    assert f"current definition is {VIEW.name}@{VIEW.version}" in message
    assert holder.current is v1 and holder.last_error == message


@dataclasses.dataclass(frozen=True)
class _View:
    """A stand-in for a changed definition of the view (FeatureViewLike)."""

    version: str
    feature_names: tuple[str, ...]


@pytest.mark.parametrize("current", [
    pytest.param({VIEW.name: _View(VIEW.version, NAMES[::-1])}, id="inputs-reordered"),
    pytest.param({VIEW.name: _View("fedcba987654", NAMES[:-1])}, id="feature-removed"),
    pytest.param({}, id="view-no-longer-defined"),
])
def test_a_model_whose_inputs_differ_from_the_current_definition_is_refused(registry, current):
    served = ModelHolder(registry, MODEL, THRESHOLD, VIEWS)
    v1 = served.reload()
    served.views = current  # the definitions changed under the running scorer
    with pytest.raises(ModelUnavailable, match="feature schema drift, refusing to serve it"):
        served.reload(2)
    assert served.current is v1 and "feature schema drift" in served.last_error
    fresh = ModelHolder(registry, MODEL, THRESHOLD, current)
    with pytest.raises(ModelUnavailable, match="feature schema drift"):
        fresh.reload()
    with pytest.raises(ModelUnavailable, match="feature schema drift"):
        fresh.get()


def test_no_production_version_means_model_unavailable(tmp_path):
    holder = ModelHolder(ModelRegistry(tmp_path / "empty"), MODEL, THRESHOLD, VIEWS)
    with pytest.raises(ModelUnavailable, match="no Production version of model 'fraud' is loaded"):
        holder.get()
    with pytest.raises(ModelUnavailable, match="model 'fraud' has no Production version"):
        holder.reload()
    with pytest.raises(ModelUnavailable, match="model 'fraud' has no Production version"):
        holder.get()
    assert holder.current is None and holder.swaps == 0


def test_a_registered_but_never_promoted_model_is_not_served(registry, tmp_path):
    fresh = ModelRegistry(tmp_path / "fresh")
    meta = registry.get(MODEL, 1)
    fresh.register(MODEL, registry.model_bytes(MODEL, 1), view=meta.view,
                   view_version=meta.view_version, inputs=meta.inputs,
                   training_range=meta.training_range, metrics={}, parent=None,
                   created_at_ms=1)
    holder = ModelHolder(fresh, MODEL, THRESHOLD, VIEWS)
    with pytest.raises(ModelUnavailable, match="has no Production version"):
        holder.reload()
    assert holder.reload(1).version == 1  # an explicit version is loaded whatever its stage
