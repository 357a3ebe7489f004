"""The `driftline` command. Each subcommand is a thin shell over a module that does the work."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from driftline.commands import models as models_command
from driftline.commands import reference as reference_command
from driftline.settings import Settings, describe


def _settings(own_stack: bool = False) -> Settings:
    """The one settings object of a command: the environment, else a running `driftline dev`.

    `own_stack` commands (`dev`, `demo`) start their own servers: they default to the dev
    profile and never adopt another stack's record. Unknown DRIFTLINE_* variables raise.
    """
    if own_stack:
        environ = dict(os.environ)
        environ.setdefault("DRIFTLINE_PROFILE", "dev")
        return Settings.from_env(environ)
    return Settings.discover()


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    current = settings.to_env()
    for env, default, doc in describe():
        print(f"{env:<34} {current.get(env, ''):<24} {doc} (default: {default or 'unset'})")
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.commands.dev_stack import run_dev

    return run_dev(settings, with_services=not args.servers_only, prometheus=args.prometheus,
                   prometheus_port=args.prometheus_port)


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters import kafka

    if args.action == "create":
        for topic, outcome in kafka.create_topics(settings).items():
            print(f"{topic}\t{outcome}")
    else:
        for topic, partitions in sorted(kafka.list_topics(settings).items()):
            print(f"{topic}\t{partitions}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.agents.worker import run_worker

    return run_worker(settings)


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.agents.monitor_service import run_monitor

    return run_monitor(settings)


def cmd_retrain_controller(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.agents.retrain_service import run_controller

    return run_controller(settings)


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.commands.retrain import run

    return run(args, settings)


def cmd_produce_demo(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.event_producer import produce_demo

    summary = produce_demo(settings, n_events=args.events, fmt=args.format, seed=args.seed,
                           drift_at_event=args.drift_at)
    print(json.dumps(summary))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.commands.demo import run_demo

    return run_demo(settings, n_events=args.events)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.serving.service import run_scorer

    return run_scorer(settings)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    return models_command.run(args, settings)


def cmd_reference(args: argparse.Namespace, settings: Settings) -> int:
    return reference_command.run(args, settings)


def _views(settings: Settings, name: str | None):
    """The named view, or every view of the deployment."""
    from driftline.core.views import view_named, views_for

    return [view_named(settings, name)] if name else list(views_for(settings).values())


def cmd_features(args: argparse.Namespace, settings: Settings) -> int:
    views = _views(settings, args.view)
    if args.action == "list":
        rows = [{"name": f.name, "aggregation": f.aggregation, "field": f.field,
                 "window": f.window.spec()["kind"],
                 "window_seconds": f.window.spec()["size_ms"] / 1000,
                 "view": v.name, "version": v.version}
                for v in views for f in v.features]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['view']}@{r['version']}  {r['name']:<24} {r['aggregation']:<22} "
                      f"{r['field'] or '-':<12} {r['window']} {r['window_seconds']:g}s")
        return 0
    if not args.entity:
        raise ValueError("features get needs an ENTITY id")
    from driftline.adapters.redis_client import connect
    from driftline.adapters.redis_layout import OnlineKeys
    from driftline.adapters.redis_online import RedisOnlineStore

    # The entity's key is found from its id, the partition count and the partitioner, as the
    # worker wrote it (one Redis or a cluster alike).
    store = RedisOnlineStore(connect(settings.redis_url_or_fail), 0,
                             OnlineKeys.for_settings(settings))
    found = {}
    for v in views:
        row = store.read(v.name, args.entity)
        if row is not None:
            found[v.name] = {"version": row.version, "event_time": row.event_time_ms,
                             "values": row.as_json()}
    if not found:
        print(f"no features for entity {args.entity!r}", file=sys.stderr)
        return 1
    print(json.dumps({"entity_id": args.entity, "views": found}, indent=None if args.json else 2))
    return 0


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.offline_store import OfflineStore
    from driftline.commands.backfill import backfill, write_backfill

    store = OfflineStore(settings.data_dir / "offline")
    for view in _views(settings, args.view):
        result = backfill(store, settings.topic_events, view)
        rows = write_backfill(store, view, result)
        print(json.dumps({"view": view.name, "version": view.version, "events": len(result.offset),
                          "rows": rows, "late": int((~result.applied).sum())}))
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.offline_store import OfflineStore
    from driftline.commands.backfill import audit_skew

    store = OfflineStore(settings.data_dir / "offline")
    clean = True
    for view in _views(settings, args.view):
        report = audit_skew(store, settings.topic_events, view)
        print(json.dumps(report.as_dict(), indent=2))
        clean &= report.clean and report.compared > 0
    return 0 if clean else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline", description="Streaming ML features, scoring and monitoring.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print every DRIFTLINE_* setting, its value and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("dev", help="run the whole stack locally (embedded broker and Redis)")
    p.add_argument("--servers-only", action="store_true", help="start broker and Redis only")
    p.add_argument("--prometheus", action="store_true",
                   help="also start Prometheus (Debian's prometheus binary) scraping every "
                        "service, with deploy/prometheus/rules.yml loaded")
    p.add_argument("--prometheus-port", type=int, default=9090,
                   help="Prometheus's port with --prometheus (0: a free one)")
    p.set_defaults(func=cmd_dev, own_stack=True)

    p = sub.add_parser("topics", help="create or list Driftline's topics on any Kafka")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run the feature worker (Faust)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="run the scorer: stream scoring, online API, hot swap")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("monitor", help="run the monitor: label join, drift and fairness "
                                       "detectors, drift events (Faust)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("retrain-controller",
                       help="run the retrain controller: drift events start retraining jobs, "
                            "gates decide, rollouts promote")
    p.set_defaults(func=cmd_retrain_controller)

    p = sub.add_parser("retrain", help="start a retraining job by hand and wait for its end")
    p.add_argument("model")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="a negative control: train on permuted labels (the gates must reject)")
    p.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the job to end (0: return at once)")
    p.set_defaults(func=cmd_retrain)

    models_command.add_parser(sub)
    sub.choices["models"].set_defaults(func=cmd_models)

    reference_command.add_parser(sub)
    sub.choices["reference"].set_defaults(func=cmd_reference)

    p = sub.add_parser("produce-demo", help="publish synthetic card transactions")
    p.add_argument("--events", type=int, default=10000)
    p.add_argument("--format", choices=["avro", "json"], default="avro")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--drift-at", type=int, default=None,
                   help="inject covariate and concept drift from this event index on")
    p.set_defaults(func=cmd_produce_demo)

    p = sub.add_parser("features", help="list feature definitions or read an entity's values")
    p.add_argument("action", choices=["list", "get"])
    p.add_argument("entity", nargs="?")
    p.add_argument("--view", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("backfill", help="recompute features from the archived raw events")
    p.add_argument("--view", default=None)
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("audit", help="compare recomputed features with what was served")
    p.add_argument("what", choices=["skew"])
    p.add_argument("--view", default=None)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="the main job on embedded defaults, end to end")
    p.add_argument("--events", type=int, default=60000)
    p.set_defaults(func=cmd_demo, own_stack=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(own_stack=getattr(args, "own_stack", False))
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.func(args, settings)
    except (ValueError, RuntimeError) as exc:
        print(f"driftline {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
