"""Shadow and canary rollouts end to end: worker, scorer, monitor and retrain controller as child
processes on the session's broker and Redis, fed card transactions and their late labels.

* **Canary rollback.** A retraining job (requested by hand) trains a deliberately worse model
  (``trainers.inverted``: fit on ``1 - y``); loosened gates register it, the canary serves it to
  the entities of the first step, and the controller, judging the canary on the outcomes the
  monitor writes, rolls it back on ``max_error_rate_increase``. The predictions topic shows the
  routing: an entity moves to the candidate once and back once, only entities in the canary's
  hash buckets ever see it, and once rolled back everyone gets Production again.
* **Shadow promotion.** The stream turns into the demo's concept drift, so v1 degrades; a job
  retrains the normal pipeline on the drifted outcomes; the shadow scores every record beside
  Production, publishes only to the shadow topic, is judged on exactly Production's outcomes,
  wins and is promoted, and the scorer swaps to it.

The checking side reads the topics with raw confluent-kafka and fastavro. Each test writes its
own retraining YAML and uses its own topics, consumer groups and data directory.
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from driftline.adapters.event_producer import EventProducer
from driftline.adapters.offline_store import OfflineStore
from driftline.agents.retrain_controller import request_job
from driftline.commands.dev_stack import spawn_service, wait_consuming
from driftline.commands.local_servers import ManagedProcess
from driftline.commands.training import train_initial
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.core.registry import ARCHIVED, PRODUCTION, ModelRegistry
from driftline.core.rollout import bucket
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.settings import Settings
from tests.integration.conftest import repo_root
from tests.integration.helpers import avro_schema, consume_all, get_json

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
N_ENTITIES, FRAUD_RATE, LABEL_DELAY_MS = 2_000, 0.03, (5_000, 30_000)  # as in the demo
MODEL = "fraud"
SERVICES = ("worker", "scorer", "monitor", "controller")
TEST_BUDGET_S = 80.0  # each test's streaming deadline; the pytest timeout is not relied upon

CANARY_YAML = """\
models:
  fraud:
    trigger: {kinds: []}  # no drift event starts a job: the test requests it by hand
    data: {min_rows: 2000, max_rows: 3000, holdout_fraction: 0.25, wait_s: 60, poll_s: 0.5}
    gates: {min_roc_auc: 0.0, max_auc_drop_vs_production: 1.0, max_psi_vs_reference: 100,
            max_demographic_parity_difference: 1.0, max_equal_opportunity_difference: 1.0}
    trainer: tests.integration.trainers:inverted
    rollout: {kind: canary, steps: [0.2, 0.5, 1.0], step_after_outcomes: 200,
              min_outcomes: 200, max_error_rate_increase: 0.01}
"""

# Feature PSI against v1's reference is loosened: the stream starts with empty windows and
# drifts on purpose, and a job requested by hand is held to the reference.
SHADOW_YAML = """\
models:
  fraud:
    trigger: {kinds: []}
    data: {min_rows: 3000, max_rows: 4000, holdout_fraction: 0.25, wait_s: 60, poll_s: 0.5}
    gates: {max_psi_vs_reference: 100}
    trainer: driftline.commands.training:fit_gradient_boosting
    rollout: {kind: shadow, min_outcomes: 200, step_after_outcomes: 1, margin: 0.0}
