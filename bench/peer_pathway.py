"""Peer of the pipeline benchmark: Pathway 0.33, a per-entity 1 h tumbling sum of amount.

Run by `bench/bench_pipeline.py` with the python of its own virtualenv (``bench/.peers/pathway``:
pathway 0.33, fastavro, confluent-kafka). One process, one engine thread (Pathway's default),
no persistence, monitoring off. The topic is read by Pathway's own Rust Kafka reader in
**streaming** mode (its static mode trusts the broker's end offsets, which the embedded broker
gets wrong, and drops events) in a fresh consumer group from the earliest offset, with
``session.timeout.ms`` 6000 (lower, and its consumer loops on rejoins on this broker). The reader
pushes what it read into the engine every ``--autocommit-ms`` (100 here; Pathway's default of
1,500 ms leaves the last events of a run waiting up to 1.5 s for their minibatch).

- ``--format avro``: raw bytes, decoded by a Python UDF with fastavro (the same single-object
  bytes every system in the bench reads) into (entity_id, event_time, amount).
- ``--format json``: the JSON copy of the topic, parsed by Pathway's Rust JSON reader into the
  same three columns (its fast path; no Python per event).

Then ``windowby(event_time, tumbling(1 h), instance=entity_id).reduce(sum(amount), count())``:
one row per (entity, hour), updated incrementally as events arrive (Pathway's default
behaviour: results are revised, never finalised). A global ``sum(count)`` over those rows is the
number of events already reflected in the window sums; a subscription to that one-row table
writes ``{"assigned_at", "done_at", "count"}`` to ``--result`` when it reaches ``--events``, and
the parent stops the process.

Pathway has no assignment hook, so the clock starts when the consumer group is seen ``Stable``
from outside (an AdminClient polling DescribeGroups every 20 ms, in a thread): the moment its
partitions are assigned and it starts fetching, the other peers' rule.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import pathway as pw
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from peer_common import avro_decoder, peer_arguments, write_result

HOUR_MS = 3_600_000


class Event(pw.Schema):
    entity_id: str
    event_time: int
    amount: float


def watch_assignment(bootstrap: str, group: str, timing: dict[str, Any]) -> threading.Thread:
    """Note the first time the group is Stable (its members have their partitions)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def run() -> None:
        while timing["assigned_at"] is None:
            try:
                described = admin.describe_consumer_groups([group])[group].result(5)
                if described.state == ConsumerGroupState.STABLE:
                    timing["assigned_at"] = time.time()
                    return
            except Exception:  # noqa: BLE001 - an unknown group is an error until it exists
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=run, name="assignment-watch", daemon=True)
    thread.start()
    return thread


def read_events(args: argparse.Namespace) -> pw.Table:
    settings = {"bootstrap.servers": args.bootstrap, "group.id": args.group,
                "auto.offset.reset": "earliest", "session.timeout.ms": "6000"}
    common = {"mode": "streaming", "autocommit_duration_ms": args.autocommit_ms}
    if args.format == "json":
        return pw.io.kafka.read(settings, args.topic, format="json", schema=Event, **common)
    raw = pw.io.kafka.read(settings, args.topic, format="raw", **common)
    decode = avro_decoder(args.schema)

    @pw.udf(deterministic=True)
    def fields(data: bytes) -> tuple[str, int, float]:
        event = decode(data)
        return event["entity_id"], event["event_time"], event["amount"]

    decoded = raw.select(f=fields(pw.this.data))
    return decoded.select(entity_id=pw.this.f[0], event_time=pw.this.f[1],
                          amount=pw.this.f[2])


def main() -> None:
    parser = peer_arguments(__doc__)
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    parser.add_argument("--schema", help="writer schema file (bench_pipeline writes it)")
    parser.add_argument("--autocommit-ms", type=int, default=100,
                        help="how often the reader pushes what it read into the engine "
                             "(Pathway's default is 1500: the last events of a run then wait up "
                             "to 1.5 s, a large share of a run of a few seconds)")
    args = parser.parse_args()
    if args.format == "avro" and not args.schema:
        parser.error("--schema is required for --format avro")

    timing: dict[str, Any] = {"assigned_at": None}
    events = read_events(args)
    windows = events.windowby(pw.this.event_time, window=pw.temporal.tumbling(duration=HOUR_MS),
                              instance=pw.this.entity_id).reduce(
        entity_id=pw.this._pw_instance, window_start=pw.this._pw_window_start,
        total=pw.reducers.sum(pw.this.amount), n=pw.reducers.count())
    progress = windows.reduce(n=pw.reducers.sum(pw.this.n))

    def on_change(key: Any, row: dict[str, Any], is_addition: bool, **_: Any) -> None:
        # Pathway passes its arguments by keyword (also `time`, the engine's logical time).
        if timing.get("first_output_at") is None:  # a check on the assignment watch
            timing["first_output_at"] = time.time()
        if is_addition and row["n"] >= args.events:
            write_result(args.result, count=row["n"], **timing)

    pw.io.subscribe(progress, on_change=on_change)
    watch_assignment(args.bootstrap, args.group, timing)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
