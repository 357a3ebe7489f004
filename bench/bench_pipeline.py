"""End-to-end throughput of Driftline's feature worker against stream-processing peers.

Run by hand: ``.venv/bin/python bench/bench_pipeline.py --events 1000000``.

One run starts the embedded broker and a throw-away redis-server, produces N demo events (Avro
single-object, keyed by entity_id) to one 6-partition topic (and, when a selected peer reads
JSON, a JSON copy of the same events to a second topic), then measures, one at a time and each in
a fresh consumer group over the same topic contents:

1. the peers of ``--peers`` (`bench/peers.py`): a bare Faust agent that only counts, Quix
   Streams, Bytewax and Pathway each computing a per-entity 1 h window sum of amount (each
   peer's docstring says exactly what), the last three in virtualenvs of their own. They run
   first, before Driftline's latency phases append events to the topic, so that every system's
   full-load phase reads exactly the N events;
2. `driftline worker`: for each count of ``--workers`` (``1,2`` measures one process, then two in
   one group; each count has its own group, features topic and data directory), from the moment
   every partition is assigned across the processes' ``/health`` until the offsets they commit
   to Redis reach the end of every partition. With the last count still running: a latency
   phase at a fixed produce rate, with exact event-to-Redis latencies measured here (commit
   observed by polling the offsets) next to the estimate from the workers' own histograms; then
   (unless ``--no-predictions``) for each count of ``--scorers``, that many `driftline serve`
   scorers in one group score the features backlog (their combined rate), and with the last
   count running a second latency phase measures event-to-store and event-to-prediction (event
   created to its prediction read from the predictions topic).

Prints Markdown tables and writes them to ``bench/results/pipeline-<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from peers import DEFAULT_PEERS, PEERS, Peer, RunContext, python_for, version_of

from driftline.adapters import kafka
from driftline.adapters.redis_layout import StateKeys
from driftline.commands import local_servers
from driftline.commands.dev_stack import spawn_service
from driftline.commands.local_servers import ManagedProcess
from driftline.core.codec.feature_records import leading_string
from driftline.core.codec.schema_set import SchemaSet, strip_logical_types
from driftline.core.codec.single_object import MAGIC, encode
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
EVENT_SCHEMA = "driftline.TransactionEvent"


@dataclass
class Row:
    system: str
    per_event: str
    events_per_s: float | None
    latency: str
    command: str


@dataclass
class Scale:
    """One full-load measurement of a stage with a given number of processes in one group."""

    stage: str
    processes: int
    rate: float | None
    load: float  # 1-min load average as the processes started: were the cores free?


# -- producing ---------------------------------------------------------------------------------
class EventSource:
    """Demo events, encoded, in event-time order; later calls continue the same stream."""

    def __init__(self, entities: int, seed: int) -> None:
        self.generator = DemoGenerator(DemoConfig(seed=seed, n_entities=entities))
        self.schemas = SchemaSet.load()

    def encoded(self, n: int) -> list[tuple[bytes, bytes]]:
        return self._encode(n, json_copy=False)[0]

    def encoded_with_json(self, n: int) -> tuple[list[tuple[bytes, bytes]],
                                                 list[tuple[bytes, bytes]]]:
        """The next n events as Avro single-object and, the same events, as compact JSON."""
        return self._encode(n, json_copy=True)

    def _encode(self, n: int, json_copy: bool) -> tuple[list[tuple[bytes, bytes]],
                                                        list[tuple[bytes, bytes]]]:
        avro, as_json = [], []
        for start in range(0, n, 50_000):
            for event in self.generator.events(min(50_000, n - start)):
                key = event["entity_id"].encode()
                avro.append((key, encode(EVENT_SCHEMA, event, self.schemas)))
                if json_copy:
                    as_json.append((key, json.dumps(event, separators=(",", ":")).encode()))
        return avro, as_json


def write_peer_schema(path: Path) -> Path:
    """The events' writer schema for peers that run without Driftline (`peer_common.py`): the
    single-object header and the schema without logical types (event_time as int ms)."""
    schema = SchemaSet.load().get(EVENT_SCHEMA)
    path.write_text(json.dumps({"header_hex": (MAGIC + schema.fingerprint).hex(),
                                "schema": strip_logical_types(schema.declared)}))
    return path


def produce_all(settings: Settings, messages: list[tuple[bytes, bytes]], compression: str,
                topic: str | None = None) -> tuple[float, dict[int, int]]:
    """Produce as fast as the producer goes (to the events topic unless `topic`).

    Returns the seconds until every message was acked and the end offset of each partition,
    taken from the delivery reports: ListOffsets on the embedded broker answers a wrong high
    watermark (1 after 30k messages in one test), so the bench does not ask the broker.
    """
    ends: dict[int, int] = {}
    failures: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failures.append(str(err))
        elif msg.offset() >= ends.get(msg.partition(), 0):
            ends[msg.partition()] = msg.offset() + 1

    producer = Producer(kafka.producer_config(settings, on_delivery=on_delivery,
                                              **{"compression.type": compression}))
    topic = topic or settings.topic_events
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining or failures:
        raise RuntimeError(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}")
    return elapsed, ends


# -- Driftline processes -----------------------------------------------------------------------
def start_services(settings: Settings, service: str, n: int, log_dir: Path, tag: str
                   ) -> list[ManagedProcess]:
    """n `driftline worker` or `serve` processes in one consumer group, each on a free port,
    spawned together so that their group joins overlap."""
    role = {"worker": "worker_port", "scorer": "scorer_port"}[service]
    procs: list[ManagedProcess] = []
    try:
        for i in range(n):
            procs.append(spawn_service(settings.replace(**{role: 0}), service, log_dir,
                                       name=f"{tag}-{i + 1}"))
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: list[ManagedProcess]) -> None:
    for proc in procs:
        proc.stop()


def health(proc: ManagedProcess) -> dict | None:
    """The process's /health body (also from a 503), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{proc.address}/health", timeout=1) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_settled(procs: list[ManagedProcess], partitions: int,
                 stream: Callable[[dict], dict | None], timeout: float = 90.0) -> float:
    """The wall-clock time at which the group's assignment has settled: every partition
    assigned exactly once across `procs`, and every process holding some (one without any has
    not joined yet: a rebalance is still to come). The start of a full-load clock.

    `stream` picks the batch loop's part of a /health body (the worker's is the body itself,
    the scorer's is under ``stream``)."""
    deadline = time.monotonic() + timeout
    holders = min(len(procs), partitions)
    last = "no answer"
    while True:
        owned: list[list[int]] = []
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail(40)}")
            body = health(proc)
            loop = stream(body) if body is not None else None
            ok = loop is not None and loop.get("status") == "ok"
            owned.append(list(loop.get("assigned_partitions", [])) if ok else [])
        flat = sorted(p for ps in owned for p in ps)
        if flat == list(range(partitions)) and sum(1 for ps in owned if ps) == holders:
            return time.time()
        last = str(owned)
        if time.monotonic() > deadline:
            raise TimeoutError(f"assignment not settled within {timeout:.0f}s ({last}):\n"
                               f"{procs[0].log_tail(20)}")
        time.sleep(0.02)


