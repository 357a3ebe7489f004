"""`driftline models …`: the model registry from the command line.

Stage changes are published to ``driftline.models`` as ``driftline.ModelEvent`` records when a
broker is configured, which is how running scorers learn to hot-swap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from driftline.registry import PRODUCTION, STAGES, ModelRegistry, Transition
from driftline.settings import Settings
from driftline.views import view_named, views_for


def _now_ms() -> int:
    return int(time.time() * 1000)


def publish(settings: Settings, transition: Transition) -> bool:
    """Send every ModelEvent of `transition`; False when no broker is configured."""
    if not settings.kafka_bootstrap:
        print("DRIFTLINE_KAFKA_BOOTSTRAP is not set: the transition was not published; "
              "running scorers pick it up on POST /model/reload", file=sys.stderr)
        return False
    from driftline import kafka
    from driftline.codec.single_object import encode

    producer = kafka.make_producer(settings)
    for event in transition.events():
        producer.produce(settings.topic_models, encode("driftline.ModelEvent",
                                                       event.to_model_event()))
    producer.flush_or_raise()
    return True


def _show(version) -> dict:
    return dataclasses.asdict(version)


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
        print(json.dumps({"versions": [_show(v) for v in versions],
                          "history": [dataclasses.asdict(t) for t in registry.history(args.name)]},
                         indent=2))
        return 0
    if action == "register":
        view = view_named(settings, args.view)
        version = registry.register(
            args.name, Path(args.onnx).read_bytes(), view=view.name, view_version=view.version,
            inputs=view.feature_names, training_range=tuple(args.training_range),
            metrics=json.loads(args.metrics), parent=args.parent, created_at_ms=_now_ms())
        print(json.dumps(_show(version), indent=2))
        return 0
    if action == "train-initial":
        from driftline.training import train_initial

        view = view_named(settings, args.view)
        version, report = train_initial(registry, view, n_events=args.events,
                                        created_at_ms=_now_ms(), model_name=args.name)
        print(report.summary())
        promoted = [t for t in registry.history(args.name)
                    if t.version == version.version and t.to_stage == PRODUCTION]
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
    a = actions.add_parser("show")
    a.add_argument("name")
    a.add_argument("version", type=int, nargs="?")
    a = actions.add_parser("register")
    a.add_argument("name")
    a.add_argument("--onnx", required=True, help="path of the model.onnx to register")
    a.add_argument("--view", default="transactions_v1")
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
    a.add_argument("--view", default="transactions_v1")
    a.add_argument("--events", type=int, default=60_000)