"""


# -- the stream -----------------------------------------------------------------------------------

def make_stream(n_events: int, seed: int, drift_at: int | None = None
                ) -> tuple[list[dict], list[dict]]:
    """The demo's transactions and their labels; with `drift_at`, its concept drift (and
    covariate shift) from that event on."""
    config = DemoConfig(seed=seed, n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE,
                        label_delay_ms=LABEL_DELAY_MS)
    if drift_at is not None:
        drift_at_ms = DemoGenerator(config).events(drift_at + 1)[-1]["event_time"]
        config = DemoConfig(seed=seed, n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE,
                            label_delay_ms=LABEL_DELAY_MS, drift_at_ms=drift_at_ms,
                            covariate_shift=1.0, concept_shift=True)
    generator = DemoGenerator(config)
    events = generator.events(n_events)
    return events, generator.labels_for(events)


class PacedStream:
    """Events at their event time and labels at their label time, merged in time order and
    published in chunks at a steady number of records per second (as the demo does)."""

    def __init__(self, settings, events: list[dict], labels: list[dict]) -> None:
        self.events, self.labels = events, labels
        self.times = np.array([e["event_time"] for e in events]
                              + [lb["label_time"] for lb in labels], dtype=np.int64)
        self.order = np.argsort(self.times, kind="stable")
        self.position = 0
        self.sent_events: list[dict] = []
        self.sent_labels = 0
        self.producer = EventProducer(settings, "avro")

    def close(self) -> None:
        """Flush and drop the producer, closing its connections before the broker goes."""
        if self.producer is not None:
            self.producer.flush()
            self.producer = None
            gc.collect()  # the producer's delivery callback is a cycle back to it

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.order)

    def publish(self, rate: float, *, stop: Callable[[], bool] = lambda: False,
                before_ms: int | None = None, max_events: int | None = None,
                chunk: int = 200, deadline: float | None = None) -> bool:
        """Publish until `stop()` (asked between chunks, at most every 0.25 s) says so, the
        next record is at or after `before_ms`, `max_events` events went out, the stream
        ends or `deadline` (monotonic) passes. True when `stop()` ended it."""
        began, sent, n = time.monotonic(), 0, len(self.events)
        first_events, last_check = len(self.sent_events), 0.0
        while not self.exhausted:
            if deadline is not None and time.monotonic() > deadline:
                return False
            end = min(self.position + chunk, len(self.order))
            for k in range(self.position, end):
                i = int(self.order[k])
                if before_ms is not None and self.times[i] >= before_ms or \
                        max_events is not None and i < n and \
                        len(self.sent_events) - first_events >= max_events:
                    end = k
                    break
                if i < n:
                    self.producer.send_event(self.events[i])
                    self.sent_events.append(self.events[i])
                else:
                    self.producer.send_label(self.labels[i - n])
                    self.sent_labels += 1
            sent += end - self.position
            done = end < min(self.position + chunk, len(self.order))
            self.position = end
            self.producer.flush()
            if done:
                return False
            now = time.monotonic()
            if now - last_check >= 0.25:
                last_check = now
                if stop():
                    return True
            time.sleep(max(0.0, began + sent / rate - time.monotonic()))
        return stop()


# -- the services and what they say ---------------------------------------------------------------

@dataclass
class Loop:
    """The four services of one test, the lineage read so far and the controller's states."""

    settings: Settings
    procs: dict[str, ManagedProcess]
    model_events: list[dict] = field(default_factory=list)
    rollout_snapshots: list[dict] = field(default_factory=list)
    expected_events: int = 0  # events published so far, for `all_scored`
    began: float = field(default_factory=time.monotonic)
    streams: list[PacedStream] = field(default_factory=list)
    _consumer: Consumer | None = None

    def note(self, text: str) -> None:
        """A line of the test's timeline (pytest shows it when the test fails)."""
        print(f"[{time.monotonic() - self.began:5.1f}s] {text}", flush=True)

    def url(self, service: str, path: str = "/health") -> str:
        return f"{self.procs[service].address}{path}"

    def health(self, service: str) -> dict:
        try:
            return get_json(self.url(service))
        except Exception as exc:  # noqa: BLE001 - a 503 body is still an answer
            body = getattr(exc, "read", None)
            if body is not None:
                return json.loads(body())
            raise

    def poll(self) -> list[dict]:
        """New ``driftline.ModelEvent`` records (raw consumer, fastavro); also records the
        controller's rollout state."""
        if self._consumer is None:
            # Assigned, not subscribed: a group join can take many seconds on a busy broker.
            self._consumer = Consumer({
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"check-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
            topic = self.settings.topic_models
            partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                                   for p in sorted(partitions)])
        schema = avro_schema("ModelEvent")
        new = [fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema)
               for m in self._consumer.consume(500, 0.05) if m.error() is None]
        self.model_events += new
        for e in new:
            self.note(f"model event {e['event']} v{e['version']} {e['from_stage']}->"
                      f"{e['to_stage']}: {e['reason']}")
        try:
            rollout = self.health("controller").get("rollouts", {}).get(MODEL)
        except OSError as exc:
            raise AssertionError(f"controller /health: {exc!r}\n{self.diagnostics()}") from exc
        if rollout is not None:
            self.rollout_snapshots.append(rollout)
        return new

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.model_events if e["event"] == kind]

    def wait_event(self, kinds: tuple[str, ...], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            found = [e for e in self.model_events if e["event"] in kinds]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                             f"{self.diagnostics()}")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     f"{self.diagnostics()}")
            time.sleep(0.2)

    def all_scored(self) -> bool:
        """Every event published so far became a feature record, and each has a prediction."""
        worker, scorer = self.health("worker"), self.health("scorer")["stream"]
        return worker["messages"] >= self.expected_events and \
            scorer["predictions"] >= worker["feature_rows"]

    def diagnostics(self) -> str:
        """The controller's decisions and jobs, the lineage, and every log's tail."""
        lines = []
        try:
            status = self.health("controller")
            lines += ["controller decisions:", *(f"  {d}" for d in status.get("decisions", [])),
                      f"controller rollouts: {status.get('rollouts')}",
                      f"controller ticker: {status.get('ticker')}"]
            for job in status.get("jobs", []):
                result = job.get("result") or {}
                lines.append(f"job {job['job_id']}: {job['status']} v{job.get('version')} "
                             f"{result.get('error') or ''} failed_gate="
                             f"{result.get('failed_gate')} rows={result.get('rows')}")
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the failure
            lines.append(f"controller /health failed: {exc!r}")
        for name in ("worker", "scorer", "monitor"):
            try:
                lines.append(f"{name} /health: {json.dumps(self.health(name))[:600]}")
            except Exception as exc:  # noqa: BLE001
                lines.append(f"{name} /health failed: {exc!r}")
        lines.append("model events: " + "; ".join(
            f"{e['event']} v{e['version']} {e['from_stage']}->{e['to_stage']} {e['reason']!r}"
            for e in self.model_events))
        for name, proc in self.procs.items():
            lines.append(f"--- {name} log (alive: {proc.alive()}) ---\n{proc.log_tail(25)}")
        for log in sorted((self.settings.data_dir / "retrain" / "jobs").glob("*.log")):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            lines.append(f"--- job log {log.name} ---\n{tail}")
        return "\n".join(lines)

    def stream(self, events: list[dict], labels: list[dict]) -> PacedStream:
        self.streams.append(PacedStream(self.settings, events, labels))
        return self.streams[-1]

    def stop(self) -> None:
        for stream in self.streams:
            stream.close()
        if self._consumer is not None:
            self._consumer.close()
        for proc in reversed(list(self.procs.values())):
            proc.stop()


