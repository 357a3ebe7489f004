"""Where the feature worker's time goes: its pipeline replayed in-process under cProfile.

Run by hand: ``.venv/bin/python bench/profile_worker.py --events 200000``.

Starts the embedded broker and a redis-server, produces demo events like
`bench/bench_pipeline.py`, reads them back in the batches the worker's loop would get
(``consume(batch_size)``), then feeds those batches to the worker's own pipeline
(`driftline.agents.worker.build_pipeline`: decode, features, Parquet, features topic, Redis)
twice: once plain, for the stage's events/s without Kafka reads, and once under cProfile. Prints
the share of each stage and the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from bench_pipeline import EventSource, produce_all

from driftline.adapters import kafka
from driftline.adapters.batch_loop import PartitionId, group_by_partition
from driftline.agents.worker import build_pipeline
from driftline.commands import local_servers
from driftline.settings import Settings

# (label, file suffix, function name) of the stages worth a line of their own.
STAGES = [
    ("decode + validate into columns (ColumnarDecoder.decode_columns)", "core/codec/columnar.py",
     "decode_columns"),
    ("columns -> engine batch (EventBatch.from_columns)", "core/features/engine.py",
     "from_columns"),
    ("feature engine (FeatureEngine.process)", "core/features/engine.py", "process"),
    ("Parquet writes (OfflineStore.write)", "adapters/offline_store.py", "write"),
    ("FeatureRecord encode (_encode)", "agents/features.py", "_encode"),
    ("FeatureRecord produce (send)", "agents/features.py", "send"),
    ("online values into the MULTI (online.queue)", "redis_online.py", "queue"),
    ("state delta pack (np.savez)", "adapters/redis_state.py", "pack"),
    ("Redis MULTI round trip (Pipeline.execute)", "redis/client.py", "execute"),
    ("producer flush (flush_or_raise)", "adapters/kafka.py", "flush_or_raise"),
]


def read_batches(settings: Settings, n: int, timeout: float = 120) -> list[list]:
    consumer = kafka.make_consumer(settings, "bench-profile-reader")
    consumer.subscribe([settings.topic_events])
    batches, seen = [], 0
    deadline = time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            msgs = [m for m in consumer.consume(settings.batch_size, 0.1) if m.error() is None]
            if msgs:
                batches.append(msgs)
                seen += len(msgs)
    finally:
        consumer.close()
    if seen < n:
        raise TimeoutError(f"read {seen} of {n} messages in {timeout:.0f}s")
    return batches


def replay(settings: Settings, batches: list[list], profiler: cProfile.Profile | None) -> float:
    pipeline = build_pipeline(settings)
    pipeline.on_assign([PartitionId(settings.topic_events, p)
                        for p in range(settings.partitions)])
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    pending = None
    for msgs in batches:  # as the batch loop drives it: compute N+1, finish N, send N+1
        staged = pipeline.prepare(group_by_partition(msgs))
        if pending is not None:
            pending.finish()
        staged.send()
        pending = staged
    if pending is not None:
        pending.finish()
    if profiler:
        profiler.disable()
    return time.perf_counter() - started


def stage_table(stats: pstats.Stats, total: float) -> list[str]:
    rows = []
    for label, suffix, name in STAGES:
        cum = sum(v[3] for (path, _, func), v in stats.stats.items()
                  if func == name and path.endswith(suffix))
        rows.append(f"| {label} | {cum:.2f} s | {100 * cum / total:.0f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="driftline-profile-"))
    started = []
    try:
        broker = local_servers.start_broker(run_dir / "logs")
        started.append(broker)
        server = local_servers.start_redis(run_dir / "logs")
        started.append(server)
        base = Settings(profile="dev", kafka_bootstrap=broker.address, redis_url=server.address,
                        partitions=6, batch_size=args.batch_size, topic_events="bench.events",
                        topic_features="bench.features", data_dir=run_dir / "plain")
        kafka.create_topics(base)
        produce_all(base, EventSource(args.entities, seed=7).encoded(args.events), "none")
        batches = read_batches(base, args.events)
        plain = replay(base.replace(group_features="plain"), batches, None)
        print(f"pipeline, no profiler: {args.events / plain:,.0f} events/s "
              f"({len(batches)} batches of up to {args.batch_size:,})")
        profiler = cProfile.Profile()
        profiled = replay(base.replace(group_features="profiled", data_dir=run_dir / "prof"),
                          batches, profiler)
        stats = pstats.Stats(profiler)
        print(f"\nunder cProfile: {profiled:.2f} s\n")
        print("| stage | cumulative | share |\n|---|---:|---:|")
        print("\n".join(stage_table(stats, stats.total_tt)))
        print()
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
