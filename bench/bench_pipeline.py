"""End-to-end throughput of Driftline's feature worker against two stream-processing peers.

Run by hand: ``.venv/bin/python bench/bench_pipeline.py --events 1000000``.

One run starts the embedded broker and a throw-away redis-server, produces N demo events (Avro
single-object, keyed by entity_id) to one 6-partition topic, then measures, one at a time and each
in a fresh consumer group over the same topic contents:

1. the `driftline worker` process: from partitions assigned until the offsets it commits to Redis
   reach the end of every partition; then a latency phase at a fixed produce rate, with exact
   event-to-Redis latencies measured here (commit observed by polling the offsets hash) next to
   the estimate from the worker's own histogram; then (unless ``--no-predictions``) a
   `driftline serve` scorer with a freshly trained model joins, and a second latency phase
   measures event-to-store and event-to-prediction (event created to its prediction read from
   the predictions topic) with both services running;
2. `bench/peer_faust.py`: a bare Faust agent that only counts raw messages;
3. `bench/peer_quix.py`: Quix Streams decoding the Avro and summing amount in a 1 h sliding
   window per entity.

Prints a Markdown table and writes it to ``bench/results/pipeline-<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from driftline.adapters import kafka
from driftline.commands import local_servers
from driftline.commands.dev_stack import wait_healthy
from driftline.commands.local_servers import ManagedProcess
from driftline.core.codec.feature_records import leading_string
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
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


# -- producing ---------------------------------------------------------------------------------
class EventSource:
    """Demo events, encoded, in event-time order; later calls continue the same stream."""

    def __init__(self, entities: int, seed: int) -> None:
        self.generator = DemoGenerator(DemoConfig(seed=seed, n_entities=entities))
        self.schemas = SchemaSet.load()

    def encoded(self, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for start in range(0, n, 50_000):
            for event in self.generator.events(min(50_000, n - start)):
                out.append((event["entity_id"].encode(), encode(EVENT_SCHEMA, event, self.schemas)))
        return out


def produce_all(settings: Settings, messages: list[tuple[bytes, bytes]], compression: str
                ) -> tuple[float, dict[int, int]]:
    """Produce as fast as the producer goes.

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
    topic = settings.topic_events
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


# -- Driftline ---------------------------------------------------------------------------------
def start_worker(settings: Settings, log_dir: Path) -> tuple[ManagedProcess, float]:
    """The worker process and the wall-clock time its partitions were seen assigned."""
    env = local_servers.child_env(settings.to_env())
    proc = local_servers.spawn("worker", local_servers.python_argv("worker"), log_dir,
                          f"http://127.0.0.1:{settings.worker_port}", env=env)
    deadline = time.monotonic() + 90
    while True:  # wait_healthy polls every 0.2 s; poll faster so the start time is tight
        try:
            wait_healthy(f"{proc.address}/health", proc, 1,
                         ready=lambda b: b.get("status") == "ok"
                         and len(b["assigned_partitions"]) == settings.partitions)
            return proc, time.time()
        except local_servers.ServerStartError:
            if not proc.alive() or time.monotonic() > deadline:
                proc.stop()
                raise


def committed(client: redis.Redis, settings: Settings) -> dict[int, int]:
    key = f"dl:offsets:{settings.group_features}:{settings.topic_events}"
    return {int(p): int(o) for p, o in client.hgetall(key).items()}


