"""Throughput of `FeatureEngine` on the demo view (run by hand: `python bench/bench_engine.py`).

Synthetic card traffic: 500k events on 5k cards over ~3 days (~33 transactions per card per day,
so the 24 h windows hold real state), arrival shuffled within the 60 s lateness. Prints events/s
and retained state rows for several batch sizes, one core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from driftline.core.features import EventBatch, FeatureEngine, load_definitions
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1_000, 5_000, 20_000])
    args = parser.parse_args()
    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
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
