"""The scorer's loaded models and their atomic hot swap.

A :class:`LoadedModel` is immutable: the ONNX session, the registered version and its input
contract. What serves is a :class:`Serving` snapshot, immutable too: the Production model and,
while a rollout runs, its :class:`~driftline.core.rollout.ServingPlan` with the candidate model.
:class:`ModelHolder` keeps the current snapshot behind a single reference. A reload builds the
new snapshot completely beside the old one (load, integrity and input checks, a trial run of
each model it does not already hold) and only then swaps the reference, so a scoring batch that
takes the snapshot once sees one Production version and one plan, and a failed load leaves the
old snapshot serving. A candidate that cannot be served is left out (Production serves alone,
``last_error`` says why): a rollout never stops scoring.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from driftline.adapters.metrics import MODEL_INFO
from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.core.registry import FeatureViewLike, ModelRegistry, ModelVersion
from driftline.core.rollout import CANDIDATE, PRODUCTION, ServingPlan

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No servable Production model (yet); scoring waits rather than dropping records."""


@dataclass(frozen=True)
class LoadedModel:
    meta: ModelVersion
    session: ort.InferenceSession
    threshold: float

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> int:
        return self.meta.version

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.meta.inputs)

    def score(self, X: np.ndarray) -> np.ndarray:
        return predict_scores(self.session, X)


def load_model(registry: ModelRegistry, name: str, version: int, threshold: float,
               views: Mapping[str, FeatureViewLike]) -> LoadedModel:
    """Load and check one registered version; raises with a precise message if unservable."""
    meta = registry.get(name, version)
    view = views.get(meta.view)
    if view is None or view.version != meta.view_version or \
            tuple(view.feature_names) != tuple(meta.inputs):
        current = "unknown" if view is None else f"{meta.view}@{view.version}"
        raise ModelUnavailable(
            f"{name} v{version} was trained on {meta.view}@{meta.view_version}; the current "
            f"definition is {current}: feature schema drift, refusing to serve it")
    try:
        data = registry.model_bytes(name, version)  # re-checks the sha256 from registration
        session = load_session(data, threads=1)  # the scorer batches; one thread per call
        model = LoadedModel(meta, session, threshold)
        model.score(np.zeros((1, len(meta.inputs)), dtype=np.float32))  # trial run
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelUnavailable(f"{name} v{version}: cannot load model.onnx: {exc}") from exc
    return model


