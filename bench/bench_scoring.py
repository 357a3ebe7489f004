"""Cost of scoring in Driftline: the model alone, the stream scorer end to end, the online API.

Run by hand: ``.venv/bin/python bench/bench_scoring.py`` (``--quick`` for a smoke run).

1. In process, on the same realistic demo feature rows: the initial model (imputer + 100-tree
   gradient boosting) as scikit-learn ``predict_proba`` and as ONNX under onnxruntime with one
   intra-op thread (the scorer's setting), one row per call and in batches.
2. Stream mode: N Avro ``FeatureRecord`` messages are produced to the features topic of the
   embedded broker first, then one ``driftline serve`` process is started; the clock runs from
   the moment its partitions are assigned until its ``/health`` reports N messages processed
   (each batch's predictions are flushed before that count moves), and the predictions topic is
   then read back to check there is one prediction per record. A replay of
   ``ScoringPipeline.process`` in this process, on messages fetched from the same topic, times
   each stage (decode, matrix, ONNX, prediction dicts, encode, produce, flush) and profiles it.
3. Online mode: Redis is seeded with features of ``--entities`` entities, and
   ``bench/load_client.py`` in a second process sends ``POST /predict`` at a fixed open-loop rate
   with ``entity_id`` bodies, then with explicit ``features`` bodies.

Everything runs on loopback, one thing at a time, and every child is stopped in ``finally``.
Prints a Markdown report and writes it to ``bench/results/scoring-<date>.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from driftline.adapters import kafka
from driftline.adapters.batch_loop import group_by_partition
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.commands import local_servers
from driftline.commands.dev_stack import wait_healthy
from driftline.commands.local_servers import ManagedProcess
from driftline.commands.training import build_model, demo_training_set, to_onnx
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.feature_records import leading_string
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import EventBatch, FeatureEngine, FeatureView, load_definitions
from driftline.core.online import OnlineWrite
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.serving.models import ModelHolder
from driftline.serving.scoring import feature_matrix, score_records
from driftline.serving.stream import PREDICTION_SCHEMA, ScoringPipeline
from driftline.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
FEATURE_SCHEMA = "driftline.FeatureRecord"
ONNX_BATCH = 1024


# -- data and model ----------------------------------------------------------------------------
@dataclass
class DemoFeatures:
    """Applied demo events with the feature values the worker would have computed for them."""

    events: list[dict]
    X: np.ndarray  # float64, NaN where undefined, view column order


def demo_features(view: FeatureView, n: int, seed: int, entities: int) -> DemoFeatures:
    generator = DemoGenerator(DemoConfig(seed=seed, n_entities=entities))
    events = generator.events(n)
    batch = EventBatch.from_records(events, seqs=range(len(events)), view=view)
    out = FeatureEngine(view).process(batch)
    keep = np.flatnonzero(out.applied)
    # float32 as served, so scikit-learn and ONNX see the very same numbers.
    X = out.values[keep].astype(np.float32).astype(np.float64)
    return DemoFeatures([events[i] for i in keep], X)


def train(view: FeatureView, n_events: int, seed: int):
    generator = DemoGenerator(DemoConfig(seed=seed))
    events = generator.events(n_events)
    data = demo_training_set(view, events, generator.labels_for(events))
    model = build_model(seed).fit(data.X, data.y)
    return model, to_onnx(model, len(view.feature_names)), data


def register(root: Path, view: FeatureView, onnx_bytes: bytes, data) -> None:
    registry = ModelRegistry(root)
    version = registry.register(
        "fraud", onnx_bytes, view=view.name, view_version=view.version,
        inputs=view.feature_names,
        training_range=(int(data.event_time_ms[0]), int(data.event_time_ms[-1])),
        metrics={}, parent=None, created_at_ms=1, tags={"trainer": "bench/bench_scoring.py"})
    registry.promote("fraud", version.version, at_ms=1, reason="benchmark",
                     current_views={view.name: view})


def feature_record(view: FeatureView, event: dict, row: Sequence[float], i: int) -> dict:
    names = view.feature_names
    return {"event_id": f"{event['event_id']}-{i}", "entity_id": event["entity_id"],
            "event_time": event["event_time"], "view": view.name,
            "view_version": view.version,
            "values": {n: (None if v != v else v) for n, v in zip(names, row, strict=True)},
            "slices": {s: str(event[s]) for s in view.slices}}


# -- 1. the model in process -------------------------------------------------------------------
def per_call(fn: Callable[[int], object], n: int) -> np.ndarray:
    times = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times[i] = time.perf_counter() - start
    return times


def rows_per_s(fn: Callable[[np.ndarray], object], X: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for lo in range(0, len(X), batch):
        fn(X[lo:lo + batch])
    return len(X) / (time.perf_counter() - start)


def bench_model(model, onnx_bytes: bytes, X: np.ndarray, single_sklearn: int,
                single_onnx: int) -> list[tuple[str, str, str]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    feed = session.get_inputs()[0].name
    from driftline.adapters.onnx_model import predict_scores

    onnx = predict_scores(session, X32)
    sk = model.predict_proba(X)[:, 1]
    parity = float(np.max(np.abs(onnx - sk)))
    for i in range(200):  # warm both
        model.predict_proba(X[i:i + 1])
        session.run(["probabilities"], {feed: X32[i:i + 1]})
    rows = []

    def us(t: np.ndarray) -> str:
        return f"p50 {np.percentile(t, 50) * 1e6:,.1f} us, p99 {np.percentile(t, 99) * 1e6:,.1f} us"

    t = per_call(lambda i: model.predict_proba(X[i:i + 1]), min(single_sklearn, len(X)))
    rows.append(("scikit-learn `predict_proba`, 1 row per call", us(t),
                 f"{1 / np.median(t):,.0f} calls/s"))
    r = rows_per_s(lambda b: model.predict_proba(b), X, ONNX_BATCH)
    rows.append((f"scikit-learn `predict_proba`, batches of {ONNX_BATCH}", "", f"{r:,.0f} rows/s"))
    t = per_call(lambda i: session.run(["probabilities"], {feed: X32[i:i + 1]}),
                 min(single_onnx, len(X)))
    rows.append(("onnxruntime `session.run`, 1 row per call (1 thread)", us(t),
                 f"{1 / np.median(t):,.0f} calls/s"))
    t = per_call(lambda i: predict_scores(session, X[i:i + 1]), min(single_onnx, len(X)))
    rows.append(("`predict_scores` (the scorer's call), 1 row", us(t),
                 f"{1 / np.median(t):,.0f} calls/s"))
    for batch in (ONNX_BATCH, 10_000):
        r = rows_per_s(lambda b: session.run(["probabilities"], {feed: b}), X32, batch)
        rows.append((f"onnxruntime, batches of {batch:,} (1 thread)", "", f"{r:,.0f} rows/s"))
    rows.append(("parity: max abs(P_onnx - P_sklearn)", f"{parity:.1e}", f"{len(X):,} rows"))
    return rows


# -- servers and the scorer --------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def start_scorer(settings: Settings, log_dir: Path) -> tuple[ManagedProcess, float]:
    """The scorer process and the wall-clock time its stream partitions were seen assigned."""
    env = local_servers.child_env(settings.to_env())
    proc = local_servers.spawn("scorer", local_servers.python_argv("serve"), log_dir,
                          f"http://127.0.0.1:{settings.scorer_port}", env=env)
    deadline = time.monotonic() + 90
    while True:  # wait_healthy polls every 0.2 s; a 1 s window per try keeps the start tight
        try:
            wait_healthy(f"{proc.address}/health", proc, 1,
                         ready=lambda b: b["stream"]["assigned_partitions"])
            return proc, time.perf_counter()
        except local_servers.ServerStartError:
            if not proc.alive() or time.monotonic() > deadline:
                proc.stop()
                raise


def produce_all(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    failures: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(kafka.producer_config(settings, on_delivery=on_delivery))
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}")
    return time.perf_counter() - started


def fetch(settings: Settings, topic: str, n: int, timeout: float = 60.0) -> list:
    """Up to ``n`` messages of ``topic`` from offset 0 of every partition (no group join)."""
    consumer = Consumer(kafka.consumer_config(settings, f"bench-fetch-{time.time_ns()}"))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    out: list = []
    deadline, idle_since = time.monotonic() + timeout, time.monotonic()
    try:
        while len(out) < n and time.monotonic() < deadline and time.monotonic() - idle_since < 5:
            got = [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
            if got:
                idle_since = time.monotonic()
            out.extend(got)
    finally:
        consumer.close()
    return out[:n]


# -- 2. stream mode ----------------------------------------------------------------------------
def stream_run(settings: Settings, n: int, log_dir: Path) -> tuple[dict, ManagedProcess]:
    """Start the scorer over a topic already holding n records; returns figures and the process."""
    proc, assigned_at = start_scorer(settings, log_dir)
    cpu0 = cpu_seconds(proc.proc.pid)
    health_url = f"{proc.address}/health"
    deadline = time.monotonic() + max(120.0, n / 1000)
    samples: list[tuple[float, int]] = []
    try:
        while True:
            messages = get_json(health_url)["stream"]["messages"]
            now = time.perf_counter()
            samples.append((now, messages))
            if messages >= n:
                break
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"scorer at {messages}/{n} messages:\n{proc.log_tail(30)}")
            time.sleep(0.02)
    except BaseException:
        proc.stop()
        raise
    elapsed = samples[-1][0] - assigned_at
    cpu = cpu_seconds(proc.proc.pid) - cpu0
    # Steady rate: between 10 % and 90 % of the records, free of start-up and the last batch.
    lo = next(s for s in samples if s[1] >= 0.1 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")
    return {"elapsed_s": elapsed, "rate": n / elapsed, "steady_rate": steady,
            "scorer_cpu_s": cpu}, proc


class Stopwatch:
    """``with clock(stage):`` adds the block's wall time to ``totals[stage]``."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals
        self.stage = ""
        self.start = 0.0

    def __call__(self, stage: str) -> Stopwatch:
        self.stage = stage
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.totals[self.stage] = self.totals.get(self.stage, 0.0) + elapsed