@pytest.fixture
def loop_settings(settings, tmp_path, monkeypatch):
    """The test's settings with its own scorer and controller groups, and ports picked at
    spawn time. The job processes import ``tests.integration.trainers``: the repository root
    goes on PYTHONPATH, which the controller passes on to them."""
    root = str(repo_root())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return settings.replace(group_scorer=f"{settings.group_features}-scorer",
                            group_controller=f"{settings.group_features}-controller",
                            scorer_port=0, controller_port=0, batch_size=1000)


def start_loop(settings, yaml_text: str, tmp_path: Path) -> Loop:
    """Fraud v1 trained and promoted as the demo does, then the four services."""
    config = tmp_path / "retraining.yaml"
    config.write_text(yaml_text)
    settings = settings.replace(retraining_config=config)
    train_initial(ModelRegistry(settings.data_dir / "registry"), VIEW, n_events=10_000,
                  created_at_ms=int(time.time() * 1000),
                  demo=DemoConfig(n_entities=N_ENTITIES, fraud_rate=FRAUD_RATE,
                                  label_delay_ms=LABEL_DELAY_MS))
    procs: dict[str, ManagedProcess] = {}
    try:
        for name in SERVICES:  # spawned together: their group joins overlap
            procs[name] = spawn_service(settings, name, tmp_path / "logs")
        for proc in procs.values():
            wait_consuming(proc)
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return Loop(settings, procs)