def wait_caught_up(client: redis.Redis, settings: Settings, ends: dict[int, int],
                   proc: ManagedProcess, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = committed(client, settings)
        if all(done.get(p, 0) >= end for p, end in ends.items()):
            return time.time()
        if not proc.alive():
            raise RuntimeError(f"worker exited:\n{proc.log_tail(40)}")
        time.sleep(0.02)
    done = committed(client, settings)
    raise TimeoutError(f"worker not caught up after {timeout:.0f}s: {done} of {ends}")


def scrape_histogram(url: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one Prometheus histogram."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.compile(rf'^{name}_bucket\{{.*?le="([^"]+)".*?\}} ([0-9.e+]+)$', re.M)
    return {float(le): float(v) for le, v in pattern.findall(text)}


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


def start_scorer(settings: Settings, args: argparse.Namespace, log_dir: Path
                 ) -> tuple[ManagedProcess, PredictionWatcher]:
    """A `driftline serve` scorer (model trained and promoted here) caught up with the features
    topic, and a watcher of its predictions that has read them all."""
    from bench_scoring import register, train
    from bench_scoring import start_scorer as spawn_scorer

    from driftline.core.features import load_definitions
    from driftline.feature_defs import DEFINITIONS_DIR

    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
    _, onnx_bytes, data = train(view, 20_000, args.seed)
    register(settings.data_dir / "registry", view, onnx_bytes, data)
    proc, _ = spawn_scorer(settings, log_dir)
    watcher = PredictionWatcher(settings)
    watcher.start()
    deadline = time.monotonic() + args.timeout
    # Caught up: predictions were read, and none for 2 s.
    while watcher.count == 0 or time.monotonic() - watcher.last_read < 2.0:
        if not proc.alive() or not watcher.is_alive() or time.monotonic() > deadline:
            watcher.stop_event.set()
            proc.stop()
            raise RuntimeError(f"scorer did not catch up ({watcher.count:,} predictions read):"
                               f"\n{proc.log_tail(20)}")
        time.sleep(0.1)
    return proc, watcher


def latency_phase(settings: Settings, source: EventSource, n: int, rate: float,
                  client: redis.Redis, proc: ManagedProcess, poll_s: float,
                  compression: str, predictions: PredictionWatcher | None = None) -> dict:
    """Produce n events at a fixed rate; exact per-event latency plus the histogram estimate,
    and with `predictions`, each event's create time to the first read of its prediction."""
    metrics_url = f"{proc.address}/metrics"
    hist = "driftline_event_to_store_seconds"
    messages = source.encoded(n + 1)  # the first one warms the producer up
    before = scrape_histogram(metrics_url, hist)
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
        caught_up_at = wait_caught_up(client, settings, ends, proc, timeout=300)
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
    after = scrape_histogram(metrics_url, hist)
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


# -- peers -------------------------------------------------------------------------------------
def run_peer(script: str, extra: list[str], run_dir: Path, name: str, timeout: float) -> dict:
    result = run_dir / f"{name}.json"
    argv = [sys.executable, str(BENCH_DIR / script), "--result", str(result), *extra]
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


# -- report ------------------------------------------------------------------------------------
def render(rows: list[Row], header: list[str]) -> str:
    lines = [*header, "",
             "| system | per event | events/s | p50 / p99 event-to-store | command |",
             "|---|---|---:|---|---|"]
    for r in rows:
        rate = "failed" if r.events_per_s is None else f"{r.events_per_s:,.0f}"
        lines.append(f"| {r.system} | {r.per_event} | {rate} | {r.latency} | `{r.command}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=10_000, help="Driftline worker batch")
    parser.add_argument("--latency-events", type=int, default=200_000)
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="events/s in the latency phase; 0 = skip the phase; default: "
                             "20,000 or half the worker's measured throughput if that is lower "
                             "(above capacity, latency only measures the growing queue)")
    parser.add_argument("--no-predictions", dest="predictions", action="store_false",
                        help="skip the second latency phase (scorer running, "
                             "event-to-prediction)")
    parser.add_argument("--poll-ms", type=float, default=2.0,
                        help="how often the latency phase reads the committed offsets")
    parser.add_argument("--compression", default="none",
                        help="producer compression of the events topic; Faust's aiokafka "
                             "needs the `lz4` package to read lz4 (Driftline's default)")
    parser.add_argument("--timeout", type=float, default=1800, help="per measured phase, seconds")
    parser.add_argument("--only", nargs="+", choices=["driftline", "faust", "quix"],
                        default=["driftline", "faust", "quix"])
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, data)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    started: list[ManagedProcess] = []
    rows: list[Row] = []
    notes: list[str] = []
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

        source = EventSource(args.entities, args.seed)
        t = time.perf_counter()
        messages = source.encoded(args.events)
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
        client = redis.Redis.from_url(settings.redis_url_or_fail)

        if "driftline" in args.only:
            rows.append(measure_driftline(settings, args, run_dir, client, ends, source, notes))
        if "faust" in args.only:
            rows.append(measure_peer(
                "Faust agent (faust-streaming 0.15.3)", "count raw bytes, `take(5000, within=1)`",
                "peer_faust.py", ["--bootstrap", settings.kafka_bootstrap_or_fail,
                                  "--topic", settings.topic_events, "--group", "bench-faust",
                                  "--partitions", str(args.partitions), "--events",
                                  str(args.events), "--datadir", str(run_dir / "faust")],
                run_dir, "faust", args))
        if "quix" in args.only:
            rows.append(measure_peer(
                "Quix Streams 3.28", "fastavro decode, event-time extractor, 1 h sliding-window "
                "sum(amount) per key, `.final()`, RocksDB + changelog",
                "peer_quix.py", ["--bootstrap", settings.kafka_bootstrap_or_fail,
                                 "--topic", settings.topic_events, "--group", "bench-quix",
                                 "--events", str(args.events), "--state-dir",
                                 str(run_dir / "quix")],
                run_dir, "quix", args))
    finally:
        for proc in reversed(started):
            proc.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    today = dt.date.today().isoformat()
    header = [f"# Pipeline benchmark, {today}", "",
              f"`{' '.join(sys.argv)}` on {platform.node()} ({platform.machine()}, "
              f"Python {platform.python_version()}); embedded Tansu broker, redis-server, "
              "measured one after another on the same topic contents.", "",
              *[f"- {n}" for n in notes]]
    table = render(rows, header)
    print(table)
    out = BENCH_DIR / "results" / f"pipeline-{today}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(f"written to {out.relative_to(BENCH_DIR.parent)}")


def measure_driftline(settings: Settings, args: argparse.Namespace, run_dir: Path,
                      client: redis.Redis, ends: dict[int, int], source: EventSource,
                      notes: list[str]) -> Row:
    command = f"driftline worker (DRIFTLINE_BATCH_SIZE={args.batch_size})"
    per_event = ("Avro decode + validate, 19 features (numpy engine), Parquet (events + "
                 "features), 1 Avro FeatureRecord produced, Redis MULTI (online values, state, "
                 "offsets) per partition batch")
    proc, assigned_at = start_worker(settings, run_dir / "logs")
    try:
        done_at = wait_caught_up(client, settings, ends, proc, args.timeout)
        rate = args.events / (done_at - assigned_at)
        print(f"driftline: {rate:,.0f} events/s ({done_at - assigned_at:.1f} s)", flush=True)
        latency = "not measured"
        latency_rate = min(20_000, round(rate / 2, -2)) if args.latency_rate is None \
            else args.latency_rate
        if latency_rate > 0:
            lat = latency_phase(settings, source, args.latency_events, latency_rate,
                                client, proc, args.poll_ms / 1000, args.compression)
            latency = (f"{lat['exact_p50'] * 1000:,.0f} / {lat['exact_p99'] * 1000:,.0f} ms "
                       f"(histogram estimate {lat['hist_p50'] * 1000:,.0f} / "
                       f"{lat['hist_p99'] * 1000:,.0f} ms)")
            notes.append(
                f"Driftline latency phase: {lat['events']:,} more events at "
                f"{lat['rate']:,.0f}/s target ({lat['achieved_rate']:,.0f}/s achieved) with the "
                f"worker caught up. Exact = event create time to the first read of the Redis "
                f"offsets hash showing it committed (read every {lat['poll_ms']:g} ms, "
                f"{lat['poll_count']:,} reads; {lat['measured']:,} events; max "
                f"{lat['exact_max'] * 1000:,.0f} ms). The histogram estimate interpolates "
                f"inside the worker's `driftline_event_to_store_seconds` buckets.")
            print(notes[-1], flush=True)
            if args.predictions:
                notes.append(scored_latency_phase(settings, args, run_dir, client, source,
                                                  latency_rate, proc))
                print(notes[-1], flush=True)
        return Row("Driftline feature worker", per_event, rate, latency, command)
    except (RuntimeError, TimeoutError) as exc:
        print(f"driftline failed: {exc}", flush=True)
        notes.append(f"Driftline failed: {str(exc).splitlines()[0]}")
        return Row("Driftline feature worker", per_event, None, "", command)
    finally:
        proc.stop()


def scored_latency_phase(settings: Settings, args: argparse.Namespace, run_dir: Path,
                         client: redis.Redis, source: EventSource, rate: float,
                         worker: ManagedProcess) -> str:
    """The second latency phase, with a scorer running: event-to-store and event-to-prediction."""
    scorer, predictions = start_scorer(settings, args, run_dir / "logs")
    try:
        lat = latency_phase(settings, source, args.latency_events, rate, client, worker,
                            args.poll_ms / 1000, args.compression, predictions)
    finally:
        predictions.stop_event.set()
        predictions.join(5)
        scorer.stop()
    return (f"With the scorer running (`driftline serve`, batch size {settings.batch_size:,}, "
            f"a model trained and promoted by the bench), {lat['events']:,} more events at "
            f"{lat['rate']:,.0f}/s target ({lat['achieved_rate']:,.0f}/s achieved): "
            f"**event-to-store p50 / p99 {lat['exact_p50'] * 1000:,.0f} / "
            f"{lat['exact_p99'] * 1000:,.0f} ms** (max {lat['exact_max'] * 1000:,.0f} ms); "
            f"**event-to-prediction p50 / p99 {lat['pred_p50'] * 1000:,.0f} / "
            f"{lat['pred_p99'] * 1000:,.0f} ms** (max {lat['pred_max'] * 1000:,.0f} ms; "
            f"{lat['pred_measured']:,} of {lat['pred_expected']:,} events' predictions read). "
            f"Event-to-prediction = event create time to the first read of its prediction "
            f"(by event id) on the predictions topic by a consumer assigned to every partition "
            f"(fetch.wait.max.ms 10).")


def measure_peer(system: str, per_event: str, script: str, extra: list[str], run_dir: Path,
                 name: str, args: argparse.Namespace) -> Row:
    command = f"python bench/{script}"
    try:
        res = run_peer(script, [*extra], run_dir, name, args.timeout)
    except (RuntimeError, TimeoutError) as exc:
        print(f"{name} failed: {exc}", flush=True)
        return Row(system, per_event, None, "", command)
    start = res["assigned_at"]
    rate = res["count"] / (res["done_at"] - start)
    print(f"{name}: {rate:,.0f} events/s ({res['done_at'] - start:.1f} s)", flush=True)
    return Row(system, per_event, rate, "not measured", command)


if __name__ == "__main__":
    main()
