"""The FeatureRecord codecs and the engine's state size, on demo-like data.

Run by hand: ``.venv/bin/python bench/bench_records.py`` (~1 min).

* FeatureRecordEncoder.encode_keyed: 10,000 records of the demo view's shape (19 features,
  3 % with a null, 3 slices), microseconds a record, best of ``--repeat``;
* the scorer's read: FeatureRecordReader.read plus the generic decoding of the records it
  leaves (Decoder.decode_many), at several shares of records holding a null;
* the feature engine's state on demo partition 0 (the stream of `bench_engine.py
  --demo-partition`, seed 7, 5,000 cards): its snapshot and last delta packed as the Redis
  state backend stores them (``np.savez``), in bytes.
The numbers depend on the machine and on what else runs on it; compare runs made together.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from driftline.adapters.redis_state import pack
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.feature_records import FeatureRecordEncoder, FeatureRecordReader
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, FeatureEngine, load_definitions
from driftline.core.partitioner import partition_for
from driftline.feature_defs import DEFINITIONS_DIR

VIEW, VERSION = "transactions_v1", "0123456789ab"
NAMES = [f"feature_{i}" for i in range(19)]
SLICES = ["segment", "channel", "country"]


def best_us(run, records: int, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) / records * 1e6


def records(n: int, null_share: float, seed: int = 0) -> tuple[list, list, np.ndarray, np.ndarray,
                                                                 list]:
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 50.0, size=(n, len(NAMES)))
    values[rng.random(n) < null_share, 15] = np.nan
    return ([f"ev-{i:010d}" for i in range(n)], [f"card-{i % 3000:06d}" for i in range(n)],
            1_700_000_000_000 + np.arange(n), values,
            [[("a", "b", "c")[i % 3] for i in range(n)], ["pos"] * n, ["DE"] * n])


def codecs(n: int, repeat: int) -> None:
    encoder = FeatureRecordEncoder(VIEW, VERSION, NAMES, SLICES)
    batch = records(n, 0.03)
    print(f"encode_keyed: {best_us(lambda: encoder.encode_keyed(*batch), n, repeat):.3f} us a "
          f"record ({n:,} records, 3 % with a null)")
    reader, decoder = FeatureRecordReader(VIEW, VERSION, NAMES), Decoder("driftline.FeatureRecord")
    for share in (0.0, 0.026, 0.3):
        messages = encoder.encode_batch(*records(n, share))

        def read(messages=messages):
            fast = reader.read(messages)
            if fast.others:
                decoder.decode_many([messages[i] for i in fast.others])
            return fast

        left = len(read().others)
        print(f"read, {share:5.1%} with a null: {best_us(read, n, repeat):.3f} us a record "
              f"({left:,} left to the generic decoder)")


def state(events: int) -> None:
    view = load_definitions(DEFINITIONS_DIR).view(VIEW)
    mine = [e for e in DemoGenerator(DemoConfig(seed=7, n_entities=5_000)).events(events)
            if partition_for(e["entity_id"], 6) == 0]
    engine, delta = FeatureEngine(view), {}
    for start in range(0, len(mine), 5_000):
        chunk = mine[start:start + 5_000]
        delta = engine.process(EventBatch.from_records(
            chunk, np.arange(start, start + len(chunk)), view)).state_delta
    snapshot = engine.snapshot()
    print(f"state of demo partition 0 after {events:,} events ({engine.state_rows:,} rows): "
          f"snapshot {len(pack(snapshot)):,} bytes packed; last delta "
          f"({len(delta['seq']):,} rows) {len(pack(delta)):,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="demo events for the state size (partition 0 holds a sixth)")
    args = parser.parse_args()
    codecs(args.records, args.repeat)
    state(args.events)


if __name__ == "__main__":
    main()
