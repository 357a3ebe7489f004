"""Per-record decoding against columnar decoding of raw TransactionEvents.

Run by hand: ``.venv/bin/python bench/bench_decode.py --events 100000 --batch 10000``.

For each encoding producers use (Avro single-object, Confluent wire format with an in-memory
registry, JSON), the same demo events are decoded in batches of ``--batch`` values by

* ``Decoder.decode_many`` (a validated dict per record), then ``EventBatch.from_records``;
* ``ColumnarDecoder.decode_columns`` (one array per field), then ``EventBatch.from_columns``.

Both decoders must agree (checked on every batch before timing). Prints microseconds per
record, the best of ``--repeat`` runs, and the speed-up. The numbers depend on the machine and
on what else runs on it; the ratios are what to compare.

``--polars`` (polars installed) adds the alternative the columnar decoder was measured
against: the single-object bodies joined into one in-memory Avro container block (header with
the schema's Parsing Canonical Form) read by ``polars.read_avro``, strings to object arrays.
It checks no body boundary and validates nothing (and panics on a truncated body), so it is
the lower bound of that route, not a decoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

from driftline.core.codec import ConfluentRegistry, Decoder, encode_confluent, to_json
from driftline.core.codec.columnar import ColumnarDecoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, load_definitions
from driftline.feature_defs import DEFINITIONS_DIR

SCHEMA = "driftline.TransactionEvent"
REGISTRY_ID = 7


def encoded_events(n: int, schemas: SchemaSet) -> dict[str, list[bytes]]:
    """The same `n` demo events in each encoding."""
    events = DemoGenerator(DemoConfig(seed=11)).events(n)
    schema = schemas.get(SCHEMA)
    return {
        "single-object": [encode(SCHEMA, e, schemas) for e in events],
        "confluent": [encode_confluent(REGISTRY_ID, schema, e) for e in events],
        "json": [to_json(SCHEMA, e, schemas) for e in events],
    }


def registry(schemas: SchemaSet) -> ConfluentRegistry:
    answer = json.dumps({"schema": json.dumps(schemas.get(SCHEMA).declared)}).encode()
    return ConfluentRegistry("http://registry.bench", lambda url: (200, answer))


def batches(values: list[bytes], size: int) -> list[list[bytes]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def best_us_per_record(run: Callable[[Sequence[bytes]], object], chunks: list[list[bytes]],
                       repeat: int) -> float:
    total = sum(map(len, chunks))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        best = min(best, time.perf_counter() - start)
    return best / total * 1e6


def polars_reader(schemas: SchemaSet) -> Callable[[Sequence[bytes]], object]:
    """``polars.read_avro`` of the single-object bodies joined into one container block."""
    import io

    import polars

    from driftline.core.codec.feature_records import zigzag_varint

    def varint_bytes(data: bytes) -> bytes:
        return zigzag_varint(len(data)) + data

    sync = bytes(range(16))
    metadata = {b"avro.schema": schemas.get(SCHEMA).canonical_form.encode(),
                b"avro.codec": b"null"}
    head = b"".join([b"Obj\x01", zigzag_varint(len(metadata)),
                     *(varint_bytes(k) + varint_bytes(v) for k, v in metadata.items()),
                     b"\x00", sync])

    def read(chunk: Sequence[bytes]) -> dict[str, np.ndarray]:
        bodies = b"".join([value[10:] for value in chunk])
        container = b"".join([head, zigzag_varint(len(chunk)), varint_bytes(bodies), sync])
        frame = polars.read_avro(io.BytesIO(container))
        return {name: frame[name].to_numpy() for name in frame.columns}

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000, help="values per decode call")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    parser.add_argument("--polars", action="store_true",
                        help="also time polars.read_avro of the joined bodies (single-object)")
    args = parser.parse_args()
    if args.polars:
        try:
            import polars  # noqa: F401
        except ImportError:
            parser.error("--polars needs polars: .venv/bin/pip install polars")

    schemas = SchemaSet.load()
    decoder = Decoder(SCHEMA, schemas, registry(schemas))
    columnar = ColumnarDecoder(decoder)
    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")

    def per_record_to_batch(chunk: Sequence[bytes]) -> EventBatch:
        records, _ = decoder.decode_many(chunk)
        return EventBatch.from_records(records, np.arange(len(records)), view)

    def columnar_to_batch(chunk: Sequence[bytes]) -> EventBatch:
        rows, _ = columnar.decode_columns(chunk)
        return EventBatch.from_columns(rows.columns, np.arange(len(rows)), view)

    print(f"{args.events} TransactionEvents in batches of {args.batch}, best of {args.repeat}; "
          f"Python {platform.python_version()}, {platform.machine()}")
    print(f"{'encoding':14} {'step':18} {'per record':>11} {'columnar':>9} {'speed-up':>9}")
    for encoding, values in encoded_events(args.events, schemas).items():
        chunks = batches(values, args.batch)
        for chunk in chunks:  # the two must agree before their speed means anything
            records, failures = decoder.decode_many(chunk)
            rows, column_failures = columnar.decode_columns(chunk)
            assert not failures and not column_failures and rows.to_records() == records
        for step, slow, fast in [
            ("decode", decoder.decode_many, columnar.decode_columns),
            ("decode+EventBatch", per_record_to_batch, columnar_to_batch),
        ]:
            slow_us = best_us_per_record(slow, chunks, args.repeat)
            fast_us = best_us_per_record(fast, chunks, args.repeat)
            print(f"{encoding:14} {step:18} {slow_us:8.2f} us {fast_us:6.2f} us "
                  f"{slow_us / fast_us:8.1f}x")
        if args.polars and encoding == "single-object":
            polars_us = best_us_per_record(polars_reader(schemas), chunks, args.repeat)
            print(f"{encoding:14} {'polars read_avro':18} {'':11} {polars_us:6.2f} us "
                  "(no boundary check, no validation)")


if __name__ == "__main__":
    main()