@dataclass(frozen=True)
class Serving:
    """What serves now: ``production`` alone, or with a rollout ``plan`` and its ``candidate``
    (both or neither). Take it once per batch or request: it never changes."""

    production: LoadedModel
    plan: ServingPlan | None = None
    candidate: LoadedModel | None = None

    def __post_init__(self) -> None:
        if (self.plan is None) != (self.candidate is None):
            raise ValueError("a serving plan needs its candidate model, and vice versa")
        if self.candidate is not None and self.candidate.version != self.plan.candidate_version:
            raise ValueError(f"the plan's candidate is v{self.plan.candidate_version}, the "
                             f"loaded one v{self.candidate.version}")

    @property
    def shadow(self) -> LoadedModel | None:
        """The candidate scoring every record beside Production, unpublished (shadow plans)."""
        return self.candidate if self.plan is not None and self.plan.shadow else None

    def to_candidate(self, entity_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """True where the candidate scores and publishes the entity's records (canary / A/B);
        all False without a plan or under shadow."""
        if self.plan is None:
            return np.zeros(len(entity_ids), dtype=bool)
        return self.plan.to_candidate(entity_ids)

    def for_entity(self, entity_id: str) -> tuple[LoadedModel, str]:
        """The model that answers for one entity and its arm label (``production`` or
        ``candidate``); the same as the stream scorer's choice for the entity's records."""
        if self.candidate is not None and bool(self.to_candidate([entity_id])[0]):
            return self.candidate, CANDIDATE
        return self.production, PRODUCTION

    def describe_plan(self) -> dict[str, Any] | None:
        """The rollout applied, for ``/health``: kind, candidate version, share, salt."""
        if self.plan is None:
            return None
        return {"kind": self.plan.kind, "candidate_version": self.plan.candidate_version,
                "share": self.plan.share, "salt": self.plan.salt}

    def same_as(self, other: Serving | None) -> bool:
        """Whether `other` serves exactly this (the same loaded models and an equal plan)."""
        return other is not None and other.production is self.production and \
            other.candidate is self.candidate and other.plan == self.plan


class ModelHolder:
    """What serves (a :class:`Serving`), swapped atomically by :meth:`reload`."""

    def __init__(self, registry: ModelRegistry, name: str, threshold: float,
                 views: Mapping[str, FeatureViewLike]) -> None:
        self.registry = registry
        self.name = name
        self.threshold = threshold
        self.views = views
        self.last_error: str | None = None
        self.swaps = 0  # changes of what serves: a Production version, a plan or its share
        self._serving: Serving | None = None
        self._lock = threading.Lock()  # one reload at a time; readers never take it

    @property
    def current(self) -> LoadedModel | None:
        """The Production model serving now, or None."""
        serving = self._serving
        return None if serving is None else serving.production

    def serving(self) -> Serving:
        """The snapshot serving now; raises :class:`ModelUnavailable` when there is none."""
        serving = self._serving
        if serving is None:
            raise ModelUnavailable(self.last_error or
                                   f"no Production version of model {self.name!r} is loaded")
        return serving

    def get(self) -> LoadedModel:
        """The Production model serving now (see :meth:`serving` for the rollout too)."""
        return self.serving().production

    def reload(self, version: int | None = None) -> LoadedModel:
        """Serve `version` (default: the registry's Production version) as Production, with
        the registry's serving plan for the model if it has one; returns the Production model.

        Models the current snapshot holds are reused, so a plan step (a new share) loads
        nothing, and a snapshot equal to the current one is no swap. A Production version that
        cannot be served raises (the old snapshot keeps serving); a candidate that cannot be
        served is logged and left out."""
        with self._lock:
            if version is None:
                production = self.registry.production(self.name)
                if production is None:
                    self.last_error = f"model {self.name!r} has no Production version"
                    raise ModelUnavailable(self.last_error)
                version = production.version
            current = self._serving
            try:
                model = self._load(version, current)
            except Exception as exc:
                self.last_error = str(exc)
                raise
            plan, candidate, problem = self._candidate(model, current)
            serving = Serving(model, plan, candidate)
            self.last_error = problem
            if serving.same_as(current):
                return current.production
            self._serving = serving  # the swap: one reference assignment
            self.swaps += 1
            _export_info(self.name, serving)
            log.info("serving %s v%d%s (was %s)", self.name, version, _plan_text(serving),
                     "nothing" if current is None else
                     f"v{current.production.version}{_plan_text(current)}")
            return model

    # -- internals --------------------------------------------------------------------------

    def _load(self, version: int, current: Serving | None) -> LoadedModel:
        """`version` as the current snapshot holds it, else freshly loaded and checked."""
        if current is not None:
            for held in (current.production, current.candidate):
                if held is not None and held.version == version:
                    return held
        return load_model(self.registry, self.name, version, self.threshold, self.views)

    def _candidate(self, production: LoadedModel, current: Serving | None,
                   ) -> tuple[ServingPlan | None, LoadedModel | None, str | None]:
        """The registry's plan and its loaded candidate, or why none applies (an error to
        report, None when there is simply no plan)."""
        try:
            mapping = self.registry.serving_plan(self.name)
            plan = None if mapping is None else ServingPlan.from_mapping(mapping)
        except Exception as exc:  # noqa: BLE001 - a broken plan must not stop Production
            return self._refused(f"{self.name}: unreadable serving plan: {exc!r}")
        if plan is None:
            return None, None, None
        if plan.model_name != self.name:
            return self._refused(f"{self.name}: the serving plan is for model "
                                 f"{plan.model_name!r}")
        if plan.candidate_version == production.version:
            return None, None, None  # the candidate is Production already (a promotion)
        try:
            candidate = self._load(plan.candidate_version, current)
        except Exception as exc:  # noqa: BLE001 - any failure leaves Production alone
            return self._refused(f"{plan.kind} candidate {exc}")
        meta, reference = candidate.meta, production.meta
        if (meta.view, meta.view_version) != (reference.view, reference.view_version):
            return self._refused(
                f"{plan.kind} candidate {self.name} v{candidate.version} takes "
                f"{meta.view}@{meta.view_version} but Production v{production.version} takes "
                f"{reference.view}@{reference.view_version}: one scorer reads one view version")
        return plan, candidate, None

    def _refused(self, reason: str) -> tuple[None, None, str]:
        log.warning("%s; Production serves alone", reason)
        return None, None, reason


def _plan_text(serving: Serving) -> str:
    plan = serving.plan
    return "" if plan is None else \
        f" + {plan.kind} v{plan.candidate_version} at share {plan.share:g}"


def _export_info(name: str, serving: Serving) -> None:
    """``driftline_model_info``: the versions this process serves now, by arm."""
    MODEL_INFO.clear()
    MODEL_INFO.labels(name, str(serving.production.version), "production").set(1)
    if serving.candidate is not None and serving.plan is not None:
        arm = "shadow" if serving.plan.shadow else "candidate"
        MODEL_INFO.labels(name, str(serving.candidate.version), arm).set(1)