@pytest.fixture
def make_loop(loop_settings, tmp_path):
    loops: list[Loop] = []

    def make(yaml_text: str) -> Loop:
        loops.append(start_loop(loop_settings, yaml_text, tmp_path))
        return loops[-1]

    yield make
    for loop in loops:
        loop.stop()


def read_predictions(settings, topic: str, expected: int, timeout: float = 30.0) -> list[dict]:
    """Every prediction of `topic`, decoded, with its partition and offset."""
    schema = avro_schema("Prediction")
    out = []
    for m in consume_all(settings.kafka_bootstrap, topic, expected, timeout):
        record = fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema)
        record["_partition"], record["_offset"] = m.partition(), m.offset()
        out.append(record)
    return out


def by_partition(predictions: list[dict]) -> dict[int, list[dict]]:
    parts: dict[int, list[dict]] = defaultdict(list)
    for p in sorted(predictions, key=lambda p: (p["_partition"], p["_offset"])):
        parts[p["_partition"]].append(p)
    return parts


def published_outcome_rows(settings) -> int:
    store = OfflineStore(settings.data_dir / "offline")
    return sum(store.read(base).num_rows for base in store.outcomes_dirs())


# How every rollout of v2 starts, in the lineage.
OPENING_STEPS = ["job_started", "gate_results", "registered", "transition None->Staging v2",
                 "rollout_started"]


def publish_and_drain(loop: Loop, stream, rate: float, events: int,
                      deadline: float) -> set[str]:
    """Publish up to `events` more events at `rate` and wait until every event published so
    far is scored; returns the ids of the new ones."""
    before = len(stream.sent_events)
    stream.publish(rate, max_events=events, deadline=deadline)
    loop.expected_events = len(stream.sent_events)
    loop.wait(loop.all_scored, 30, "every published event to be scored")
    loop.poll()
    return {e["event_id"] for e in stream.sent_events[before:]}


def job_events(loop: Loop) -> list[str]:
    """The lineage of the (only) job, in topic order: its steps and stage transitions."""
    jobs = {e["job_id"] for e in loop.model_events if e["job_id"]}
    assert len(jobs) == 1, f"expected one job, got {jobs}\n{loop.diagnostics()}"
    return [e["event"] if e["event"] != "transition" else
            f"transition {e['from_stage']}->{e['to_stage']} v{e['version']}"
            for e in loop.model_events if e["job_id"]]


# -- canary --------------------------------------------------------------------------------------

