"""Lineage records: every step of a retraining job and of a rollout as a ``driftline.ModelEvent``.

The retrain controller publishes one record per step on ``driftline.models`` (keyed by model
name, so a model's steps stay in order): ``job_started``, ``gate_results``, ``registered`` or
``rejected`` or ``failed``, then ``rollout_started``, ``step_up``, ``rolled_back``, ``promoted``,
``ab_report``, and the registry's stage ``transition`` records. Each carries the job id, the drift
events that started it, the parent version and the training data range, so the topic alone
tells how a version came about. Pure: dicts out, no I/O.

>>> record = lineage_record("job_started", "fraud", 0, at_ms=5, reason="drift", job_id="j1",
...                         drift_ids=["d1"], parent_version=1)
>>> record["event"], record["drift_ids"], record["from_stage"], record["training_range_start"]
('job_started', ['d1'], 'None', None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EVENTS = ("transition", "job_started", "gate_results", "registered", "rejected", "failed",
          "rollout_started", "step_up", "rolled_back", "promoted", "ab_report")


def lineage_record(
    event: str, model_name: str, version: int, *, at_ms: int, reason: str, job_id: str = "",
    drift_ids: Sequence[str] = (), parent_version: int | None = None,
    training_range: Sequence[int] | None = None, details: Mapping[str, Any] | None = None,
    stage: str = "None", to_stage: str | None = None,
) -> dict[str, Any]:
    """One ``driftline.ModelEvent`` record. ``version`` 0 means "no version yet" (a job that
    has not registered one); ``stage``/``to_stage`` are the version's stage before and after
    (equal unless the step changed it). Detail values are stringified (the schema's map)."""
    if event not in EVENTS:
        raise ValueError(f"unknown lineage event {event!r} (events: {', '.join(EVENTS)})")
    first, last = (None, None) if training_range is None else (int(training_range[0]),
                                                              int(training_range[1]))
    return {
        "event": event, "model_name": model_name, "version": int(version),
        "from_stage": stage, "to_stage": stage if to_stage is None else to_stage,
        "at": int(at_ms), "reason": reason, "job_id": job_id,
        "drift_ids": [str(d) for d in drift_ids],
        "parent_version": None if parent_version is None else int(parent_version),
        "training_range_start": first, "training_range_end": last,
        "details": {str(k): _text(v) for k, v in (details or {}).items()},
    }


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