def committed(client: redis.Redis, settings: Settings) -> dict[int, int]:
    """The next offset the feature stage will consume, per events partition, as committed in
    Redis (``redis_layout.StateKeys``: one offsets hash per partition)."""
    topic, group = settings.topic_events, settings.group_features
    keys = StateKeys(group, topic)
    pipe = client.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.hget(keys.offsets(p), topic)
    return {p: int(o) for p, o in enumerate(pipe.execute()) if o is not None}


def wait_caught_up(client: redis.Redis, settings: Settings, ends: dict[int, int],
                   procs: list[ManagedProcess], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = committed(client, settings)
        if all(done.get(p, 0) >= end for p, end in ends.items()):
            return time.time()
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail(40)}")
        time.sleep(0.02)
    done = committed(client, settings)
    raise TimeoutError(f"workers not caught up after {timeout:.0f}s: {done} of {ends}")


def scorer_messages(procs: list[ManagedProcess]) -> int | None:
    """Feature records the scorers have scored and committed (``/health`` stream.messages)."""
    total = 0
    for proc in procs:
        body = health(proc)
        if body is None or "stream" not in body:
            return None
        total += int(body["stream"].get("messages", 0))
    return total


def wait_scorers_idle(procs: list[ManagedProcess], quiet_s: float, timeout: float
                      ) -> tuple[float, int]:
    """(time of the last change, count) once the scorers' scored count has not moved for
    `quiet_s`: the backlog is scored (the features topic's end offsets cannot be asked of this
    broker)."""
    deadline = time.monotonic() + timeout
    count, changed_at = -1, time.time()
    while time.monotonic() < deadline:
        now_count = scorer_messages(procs)
        now = time.time()
        if now_count is not None and now_count != count:
            count, changed_at = now_count, now
        elif count > 0 and now - changed_at >= quiet_s:
            return changed_at, count
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail(40)}")
        time.sleep(0.05)
    raise TimeoutError(f"scorers still busy after {timeout:.0f}s ({count:,} scored)")


