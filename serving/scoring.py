"""Score a batch of feature records with one model: matrix in, predictions out.

No Kafka, no Redis: the model is anything with ``name``, ``version``, ``inputs``, ``meta`` and
``score(X)``. Records whose view or view version is not the one the model was trained on are
returned as refusals (the caller dead-letters them), never scored. Each prediction carries the
exact inputs it was scored on and the record's slice attributes, so monitoring and retraining
use what serving saw; it also carries the rollout ``arm`` it was scored for and the wall time
of the model call (``latency_ms``, the same for every prediction of the call).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driftline.core.rollout import PRODUCTION


class ScoringModel(Protocol):
    name: str
    version: int
    inputs: tuple[str, ...]
    threshold: float
    meta: Any  # ModelVersion: .view, .view_version

    def score(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class Scored:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index of each prediction's record
    refused: list[tuple[int, str]] = field(default_factory=list)  # (record index, detail)
    latency_ms: float = 0.0  # wall time of the model call (0: nothing was scored)


def feature_matrix(records: Sequence[Mapping[str, Any]], inputs: Sequence[str]) -> np.ndarray:
    """Rows of ``values`` in the model's input order; a missing or null value is NaN."""
    X = np.full((len(records), len(inputs)), np.nan, dtype=np.float64)
    for i, record in enumerate(records):
        values = record["values"]
        X[i] = [np.nan if (v := values.get(name)) is None else v for name in inputs]
    return X


def score_records(model: ScoringModel, records: Sequence[Mapping[str, Any]],
                  arm: str = PRODUCTION) -> Scored:
    """Score the records of the model's view version; refuse the others. Every prediction is
    labelled `arm` (``production``, ``candidate`` or ``shadow``)."""
    out = Scored()
    view, view_version = model.meta.view, model.meta.view_version
    ok = []
    for i, r in enumerate(records):
        if r["view"] == view and r["view_version"] == view_version:
            ok.append(i)
        else:
            out.refused.append((i, (
                f"record computed by {r['view']}@{r['view_version']} but {model.name} "
                f"v{model.version} takes {view}@{view_version}")))
    if not ok:
        return out
    chosen = [records[i] for i in ok]
    X = feature_matrix(chosen, model.inputs)
    start = time.perf_counter()
    scores = model.score(X)
    latency_ms = out.latency_ms = (time.perf_counter() - start) * 1000.0
    threshold = model.threshold
    inputs = model.inputs
    for i, record, row, score in zip(ok, chosen, X.tolist(), scores.tolist(), strict=True):
        out.predictions.append({
            "event_id": record["event_id"],
            "entity_id": record["entity_id"],
            "event_time": record["event_time"],
            "score": score,
            "decision": score >= threshold,
            "threshold": threshold,
            "model_name": model.name,
            "model_version": model.version,
            "view": view,
            "view_version": view_version,
            "slices": record["slices"],
            "inputs": {n: (None if v != v else v) for n, v in zip(inputs, row, strict=True)},
            "arm": arm,
            "latency_ms": latency_ms,
        })
        out.positions.append(i)
    return out
