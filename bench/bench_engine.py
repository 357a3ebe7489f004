"""Throughput of `FeatureEngine` on the demo view (run by hand: `python bench/bench_engine.py`).

Synthetic card traffic: 500k events on 5k cards over ~3 days (~33 transactions per card per day,
so the 24 h windows hold real state), arrival shuffled within the 60 s lateness. Prints events/s
and retained state rows for several batch sizes, one core.

``--demo-partition``: instead, one partition's share of the demo stream (`DemoGenerator`, seed 7,
the cards the default partitioner puts in partition 0 of 6; skewed, as in `bench_pipeline.py`).
The engine is warmed with batches of 5,000 up to ``--warm`` of that share (0.8: the state of a
worker near the end of a 1M-event run), then each batch size is timed from a copy of the warmed
engine over the next ``--measure`` events: the median milliseconds a batch and the microseconds
an event. Batches of ~300 are a partition's share of a worker's cycle at 20,000 events/s.

```
.venv/bin/python bench/bench_engine.py --demo-partition --batch-sizes 300 1700   # ~1 min
```
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, FeatureEngine, load_definitions
from driftline.core.partitioner import partition_for
from driftline.feature_defs import DEFINITIONS_DIR


def synthetic_stream(n_events: int, n_entities: int, span_ms: int, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    event_time = 1_700_000_000_000 + np.sort(rng.integers(0, span_ms, n_events))
    arrival = np.argsort(event_time + rng.integers(0, 50_000, n_events), kind="stable")
    entities = np.array([f"card-{i:06d}" for i in range(n_entities)])
    merchants = np.array([f"merchant-{i:05d}" for i in range(2_000)])
    return EventBatch(
        entity=entities[rng.integers(0, n_entities, n_events)],
        event_time_ms=event_time[arrival],
        seq=np.arange(n_events, dtype=np.int64),
        fields={
            "amount": np.round(rng.lognormal(3, 1, n_events), 2),
            "merchant_id": merchants[rng.zipf(1.3, n_events) % len(merchants)],
        },
    )


def demo_partition(view, n_events: int, warm: float, measure: int, sizes: list[int]) -> None:
    events = [e for e in DemoGenerator(DemoConfig(seed=7, n_entities=5_000)).events(n_events)
              if partition_for(e["entity_id"], 6) == 0]
    warm_end = int(len(events) * warm) // 5_000 * 5_000

    def batch(first: int, last: int) -> EventBatch:
        return EventBatch.from_records(events[first:last], np.arange(first, last), view)

    warmed = FeatureEngine(view)
    for start in range(0, warm_end, 5_000):
        warmed.process(batch(start, start + 5_000))
    end = min(len(events), warm_end + measure)
    print(f"demo stream, {n_events:,} events: partition 0 holds {len(events):,}; warmed on "
          f"{warm_end:,} ({warmed.state_rows:,} state rows), timed on the next {end - warm_end:,}")
    for size in sizes:
        engine = copy.deepcopy(warmed)
        batches = [batch(s, min(s + size, end)) for s in range(warm_end, end, size)]
        seconds = []
        for b in batches:
            started = time.perf_counter()
            engine.process(b)
            seconds.append(time.perf_counter() - started)
        print(f"batch {size:>6,}: {np.median(seconds) * 1e3:7.2f} ms a batch (median), "
              f"{sum(seconds) / (end - warm_end) * 1e6:6.1f} us an event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=None,
                        help="events generated (default 500,000; 1,000,000 with --demo-partition)")
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1_000, 5_000, 20_000])
    parser.add_argument("--demo-partition", action="store_true",
                        help="time partition 0's share of the demo stream instead")
    parser.add_argument("--warm", type=float, default=0.8)
    parser.add_argument("--measure", type=int, default=33_000)
    args = parser.parse_args()
    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
    if args.demo_partition:
        demo_partition(view, args.events or 1_000_000, args.warm, args.measure,
                       args.batch_sizes)
        return
    args.events = args.events or 500_000
    stream = synthetic_stream(args.events, args.entities, int(args.days * 86_400_000))
    print(
        f"view {view.name} v{view.version}: {len(view.features)} features, "
        f"{args.events:,} events, {args.entities:,} entities, {args.days} days"
    )
    for size in args.batch_sizes:
        engine = FeatureEngine(view)
        started = time.perf_counter()
        for start in range(0, args.events, size):
            engine.process(stream.take(slice(start, start + size)))
        elapsed = time.perf_counter() - started
        print(
            f"batch {size:>6,}: {args.events / elapsed:>10,.0f} events/s  "
            f"state rows {engine.state_rows:,}"
        )


if __name__ == "__main__":
    main()
