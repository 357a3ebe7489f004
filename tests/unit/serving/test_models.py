"""ModelHolder: loads the Production version, swaps atomically, refuses unservable models.

A refused reload must leave the previous model serving (the very same object) and say why in
``last_error``; with nothing servable at all, ``get()`` raises ModelUnavailable. With a serving
plan in the registry the candidate is loaded beside Production; a candidate that cannot be
served is left out and reported, never an error.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from driftline.core.registry import ModelRegistry
from driftline.core.rollout import ServingPlan, bucket
from driftline.serving.models import ModelHolder, ModelUnavailable, Serving
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


# -- rollouts: a serving plan beside Production --------------------------------------------------

def set_plan(registry: ModelRegistry, kind: str, share: float, candidate: int = 2,
             salt: str = "") -> ServingPlan:
    plan = ServingPlan(MODEL, kind, candidate, share, salt)
    registry.set_serving_plan(MODEL, plan.to_mapping())
    return plan


def test_a_plan_loads_its_candidate_beside_production(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    v1 = holder.reload()
    assert holder.serving().plan is None and holder.serving().candidate is None
    plan = set_plan(registry_copy, "canary", 0.25)
    assert holder.reload() is v1  # the Production model is returned, unchanged
    serving = holder.serving()
    assert serving.production is v1 and holder.get() is v1 and holder.current is v1
    assert serving.plan == plan and serving.candidate.version == 2
    assert serving.shadow is None and holder.swaps == 2 and holder.last_error is None
    X = feature_rows(20, seed=3)
    np.testing.assert_allclose(serving.candidate.score(X), onnx_scores(registry_copy, 2, X),
                               rtol=0, atol=1e-6)
    assert serving.describe_plan() == {"kind": "canary", "candidate_version": 2,
                                       "share": 0.25, "salt": ""}


def test_reloading_an_unchanged_plan_swaps_nothing_and_a_step_reuses_the_candidate(
        registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    set_plan(registry_copy, "canary", 0.1)
    holder.reload()
    first = holder.serving()
    assert holder.swaps == 1
    holder.reload()
    assert holder.serving() is first and holder.swaps == 1  # nothing changed: no swap
    set_plan(registry_copy, "canary", 0.5)  # a step: only the share moves
    holder.reload()
    stepped = holder.serving()
    assert stepped is not first and stepped.plan.share == 0.5 and holder.swaps == 2
    assert stepped.candidate is first.candidate and stepped.production is first.production
    set_plan(registry_copy, "shadow", 0.0)
    holder.reload()
    assert holder.serving().shadow is first.candidate and holder.swaps == 3
    registry_copy.set_serving_plan(MODEL, None)  # the rollout ended
    holder.reload()
    assert holder.serving().plan is None and holder.serving().candidate is None
    assert holder.get() is first.production and holder.swaps == 4


def test_a_promoted_candidate_becomes_production_without_a_second_load(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    set_plan(registry_copy, "canary", 1.0)
    holder.reload()
    candidate = holder.serving().candidate
    registry_copy.promote(MODEL, 2, at_ms=10, reason="canary done", current_views=VIEWS)
    # The plan still names v2, now Production: ignored, v2 serves alone.
    assert holder.reload() is candidate
    assert holder.serving().plan is None and holder.last_error is None and holder.swaps == 2


def test_a_candidate_that_cannot_load_leaves_production_serving_alone(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    v1 = holder.reload()
    good = registry_copy.model_path(MODEL, 2).read_bytes()
    registry_copy.model_path(MODEL, 2).write_bytes(b"\x08\x01garbage")
    set_plan(registry_copy, "canary", 0.5)
    assert holder.reload() is v1  # no exception: the candidate is optional
    assert holder.serving().plan is None and holder.get() is v1 and holder.swaps == 1
    assert holder.last_error.startswith("canary candidate fraud v2: cannot load model.onnx")
    assert "sha256" in holder.last_error
    registry_copy.model_path(MODEL, 2).write_bytes(good)  # repaired: the next reload takes it
    holder.reload()
    assert holder.serving().candidate.version == 2 and holder.last_error is None


@pytest.mark.parametrize("plan, error", [
    ({"model_name": MODEL, "kind": "canary", "candidate_version": 99, "share": 0.5},
     "canary candidate unknown model version fraud v99"),
    ({"model_name": MODEL, "kind": "canary", "candidate_version": 2, "share": 1.5},
     "fraud: unreadable serving plan: ValueError('share must be in [0, 1]: 1.5')"),
    ({"model_name": MODEL, "kind": "direct", "candidate_version": 2, "share": 1.0},
     "a serving plan is shadow, canary or ab, not 'direct'"),
    ({"kind": "canary", "candidate_version": 2, "share": 0.5},
     "fraud: unreadable serving plan: KeyError('model_name')"),
    ({"model_name": "other", "kind": "ab", "candidate_version": 2, "share": 0.5},
     "fraud: the serving plan is for model 'other'"),
], ids=["unknown-version", "bad-share", "bad-kind", "incomplete", "other-model"])
def test_an_unservable_plan_is_reported_and_production_serves_alone(registry_copy, plan, error):
    registry_copy.set_serving_plan(MODEL, plan)
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    assert holder.reload().version == 1
    assert holder.serving().plan is None and error in holder.last_error


def test_a_candidate_of_another_view_version_is_refused(registry_copy):
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    drifted = registry_copy.register(
        MODEL, registry_copy.model_bytes(MODEL, 1), view=VIEW.name,
        view_version="0123456789ab", inputs=NAMES, training_range=(0, 1), metrics={},
        parent=1, created_at_ms=5)
    set_plan(registry_copy, "shadow", 0.0, candidate=drifted.version)
    holder.reload()
    assert holder.serving().plan is None
    assert "shadow candidate" in holder.last_error
    assert "feature schema drift" in holder.last_error


def test_a_plan_naming_the_production_version_is_ignored(registry_copy):
    set_plan(registry_copy, "canary", 0.5, candidate=1)
    holder = ModelHolder(registry_copy, MODEL, THRESHOLD, VIEWS)
    holder.reload()
    assert holder.serving().plan is None and holder.last_error is None


def test_serving_routes_by_the_plan_and_refuses_a_mismatched_candidate(holder, registry):
    v1 = holder.get()
    v2 = ModelHolder(registry, MODEL, THRESHOLD, VIEWS).reload(2)
    plan = ServingPlan(MODEL, "canary", 2, 0.5, "s")
    serving = Serving(v1, plan, v2)
    entities = [f"card-{i}" for i in range(400)]
    expected = bucket(entities, "s") < 0.5
    np.testing.assert_array_equal(serving.to_candidate(entities), expected)
    assert [serving.for_entity(e) for e in entities[:20]] == [
        (v2, "candidate") if c else (v1, "production") for c in expected[:20]]
    shadow = Serving(v1, ServingPlan(MODEL, "shadow", 2, 0.0), v2)
    assert not shadow.to_candidate(entities).any() and shadow.shadow is v2
    assert shadow.for_entity("card-1") == (v1, "production")
    assert not Serving(v1).to_candidate(entities).any()
    with pytest.raises(ValueError, match="needs its candidate model"):
        Serving(v1, plan)
    with pytest.raises(ValueError, match="the plan's candidate is v2, the loaded one v1"):
        Serving(v1, plan, v1)
