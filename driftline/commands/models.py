"""`driftline models …`: the model registry from the command line.

Stage changes are published to ``driftline.models`` as ``driftline.ModelEvent`` records when a
broker is configured (:mod:`driftline.adapters.model_events`), which is how running scorers learn
to hot-swap. ``--view`` defaults to the deployment's feature view when it has exactly one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from driftline.core.features import FeatureView
from driftline.core.registry import PRODUCTION, STAGES, ModelRegistry
from driftline.core.views import view_named, views_for
from driftline.settings import Settings


def _now_ms() -> int:
    return int(time.time() * 1000)


def resolve_view(settings: Settings, name: str | None, option: str = "--view") -> FeatureView:
    """The view called `name`, or the deployment's only view when `name` is None.

    With several views and no name, the error lists them and says to pick one with `option`.
    """
    if name is not None:
        return view_named(settings, name)
    views = views_for(settings)
    if len(views) != 1:
        raise ValueError(f"{len(views)} feature views read {settings.topic_events}: "
                         f"{', '.join(sorted(views))}; choose one with {option}")
    return next(iter(views.values()))


def _show(version) -> dict:
    return dataclasses.asdict(version)


def _controller_jobs(settings: Settings) -> dict[str, dict]:
    """The retrain controller's job records (for the drift events behind each job)."""
    try:
        state = json.loads((settings.data_dir / "retrain" / "controller.json").read_text())
    except (OSError, ValueError):
        return {}
    return state.get("jobs", {})


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def lineage_lines(registry: ModelRegistry, name: str, version: int,
                  jobs: dict[str, dict] | None = None) -> list[str]:
    """A version's lineage, newest first, back to a version trained from scratch: the job and
    the drift events that started it, its training data, its gates and its stage history."""
    lines: list[str] = []
    current: int | None = version
    while current is not None:
        v = registry.get(name, current)
        lineage = registry.lineage(name, current) or {}
        indent = "  " if lines else ""
        trainer = lineage.get("trainer") or v.tags.get("trainer", "?")
        lines.append(f"{indent}{name} v{current} ({v.stage}), created {_when(v.created_at_ms)}, "
                     f"trainer {trainer}")
        job_id = lineage.get("job_id") or v.tags.get("job_id")
        if job_id:
            job = (jobs or {}).get(job_id, {})
            lines.append(f"{indent}  job {job_id} (attempt {lineage.get('attempt', '?')})"
                         + (f": {job['reason']}" if job.get("reason") else ""))
            events = {e["drift_id"]: e for e in job.get("drift_events", [])}
            for drift_id in lineage.get("drift_ids") or []:
                e = events.get(drift_id)
                what = "" if e is None else (
                    f": {e['detector']} on {e['kind']} {e['subject']} of v{e['model_version']}, "
                    f"{e['statistic']:.4g} vs {e['threshold']:.4g}, detected at "
                    f"{_when(e['detected_at'])}")
                lines.append(f"{indent}  triggered by drift event {drift_id}{what}")
        first, last = v.training_range
        rows = lineage.get("rows") or {}
        lines.append(f"{indent}  training data: events {_when(first)} .. {_when(last)}"
                     + (f", {rows.get('train')} rows, {rows.get('holdout')} held out"
                        if rows else ""))
        for gate in (lineage.get("gates") or {}).get("gates", []):
            lines.append(f"{indent}  gate {gate['summary']}")
        for t in registry.history(name):
            if t.version == current:
                lines.append(f"{indent}  {_when(t.at_ms)} {t.from_stage} -> {t.to_stage}: "
                             f"{t.reason}")
        current = v.parent
    return lines


def run(args: argparse.Namespace, settings: Settings) -> int:
    registry = ModelRegistry(settings.data_dir / "registry")
    action = args.action
    if action == "list":
        rows = [_show(v) for name in registry.models() for v in registry.versions(name)]
        if args.json:
            print(json.dumps(rows, indent=2))
        for r in rows if not args.json else []:
            print(f"{r['name']:<12} v{r['version']:<4} {r['stage']:<11} "
                  f"{r['view']}@{r['view_version']}  auc={r['metrics'].get('roc_auc', '-')}")
        return 0
    if action == "show":
        versions = [registry.get(args.name, args.version)] if args.version else \
            registry.versions(args.name)
        if args.json:
            print(json.dumps({
                "versions": [dict(_show(v), lineage=registry.lineage(v.name, v.version))
                             for v in versions],
                "history": [dataclasses.asdict(t) for t in registry.history(args.name)]},
                indent=2))
            return 0
        jobs = _controller_jobs(settings)
        for version in reversed(versions):
            for line in lineage_lines(registry, version.name, version.version, jobs):
                print(line)
        return 0
    if action == "register":
        view = resolve_view(settings, args.view)
        version = registry.register(
            args.name, Path(args.onnx).read_bytes(), view=view.name, view_version=view.version,
            inputs=view.feature_names, training_range=tuple(args.training_range),
            metrics=json.loads(args.metrics), parent=args.parent, created_at_ms=_now_ms())
        print(json.dumps(_show(version), indent=2))
        return 0
    if action == "train-initial":
        from driftline.commands.training import train_initial

        view = resolve_view(settings, args.view)
        version, report = train_initial(registry, view, n_events=args.events,
                                        created_at_ms=_now_ms(), model_name=args.name)
        print(report.summary())
        promoted = [t for t in registry.history(args.name)
                    if t.version == version.version and t.to_stage == PRODUCTION]
        from driftline.adapters.model_events import publish

        publish(settings, promoted[-1])
        return 0
    if action in ("promote", "rollback"):
        if action == "promote":
            transition = registry.transition(args.name, args.version, args.stage,
                                             at_ms=_now_ms(), reason=args.reason,
                                             current_views=views_for(settings))
        else:
            transition = registry.rollback(args.name, at_ms=_now_ms(), reason=args.reason,
                                           current_views=views_for(settings))
        from driftline.adapters.model_events import publish

        published = publish(settings, transition)
        for t in transition.events():
            print(f"{t.model_name} v{t.version}: {t.from_stage} -> {t.to_stage}"
                  f"{' (published)' if published else ''}")
        return 0
    raise ValueError(f"unknown action {action}")


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="model registry: list, show, register, promote, rollback")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("show", help="a model's versions with their lineage")
    a.add_argument("name")
    a.add_argument("version", type=int, nargs="?")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("register")
    a.add_argument("name")
    a.add_argument("--onnx", required=True, help="path of the model.onnx to register")
    a.add_argument("--view", default=None,
                   help="feature view (default: the only one the deployment computes)")
    a.add_argument("--parent", type=int, default=None)
    a.add_argument("--metrics", default="{}", help="JSON object of metric name -> value")
    a.add_argument("--training-range", type=int, nargs=2, default=(0, 0),
                   metavar=("FIRST_MS", "LAST_MS"))
    a = actions.add_parser("promote")
    a.add_argument("name")
    a.add_argument("version", type=int)
    a.add_argument("--stage", default=PRODUCTION, choices=STAGES)
    a.add_argument("--reason", default="promoted by hand")
    a = actions.add_parser("rollback")
    a.add_argument("name")
    a.add_argument("--reason", default="rolled back by hand")
    a = actions.add_parser("train-initial", help="train, verify and promote the first model")
    a.add_argument("--name", default="fraud")
    a.add_argument("--view", default=None,
                   help="feature view (default: the only one the deployment computes)")
    a.add_argument("--events", type=int, default=60_000)
