"""The Grafana dashboards and the Prometheus alert rules, proven against a real Prometheus.

The worker, the scorer, the monitor and the retrain controller run as child processes; a real
Prometheus (Debian's, started by `local_servers.start_prometheus`, the helper of
`driftline dev --prometheus`) scrapes them every second with ``deploy/prometheus/rules.yml``
loaded unchanged. Demo traffic makes every panel's metric real:

* card transactions and their late labels, with the demo's drift (covariate and concept) a third
  of the way in: PSI, fairness and error-rate statistics, drift events, open alarms;
* the error drift starts a retraining job (loosened gates: it is registered) whose candidate
  runs an A/B rollout that never ends on its own: gate values, rollout shares and per-arm
  counts, predictions of two versions and arms;
* Redis is killed for a moment while events flow: dependency errors and batch failures;
* malformed and late events: dead letters by reason; online requests, also during the outage.

Then every expression of every dashboard panel and annotation is queried through Prometheus's
HTTP API: it must parse and return data (series of its own, not only an ``or on() vector(0)``
fallback), and every alert rule must parse, evaluate without error, and watch metrics that
exist. The drift alerts must fire: the PSI alarm and the error drift (``for: 0s``: the monitor's
alarms are already debounced; see rules.yml, which is loaded as it is, ``for:`` included).
The table "query -> number of series" is printed and written to
``data/reports/observability-panels.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from driftline.commands import local_servers
from driftline.commands.demo import Timeline, publish_paced
from driftline.commands.dev_stack import COMPOSE_NAMES, spawn_service, wait_consuming
from driftline.commands.training import train_initial
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.core.registry import ModelRegistry
from driftline.feature_defs import DEFINITIONS_DIR
from tests.integration.helpers import get_json, metric_value, wait_for
from tests.observability import ROOT, Query, alert_queries, dashboard_queries, metric_names

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
DEMO = DemoConfig(seed=21, n_entities=2_000, fraud_rate=0.03, label_delay_ms=(5_000, 30_000))
N_BEFORE, DRIFT_AT, N_AFTER = 24_000, 8_000, 6_000  # events before / after the rollout starts
RATE = 6_000.0  # records (events and labels) published a second
SERVICES = ("worker", "scorer", "monitor", "controller")
REPORT = ROOT / "data" / "reports" / "observability-panels.txt"
# Declared and exported (zero counts) but not observed yet: their quantiles are NaN, which counts
# as data only for them. (None now: the monitor observes label -> outcome latency too.)
NOT_YET_OBSERVED: set[str] = set()

# Error drift starts a job; the gates are opened so its candidate is registered, and the A/B
# rollout it starts neither promotes nor ends while the test runs.
RETRAINING_YAML = """\
models:
  fraud:
    trigger: {kinds: [error], min_severity: drift, cooldown_ms: 600000}
    data: {min_rows: 2000, max_rows: 6000, holdout_fraction: 0.25, wait_s: 60, poll_s: 0.5}
    gates: {min_roc_auc: 0.0, max_auc_drop_vs_production: 1.0, max_psi_vs_reference: 100,
            max_demographic_parity_difference: 1.0, max_equal_opportunity_difference: 1.0}
    rollout: {kind: ab, split: 0.5, step_after_outcomes: 1000000, min_outcomes: 1000000}
