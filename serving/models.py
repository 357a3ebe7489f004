"""The scorer's loaded model and its atomic hot swap.

A :class:`LoadedModel` is immutable: the ONNX session, the registered version and its input
contract. :class:`ModelHolder` keeps the current one behind a single reference. A reload builds
the new model completely beside the old one (load, integrity and input checks, a trial run) and
only then swaps the reference, so a scoring batch always sees exactly one version and a failed
load leaves the old version serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from driftline.adapters.onnx_model import load_session, predict_scores
from driftline.core.registry import FeatureViewLike, ModelRegistry, ModelVersion

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


class ModelHolder:
    """The model currently serving, swapped atomically."""

    def __init__(self, registry: ModelRegistry, name: str, threshold: float,
                 views: Mapping[str, FeatureViewLike]) -> None:
        self.registry = registry
        self.name = name
        self.threshold = threshold
        self.views = views
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._lock = threading.Lock()  # one reload at a time; readers never take it

    def get(self) -> LoadedModel:
        model = self.current
        if model is None:
            raise ModelUnavailable(self.last_error or
                                   f"no Production version of model {self.name!r} is loaded")
        return model

    def reload(self, version: int | None = None) -> LoadedModel:
        """Load `version` (default: the registry's Production version) and swap it in."""
        with self._lock:
            if version is None:
                production = self.registry.production(self.name)
                if production is None:
                    self.last_error = f"model {self.name!r} has no Production version"
                    raise ModelUnavailable(self.last_error)
                version = production.version
            current = self.current
            if current is not None and current.version == version:
                return current
            try:
                model = load_model(self.registry, self.name, version, self.threshold,
                                   self.views)
            except Exception as exc:
                self.last_error = str(exc)
                raise
            self.current = model  # the swap: one reference assignment
            self.last_error = None
            self.swaps += 1
            log.info("serving %s v%d (was %s)", self.name, version,
                     None if current is None else f"v{current.version}")
            return model
