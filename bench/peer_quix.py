"""Peer of the pipeline benchmark: Quix Streams doing one windowed aggregation.

Run by `bench/bench_pipeline.py` with the python of its own virtualenv (``bench/.peers/quix``:
quixstreams 3.28, fastavro; Quix pins its own confluent-kafka). Values are Avro single-object
bytes decoded with fastavro (the writer schema from ``--schema``), the message timestamp is
the record's ``event_time``, and a 1 h window (60 s grace) keyed by the message key (entity_id)
sums ``amount`` and emits ``.final()`` results: sliding (``--window sliding``, the default: the
closest to a rolling feature) or tumbling (``--window tumbling``, Quix's fastest window). State
lives in RocksDB with changelog topics, Quix's defaults. Messages are counted in
``on_message_processed``; at `--events` the app writes ``{"assigned_at", "done_at", "count"}``
to `--result` and stops itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from peer_common import avro_decoder, peer_arguments
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

HOUR_MS = 3_600_000


class AvroSingleObject(Deserializer):
    """Avro single-object bytes of one known writer schema -> dict (schema checked by header)."""

    def __init__(self, schema_file: str) -> None:
        super().__init__()
        self.decode = avro_decoder(schema_file)

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        return self.decode(value)


def event_time(value: dict[str, Any], headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return value["event_time"]


def main() -> None:
    parser = peer_arguments(__doc__)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--schema", required=True, help="writer schema file (bench_pipeline)")
    parser.add_argument("--window", choices=["sliding", "tumbling"], default="sliding")
    args = parser.parse_args()
    result = Path(args.result)
    timing: dict[str, Any] = {"assigned_at": None, "count": 0}

    def processed(topic: str, partition: int, offset: int) -> None:
        timing["count"] += 1
        if timing["count"] == args.events:
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps({**timing, "done_at": time.time()}))
            tmp.rename(result)
            app.stop()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        # The dev broker holds a group join for the full rebalance timeout (FIELD-NOTES).
        consumer_extra_config={"session.timeout.ms": 6000, "max.poll.interval.ms": 6000,
                               "heartbeat.interval.ms": 1000},
        state_dir=args.state_dir,
        on_message_processed=processed,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, key_deserializer="str",
                      value_deserializer=AvroSingleObject(args.schema),
                      timestamp_extractor=event_time)
    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda value: value["amount"])
    if args.window == "sliding":
        sdf = sdf.sliding_window(duration_ms=HOUR_MS, grace_ms=60_000).sum().final()
    else:
        sdf = sdf.tumbling_window(duration_ms=HOUR_MS, grace_ms=60_000).sum().final()

    # Quix has no public assignment hook; wrap the private one to time from first assignment.
    on_assign = app._on_assign

    def timed_assign(consumer, partitions) -> None:
        on_assign(consumer, partitions)
        if timing["assigned_at"] is None and partitions:
            timing["assigned_at"] = time.time()

    app._on_assign = timed_assign
    app.run(sdf)


if __name__ == "__main__":
    main()
