"""`driftline demo` (what `make demo` runs): the data plane end to end on embedded defaults.

Starts the broker and Redis (or uses the given ones), trains and promotes the first model,
starts the feature worker and the scorer, publishes demo card transactions (JSON and Avro, a
few late and a few malformed), waits until every event has its features and its prediction,
then shows what came out and stops everything. Demo data lives in ``$DRIFTLINE_DATA_DIR/demo``,
which each run starts afresh.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

from confluent_kafka import Producer

from driftline.adapters import kafka
from driftline.commands.dev_stack import Stack, start_servers, start_services
from driftline.commands.models import resolve_view
from driftline.settings import Settings


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def run_demo(settings: Settings, n_events: int = 20_000, out=print,
             view_name: str | None = None) -> int:
    """The demo end to end; `view_name` defaults to the deployment's only feature view."""
    from driftline.adapters.event_producer import produce_demo
    from driftline.adapters.offline_store import OfflineStore
    from driftline.commands.backfill import audit_skew
    from driftline.commands.training import train_initial
    from driftline.core.demo_events import DemoConfig, DemoGenerator
    from driftline.core.registry import ModelRegistry

    view = resolve_view(settings, view_name, option="run_demo(view_name=...)")
    root = settings.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    settings = settings.replace(data_dir=root, worker_port=0, scorer_port=0)
    stack: Stack = start_servers(settings)
    try:
        settings = stack.settings
        kafka.create_topics(settings)
        out(f"broker {settings.kafka_bootstrap}, redis {settings.redis_url}, data {root}")
        _, report = train_initial(ModelRegistry(root / "registry"), view, n_events=30_000,
                                  created_at_ms=int(time.time() * 1000))
        out(f"trained: {report.summary()}")
        worker, scorer = start_services(stack, "worker", "scorer")
        out(f"worker {worker.address}, scorer {scorer.address}")

        started = time.monotonic()
        summary = produce_demo(settings, n_events=n_events, fmt="avro", seed=21,
                               drift_at_event=int(n_events * 0.7), n_entities=2000)
        # A JSON event, a late one and a malformed one, to show they are handled.
        event = DemoGenerator(DemoConfig(seed=99, n_entities=5)).events(1)[0]
        late = dict(event, event_id="late-1", event_time=summary["last_event_time"] - 3_600_000)
        fresh = dict(event, event_id="json-1", event_time=summary["last_event_time"])
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        for value in (json.dumps(fresh).encode(), json.dumps(late).encode(), b"not an event"):
            producer.produce(settings.topic_events, value, key=event["entity_id"].encode())
        producer.flush(10)
        del producer  # closes its connections before the broker goes away
        total = summary["events"] + 3
        out(f"published {summary['events']} Avro events (drift from event {int(n_events * .7)}),"
            f" 1 JSON, 1 late, 1 malformed")

        deadline = time.monotonic() + 300
        while True:
            # Every event became a feature row or a dead letter, and every row has a prediction.
            # (Counted by the services: the embedded broker under-reports high watermarks.)
            w = _get(f"{worker.address}/health")
            scored = _get(f"{scorer.address}/health")["stream"]
            if w["messages"] >= total and scored["predictions"] >= w["feature_rows"]:
                break
            if time.monotonic() > deadline:
                out(f"timed out: worker read {w['messages']}/{total}, "
                    f"{scored['predictions']}/{w['feature_rows']} predictions")
                return 1
            time.sleep(0.5)
        features, predictions = w["feature_rows"], scored["predictions"]
        dead = w["dead_letters"] + scored["dead_letters"]
        elapsed = time.monotonic() - started
        out(f"done in {elapsed:.1f}s: {features} feature records, {predictions} predictions, "
            f"{dead} dead letters (late + malformed)")

        entity = event["entity_id"]
        out(f"GET /features/{entity}: {json.dumps(_get(f'{scorer.address}/features/{entity}'))}")
        answer = _post(f"{scorer.address}/predict", {"entity_id": entity})
        out(f"POST /predict {{'entity_id': '{entity}'}}: score {answer['score']:.4f}, "
            f"model {answer['model_name']} v{answer['model_version']}, "
            f"{answer['latency_ms']:.2f} ms")
        audit = audit_skew(OfflineStore(root / "offline"), settings.topic_events, view)
        out(f"skew audit (backfill vs served): {audit.compared} rows compared, "
            f"{len(audit.mismatches)} mismatches")
        out(f"offline store: {root / 'offline'}; logs: {root / 'logs'}")
        return 0 if audit.clean else 1
    finally:
        stack.stop()
