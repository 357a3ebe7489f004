"""The `driftline` command. Each subcommand is a thin shell over a module that does the work."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from driftline.settings import Settings, describe


def _settings(dev_default: bool = False) -> Settings:
    environ = dict(os.environ)
    if dev_default:
        environ.setdefault("DRIFTLINE_PROFILE", "dev")
    return Settings.from_env(environ)


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings()
    current = settings.to_env()
    for env, default, doc in describe():
        print(f"{env:<34} {current.get(env, ''):<24} {doc} (default: {default or 'unset'})")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from driftline.stack import run_dev

    return run_dev(_settings(dev_default=True), with_services=not args.servers_only)


def cmd_topics(args: argparse.Namespace) -> int:
    from driftline import kafka

    settings = _settings()
    if args.action == "create":
        for topic, outcome in kafka.create_topics(settings).items():
            print(f"{topic}\t{outcome}")
    else:
        for topic, partitions in sorted(kafka.list_topics(settings).items()):
            print(f"{topic}\t{partitions}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from driftline.agents.worker import run_worker

    return run_worker(_settings())


def cmd_produce_demo(args: argparse.Namespace) -> int:
    from driftline.client import produce_demo

    summary = produce_demo(_settings(), n_events=args.events, fmt=args.format, seed=args.seed,
                           drift_at_event=args.drift_at)
    print(json.dumps(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from driftline.demo_run import run_demo

    return run_demo(_settings(dev_default=True), n_events=args.events)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline", description="Streaming ML features, scoring and monitoring.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print every DRIFTLINE_* setting, its value and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("dev", help="run the whole stack locally (embedded broker and Redis)")
    p.add_argument("--servers-only", action="store_true", help="start broker and Redis only")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("topics", help="create or list Driftline's topics on any Kafka")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run the feature worker (Faust)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("produce-demo", help="publish synthetic card transactions")
    p.add_argument("--events", type=int, default=10000)
    p.add_argument("--format", choices=["avro", "json"], default="avro")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--drift-at", type=int, default=None,
                   help="inject covariate and concept drift from this event index on")
    p.set_defaults(func=cmd_produce_demo)

    p = sub.add_parser("demo", help="the main job on embedded defaults, end to end")
    p.add_argument("--events", type=int, default=20000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("DRIFTLINE_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"driftline {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
