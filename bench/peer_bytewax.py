"""Peer of the pipeline benchmark: Bytewax 0.21, a per-entity 1 h sum of amount by event time.

Run by `bench/bench_pipeline.py` with the python of its own virtualenv (``bench/.peers/bytewax``:
bytewax 0.21, fastavro, confluent-kafka). One process, one worker (``cli_main``,
``workers_per_process=1``), no recovery. Bytewax's `KafkaSource` uses no consumer group: it
assigns every partition itself (one confluent-kafka consumer per partition) and reads from the
beginning with ``batch_size`` messages per poll (10,000 here: at Bytewax's default of 1,000 its
rate halves on this broker, FIELD-NOTES). Values are decoded (fastavro single-object, or JSON
with ``--format json``) into (event time, amount), keyed by the message key (entity_id), then:

- ``--window tumbling`` (its fastest window): `fold_window` with an `EventClock` on
  ``event_time`` (no wait: the topic is in event-time order per key) and a 1 h
  `TumblingWindower` aligned to the epoch, summing amount; a sum is emitted when its window
  closes. Events are counted in the folder, i.e. once folded into their window's state, plus any
  the clock declares late (reported separately; none are expected).
- ``--window rolling``: `stateful_map` with a per-key deque, an exact rolling 1 h sum emitted
  for every event (what one of Driftline's 19 features is), counted in the mapper.

Outputs go to a sink that discards them. The clock starts when Bytewax builds its first source
partition (its equivalent of a partition assignment); at ``--events`` counted the process
writes ``{"assigned_at", "done_at", "count", "late"}`` to ``--result`` and the parent stops it.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING
from peer_common import decoder, peer_arguments, write_result

HOUR = timedelta(hours=1)
HOUR_MS = 3_600_000


class Progress:
    """Counts events processed and writes the result file once `target` is reached."""

    def __init__(self, target: int, result: str) -> None:
        self.target, self.result = target, result
        self.assigned_at: float | None = None
        self.count = 0
        self.late = 0

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.count == self.target:
            write_result(self.result, assigned_at=self.assigned_at, count=self.count,
                         late=self.late)


class TimedKafkaSource(KafkaSource):
    """Bytewax's Kafka source, noting when it builds its first partition (the start of the clock:
    from then on it is reading)."""

    def __init__(self, progress: Progress, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        if self.progress.assigned_at is None:
            self.progress.assigned_at = time.time()
        return super().build_part(step_id, for_part, resume_state)


class _Discard(StatelessSinkPartition):
    def write_batch(self, items: list) -> None:
        pass


class DiscardSink(DynamicSink):
    """A dataflow needs an output; the results themselves are not the measurement."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard()


def build_flow(args: argparse.Namespace, progress: Progress) -> Dataflow:
    decode = decoder(args.format, args.schema)
    utc = timezone.utc

    def parse(msg: Any) -> tuple[str, tuple[Any, float]]:
        event = decode(msg.value)
        # Windows need an aware datetime; the rolling state works on the int ms directly.
        t = event["event_time"]
        ts = datetime.fromtimestamp(t / 1000, tz=utc) if args.window == "tumbling" else t
        return msg.key.decode(), (ts, event["amount"])

    flow = Dataflow("driftline_peer")
    source = TimedKafkaSource(progress, [args.bootstrap], [args.topic], tail=True,
                              starting_offset=OFFSET_BEGINNING, batch_size=args.batch_size)
    messages = op.input("kafka", flow, source)
    keyed = op.map("decode", messages, parse)

    if args.window == "tumbling":
        def fold(total: float, value: tuple[datetime, float]) -> float:
            progress.add()
            return total + value[1]

        def late(item: Any) -> None:
            progress.late += 1
            progress.add()

        clock = EventClock(ts_getter=lambda v: v[0], wait_for_system_duration=timedelta(0))
        windower = TumblingWindower(length=HOUR,
                                    align_to=datetime(1970, 1, 1, tzinfo=timezone.utc))
        windows = fold_window("sum_1h", keyed, clock, windower, builder=float,
                              folder=fold, merger=lambda a, b: a + b)
        op.inspect("count_late", windows.late, lambda step, item: late(item))
        out = windows.down
    else:
        def roll(state: tuple[deque, float] | None, value: tuple[int, float]
                 ) -> tuple[tuple[deque, float], float]:
            window, total = state if state is not None else (deque(), 0.0)
            t, amount = value
            window.append(value)
            total += amount
            while window[0][0] <= t - HOUR_MS:  # the window is (t - 1 h, t]
                total -= window.popleft()[1]
            progress.add()
            return (window, total), total

        out = op.stateful_map("rolling_sum_1h", keyed, roll)
    op.output("discard", out, DiscardSink())
    return flow


def main() -> None:
    parser = peer_arguments(__doc__, group=False)
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    parser.add_argument("--schema", help="writer schema file (bench_pipeline writes it)")
    parser.add_argument("--window", choices=["tumbling", "rolling"], default="tumbling")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="messages per source poll (Bytewax's default is 1,000)")
    args = parser.parse_args()
    progress = Progress(args.events, args.result)
    cli_main(build_flow(args, progress), workers_per_process=1)


if __name__ == "__main__":
    main()
