"""`driftline demo` (what `make demo` runs): the whole closed loop on embedded defaults.

Starts the broker and Redis (or uses the given ones), trains and promotes fraud v1 on
pre-drift history, starts the feature worker, the scorer, the monitor and the retrain
controller, then streams card transactions with their labels arriving late (5-30 s of event
time after each event), at a steady pace. A third of the way in, the fraud pattern changes
(concept drift, with a covariate shift in amounts and channels). The monitor's detectors fire,
the controller starts a retraining job on the outcomes logged since the detection, the gates
pass, the new version is promoted and every scorer hot-swaps to it, and its error rate comes
back down. The demo ends with a summary table read from what the services wrote (the outcome
store, the drift topic, the registry), the new version's lineage, an online prediction and the
skew audit, and exits 0 only if the loop closed. Demo data lives in
``$DRIFTLINE_DATA_DIR/demo``, which each run starts afresh.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from confluent_kafka import Producer

from driftline.adapters import kafka
from driftline.commands.dev_stack import Stack, start_servers, start_services
from driftline.commands.models import resolve_view
from driftline.settings import Settings

FRAUD_RATE = 0.03
LABEL_DELAY_MS = (5_000, 30_000)
N_ENTITIES = 2_000

# The demo's retraining policy (docs/retraining.md has every key): error drift (ADWIN, DDM on
# the outcome stream) starts a job, which trains on the outcomes logged since the detection;
# direct promotion. Feature PSI is reported but does not retrain here: the demo's stream starts
# with empty windows while v1's reference profile saw them fill, so counts and sums drift from
# the first minutes (a true difference, and the reason a reference should come from a steady
# state; `driftline reference rebase` exists for it).
RETRAINING_YAML = """\
models:
  fraud:
    trigger: {kinds: [error], min_severity: drift, cooldown_ms: 5000}
    data: {min_rows: 5000, max_rows: 10000, holdout_fraction: 0.25, wait_s: 120, poll_s: 0.5}
    gates: {min_rows: 3000, min_roc_auc: 0.75, max_auc_drop_vs_production: 0.02}
    rollout: {kind: direct}
"""


def _get(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a 503 health body is still an answer
        return json.loads(exc.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class Timeline:
    """Wall-clock moments of the story (seconds since the stream started)."""

    drift_published_s: float | None = None
    promoted_s: float | None = None
    promoted_version: int | None = None
    seen: set[str] = field(default_factory=set)  # controller decisions already printed


def stream(n_events: int, drift_at: int, seed: int = 21):
    """The demo stream: events and their labels, drift switched on from event `drift_at`."""
    from driftline.core.demo_events import DemoConfig, DemoGenerator

    config = DemoConfig(seed=seed, n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE,
                        label_delay_ms=LABEL_DELAY_MS)
    drift_at_ms = DemoGenerator(config).events(drift_at + 1)[-1]["event_time"]
    generator = DemoGenerator(DemoConfig(
        seed=seed, n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE, label_delay_ms=LABEL_DELAY_MS,
        drift_at_ms=drift_at_ms, covariate_shift=1.0, concept_shift=True))
    events = generator.events(n_events)
    return events, generator.labels_for(events), drift_at_ms


def publish_paced(settings: Settings, events, labels, drift_at_ms: int, rate: float,
                  controller: str, timeline: Timeline, started: float, out) -> None:
    """Events at their event time and each label at its label time, `rate` records a second,
    polling the controller for the promotion as it goes."""
    from driftline.adapters.event_producer import EventProducer

    times = np.array([e["event_time"] for e in events] + [lb["label_time"] for lb in labels])
    order = np.argsort(times, kind="stable")
    n = len(events)
    chunk = 500
    last_poll = 0.0
    with EventProducer(settings, "avro") as producer:
        for start in range(0, len(order), chunk):
            for i in order[start:start + chunk].tolist():
                if i < n:
                    producer.send_event(events[i])
                    if timeline.drift_published_s is None and \
                            events[i]["event_time"] >= drift_at_ms:
                        timeline.drift_published_s = time.monotonic() - started
                        out(f"[{timeline.drift_published_s:5.1f}s] drift injected: fraud turns "
                            "into small domestic online payments, amounts double")
                else:
                    producer.send_label(labels[i - n])
            producer.flush()
            now = time.monotonic()
            if now - last_poll > 0.5:
                last_poll = now
                _follow(controller, timeline, started, out)
            time.sleep(max(0.0, started + (start + chunk) / rate - time.monotonic()))


# The controller's decisions worth a line (not every ignored or joined drift event).
_SHOWN = ("starts a job", "started", "registered", "rejected", "failed", "promoted",
          "rolled back", "rollout")


def _follow(controller: str, timeline: Timeline, started: float, out) -> None:
    """Print the controller's new decisions; note the promotion."""
    status = _get(f"{controller}/health")
    for text in status.get("decisions", []):
        if text not in timeline.seen:
            timeline.seen.add(text)
            if any(word in text for word in _SHOWN):
                out(f"[{time.monotonic() - started:5.1f}s] controller: {text}")
            if " promoted: " in text and timeline.promoted_s is None:
                timeline.promoted_s = time.monotonic() - started
                timeline.promoted_version = int(text.split(" v", 1)[1].split()[0])