def stage_breakdown(settings: Settings, view: FeatureView, registry_root: Path,
                    messages: list, batch: int) -> tuple[list[tuple[str, float]], float, str]:
    """Per-record microseconds of each stage of ``ScoringPipeline.process``, replayed here."""
    schemas = SchemaSet.load()
    holder = ModelHolder(ModelRegistry(registry_root), "fraud", 0.5, {view.name: view})
    model = holder.reload()
    decoder = Decoder(FEATURE_SCHEMA, schemas)
    topic = settings.topic_predictions + ".replay"
    kafka.create_topics(settings.replace(topic_predictions=topic))
    producer = kafka.make_producer(settings)
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    totals: dict[str, float] = {}
    clock = Stopwatch(totals)
    for msgs in batches:
        with clock("collect values from Kafka messages"):
            values = [m.value() for m in msgs]
        with clock("decode Avro FeatureRecord (`decode_many`)"):
            records, _ = decoder.decode_many(values)
        with clock("feature matrix (`feature_matrix`)"):
            X = feature_matrix(records, model.inputs)
        with clock("ONNX `model.score` (1 thread)"):
            model.score(X)
        with clock("score_records total"):
            scored = score_records(model, records)
        with clock("encode Avro Prediction (`encode`)"):
            encoded = [encode(PREDICTION_SCHEMA, p, schemas) for p in scored.predictions]
        with clock("`producer.produce` calls"):
            for value, m in zip(encoded, msgs, strict=True):
                producer.produce(topic, value, key=m.key())
        with clock("`flush_or_raise` (wait for acks)"):
            producer.flush_or_raise()
    n = len(messages)
    # score_records = view check + matrix + ONNX + building the prediction dicts.
    totals["prediction dicts + view check (score_records - matrix - ONNX)"] = (
        totals.pop("score_records total") - totals["feature matrix (`feature_matrix`)"]
        - totals["ONNX `model.score` (1 thread)"])
    stages = [(k, v / n * 1e6) for k, v in totals.items()]
    # The real thing, end to end, and its profile.
    pipeline = ScoringPipeline(holder, decoder, producer,
                               DeadLetterSink(producer, settings.topic_dlq, schemas), topic)
    start = time.perf_counter()
    for msgs in batches:
        pipeline.process(group_by_partition(msgs))
    process_us = (time.perf_counter() - start) / n * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    for msgs in batches[:3]:
        pipeline.process(group_by_partition(msgs))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    profile = "\n".join(line for line in out.getvalue().splitlines()
                        if line.strip() and not line.startswith("   Ordered by"))
    return stages, process_us, profile


