"""The retrain trigger: which drift events start a job, a storm is one job, cooldown, restart."""

from __future__ import annotations

import json

import pytest

from driftline.core.retraining.trigger import DriftSignal, RetrainTrigger, TriggerPolicy

MIN = 60_000


def signal(n: int, model: str = "fraud", kind: str = "error", severity: str = "drift"):
    return DriftSignal(f"d{n}", model, kind, severity)


def test_a_storm_of_events_for_one_change_starts_one_job_and_joins_it():
    t = RetrainTrigger()
    first = t.offer(signal(1), 0)
    assert first.start and first.job_triggers == ("d1",)
    for n in range(2, 12):
        assert not t.offer(signal(n, kind="feature"), n * 1000).start
    assert t.running() == {"fraud": tuple(f"d{n}" for n in range(1, 12))}
    assert t.job_ended("fraud", 20_000) == tuple(f"d{n}" for n in range(1, 12))
    assert t.running() == {}


def test_cooldown_after_a_job_then_a_new_job():
    t = RetrainTrigger(TriggerPolicy(cooldown_ms=30 * MIN))
    assert t.offer(signal(1), 0).start
    t.job_ended("fraud", 10 * MIN)
    cooling = t.offer(signal(2), 20 * MIN)
    assert not cooling.start and "cooling down for 1200 s" in cooling.reason
    assert t.offer(signal(3), 40 * MIN).start


def test_other_models_are_independent():
    t = RetrainTrigger()
    assert t.offer(signal(1, model="a"), 0).start
    assert t.offer(signal(2, model="b"), 0).start


@pytest.mark.parametrize(("kind", "severity", "why"), [
    ("fairness", "critical", "kind 'fairness' does not start retraining"),
    ("feature", "warn", "severity 'warn' is below 'drift'"),
])
def test_kinds_and_severities_outside_the_policy_are_ignored(kind, severity, why):
    decision = RetrainTrigger().offer(signal(1, kind=kind, severity=severity), 0)
    assert not decision.start and why in decision.reason


def test_a_duplicate_drift_event_is_ignored_even_after_its_job():
    t = RetrainTrigger(TriggerPolicy(cooldown_ms=0))
    assert t.offer(signal(1), 0).start
    t.job_ended("fraud", 1)
    again = t.offer(signal(1), 2)
    assert not again.start and "duplicate" in again.reason


def test_a_restored_trigger_decides_like_the_old_one():
    policy = TriggerPolicy(cooldown_ms=5 * MIN)
    t = RetrainTrigger(policy)
    t.offer(signal(1), 0)
    t.offer(signal(2), 1)
    copy = RetrainTrigger.restore(json.loads(json.dumps(t.snapshot())), policy)
    for trigger in (t, copy):
        assert trigger.job_ended("fraud", MIN) == ("d1", "d2")
        assert not trigger.offer(signal(2), 2 * MIN).start  # still remembered
        assert not trigger.offer(signal(3), 3 * MIN).start  # cooling down
        assert trigger.offer(signal(4), 7 * MIN).start


def test_from_mapping_names_unknown_keys_and_reads_record_fields():
    with pytest.raises(ValueError, match="cooldown"):
        TriggerPolicy.from_mapping({"cooldwon_ms": 5})
    policy = TriggerPolicy.from_mapping({"kinds": ["error"], "cooldown_ms": 0})
    assert policy.kinds == frozenset({"error"})
    record = {"model_name": "fraud", "kind": "error",
              "details": {"drift_id": "adwin:fraud:1:x:5", "severity": "drift"}}
    assert DriftSignal.from_record(record) == DriftSignal("adwin:fraud:1:x:5", "fraud", "error",
                                                          "drift")


def test_remembered_ids_are_bounded():
    t = RetrainTrigger(TriggerPolicy(remembered_ids=3, kinds=frozenset()))
    for n in range(10):
        t.offer(signal(n), n)
    assert list(t.seen) == ["d7", "d8", "d9"]
