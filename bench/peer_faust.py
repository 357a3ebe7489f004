"""Peer of the pipeline benchmark: a bare Faust agent that only counts raw messages.

Run by `bench/bench_pipeline.py` as a subprocess. One agent over the events topic, values kept as
raw bytes, ``stream.take(5000, within=1)`` batches counted and nothing else, with the same dev
broker timings as Driftline's own Faust app (`driftline.agents.app.faust_broker_settings`). When
`--events` messages are counted it writes ``{"assigned_at", "done_at", "count"}`` (wall-clock
seconds, from first partition assignment to the last counted message) to `--result`; the parent
then stops this process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faust

from driftline.agents.app import faust_broker_settings
from driftline.settings import Settings


def build_app(args: argparse.Namespace) -> faust.App:
    settings = Settings(profile="dev", kafka_bootstrap=args.bootstrap, partitions=args.partitions)
    app = faust.App(args.group, store="memory://", web_enabled=False, autodiscover=False,
                    datadir=args.datadir, consumer_auto_offset_reset="earliest",
                    **faust_broker_settings(settings))
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    timing = {"assigned_at": None, "count": 0}
    result = Path(args.result)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        if timing["assigned_at"] is None and any(tp.topic == args.topic for tp in assigned):
            timing["assigned_at"] = time.time()

    @app.agent(topic)
    async def count(stream) -> None:
        async for batch in stream.take(5000, within=1):
            timing["count"] += len(batch)
            if timing["count"] >= args.events and not result.exists():
                tmp = result.with_suffix(".tmp")
                tmp.write_text(json.dumps({**timing, "done_at": time.time()}))
                tmp.rename(result)  # the parent never reads a half-written file

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="Faust app id = consumer group")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--datadir", required=True)
    args = parser.parse_args()
    app = build_app(args)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
