"""What the monitor's status page adds to its own history: models, retraining, lag.

The monitor stage knows the detectors (``MonitorStage.status``); this module adds, read-only and
tolerating absence or a half-written file, the model registry in the data dir (each model's
Production version and rollout plan, its stage transitions, with the drift events each retrained
version's lineage names) and the retrain controller's state file (its jobs), plus the batch
loop's consumer lag. ``agents/app.py`` serves the result as ``/status`` (HTML, rendered by
``driftline.core.status_page``) and ``/status.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from driftline.core.registry import PRODUCTION, STAGING, ModelRegistry, RegistryError
from driftline.core.status_page import REGISTRY, RETRAIN, ModelCard, StatusData, TimelineEntry

CONTROLLER_STATE = Path("retrain") / "controller.json"  # under the data dir, as the controller
MAX_TRANSITIONS = 50  # per model, newest


def complete(data: StatusData, data_dir: Path, lag: Mapping[str, int]) -> StatusData:
    """`data` with the registry's models and transitions, the controller's jobs and `lag`."""
    notes = list(data.notes)
    models: tuple[ModelCard, ...] = ()
    timeline: list[TimelineEntry] = []
    registry = ModelRegistry(data_dir / "registry")
    try:
        models = model_cards(registry)
        timeline += registry_entries(registry)
    except (OSError, ValueError, KeyError, TypeError, RegistryError) as exc:
        notes.append(f"model registry unreadable: {exc}")
    try:
        timeline += job_entries(data_dir / CONTROLLER_STATE)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(f"retrain controller state unreadable: {exc}")
    return dataclasses.replace(data, models=models, timeline=tuple(timeline), lag=dict(lag),
                               notes=tuple(notes))


def model_cards(registry: ModelRegistry) -> tuple[ModelCard, ...]:
    cards = []
    for name in registry.models():
        versions = registry.versions(name)
        production = registry.production(name)
        newest = versions[-1] if versions else None
        plan = registry.serving_plan(name)
        cards.append(ModelCard(
            name=name, production=None if production is None else production.version,
            versions=len(versions), newest=None if newest is None else newest.version,
            newest_stage=None if newest is None else newest.stage,
            plan=None if not plan else f"{plan.get('kind')} of v{plan.get('candidate_version')}"
                                       f" at {float(plan.get('share', 0)):.0%}"))
    return tuple(cards)


def registry_entries(registry: ModelRegistry) -> list[TimelineEntry]:
    """Transitions into Staging or Production, and rollbacks (an archiving is implied by the
    promotion beside it), each with the drift events its version's lineage names."""
    entries = []
    for name in registry.models():
        moves = [t for t in registry.history(name)
                 if t.to_stage in (STAGING, PRODUCTION) or t.rollback][-MAX_TRANSITIONS:]
        for t in moves:
            lineage = registry.lineage(name, t.version) or {}
            entries.append(TimelineEntry(
                lane=REGISTRY, at_ms=t.at_ms,
                label=f"{name} v{t.version} → {t.to_stage}" + (" (rollback)" if t.rollback
                                                                else ""),
                status="rollback" if t.rollback else t.to_stage.lower(),
                ref=f"{name}:v{t.version}:{t.to_stage}:{t.at_ms}", detail=t.reason,
                drift_ids=tuple(str(d) for d in lineage.get("drift_ids") or ()),
                version=t.version))
    return entries


def job_entries(path: Path) -> list[TimelineEntry]:
    """The controller's jobs; none when it never ran (no state file)."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    entries = []
    for job_id, job in state.get("jobs", {}).items():
        version = job.get("version")
        status = str(job.get("status", "?"))
        drift_ids = tuple(str(d) for d in job.get("drift_ids") or ())
        entries.append(TimelineEntry(
            lane=RETRAIN, at_ms=int(job["requested_at_ms"]), end_ms=job.get("ended_at_ms"),
            label=f"retrain {job.get('model_name', '?')}: {status}"
                  + (f" v{version}" if version is not None else ""),
            status=status, ref=str(job_id),
            detail=f"job {job_id}: {job.get('reason', '')}"
                   + (f"; drift events {', '.join(drift_ids)}" if drift_ids else ""),
            drift_ids=drift_ids, version=version))
    return entries