def drift_events(settings: Settings) -> list[dict]:
    """Every drift event on the topic, read with a throwaway consumer group."""
    from driftline.core.codec.decoder import Decoder
    from driftline.core.codec.schema_set import SchemaSet

    decoder = Decoder("driftline.DriftEvent", SchemaSet.load())
    consumer = kafka.make_consumer(settings, f"demo-{uuid.uuid4().hex[:8]}",
                                   **{"auto.offset.reset": "earliest"})
    consumer.subscribe([settings.topic_drift])
    found, quiet_until = [], time.monotonic() + 5
    try:
        while time.monotonic() < quiet_until:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    found.append(decoder.decode(msg.value()))
                    quiet_until = time.monotonic() + 2
    finally:
        consumer.close()
    return found


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def closed_loop(outcomes: pa.Table, drift_at_ms: int, final: int
                ) -> tuple[float | None, float | None, float | None, str]:
    """Error rates before the drift (every version), after it for the version(s) serving when
    it hit (those with outcomes before it), and after it for `final` if it was trained after
    the drift (no outcome before it); None where a period has no outcomes."""
    data = outcomes.select(["model_version", "event_time", "decision", "label"]).to_pydict()
    version = np.asarray(data["model_version"])
    after = np.asarray(data["event_time"]) >= drift_at_ms
    wrong = np.asarray(data["decision"]) != (np.asarray(data["label"]) == 1)
    old = np.isin(version, np.unique(version[~after]))

    def rate(mask: np.ndarray) -> float | None:
        return float(wrong[mask].mean()) if mask.any() else None

    serving = ", ".join(f"v{v}" for v in np.unique(version[~after]).tolist())
    new = rate(after & (version == final)) if not (version[~after] == final).any() else None
    return rate(~after), rate(after & old), new, serving


def error_rates(outcomes: pa.Table, drift_at_ms: int) -> list[tuple[str, int, float]]:
    """(period, outcomes, error rate) rows: v1 before and after the drift, then each later
    version; the error is ``decision != label``."""
    data = outcomes.select(["model_version", "event_time", "decision", "label"]).to_pydict()
    version = np.asarray(data["model_version"])
    when = np.asarray(data["event_time"])
    wrong = np.asarray(data["decision"]) != (np.asarray(data["label"]) == 1)
    rows = []
    for v in sorted(set(version.tolist())):
        mine = version == v
        periods = [(f"v{v} before the drift", mine & (when < drift_at_ms)),
                   (f"v{v} after the drift", mine & (when >= drift_at_ms))]
        for name, mask in periods:
            if mask.any():
                rows.append((name, int(mask.sum()), float(wrong[mask].mean())))
    return rows