"""


def prometheus(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400 bad_data / 422 execution: the body says why
        return json.loads(exc.read())


@dataclasses.dataclass
class Answer:
    query: Query
    error: str | None = None
    series: int = 0
    fallback_only: bool = False  # nothing but the `or on() vector(0)` sample
    nan: int = 0

    @property
    def has_data(self) -> bool:
        """Series of its own, not only the fallback, and numbers, not only NaN (a quantile of a
        histogram that observed nothing), except for the metrics not observed yet."""
        all_nan = self.nan == self.series and not metric_names(self.query.expr) & NOT_YET_OBSERVED
        return self.error is None and self.series > 0 and not self.fallback_only and not all_nan


def ask(base: str, query: Query) -> Answer:
    body = prometheus(base, "/api/v1/query", query=query.expr)
    if body.get("status") != "success":
        return Answer(query, error=f"{body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    values = [float(r["value"][1]) for r in result] if body["data"]["resultType"] == "vector" \
        else []
    fallback = ("vector(0)" in query.expr and len(result) == 1 and not result[0]["metric"]
                and values == [0.0])
    return Answer(query, series=len(result), fallback_only=fallback,
                  nan=sum(math.isnan(v) for v in values))


def start_stack(settings, log_dir: Path) -> dict:
    procs = {name: spawn_service(settings, name, log_dir) for name in SERVICES}
    try:
        for proc in procs.values():
            wait_consuming(proc, timeout=90)
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return procs


def produce_raw(settings, values: list[bytes], key: bytes = b"card-0") -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value in values:
        producer.produce(settings.topic_events, value, key=key)
    assert producer.flush(10) == 0


def predict(scorer: str, entity: str) -> int:
    request = urllib.request.Request(f"{scorer}/predict", json.dumps({"entity_id": entity})
                                     .encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def table(answers: list[Answer], alerts: dict[str, str]) -> str:
    width = max(len(a.query.label) for a in answers)
    lines = [f"{'query':<{width}}  {'kind':<10} {'series':>6}  note"]
    for a in answers:
        note = a.error or ("only the vector(0) fallback" if a.fallback_only else "")
        if a.nan:
            unobserved = metric_names(a.query.expr) & NOT_YET_OBSERVED
            note = f"{a.nan} NaN{' (not observed yet)' if unobserved else ''}" + (
                f"; {note}" if note else "")
        if a.query.kind == "alert":
            note = f"{alerts.get(a.query.name, 'inactive')}" + (f"; {note}" if note else "")
        lines.append(f"{a.query.label:<{width}}  {a.query.kind:<10} {a.series:>6}  {note}")
    return "\n".join(lines)


@pytest.fixture
def observed(settings, tmp_path):
    """The four services on this test's own Redis (killed and restarted mid-test), fraud v1 in
    Production, and a Prometheus scraping them all."""
    redis_dir = tmp_path / "redis"
    redis = local_servers.start_redis(redis_dir, persist=True)
    (tmp_path / "retraining.yaml").write_text(RETRAINING_YAML)
    settings = settings.replace(redis_url=redis.address, scorer_port=local_servers.free_port(),
                                retraining_config=tmp_path / "retraining.yaml")
    train_initial(ModelRegistry(settings.data_dir / "registry"), VIEW, n_events=20_000, seed=3,
                  created_at_ms=1, demo=dataclasses.replace(DEMO, seed=3))
    log_dir = tmp_path / "logs"
    servers = {"redis": redis}
    try:
        procs = start_stack(settings, log_dir)
        servers.update(procs)
        targets = {COMPOSE_NAMES[name]: proc.address.split("://", 1)[1]
                   for name, proc in procs.items()}
        servers["prometheus"] = local_servers.start_prometheus(
            log_dir, tmp_path / "prometheus", targets)
        yield settings, servers
    finally:
        for server in reversed(list(servers.values())):
            server.stop()


def test_every_panel_and_alert_rule_works_on_real_metrics(observed):
    started = time.monotonic()
    settings, servers = observed
    prom, worker, scorer = (servers[n].address for n in ("prometheus", "worker", "scorer"))
    monitor, controller = servers["monitor"].address, servers["controller"].address
    log: list[str] = []

    # 1. Traffic with the drift, until the retrained candidate's A/B rollout runs.
    drift_at_ms = DemoGenerator(DEMO).events(DRIFT_AT + 1)[-1]["event_time"]
    generator = DemoGenerator(dataclasses.replace(DEMO, drift_at_ms=drift_at_ms,
                                                  covariate_shift=1.0, concept_shift=True))
    before = generator.events(N_BEFORE)
    labels_before = generator.labels_for(before)
    publish_paced(settings, before, labels_before, drift_at_ms, RATE, controller, Timeline(),
                  time.monotonic(), log.append)
    rollout = wait_for(lambda: get_json(f"{controller}/health").get("rollouts", {}).get("fraud"),
                       timeout=60, interval=0.5, what="the retrained candidate's rollout")
    assert rollout["kind"] == "ab", rollout
    streamed_s = time.monotonic() - started

    # 2. Redis goes away while events flow: the worker's batches fail on it and are retried.
    redis = servers["redis"]
    port = int(redis.address.rsplit(":", 1)[1].split("/")[0])
    redis.proc.kill()
    redis.proc.wait(10)
    after = generator.events(N_AFTER)
    labels_after = generator.labels_for(after)
    half = N_AFTER // 2
    publish_paced(settings, after[:half], [], drift_at_ms, RATE, controller, Timeline(),
                  time.monotonic(), log.append)
    assert predict(scorer, after[0]["entity_id"]) == 503  # the online store is down
    wait_for(lambda: metric_value(urllib.request.urlopen(f"{worker}/metrics", timeout=5).read()
                                  .decode(), "driftline_dependency_errors_total",
                                  dependency="redis") > 0,
             timeout=30, what="the worker to fail a batch on Redis")
    servers["redis"] = local_servers.start_redis(redis.log_path.parent, port=port, persist=True)
    publish_paced(settings, after[half:], labels_after, drift_at_ms, RATE, controller,
                  Timeline(), time.monotonic(), log.append)

    # 3. Dead letters (malformed, late) and online requests.
    late = dict(after[-1], event_id="late-1", event_time=after[-1]["event_time"] - 3_600_000)
    produce_raw(settings, [b"not an event", b"{}", json.dumps(late).encode()])
    assert [predict(scorer, e["entity_id"]) for e in after[-20:]] == [200] * 20
    total = N_BEFORE + N_AFTER + 3
    labels = len(labels_before) + len(labels_after)
    wait_for(lambda: get_json(f"{worker}/health")["messages"] >= total
             and get_json(f"{monitor}/health")["outcomes"] >= labels,
             timeout=90, interval=0.5, what=f"{total} events consumed and {labels} outcomes")
    wait_for(lambda: all(n > 0 for n in get_json(f"{controller}/health")["rollouts"]["fraud"]
                         ["outcomes"].values())
             and len(get_json(f"{controller}/health")["rollouts"]["fraud"]["outcomes"]) == 2,
             timeout=60, interval=0.5, what="outcomes counted on both arms of the rollout")
    traffic_s = time.monotonic() - started

    # 4. Every panel and annotation returns data of its own; every rule evaluates.
    panels = dashboard_queries()
    rules = alert_queries()
    deadline = time.monotonic() + 30
    while True:
        answers = [ask(prom, q) for q in panels]
        if all(a.has_data for a in answers) or time.monotonic() > deadline:
            break
        time.sleep(1)
    # The PSI alarms (amounts double) and the error drift that started the retraining job.
    must_fire = ("DriftAlarmOpen", "ConceptDriftDetected")
    firing = wait_for(lambda: all((s := _alerts(prom)).get(n) == "firing" for n in must_fire)
                      and s, timeout=30, what=f"{must_fire} firing")
    rule_health = {r["name"]: r for g in prometheus(prom, "/api/v1/rules")["data"]["groups"]
                   for r in g["rules"]}
    rule_answers = [ask(prom, q) for q in rules]
    report = table(answers + rule_answers, firing) + "\n\nalerts firing:\n" + "\n".join(
        f"  {line}" for line in _firing(prom))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(report + "\n")
    print(f"\n{report}\n\nalerts: {firing}\nstreamed {streamed_s:.0f}s, traffic done at "
          f"{traffic_s:.0f}s, checked at {time.monotonic() - started:.0f}s; report: {REPORT}")

    missing = [a for a in answers if not a.has_data]
    assert not missing, "panels without data of their own:\n" + "\n".join(
        f"  {a.query.label}: {a.error or ('fallback only' if a.fallback_only else 'no series')}"
        f"  [{a.query.expr}]" for a in missing)
    for answer in rule_answers:
        name = answer.query.name
        assert answer.error is None, f"{name}: {answer.error}"
        assert rule_health[name]["health"] == "ok", (name, rule_health[name].get("lastError"))
        for metric in metric_names(answer.query.expr):
            found = ask(prom, Query("", "", f'count({{__name__="{metric}"}})', "metric"))
            assert found.series, f"{name} watches {metric}, which no service exports"
    assert all(firing[name] == "firing" for name in must_fire), firing


def _firing(base: str) -> list[str]:
    """One line per firing alert: its name and labels."""
    lines = []
    for alert in prometheus(base, "/api/v1/alerts")["data"]["alerts"]:
        if alert["state"] == "firing":
            labels = {k: v for k, v in alert["labels"].items() if k != "alertname"}
            lines.append(f"{alert['labels']['alertname']} "
                         + " ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return sorted(lines)


def _alerts(base: str) -> dict[str, str]:
    """Alert name -> its most advanced state (firing over pending)."""
    states: dict[str, str] = {}
    for alert in prometheus(base, "/api/v1/alerts")["data"]["alerts"]:
        name = alert["labels"]["alertname"]
        if states.get(name) != "firing":
            states[name] = alert["state"]
    return states
