"""The retrain controller's decisions, without a broker: drift events in, jobs, lineage records,
registry transitions and serving plans out.

Jobs are not run here (``tests/unit/retraining/test_retrain_job.py`` runs the job itself and
``tests/integration/test_retrain_loop.py`` the whole loop on real servers): a fake runner
records what was started and the tests write the result file a job would have written.
Outcomes for rollouts are Parquet files in the layout the monitor writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftline.adapters.offline_store import OfflineStore
from driftline.agents.retrain_controller import (
    FAILED,
    REGISTERED,
    REJECTED,
    RUNNING,
    Job,
    RetrainController,
    lock_held,
    request_job,
)
from driftline.core.features import load_definitions
from driftline.core.registry import ARCHIVED, PRODUCTION, STAGING, ModelRegistry
from driftline.core.retraining.config import RetrainingConfig
from driftline.core.rollout import ServingPlan, bucket
from driftline.feature_defs import DEFINITIONS_DIR

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
VIEWS = {VIEW.name: VIEW}


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """fraud v1 in Production and v2 registered (stage None), real ONNX models."""
    from driftline.commands.training import train_initial

    root = tmp_path_factory.mktemp("controller-registry") / "registry"
    registry = ModelRegistry(root)
    train_initial(registry, VIEW, n_events=4000, seed=1, created_at_ms=1)
    train_initial(registry, VIEW, n_events=4000, seed=2, created_at_ms=2)
    registry.rollback("fraud", at_ms=3, reason="test setup", current_views=VIEWS)
    registry.transition("fraud", 2, "None", at_ms=4, reason="test setup", current_views=VIEWS)
    return root


class FakeRunner:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.alive: set[str] = set()

    def start(self, job: Job, spec_path: Path, log_path: Path) -> None:
        assert json.loads(spec_path.read_text())["job_id"] == job.job_id
        self.started.append((job.job_id, job.attempt))
        self.alive.add(job.job_id)

    def running(self, job: Job, lock_path: Path) -> bool:
        return job.job_id in self.alive


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def publish(self, transition, **lineage) -> bool:
        return self.publish_records([dict(t.to_model_event(), **lineage)
                                     for t in transition.events()])

    def publish_records(self, records) -> bool:
        self.records.extend(records)
        return True

    def events(self) -> list[str]:
        return [r.get("event", "transition") for r in self.records]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def env(trained_root, tmp_path):
    registry = ModelRegistry(shutil.copytree(trained_root, tmp_path / "registry"))
    made = {}

    def make(config: dict | None = None) -> RetrainController:
        made["controller"] = RetrainController(
            root=tmp_path / "retrain", config=RetrainingConfig.from_mapping(config),
            registry=registry, offline=OfflineStore(tmp_path / "offline"),
            publisher=made.setdefault("publisher", FakePublisher()),
            runner=made.setdefault("runner", FakeRunner()), views=VIEWS,
            clock_ms=made.setdefault("clock", Clock()))
        return made["controller"]

    made["make"] = make
    made["registry"] = registry
    made["root"] = tmp_path
    return made


def drift(drift_id: str, kind: str = "error", severity: str = "drift", model="fraud") -> dict:
    return {"detector": "adwin", "kind": kind, "subject": "abs_error", "statistic": 0.2,
            "threshold": 0.05, "model_name": model, "model_version": 1, "window_start": 10,
            "window_end": 20, "detected_at": 5_000,
            "details": {"drift_id": drift_id, "severity": severity}}


def finish(controller: RetrainController, job: Job, status: str, version: int | None = None,
           **extra) -> None:
    """Write the result file the job process would have written, and tick."""
    path = controller.root / "jobs" / f"{job.job_id}.result.json"
    path.write_text(json.dumps({"job_id": job.job_id, "status": status, "version": version,
                                "training_range": [100, 200], **extra}))
    controller.tick()


def only_job(controller: RetrainController) -> Job:
    (job,) = controller.jobs.values()
    return job


def test_a_storm_of_drift_events_starts_one_job_naming_them_all(env):
    controller = env["make"]()
    controller.offer([drift("d1"), drift("d1"), drift("d2", kind="fairness"),
                      drift("d3"), drift("d4", kind="score")])
    job = only_job(controller)
    assert job.drift_ids == ["d1", "d3", "d4"] and job.status == RUNNING
    assert job.since_ms == 5_000  # data from the detection on
    assert env["runner"].started == []  # launched by the ticker's thread, not the loop's
    controller.tick()
    assert env["runner"].started == [(job.job_id, 1)]
    assert env["publisher"].events() == ["job_started"]
    assert env["publisher"].records[0]["drift_ids"] == ["d1"]


def test_a_registered_candidate_is_promoted_directly_with_its_lineage(env):
    controller = env["make"]()
    controller.offer([drift("d1")])
    controller.tick()
    job = only_job(controller)
    gates = {"passed": True, "failed": None,
             "gates": [{"name": "roc_auc", "summary": "roc_auc 0.93 >= 0.70: PASS"}]}
    finish(controller, job, REGISTERED, 2, gates=gates)
    registry = env["registry"]
    assert registry.production("fraud").version == 2
    assert registry.get("fraud", 1).stage == ARCHIVED
    events = env["publisher"].events()
    assert events == ["job_started", "gate_results", "registered", "transition", "transition",
                      "promoted"]
    promoted = env["publisher"].records[-1]
    assert promoted["version"] == 2 and promoted["drift_ids"] == ["d1"]
    assert promoted["parent_version"] == 1 and promoted["training_range_start"] == 100
    assert env["publisher"].records[1]["details"]["roc_auc"].endswith("PASS")
    # The cooldown now holds further drift back.
    controller.offer([drift("d9")])
    assert len(controller.jobs) == 1 and "cooling down" in controller.decisions[-1]


def test_a_rejected_candidate_registers_nothing_and_names_the_failing_gate(env):
    controller = env["make"]()
    controller.offer([drift("d1")])
    controller.tick()
    finish(controller, only_job(controller), REJECTED, None,
           failed_gate={"name": "roc_auc", "value": 0.51, "threshold": 0.7,
                        "summary": "roc_auc 0.510 < 0.70: FAIL"})
    assert env["registry"].production("fraud").version == 1
    rejected = env["publisher"].records[-1]
    assert rejected["event"] == "rejected" and rejected["details"]["gate"] == "roc_auc"
    assert rejected["details"]["value"] == "0.51" and "FAIL" in rejected["reason"]


def test_an_interrupted_job_is_retried_then_marked_failed_never_lost(env):
    controller = env["make"]({"default": {"max_attempts": 2}})
    controller.offer([drift("d1")])
    controller.tick()
    job = only_job(controller)
    env["runner"].alive.clear()  # the process died without a result
    controller.tick()
    assert env["runner"].started == [(job.job_id, 1), (job.job_id, 2)]
    # A controller restarted from its state file sees the same running job ...
    env["runner"].alive.clear()
    restarted = env["make"]({"default": {"max_attempts": 2}})
    assert only_job(restarted).status == RUNNING and only_job(restarted).attempt == 2
    restarted.tick()  # ... whose second attempt died too: failed, with an event.
    assert only_job(restarted).status == FAILED
    assert env["publisher"].records[-1]["event"] == "failed"
    assert "interrupted 2 times" in env["publisher"].records[-1]["reason"]
    # The model is free again (after the cooldown).
    env["clock"].now += 31 * 60_000
    restarted.offer([drift("d2")])
    assert len(restarted.jobs) == 2


def test_a_result_written_while_the_controller_was_down_is_taken_up(env):
    controller = env["make"]()
    controller.offer([drift("d1")])
    controller.tick()
    job = only_job(controller)
    env["runner"].alive.clear()
    (controller.root / "jobs" / f"{job.job_id}.result.json").write_text(json.dumps(
        {"job_id": job.job_id, "status": REGISTERED, "version": 2, "training_range": [1, 2]}))
    env["make"]().tick()
    assert env["registry"].production("fraud").version == 2
    assert len(env["runner"].started) == 1  # not started again


def test_a_request_by_hand_starts_a_job_and_a_second_one_is_refused(env):
    controller = env["make"]()
    first = request_job(controller.root, "fraud", shuffle_labels=True)
    controller.tick()
    request_job(controller.root, "fraud")
    controller.tick()
    job = only_job(controller)
    assert job.request_id == first and job.shuffle_labels and job.since_ms is None
    assert "already running" in controller.decisions[-1]
    assert not list((controller.root / "requests").glob("*.json"))


def test_lock_held_sees_another_holder(tmp_path):
    import fcntl
    import subprocess
    import sys

    path = tmp_path / "job.lock"
    assert not lock_held(path)
    child = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(30)"), str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"locked"
        assert lock_held(path)
    finally:
        child.kill()
        child.wait()
    assert not lock_held(path)
    with open(path) as fh:  # and our own check released what it took
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- rollouts --------------------------------------------------------------------------------

def outcome_file(root: Path, n: int, version: int, error_rate: float, *, seq: int,
                 entity_prefix: str = "card", seed: int = 0) -> None:
    """A published outcome file of `n` outcomes of fraud `version` with that error rate."""
    rng = np.random.default_rng(seed + seq)
    label = (rng.random(n) < 0.5).astype(np.int64)
    wrong = rng.random(n) < error_rate
    decision = np.where(wrong, label == 0, label == 1)
    X = rng.normal(size=(n, len(VIEW.feature_names)))
    columns = {"event_id": [f"e{seq}-{i}" for i in range(n)],
               "event_time": np.arange(n, dtype=np.int64) + seq * 10_000,
               "label": label, "decision": decision, "score": decision.astype(float),
               "model_name": ["fraud"] * n, "model_version": np.full(n, version),
               "latency_ms": np.full(n, 2.0),
               "entity_id": [f"{entity_prefix}-{i}" for i in range(n)]}
    for j, name in enumerate(VIEW.feature_names):
        columns[name] = X[:, j]
    folder = root / "offline" / "outcomes" / "by=labels" / "date=2023-11-14"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / f"p0-{seq:020d}-{seq:020d}.parquet")


CANARY = {"kind": "canary", "steps": [0.2, 1.0], "step_after_outcomes": 300,
          "min_outcomes": 300, "max_error_rate_increase": 0.02}


def start_rollout(env, policy: dict) -> RetrainController:
    controller = env["make"]({"default": {"rollout": policy}})
    controller.offer([drift("d1")])
    controller.tick()
    finish(controller, only_job(controller), REGISTERED, 2)
    return controller


def test_a_canary_steps_up_then_promotes_while_the_candidate_holds(env):
    controller = start_rollout(env, CANARY)
    registry = env["registry"]
    assert registry.get("fraud", 2).stage == STAGING
    plan = ServingPlan.from_mapping(registry.serving_plan("fraud"))
    assert (plan.kind, plan.candidate_version, plan.share) == ("canary", 2, 0.2)
    assert env["publisher"].events()[-2:] == ["rollout_started", "step_up"]
    outcome_file(env["root"], 1000, 1, 0.05, seq=1)  # present before the rollout? no: after
    outcome_file(env["root"], 400, 2, 0.05, seq=2)
    controller.tick()
    assert registry.serving_plan("fraud")["share"] == 1.0
    outcome_file(env["root"], 400, 2, 0.05, seq=3)
    controller.tick()
    assert registry.production("fraud").version == 2
    assert registry.serving_plan("fraud") is None and not controller.rollouts
    assert env["publisher"].events()[-1] == "promoted"


def test_a_worse_canary_is_rolled_back_naming_the_breached_objective(env):
    controller = start_rollout(env, CANARY)
    outcome_file(env["root"], 2000, 1, 0.02, seq=1)
    outcome_file(env["root"], 600, 2, 0.30, seq=2)
    controller.tick()
    registry = env["registry"]
    assert registry.production("fraud").version == 1
    assert registry.get("fraud", 2).stage == ARCHIVED
    assert registry.serving_plan("fraud") is None
    rolled = next(r for r in env["publisher"].records if r["event"] == "rolled_back")
    assert rolled["details"]["objective"] == "max_error_rate_increase"
    assert float(rolled["details"]["interval_low"]) > 0.02
    assert "rolled back" in registry.history("fraud")[-1].reason


def test_outcomes_written_before_the_rollout_do_not_count(env):
    outcome_file(env["root"], 2000, 2, 0.5, seq=1)  # v2 looked terrible before, elsewhere
    controller = start_rollout(env, CANARY)
    controller.tick()
    assert controller.rollouts["fraud"].state.counts["candidate"].outcomes == 0


def test_a_shadow_is_compared_on_productions_outcomes_and_publishes_nothing(env):
    policy = {"kind": "shadow", "min_outcomes": 200, "step_after_outcomes": 1, "margin": 0.0}
    controller = start_rollout(env, policy)
    plan = ServingPlan.from_mapping(env["registry"].serving_plan("fraud"))
    assert plan.shadow and plan.share == 0.0
    assert not plan.to_candidate(["card-1", "card-2"]).any()
    outcome_file(env["root"], 500, 1, 0.0, seq=1)
    controller.tick()
    counts = controller.rollouts["fraud"].state.counts
    # The shadow was scored on exactly the Production outcome rows.
    assert counts["production"].outcomes == counts["shadow"].outcomes == 500


def test_canary_routing_is_by_entity_hash(env):
    start_rollout(env, CANARY)
    plan = ServingPlan.from_mapping(env["registry"].serving_plan("fraud"))
    ids = [f"card-{i}" for i in range(1000)]
    np.testing.assert_array_equal(plan.to_candidate(ids), bucket(ids) < 0.2)
    assert env["registry"].get("fraud", 1).stage == PRODUCTION


def test_an_ab_test_reports_and_ends_when_a_person_decides(env):
    policy = {"kind": "ab", "split": 0.5, "min_outcomes": 200, "step_after_outcomes": 300}
    controller = start_rollout(env, policy)
    outcome_file(env["root"], 400, 1, 0.05, seq=1)
    outcome_file(env["root"], 400, 2, 0.05, seq=2)
    controller.tick()
    report = next(r for r in env["publisher"].records if r.get("event") == "ab_report")
    assert report["details"]["candidate_outcomes"] == "400"
    assert float(report["details"]["interval_low"]) < 0 < float(report["details"]["interval_high"])
    assert env["registry"].production("fraud").version == 1  # never promoted automatically
    env["registry"].promote("fraud", 2, at_ms=9, reason="by hand", current_views=VIEWS)
    controller.tick()
    assert not controller.rollouts and env["registry"].serving_plan("fraud") is None
    assert "ended by hand" in controller.decisions[-1]


def test_jobs_gates_and_rollouts_are_exported_as_metrics(env):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels)

    before = sample("driftline_retrain_jobs_total", model="fraud", status="rejected") or 0
    controller = env["make"]({"default": {"rollout": CANARY}})
    controller.offer([drift("d1")])
    controller.tick()
    gates = {"passed": False, "failed": "roc_auc", "gates": [
        {"name": "roc_auc", "passed": False, "value": 0.51, "summary": "roc_auc 0.51: FAIL"}]}
    finish(controller, only_job(controller), REJECTED, None, gates=gates)
    assert sample("driftline_retrain_jobs_total", model="fraud", status="rejected") == before + 1
    assert sample("driftline_gate_value", model="fraud", gate="roc_auc") == 0.51
    assert sample("driftline_gate_passed", model="fraud", gate="roc_auc") == 0
    request_job(controller.root, "fraud")
    controller.tick()
    finish(controller, [j for j in controller.jobs.values() if j.status == RUNNING][0],
           REGISTERED, 2)
    assert sample("driftline_rollout_share", model="fraud", kind="canary") == 0.2
    outcome_file(env["root"], 2000, 1, 0.02, seq=1)
    outcome_file(env["root"], 600, 2, 0.30, seq=2)
    controller.tick()  # rolled back: the rollout's series are gone
    assert sample("driftline_rollout_share", model="fraud", kind="canary") is None
    assert sample("driftline_rollout_outcomes", model="fraud", arm="candidate") is None


def test_a_refused_request_starts_no_cooldown(env):
    controller = env["make"]()
    registry = env["registry"]
    registry.transition("fraud", 1, "Archived", at_ms=5, reason="test", current_views=VIEWS)
    request_job(controller.root, "fraud")
    controller.tick()
    assert not controller.jobs and "no Production version" in controller.decisions[-1]
    registry.promote("fraud", 1, at_ms=6, reason="test", current_views=VIEWS)
    controller.offer([drift("d1")])  # not "cooling down": nothing ran
    assert len(controller.jobs) == 1, controller.decisions[-1]