def run_demo(settings: Settings, n_events: int = 60_000, out=print,
             view_name: str | None = None, drift_at: int | None = None,
             rate: float = 2_500.0) -> int:
    """The closed loop end to end; `view_name` defaults to the deployment's only feature view."""
    from driftline.adapters.offline_store import OfflineStore
    from driftline.commands.backfill import audit_skew
    from driftline.commands.models import _controller_jobs, lineage_lines
    from driftline.commands.training import train_initial
    from driftline.core.demo_events import DemoConfig, DemoGenerator
    from driftline.core.registry import ModelRegistry

    drift_at = n_events // 3 if drift_at is None else drift_at
    view = resolve_view(settings, view_name, option="run_demo(view_name=...)")
    root = settings.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "retraining.yaml").write_text(RETRAINING_YAML)
    settings = settings.replace(data_dir=root, worker_port=0, scorer_port=0, monitor_port=0,
                                controller_port=0, retraining_config=root / "retraining.yaml")
    stack: Stack = start_servers(settings)
    begun = time.monotonic()
    try:
        settings = stack.settings
        kafka.create_topics(settings)
        out(f"broker {settings.kafka_bootstrap}, redis {settings.redis_url}, data {root}")
        registry = ModelRegistry(root / "registry")
        _, report = train_initial(
            registry, view, n_events=30_000, created_at_ms=int(time.time() * 1000),
            demo=DemoConfig(n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE,
                            label_delay_ms=LABEL_DELAY_MS))
        out(f"trained: {report.summary()}")
        worker, scorer, monitor, controller = start_services(
            stack, "worker", "scorer", "monitor", "controller")
        out(f"worker {worker.address}, scorer {scorer.address}, monitor {monitor.address}, "
            f"retrain controller {controller.address}")

        events, labels, drift_at_ms = stream(n_events, drift_at)
        out(f"streaming {len(events)} events and their {len(labels)} late labels at "
            f"{rate:.0f} records/s; concept drift from event {drift_at}")
        timeline = Timeline()
        started = time.monotonic()
        publish_paced(settings, events, labels, drift_at_ms, rate, controller.address,
                      timeline, started, out)
        # A JSON event, a late one and a malformed one, to show they are handled.
        event = DemoGenerator(DemoConfig(seed=99, n_entities=5)).events(1)[0]
        last = events[-1]["event_time"]
        late = dict(event, event_id="late-1", event_time=last - 3_600_000)
        fresh = dict(event, event_id="json-1", event_time=last)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                             "partitioner": settings.partitioner})
        for value in (json.dumps(fresh).encode(), json.dumps(late).encode(), b"not an event"):
            producer.produce(settings.topic_events, value, key=event["entity_id"].encode())
        producer.flush(10)
        del producer  # closes its connections before the broker goes away
        total = len(events) + 3

        deadline = time.monotonic() + 120
        while True:
            # Every event became a feature row or a dead letter, every row has a prediction,
            # every label found its prediction. (Counted by the services: the embedded broker
            # under-reports high watermarks.)
            w = _get(f"{worker.address}/health")
            scored = _get(f"{scorer.address}/health")["stream"]
            joined = _get(f"{monitor.address}/health")
            _follow(controller.address, timeline, started, out)
            if w["messages"] >= total and scored["predictions"] >= w["feature_rows"] and \
                    joined["outcomes"] >= len(labels):
                break
            if time.monotonic() > deadline:
                out(f"timed out: worker read {w['messages']}/{total}, "
                    f"{scored['predictions']}/{w['feature_rows']} predictions, "
                    f"{joined['outcomes']}/{len(labels)} outcomes")
                return 1
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        dead = w["dead_letters"] + scored["dead_letters"]
        out(f"stream done in {elapsed:.1f}s: {w['feature_rows']} feature records, "
            f"{scored['predictions']} predictions, {joined['outcomes']} outcomes, {dead} dead "
            "letters (late + malformed)")

        counts = {"events published": len(events) + 3,
                  "feature records": w["feature_rows"], "predictions": scored["predictions"],
                  "labels published": len(labels), "outcomes (joined)": joined["outcomes"],
                  "dead letters": dead}
        ok = _summary(settings, registry, root, drift_at_ms, timeline, counts, out,
                      lineage_lines, _controller_jobs)
        entity = event["entity_id"]
        answer = _post(f"{scorer.address}/predict", {"entity_id": entity})
        out(f"POST /predict {{'entity_id': '{entity}'}}: score {answer['score']:.4f}, "
            f"model {answer['model_name']} v{answer['model_version']}, "
            f"{answer['latency_ms']:.2f} ms")
        audit = audit_skew(OfflineStore(root / "offline"), settings.topic_events, view)
        out(f"skew audit (backfill vs served): {audit.compared} rows compared, "
            f"{len(audit.mismatches)} mismatches")
        out(f"offline store: {root / 'offline'}; logs: {root / 'logs'}; "
            f"demo took {time.monotonic() - begun:.0f}s")
        return 0 if ok and audit.clean else 1
    finally:
        stack.stop()


def _summary(settings: Settings, registry, root, drift_at_ms: int, timeline: Timeline,
             counts: dict[str, int], out, lineage_lines, controller_jobs) -> bool:
    """The summary table; True when a retrained version was promoted and recovered."""
    from driftline.adapters.offline_store import OfflineStore

    offline = OfflineStore(root / "offline")
    outcomes = pa.concat_tables([offline.read(d) for d in offline.outcomes_dirs()],
                                promote_options="default")
    drifts = drift_events(settings)
    production = registry.production("fraud")
    rates = error_rates(outcomes, drift_at_ms)
    out("")
    out("summary")
    for name, value in counts.items():
        out(f"  {name:<34} {value:>9}")
    out(f"  {'drift events by detector':<34} "
        + (", ".join(f"{d} {n}" for d, n in sorted(Counter(
            f"{e['detector']}/{e['kind']}" for e in drifts).items())) or "none"))
    out(f"  {'error rate (decision != label)':<34} {'outcomes':>9} {'rate':>8}")
    for name, count, rate in rates:
        out(f"    {name:<32} {count:>9} {rate:>8.4f}")
    if timeline.promoted_s is not None and timeline.drift_published_s is not None:
        out(f"  {'drift injected -> promotion':<34} "
            f"{timeline.promoted_s - timeline.drift_published_s:>9.1f} s (wall clock)")
    out(f"  {'Production now':<34} fraud v{production.version}")
    out("")
    out("lineage (driftline models show fraud):")
    for line in lineage_lines(registry, "fraud", production.version, controller_jobs(settings)):
        out(f"  {line}")
    out("")
    before, hit, new, serving = closed_loop(outcomes, drift_at_ms, production.version)
    recovered = (None not in (before, hit, new) and new < hit and new <= 1.5 * before + 0.01)
    out(f"closed loop: {'yes' if recovered else 'NO'}: error rate {_rate(before)} before the "
        f"drift, {_rate(hit)} after it ({serving}), {_rate(new)} once v{production.version} "
        "(retrained after the drift) serves")
    return recovered