def scrape_histogram(url: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one Prometheus histogram."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.compile(rf'^{name}_bucket\{{.*?le="([^"]+)".*?\}} ([0-9.e+]+)$', re.M)
    return {float(le): float(v) for le, v in pattern.findall(text)}


def scrape_histograms(procs: list[ManagedProcess], name: str) -> dict[float, float]:
    """One histogram summed over processes (the same buckets in each)."""
    total: dict[float, float] = {}
    for proc in procs:
        for le, count in scrape_histogram(f"{proc.address}/metrics", name).items():
            total[le] = total.get(le, 0.0) + count
    return total


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus-style estimate: linear interpolation inside the bucket holding quantile q."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


class CommitWatcher(threading.Thread):
    """Polls the committed-offsets hash; each poll is (time it was read, offsets)."""

    def __init__(self, client: redis.Redis, settings: Settings, interval_s: float) -> None:
        super().__init__(daemon=True, name="commit-watcher")
        self.client, self.settings, self.interval_s = client, settings, interval_s
        self.polls: list[tuple[float, dict[int, int]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            offsets = committed(self.client, self.settings)
            self.polls.append((time.time(), offsets))
            self.stop_event.wait(self.interval_s)


class PredictionWatcher(threading.Thread):
    """Reads the predictions topic from the start; the first time each event id was read."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="prediction-watcher")
        # Measuring instrument: a short fetch wait so it adds little to what it measures.
        self.consumer = Consumer(kafka.consumer_config(
            settings, f"bench-predictions-{time.time_ns()}", **{"fetch.wait.max.ms": 10}))
        self.consumer.assign([TopicPartition(settings.topic_predictions, p, 0)
                              for p in range(settings.partitions)])
        self.first_seen: dict[bytes, float] = {}
        self.count = 0
        self.last_read = 0.0  # monotonic time of the last message read
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                got = self.consumer.consume(1, 0.1)  # wait for one, then take what is there
                if got:
                    got += self.consumer.consume(10_000, 0)
                now = time.time()
                for m in got:
                    if m.error() is None:
                        self.first_seen.setdefault(leading_string(m.value()), now)
                        self.count += 1
                if got:
                    self.last_read = time.monotonic()
        finally:
            self.consumer.close()


def prepare_model(settings: Settings, seed: int) -> None:
    """Train a model on 20k demo events and promote it in the registry the scorers read."""
    from bench_scoring import register, train

    from driftline.core.features import load_definitions
    from driftline.feature_defs import DEFINITIONS_DIR

    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
    _, onnx_bytes, data = train(view, 20_000, seed)
    register(settings.data_dir / "registry", view, onnx_bytes, data)


def read_all_predictions(settings: Settings, scorers: list[ManagedProcess], timeout: float
                         ) -> PredictionWatcher:
    """A watcher of the predictions topic that has read every prediction so far."""
    watcher = PredictionWatcher(settings)
    watcher.start()
    deadline = time.monotonic() + timeout
    # Caught up: predictions were read, and none for 2 s.
    while watcher.count == 0 or time.monotonic() - watcher.last_read < 2.0:
        if not all(p.alive() for p in scorers) or not watcher.is_alive() \
                or time.monotonic() > deadline:
            watcher.stop_event.set()
            raise RuntimeError(f"predictions not all read ({watcher.count:,} read):"
                               f"\n{scorers[0].log_tail(20)}")
        time.sleep(0.1)
    return watcher


def latency_phase(settings: Settings, source: EventSource, n: int, rate: float,
                  client: redis.Redis, workers: list[ManagedProcess], poll_s: float,
                  compression: str, predictions: PredictionWatcher | None = None) -> dict:
    """Produce n events at a fixed rate; exact per-event latency plus the histogram estimate
    (the workers' histograms summed), and with `predictions`, each event's create time to the
    first read of its prediction."""
    hist = "driftline_event_to_store_seconds"
    messages = source.encoded(n + 1)  # the first one warms the producer up
    before = scrape_histograms(workers, hist)
    delivered: list[tuple[int, int, int]] = []  # partition, offset, create time (ms)
    created: dict[bytes, int] = {}  # event id -> create time (ms), with `predictions`

    def on_delivery(err, msg) -> None:
        if err is None:
            delivered.append((msg.partition(), msg.offset(), msg.timestamp()[1]))
            if predictions is not None:
                created[leading_string(msg.value())] = msg.timestamp()[1]

    producer = Producer(kafka.producer_config(settings, on_delivery=on_delivery,
                                              **{"compression.type": compression}))
    # Connect before the clock starts: a new producer holds its first messages until it has
    # metadata and a connection to the leader, and the events stamped meanwhile would arrive as
    # one burst already hundreds of ms old (a producer's start-up, not the worker's latency).
    warm_key, warm_value = messages.pop(0)
    producer.produce(settings.topic_events, warm_value, key=warm_key)
    producer.flush(30)
    delivered.clear()
    created.clear()
    watcher = CommitWatcher(client, settings, poll_s)
    watcher.start()
    try:
        started = time.perf_counter()
        tick = 0.01
        per_tick = rate * tick
        sent = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - started) / tick * per_tick) + int(per_tick))
            for key, value in messages[sent:due]:
                producer.produce(settings.topic_events, value, key=key)
            sent = max(sent, due)
            producer.poll(0)
            time.sleep(tick)
        producer.flush(60)
        achieved = n / (time.perf_counter() - started)
        ends: dict[int, int] = {}
        for p, offset, _ in delivered:
            ends[p] = max(ends.get(p, 0), offset + 1)
        caught_up_at = wait_caught_up(client, settings, ends, workers, timeout=300)
        if predictions is not None:  # every event's prediction read, or the timeout
            deadline = time.monotonic() + 120
            while any(i not in predictions.first_seen for i in created) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        watcher.stop_event.set()
        watcher.join(5)
    # The watcher may stop before it reads the last commit; wait_caught_up saw it at this time.
    watcher.polls.append((caught_up_at, ends))
    after = scrape_histograms(workers, hist)
    exact = _exact_latencies(delivered, watcher.polls)
    extra = {}
    if predictions is not None:
        to_prediction = np.array([predictions.first_seen[i] - ts / 1000
                                  for i, ts in created.items() if i in predictions.first_seen])
        extra = {"pred_p50": float(np.percentile(to_prediction, 50)),
                 "pred_p99": float(np.percentile(to_prediction, 99)),
                 "pred_max": float(to_prediction.max()), "pred_measured": len(to_prediction),
                 "pred_expected": len(created)}
    return {**extra,
        "events": n, "rate": rate, "achieved_rate": achieved,
        "exact_p50": float(np.percentile(exact, 50)), "exact_p99": float(np.percentile(exact, 99)),
        "exact_max": float(exact.max()), "measured": len(exact),
        "hist_p50": histogram_quantile(0.5, before, after),
        "hist_p99": histogram_quantile(0.99, before, after),
        "poll_ms": poll_s * 1000,
        "poll_count": len(watcher.polls),
    }


def _exact_latencies(delivered: list[tuple[int, int, int]],
                     polls: list[tuple[float, dict[int, int]]]) -> np.ndarray:
    """Seconds from each event's create time to the first poll that saw it committed."""
    times = np.array([t for t, _ in polls])
    out = []
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for p, offset, ts in delivered:
        by_partition.setdefault(p, []).append((offset, ts))
    for p, rows in by_partition.items():
        seen = np.array([offsets.get(p, 0) for _, offsets in polls])
        seen = np.maximum.accumulate(seen)
        offs = np.array([o for o, _ in rows])
        ts = np.array([t for _, t in rows], dtype=np.float64) / 1000
        first = np.searchsorted(seen, offs, side="right")  # first poll with committed > offset
        ok = first < len(times)
        out.append(times[first[ok]] - ts[ok])
    return np.concatenate(out) if out else np.array([np.nan])


# -- Driftline phases --------------------------------------------------------------------------
WORKER_PER_EVENT = ("Avro decode + validate, 19 features (numpy + compiled loops), Parquet (events "
                    "+ features), 1 Avro FeatureRecord produced, Redis MULTI (online values, "
                    "state, offsets) per partition batch")


def measure_driftline(settings: Settings, args: argparse.Namespace, run_dir: Path,
                      client: redis.Redis, ends: dict[int, int], source: EventSource,
                      notes: list[str], scale: list[Scale]) -> list[Row]:
    """The full-load phase for each worker count in turn; with the last count, the latency
    phases (and the scorers)."""
    rows = []
    for i, n in enumerate(args.workers):
        # Each count in a group, features topic and data directory of its own: the counts
        # read the same events, and the scorers later score exactly one count's output.
        s = settings.replace(group_features=f"bench-driftline-w{n}",
                             topic_features=f"bench.features.w{n}", data_dir=run_dir / f"data-w{n}")
        kafka.create_topics(s)
        system = "Driftline feature worker" + (f", {n} processes" if n > 1 else "")
        command = f"driftline worker (DRIFTLINE_BATCH_SIZE={args.batch_size})" \
            + (f" x {n}, one group" if n > 1 else "")
        procs: list[ManagedProcess] = []
        load = os.getloadavg()[0]
        try:
            try:
                procs = start_services(s, "worker", n, run_dir / "logs", f"worker-w{n}")
                rate = full_load(s, args, client, ends, procs, notes)
                scale.append(Scale("feature worker, events/s (full load)", n, rate, load))
            except (RuntimeError, TimeoutError) as exc:
                print(f"driftline x{n} failed: {exc}", flush=True)
                notes.append(f"Driftline with {n} worker process(es) failed: "
                             f"{str(exc).splitlines()[0]}")
                scale.append(Scale("feature worker, events/s (full load)", n, None, load))
                rows.append(Row(system, WORKER_PER_EVENT, None, "", command))
                continue
            latency = "not measured"
            if i == len(args.workers) - 1:
                try:
                    latency = latency_phases(s, args, run_dir, client, source, rate, procs,
                                             notes, scale)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"driftline latency phase failed: {exc}", flush=True)
                    notes.append(f"Driftline latency phase failed: {str(exc).splitlines()[0]}")
                    latency = "failed"
            rows.append(Row(system, WORKER_PER_EVENT, rate, latency, command))
        finally:
            stop_all(procs)
    return rows


def full_load(settings: Settings, args: argparse.Namespace, client: redis.Redis,
              ends: dict[int, int], procs: list[ManagedProcess], notes: list[str]) -> float:
    """Events/s of the worker processes over the backlog: from the settled assignment until
    their committed offsets reach the ends. Events committed before the assignment settled
    (a process that started consuming before the others joined) are left out of the count."""
    settled_at = wait_settled(procs, settings.partitions, lambda body: body)
    before = sum(committed(client, settings).values())
    done_at = wait_caught_up(client, settings, ends, procs, args.timeout)
    rate = (args.events - before) / (done_at - settled_at)
    print(f"driftline x{len(procs)}: {rate:,.0f} events/s ({done_at - settled_at:.1f} s)",
          flush=True)
    if before:
        notes.append(f"{len(procs)} worker process(es): {before:,} events were committed before "
                     f"the assignment settled (processed while the group formed); the rate "
                     f"counts the other {args.events - before:,} over the time after.")
    return rate


def latency_phases(settings: Settings, args: argparse.Namespace, run_dir: Path,
                   client: redis.Redis, source: EventSource, rate: float,
                   workers: list[ManagedProcess], notes: list[str], scale: list[Scale]) -> str:
    """The latency phase with the workers caught up, then the scorers; the table's latency."""
    latency_rate = min(20_000, round(rate / 2, -2)) if args.latency_rate is None \
        else args.latency_rate
    latency = "not measured"
    if latency_rate > 0:
        lat = latency_phase(settings, source, args.latency_events, latency_rate, client, workers,
                            args.poll_ms / 1000, args.compression)
        latency = (f"{lat['exact_p50'] * 1000:,.0f} / {lat['exact_p99'] * 1000:,.0f} ms "
                   f"(histogram estimate {lat['hist_p50'] * 1000:,.0f} / "
                   f"{lat['hist_p99'] * 1000:,.0f} ms)")
        notes.append(
            f"Driftline latency phase ({len(workers)} worker process(es)): {lat['events']:,} "
            f"more events at {lat['rate']:,.0f}/s target ({lat['achieved_rate']:,.0f}/s "
            f"achieved) with the workers caught up. Exact = event create time to the first read "
            f"of the Redis offsets showing it committed (read every {lat['poll_ms']:g} ms, "
            f"{lat['poll_count']:,} reads; {lat['measured']:,} events; max "
            f"{lat['exact_max'] * 1000:,.0f} ms). The histogram estimate interpolates inside "
            f"the workers' `driftline_event_to_store_seconds` buckets.")
        print(notes[-1], flush=True)
    if args.predictions:
        scored_phases(settings, args, run_dir, client, source, latency_rate, workers, notes,
                      scale)
    return latency


def scored_phases(settings: Settings, args: argparse.Namespace, run_dir: Path,
                  client: redis.Redis, source: EventSource, rate: float,
                  workers: list[ManagedProcess], notes: list[str], scale: list[Scale]) -> None:
    """For each scorer count: that many `driftline serve` processes in a fresh group score the
    features backlog (their combined rate); with the last count running, the second latency
    phase (event-to-store and event-to-prediction) unless `rate` is 0."""
    prepare_model(settings, args.seed)
    for i, n in enumerate(args.scorers):
        s = settings.replace(group_scorer=f"bench-scorer-s{n}",
                             topic_predictions=f"bench.predictions.s{n}")
        kafka.create_topics(s)
        procs: list[ManagedProcess] = []
        load = os.getloadavg()[0]
        try:
            procs = start_services(s, "scorer", n, run_dir / "logs", f"scorer-s{n}")
            settled_at = wait_settled(procs, s.partitions, lambda body: body.get("stream"))
            before = scorer_messages(procs) or 0
            done_at, count = wait_scorers_idle(procs, 2.0, args.timeout)
            backlog_rate = (count - before) / (done_at - settled_at)
            scale.append(Scale("scorer, feature records/s (backlog)", n, backlog_rate, load))
            print(f"scorer x{n}: {backlog_rate:,.0f} records/s ({count:,} records, "
                  f"{done_at - settled_at:.1f} s)", flush=True)
            if i == len(args.scorers) - 1 and rate > 0:
                notes.append(scored_latency_phase(s, args, client, source, rate, workers, procs))
                print(notes[-1], flush=True)
        except (RuntimeError, TimeoutError) as exc:
            print(f"scorer x{n} failed: {exc}", flush=True)
            notes.append(f"Scorers ({n} process(es)) failed: {str(exc).splitlines()[0]}")
            if not any(e.stage.startswith("scorer") and e.processes == n for e in scale):
                scale.append(Scale("scorer, feature records/s (backlog)", n, None, load))
        finally:
            stop_all(procs)


def scored_latency_phase(settings: Settings, args: argparse.Namespace, client: redis.Redis,
                         source: EventSource, rate: float, workers: list[ManagedProcess],
                         scorers: list[ManagedProcess]) -> str:
    """The second latency phase, scorers running: event-to-store and event-to-prediction."""
    predictions = read_all_predictions(settings, scorers, args.timeout)
    try:
        lat = latency_phase(settings, source, args.latency_events, rate, client, workers,
                            args.poll_ms / 1000, args.compression, predictions)
    finally:
        predictions.stop_event.set()
        predictions.join(5)
    return (f"With {len(scorers)} scorer process(es) running (`driftline serve`, batch size "
            f"{settings.batch_size:,}, a model trained and promoted by the bench) and "
            f"{len(workers)} worker process(es), {lat['events']:,} more events at "
            f"{lat['rate']:,.0f}/s target ({lat['achieved_rate']:,.0f}/s achieved): "
            f"**event-to-store p50 / p99 {lat['exact_p50'] * 1000:,.0f} / "
            f"{lat['exact_p99'] * 1000:,.0f} ms** (max {lat['exact_max'] * 1000:,.0f} ms); "
            f"**event-to-prediction p50 / p99 {lat['pred_p50'] * 1000:,.0f} / "
            f"{lat['pred_p99'] * 1000:,.0f} ms** (max {lat['pred_max'] * 1000:,.0f} ms; "
            f"{lat['pred_measured']:,} of {lat['pred_expected']:,} events' predictions read). "
            f"Event-to-prediction = event create time to the first read of its prediction "
            f"(by event id) on the predictions topic by a consumer assigned to every partition "
            f"(fetch.wait.max.ms 10).")


# -- peers -------------------------------------------------------------------------------------
def run_peer(python: str, script: str, extra: list[str], run_dir: Path, name: str,
             timeout: float) -> dict:
    result = run_dir / f"{name}.json"
    argv = [python, str(BENCH_DIR / script), "--result", str(result), *extra]
    proc = local_servers.spawn(name, argv, run_dir / "logs", address="")
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if not proc.alive():
                raise RuntimeError(f"{name} exited early:\n{proc.log_tail(40)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not finish in {timeout:.0f}s:\n{proc.log_tail(20)}")
            time.sleep(0.1)
        return json.loads(result.read_text())
    finally:
        proc.stop()


# What tells a peer's variants apart in the table's command column.
SHOWN_FLAGS = ("--window", "--format", "--batch-size", "--autocommit-ms")


def measure_peer(peer: Peer, ctx: RunContext, run_dir: Path, args: argparse.Namespace,
                 notes: list[str]) -> Row:
    extra = peer.args(ctx)
    shown = [f"{flag} {extra[i + 1]}" for i, flag in enumerate(extra) if flag in SHOWN_FLAGS]
    where = f"bench/.peers/{peer.venv}/bin/" if peer.venv else ""
    command = " ".join([f"{where}python bench/{peer.script}", *shown])
    try:
        python = python_for(peer)
    except (subprocess.CalledProcessError, OSError) as exc:
        notes.append(f"{peer.name}: its virtualenv could not be built ({exc})")
        return Row(peer.system.format(version="?"), peer.per_event, None, "", command)
    system = peer.system.format(version=version_of(peer, python))
    try:
        res = run_peer(python, peer.script, extra, run_dir, peer.name, args.timeout)
    except (RuntimeError, TimeoutError) as exc:
        print(f"{peer.name} failed: {exc}", flush=True)
        notes.append(f"{peer.name} failed: {str(exc).splitlines()[0]}")
        return Row(system, peer.per_event, None, "", command)
    if res.get("assigned_at") is None:
        notes.append(f"{peer.name}: no assignment time was observed, so no rate")
        return Row(system, peer.per_event, None, "", command)
    start = res["assigned_at"]
    rate = res["count"] / (res["done_at"] - start)
    print(f"{peer.name}: {rate:,.0f} events/s ({res['done_at'] - start:.1f} s)", flush=True)
    if res.get("first_output_at", start) < start:
        notes.append(f"{peer.name}: its first output came before its group was seen assigned: "
                     f"the rate is overstated")
    if res.get("late"):
        notes.append(f"{peer.name}: {res['late']:,} events were late for their window "
                     f"(counted, not summed)")
    return Row(system, peer.per_event, rate, "not measured", command)


# -- report ------------------------------------------------------------------------------------
def render(rows: list[Row], scale: list[Scale], header: list[str]) -> str:
    lines = [*header, "",
             "| system | per event | events/s | p50 / p99 event-to-store | command |",
             "|---|---|---:|---|---|"]
    for r in rows:
        rate = "failed" if r.events_per_s is None else f"{r.events_per_s:,.0f}"
        lines.append(f"| {r.system} | {r.per_event} | {rate} | {r.latency} | `{r.command}` |")
    if scale:
        lines += ["", "Scale-out: processes of one stage in one consumer group on the same "
                  "partitions, one machine; the rate is the group's combined rate.", "",
                  "| stage | processes | rate | ratio to 1 process | load average before |",
                  "|---|---:|---:|---:|---:|"]
        for stage in dict.fromkeys(s.stage for s in scale):
            runs = [s for s in scale if s.stage == stage]
            base = next((s.rate for s in runs if s.processes == 1 and s.rate), None)
            for s in runs:
                rate = "failed" if s.rate is None else f"{s.rate:,.0f}"
                ratio = f"{s.rate / base:.2f}x" if base and s.rate else "-"
                lines.append(f"| {stage} | {s.processes} | {rate} | {ratio} | {s.load:.2f} |")
    return "\n".join(lines) + "\n"


def process_counts(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]: process counts measured one after another."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts like 1,2; got {text!r}")
    return counts


def peer_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown}; known: {', '.join(PEERS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=10_000, help="Driftline worker batch")
    parser.add_argument("--workers", "--scale", type=process_counts, default=[1],
                        help="feature worker processes in one consumer group; a list (1,2) "
                             "measures each count in turn and reports the ratio to 1 process; "
                             "the latency phases run with the last count")
    parser.add_argument("--scorers", type=process_counts, default=[1],
                        help="scorer processes in one group, as --workers (the scorer phases "
                             "run with the last worker count)")
    parser.add_argument("--latency-events", type=int, default=200_000)
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="events/s in the latency phase; 0 = skip the phase; default: "
                             "20,000 or half the worker's measured throughput if that is lower "
                             "(above capacity, latency only measures the growing queue)")
    parser.add_argument("--no-predictions", dest="predictions", action="store_false",
                        help="skip the scorers (backlog rate, second latency phase with "
                             "event-to-prediction)")
    parser.add_argument("--poll-ms", type=float, default=2.0,
                        help="how often the latency phase reads the committed offsets")
    parser.add_argument("--compression", default="none",
                        help="producer compression of the events topic; Faust's aiokafka "
                             "needs the `lz4` package to read lz4 (Driftline's default)")
    parser.add_argument("--timeout", type=float, default=1800, help="per measured phase, seconds")
    parser.add_argument("--peers", type=peer_names, default=DEFAULT_PEERS,
                        help=f"comma-separated peers to measure (before Driftline), or none "
                             f"(default: all: {','.join(DEFAULT_PEERS)})")
    parser.add_argument("--only", nargs="+", choices=["driftline", *PEERS],
                        help="run exactly these systems (default: driftline and --peers)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: "
                             "bench/results/pipeline-<date>.md; a smoke run should write "
                             "elsewhere, that file may hold a real run of the day)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, data)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    systems = args.only or ["driftline", *args.peers]
    peers = [PEERS[name] for name in systems if name in PEERS]
    json_copy = any(peer.needs_json for peer in peers)

    run_dir = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    started: list[ManagedProcess] = []
    rows: list[Row] = []
    scale: list[Scale] = []
    notes: list[str] = []
    machine = (f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    try:
        broker = local_servers.start_broker(run_dir / "logs")
        started.append(broker)
        redis_server = local_servers.start_redis(run_dir / "logs")
        started.append(redis_server)
        settings = Settings(profile="dev", kafka_bootstrap=broker.address,
                            redis_url=redis_server.address, data_dir=run_dir / "data",
                            partitions=args.partitions, batch_size=args.batch_size,
                            worker_port=local_servers.free_port(), topic_events="bench.events",
                            topic_features="bench.features", group_features="bench-driftline",
                            topic_predictions="bench.predictions", group_scorer="bench-scorer",
                            scorer_port=local_servers.free_port())
        kafka.create_topics(settings)
        json_topic = f"{settings.topic_events}.json"

        source = EventSource(args.entities, args.seed)
        t = time.perf_counter()
        messages, json_messages = source.encoded_with_json(args.events) if json_copy \
            else (source.encoded(args.events), [])
        encode_s = time.perf_counter() - t
        produce_s, ends = produce_all(settings, messages, args.compression)
        del messages
        assert sum(ends.values()) == args.events, ends
        notes.append(f"Produced {args.events:,} events ({args.entities:,} entities, "
                     f"{args.partitions} partitions): {args.events / produce_s:,.0f} events/s "
                     f"(confluent-kafka, acks=all, "
                     f"compression {args.compression}, pre-encoded; demo generation + Avro "
                     f"encoding took another {encode_s:.1f} s). Not part of the comparison.")
        print(notes[-1], flush=True)
        if json_copy:
            kafka.create_topics(settings.replace(topic_events=json_topic))
            _, json_ends = produce_all(settings, json_messages, args.compression, json_topic)
            del json_messages
            assert sum(json_ends.values()) == args.events, json_ends
            notes.append(f"A JSON copy of the same events (same keys, so the same partitions; "
                         f"compact `json.dumps`) went to `{json_topic}` for the peers marked "
                         f"JSON copy.")
        client = redis.Redis.from_url(settings.redis_url_or_fail)

        # Peers first: Driftline's latency phases append events to the topic, and every
        # system's full-load phase must read exactly the N produced here.
        ctx = RunContext(bootstrap=settings.kafka_bootstrap_or_fail,
                         topic=settings.topic_events, json_topic=json_topic,
                         events=args.events, partitions=args.partitions, run_dir=run_dir,
                         schema_file=write_peer_schema(run_dir / "peer-schema.json"))
        peer_rows = [measure_peer(peer, ctx, run_dir, args, notes) for peer in peers]
        if "driftline" in systems:
            rows += measure_driftline(settings, args, run_dir, client, ends, source, notes,
                                      scale)
        rows += peer_rows
    finally:
        for proc in reversed(started):
            proc.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    today = dt.date.today().isoformat()
    header = [f"# Pipeline benchmark, {today}", "",
              f"`{' '.join(sys.argv)}` on {platform.node()} ({platform.machine()}, {machine}, "
              f"Python {platform.python_version()}); embedded Tansu broker, redis-server, "
              "measured one after another on the same topic contents.", "",
              *[f"- {n}" for n in notes]]
    table = render(rows, scale, header)
    print(table)
    out = args.out or BENCH_DIR / "results" / f"pipeline-{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