def test_a_canary_of_a_worse_model_is_rolled_back_on_its_error_rate(make_loop):
    loop = make_loop(CANARY_YAML)
    s = loop.settings
    deadline = time.monotonic() + TEST_BUDGET_S
    events, labels = make_stream(30_000, seed=21)
    stream = loop.stream(events, labels)
    policy_steps = (0.2, 0.5, 1.0)

    # Phase 1: enough labelled outcomes for the job's min_rows (2000), then the request.
    assert stream.publish(1_500, deadline=deadline,
                          stop=lambda: loop.health("monitor")["outcomes"] >= 2_300), \
        f"the monitor never joined 2300 outcomes\n{loop.diagnostics()}"
    loop.note(f"phase 1: {len(stream.sent_events)} events, {stream.sent_labels} labels")
    request_job(s.data_dir / "retrain", MODEL, reason="canary test")

    # Phase 2: traffic goes on while the job trains and the canary runs, until it ends.
    def ended() -> bool:
        loop.poll()
        return bool(loop.events("rolled_back") or loop.events("promoted")
                    or loop.events("rejected") or loop.events("failed"))

    assert stream.publish(1_500, stop=ended, deadline=deadline), \
        f"the canary did not end (stream exhausted: {stream.exhausted})\n{loop.diagnostics()}"
    assert loop.events("rolled_back"), f"not rolled back\n{loop.diagnostics()}"

    # Production alone again at the scorer; then more traffic, which must all be v1's.
    loop.wait(lambda: loop.health("scorer")["rollout"] is None, 20,
              "the scorer to drop the rolled-back canary")
    loop.note(f"canary over after {len(stream.sent_events)} events, "
              f"{stream.sent_labels} labels")
    late = publish_and_drain(loop, stream, 1_500, 600, deadline + 10)

    diagnostics = loop.diagnostics()
    # The lineage, in order, and the rollback's numbers.
    steps = job_events(loop)
    assert steps[:5] == OPENING_STEPS, diagnostics
    # One step_up per share reached (the opening one at least), then the rollback.
    assert steps[-2:] == ["rolled_back", "transition Staging->Archived v2"], diagnostics
    assert steps[5:-2] and set(steps[5:-2]) == {"step_up"}, diagnostics
    shares = [float(e["details"]["share"]) for e in loop.events("step_up")]
    assert shares[0] == policy_steps[0] and shares == sorted(shares), shares
    rolled = loop.events("rolled_back")[0]
    d = rolled["details"]
    assert rolled["version"] == 2 and rolled["to_stage"] == ARCHIVED, rolled
    assert d["objective"] == "max_error_rate_increase", d
    observed, low, high, limit = (float(d[k]) for k in
                                  ("observed", "interval_low", "interval_high", "limit"))
    assert limit == 0.01 and limit < low <= observed <= high, d
    assert observed > 0.5, f"the inverted model should err on most outcomes: {d}"
    assert float(d["share"]) == shares[-1], (d, shares)
    assert "entirely above max_error_rate_increase=0.01" in rolled["reason"], rolled

    # The registry: v1 still serves, v2 archived, no plan left; the controller holds no rollout.
    registry = ModelRegistry(s.data_dir / "registry")
    assert registry.production(MODEL).version == 1
    assert registry.get(MODEL, 2).stage == ARCHIVED
    assert registry.serving_plan(MODEL) is None
    status = loop.health("controller")
    assert status["rollouts"] == {} and [j["status"] for j in status["jobs"]] == ["registered"]

    # The predictions: each record scored once; the routing by entity hash.
    n = loop.health("scorer")["stream"]["predictions"]
    predictions = read_predictions(s, s.topic_predictions, n)
    assert len(predictions) == n == len({p["event_id"] for p in predictions})
    assert {p["event_id"] for p in predictions} == {e["event_id"] for e in stream.sent_events}
    top = max(shares)
    entities = sorted({p["entity_id"] for p in predictions})
    in_canary = dict(zip(entities, (bucket(entities) < top).tolist(), strict=True))
    for p in predictions:
        assert (p["arm"], p["model_version"]) in {("production", 1), ("candidate", 2)}, p
        if p["model_version"] == 2:
            assert in_canary[p["entity_id"]], \
                f"{p['entity_id']} (bucket {bucket([p['entity_id']])[0]:.3f}) saw the " \
                f"candidate at shares {shares}"
    candidate = [p for p in predictions if p["arm"] == "candidate"]
    loop.note(f"{len(predictions)} predictions, {len(candidate)} by the candidate; "
              f"rollback: {rolled['reason']}")
    assert len(candidate) >= 200, f"{len(candidate)} candidate predictions\n{diagnostics}"
    assert np.mean([p["decision"] for p in candidate]) > 0.5  # the inverted model declines
    # Per partition, in offset order, the first step is one contiguous period: the records of
    # its entities are v2 inside it and v1 before and after it (the rollback).
    first = dict(zip(entities, (bucket(entities) < shares[0]).tolist(), strict=True))
    for part, records in by_partition(predictions).items():
        text = "".join(str(p["model_version"]) for p in records if first[p["entity_id"]])
        assert re.fullmatch(r"1*2+1*", text), (part, text)
    # Per entity: production, then the candidate, then production: never back and forth.
    by_entity: dict[str, list[int]] = defaultdict(list)
    for p in sorted(predictions, key=lambda p: (p["_partition"], p["_offset"])):
        by_entity[p["entity_id"]].append(p["model_version"])
    for entity, versions in by_entity.items():
        text = "".join(str(v) for v in versions)
        assert re.fullmatch(r"1*2*1*", text), (entity, text)
    # Traffic after the rollback is Production's alone.
    assert len(late) == 600
    assert {(p["arm"], p["model_version"]) for p in predictions if p["event_id"] in late} \
        == {("production", 1)}