# -- 3. online mode ----------------------------------------------------------------------------
def seed_online_store(settings: Settings, view: FeatureView, data: DemoFeatures) -> list[str]:
    """The latest feature row of every entity, written as the worker would; returns entity ids."""
    latest: dict[str, int] = {}
    for i, event in enumerate(data.events):
        latest[event["entity_id"]] = i
    entities = sorted(latest)
    rows = data.X[[latest[e] for e in entities]]
    times = [data.events[latest[e]]["event_time"] for e in entities]
    client = redis.Redis.from_url(settings.redis_url_or_fail)
    try:
        store = RedisOnlineStore(client, 3600, OnlineKeys.for_settings(settings))
        for lo in range(0, len(entities), 2000):
            store.write(OnlineWrite(view.name, view.version, tuple(view.feature_names),
                                    entities[lo:lo + 2000], rows[lo:lo + 2000],
                                    times[lo:lo + 2000]))
    finally:
        client.close()
    return entities


def run_load(url: str, bodies: list[dict], rate: float, duration: float, work: Path,
             name: str) -> dict:
    bodies_path, out_path = work / f"{name}-bodies.json", work / f"{name}-result.json"
    bodies_path.write_text(json.dumps(bodies))
    argv = [sys.executable, str(BENCH_DIR / "load_client.py"), "--url", url, "--bodies",
            str(bodies_path), "--rate", str(rate), "--duration", str(duration), "--out",
            str(out_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed:\n{done.stderr[-2000:]}")
    return json.loads(out_path.read_text())


# -- report ------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def online_row(label: str, r: dict) -> list[str]:
    s, i, srv = r["service_ms"], r["intended_ms"], r["server_ms"]

    def ms(q: dict, k: str) -> str:
        return f"{q[k]:.2f}" if k in q else "-"

    return [label, f"{r['sent']:,} @ {r['rate']:.0f}/s ({r['achieved_rps']:.0f} achieved)",
            ms(s, "p50"), ms(s, "p90"), ms(s, "p99"), ms(s, "max"), ms(i, "p99"),
            ms(srv, "p50") + " / " + ms(srv, "p99"), str(r["errors"]),
            ms(r["send_lag_ms"], "p99")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000, help="feature rows for the model phase")
    p.add_argument("--records", type=int, default=200_000, help="records for stream mode")
    p.add_argument("--entities", type=int, default=10_000, help="entities in the online store")
    p.add_argument("--train-events", type=int, default=60_000)
    p.add_argument("--batch-size", type=int, default=10_000, help="the scorer's batch size")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--rate", type=float, default=500.0, help="online requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of online load")
    p.add_argument("--replay", type=int, default=50_000, help="records in the stage replay")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small sizes: check that it runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.rows, args.records, args.entities, args.train_events = 5000, 20_000, 2000, 8000
        args.duration, args.replay = 3.0, 10_000

    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
    report = [f"# Scoring benchmark, {dt.date.today().isoformat()}", "",
              f"Host: {platform.node()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, onnxruntime {ort.__version__}. Command: "
              f"`{' '.join(['python', *sys.argv])}`. Load average at start "
              f"{os.getloadavg()[0]:.2f} (the machine is shared: read ratios, not absolutes).",
              ""]

    print(f"training on {args.train_events:,} demo events ...", flush=True)
    model, onnx_bytes, data = train(view, args.train_events, args.seed)
    n_rows = max(args.rows, args.records)
    print(f"computing features of {n_rows:,} demo events ({args.entities:,} entities) ...",
          flush=True)
    feats = demo_features(view, n_rows, args.seed + 1, args.entities)

    print("1. model in process ...", flush=True)
    model_rows = bench_model(model, onnx_bytes, feats.X[:args.rows], 2000, 20_000)
    report += [f"## 1. The model in process ({min(args.rows, len(feats.X)):,} demo feature "
               f"rows, {len(view.feature_names)} features)", "",
               table(["what", "latency per call", "throughput"], model_rows), ""]
    print("\n".join(report), flush=True)

    started: list[ManagedProcess] = []
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        started.append(local_servers.start_broker(work / "logs"))
        started.append(local_servers.start_redis(work / "logs"))
        run = f"bench{os.getpid()}"
        topics = {f"topic_{role}": f"{run}.{role}" for role in Settings().topics}
        settings = Settings(profile="dev", kafka_bootstrap=started[0].address,
                            redis_url=started[1].address, data_dir=work / "data",
                            partitions=args.partitions, scorer_port=local_servers.free_port(),
                            group_scorer=f"{run}-scorer", batch_size=args.batch_size, **topics)
        kafka.create_topics(settings)
        register(settings.data_dir / "registry", view, onnx_bytes, data)

        print(f"2. encoding and producing {args.records:,} feature records ...", flush=True)
        schemas = SchemaSet.load()
        start = time.perf_counter()
        messages = []
        for i in range(args.records):
            j = i % len(feats.X)
            record = feature_record(view, feats.events[j], feats.X[j].tolist(), i)
            messages.append((record["entity_id"].encode(),
                             encode(FEATURE_SCHEMA, record, schemas)))
        encode_s = time.perf_counter() - start
        produce_s = produce_all(settings, settings.topic_features, messages)
        record_bytes = sum(len(v) for _, v in messages) / len(messages)
        del messages
        stream, scorer = stream_run(settings, args.records, work / "logs")
        started.append(scorer)
        broker_cpu = cpu_seconds(started[0].proc.pid)
        predictions = fetch(settings, settings.topic_predictions, args.records + 1)
        ids = {leading_string(m.value()) for m in predictions}
        prediction_bytes = sum(len(m.value()) for m in predictions) / max(len(predictions), 1)
        mark = len(report)
        report += [
            f"## 2. Stream mode: one `driftline serve` process, {args.records:,} records", "",
            f"{args.partitions} partitions, batch size {args.batch_size:,}, embedded broker "
            f"(Tansu). Records were produced before the scorer started "
            f"(encode {args.records / encode_s:,.0f} records/s in Python, produce "
            f"{args.records / produce_s:,.0f}/s; {record_bytes:.0f} B per FeatureRecord, "
            f"{prediction_bytes:.0f} B per Prediction).", "",
            table(["measure", "value"], [
                ["assignment -> N records scored and flushed", f"{stream['elapsed_s']:.2f} s"],
                ["predictions/s per process (whole run)", f"{stream['rate']:,.0f}"],
                ["predictions/s, steady (10 % -> 90 % of N)", f"{stream['steady_rate']:,.0f}"],
                ["scorer CPU over the run (user+sys)",
                 f"{stream['scorer_cpu_s']:.1f} s "
                 f"({stream['scorer_cpu_s'] / stream['elapsed_s']:.0%} of one core)"],
                ["scorer CPU per prediction",
                 f"{stream['scorer_cpu_s'] / args.records * 1e6:.1f} us"],
                ["broker CPU since its start (produce + consume + predictions)",
                 f"{broker_cpu:.1f} s"],
                ["predictions read back from the topic",
                 f"{len(predictions):,} ({len(ids):,} distinct event ids)"],
            ]), ""]
        print("\n".join(report[mark:]), flush=True)

        print("   stage replay ...", flush=True)
        replay_msgs = fetch(settings, settings.topic_features, args.replay)
        stages, process_us, profile = stage_breakdown(settings, view, settings.data_dir /
                                                      "registry", replay_msgs, args.batch_size)
        del replay_msgs
        total_us = sum(us for _, us in stages)
        mark = len(report)
        report += [
            f"### Where the time goes: `ScoringPipeline.process` replayed in process "
            f"({args.replay:,} records, batches of {args.batch_size:,})", "",
            table(["stage", "us per record", "share", "alone caps at (records/s)"],
                  [[name, f"{us:.2f}", f"{us / total_us:.0%}", f"{1e6 / us:,.0f}"]
                   for name, us in sorted(stages, key=lambda s: -s[1])]
                  + [["**sum of stages**", f"**{total_us:.2f}**", "100%",
                      f"**{1e6 / total_us:,.0f}**"],
                     ["`ScoringPipeline.process` itself, same batches", f"{process_us:.2f}",
                      "", f"{1e6 / process_us:,.0f}"]]), "",
            "<details><summary>cProfile of 3 batches of <code>process</code>, by own time"
            "</summary>", "", "```", profile, "```", "</details>", ""]
        print("\n".join(report[mark:]), flush=True)

        print("3. online mode ...", flush=True)
        entities = seed_online_store(settings, view, feats)
        rng = np.random.default_rng(args.seed)
        url = f"{scorer.address}/predict"
        entity_bodies = [{"entity_id": e} for e in rng.permutation(entities).tolist()]
        picks = rng.integers(0, len(feats.X), 2000)
        feature_bodies = [{"features": {n: (None if v != v else v) for n, v in
                                        zip(view.feature_names, feats.X[k].tolist(),
                                            strict=True)}} for k in picks]
        cpu0 = cpu_seconds(scorer.proc.pid)
        by_entity = run_load(url, entity_bodies, args.rate, args.duration, work, "entity")
        cpu_entity = cpu_seconds(scorer.proc.pid) - cpu0
        cpu0 = cpu_seconds(scorer.proc.pid)
        by_features = run_load(url, feature_bodies, args.rate, args.duration, work, "features")
        cpu_features = cpu_seconds(scorer.proc.pid) - cpu0
        mark = len(report)
        report += [
            f"## 3. Online mode: `POST /predict`, open loop, {args.rate:.0f} requests/s for "
            f"{args.duration:.0f} s", "",
            f"Load from `bench/load_client.py` in a second process (aiohttp, keep-alive, "
            f"loopback); Redis seeded with {len(entities):,} entities. Milliseconds. "
            "'service' is from send to full response; 'from due' counts from when the "
            "request was scheduled (includes any client lateness); 'server' is the "
            "handler's own `latency_ms`.", "",
            table(["body", "requests", "p50", "p90", "p99", "max", "p99 from due",
                   "server p50 / p99", "errors", "client send lag p99"],
                  [online_row("`{\"entity_id\"}` (Redis HGETALL)", by_entity),
                   online_row("`{\"features\": {...}}`", by_features)]), "",
            f"Scorer CPU during the runs: {cpu_entity / args.duration:.0%} of one core "
            f"(entity_id), {cpu_features / args.duration:.0%} (features).", ""]
        print("\n".join(report[mark:]), flush=True)
    finally:
        for proc in reversed(started):
            proc.stop()

    text = "\n".join(report)
    out = args.out or BENCH_DIR / "results" / f"scoring-{dt.date.today().isoformat()}.md"
    if not args.quick or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