# -- shadow --------------------------------------------------------------------------------------

SHADOW_SEED, DRIFT_AT, PAUSE_AT, SHADOW_EVENTS = 24, 500, 6_500, 12_000


def test_a_shadow_is_judged_on_productions_outcomes_and_promoted_when_better(make_loop):
    """The drifted stream pauses while the job trains, so its training rows (the newest 4000
    outcomes of the first 6500 events) are fixed and the candidate is deterministic; on this
    seed it is clearly better than v1 after the drift (an offline replay of the same rows
    puts the shadow's whole 95 % interval below zero within a few hundred outcomes)."""
    loop = make_loop(SHADOW_YAML)
    s = loop.settings
    deadline = time.monotonic() + TEST_BUDGET_S
    events, labels = make_stream(SHADOW_EVENTS, seed=SHADOW_SEED, drift_at=DRIFT_AT)
    stream = loop.stream(events, labels)

    # Phase 1: the stream up to event PAUSE_AT; then everything scored, joined and published.
    stream.publish(2_500, before_ms=events[PAUSE_AT]["event_time"], deadline=deadline)
    phase1 = {e["event_id"] for e in stream.sent_events}
    assert len(phase1) == PAUSE_AT
    loop.expected_events = PAUSE_AT
    loop.wait(loop.all_scored, 30, "the first phase to be scored")
    loop.wait(lambda: loop.health("monitor")["outcomes"] == stream.sent_labels
              and published_outcome_rows(s) == stream.sent_labels, 30,
              f"{stream.sent_labels} outcomes published")

    # The job, then the shadow at the scorer.
    labels_before = stream.sent_labels
    loop.note(f"phase 1 joined: {len(phase1)} events, {stream.sent_labels} labels")
    request_job(s.data_dir / "retrain", MODEL, reason="shadow test")
    started = loop.wait_event(("rollout_started", "rejected", "failed"), 60, "the rollout")
    assert started["event"] == "rollout_started", f"{started}\n{loop.diagnostics()}"
    assert started["version"] == 2 and json.loads(started["details"]["policy"])["kind"] == \
        "shadow"
    loop.wait(lambda: loop.health("scorer")["rollout"] == {
        "kind": "shadow", "candidate_version": 2, "share": 0.0, "salt": ""}, 20,
        "the scorer to apply the shadow plan")

    # Phase 2: a little traffic first, fewer labels than min_outcomes, so the controller is
    # seen judging the shadow before it can decide anything; then traffic until the shadow is
    # promoted and the scorer serves it; then some more.
    stream.publish(2_500, max_events=100, deadline=deadline)
    assert stream.sent_labels - labels_before < 200

    def judging() -> bool:
        loop.poll()
        return bool(loop.rollout_snapshots) and \
            loop.rollout_snapshots[-1]["outcomes"]["shadow"] > 0

    loop.wait(judging, 20, "the controller to judge the shadow on its first outcomes")

    def promoted() -> bool:
        loop.poll()
        return bool(loop.events("promoted")) and \
            loop.health("scorer")["model"]["model_version"] == 2 and \
            loop.health("scorer")["rollout"] is None

    assert stream.publish(2_500, stop=promoted, deadline=deadline), \
        f"the shadow was not promoted (stream exhausted: {stream.exhausted})\n" \
        f"{loop.diagnostics()}"
    shadow_period = {e["event_id"] for e in stream.sent_events} - phase1
    loop.note(f"promoted and swapped after {len(shadow_period)} more events")
    late = publish_and_drain(loop, stream, 2_500, 500, deadline + 10)
    assert len(late) == 500, "the stream ended too soon after the promotion"
    diagnostics = loop.diagnostics()

    # The lineage and the registry: v2 promoted by the shadow's win, v1 archived, no plan.
    steps = job_events(loop)
    assert steps[:5] == OPENING_STEPS, diagnostics
    assert "promoted" in steps and "rolled_back" not in steps, diagnostics
    assert {"transition Staging->Production v2", "transition Production->Archived v1"} <= \
        set(steps), diagnostics
    promotion = loop.events("promoted")[0]
    assert promotion["version"] == 2 and promotion["to_stage"] == PRODUCTION, promotion
    won = re.search(r"shadow wins: error rate difference ([-+.\d]+), 95% CI \[([-+.\d]+), "
                    r"([-+.\d]+)\] entirely below -margin=-?0 over (\d+) shadow and (\d+) "
                    r"production outcomes", promotion["reason"])
    assert won, promotion["reason"]
    diff, low, high = (float(won[i]) for i in (1, 2, 3))
    assert low <= diff <= high < 0, promotion["reason"]
    # Decided on the same rows for both arms (not Production's outcomes of a file before
    # the shadow's re-scored outcomes of the same file were added).
    assert int(won[4]) == int(won[5]) >= 200, promotion["reason"]
    registry = ModelRegistry(s.data_dir / "registry")
    assert registry.production(MODEL).version == 2
    assert registry.get(MODEL, 1).stage == ARCHIVED
    assert registry.serving_plan(MODEL) is None
    assert loop.health("controller")["rollouts"] == {}

    # While the shadow ran, the controller judged both versions on the same outcomes.
    snapshots = [r for r in loop.rollout_snapshots if r["kind"] == "shadow"]
    assert snapshots, f"the controller's shadow rollout was never seen\n{diagnostics}"
    for r in snapshots:
        assert r["candidate_version"] == 2 and r["production_version"] == 1, r
        assert r["outcomes"]["production"] == r["outcomes"]["shadow"], r
    assert max(r["outcomes"]["shadow"] for r in snapshots) > 0, snapshots[-3:]

    # The predictions topic: Production's only, v1 until the promotion, then v2; each once.
    n = loop.health("scorer")["stream"]["predictions"]
    predictions = read_predictions(s, s.topic_predictions, n)
    assert len(predictions) == n == len({p["event_id"] for p in predictions}) == \
        len(stream.sent_events)
    assert {p["arm"] for p in predictions} == {"production"}
    for part, records in by_partition(predictions).items():
        text = "".join(str(p["model_version"]) for p in records)
        assert re.fullmatch(r"1+2+", text), (part, text)
    version = {p["event_id"]: p["model_version"] for p in predictions}
    assert {version[e] for e in phase1 | shadow_period} - {2} == {1}
    assert {version[e] for e in late} == {2}

    # The shadow topic: v2 as "shadow", exactly for the records Production scored while the
    # plan was on: from the first event after the pause, in every partition, until the swap.
    m = loop.health("scorer")["stream"]["shadow_predictions"]
    shadow = read_predictions(s, s.topic_shadow, m)
    assert len(shadow) == m > 0 and len({p["event_id"] for p in shadow}) == m
    assert {(p["arm"], p["model_version"]) for p in shadow} == {("shadow", 2)}
    shadowed = {p["event_id"] for p in shadow}
    loop.note(f"{len(predictions)} predictions, {len(shadow)} shadow predictions; last "
              f"controller counts {snapshots[-1]['outcomes']}")
    assert not shadowed & phase1 and not shadowed & late
    assert shadowed <= shadow_period
    for part, records in by_partition(predictions).items():
        marks = "".join("s" if p["event_id"] in shadowed else
                        "a" if p["event_id"] in phase1 else "b" for p in records)
        # a: before the plan; s: scored beside the shadow; b: after the promotion.
        assert re.fullmatch(r"a+s+b+", marks), (part, marks)
    assert all(version[e] == 1 for e in shadowed)
    # Every v1 prediction after the pause has its shadow twin: none is missing.
    missing = {e for e in shadow_period if version[e] == 1} - shadowed
    assert not missing, f"{len(missing)} v1 predictions of the shadow period have no shadow"
