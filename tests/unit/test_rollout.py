"""Rollout policies and the rollout state machine (`driftline.core.rollout`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import chisquare

from driftline.core.rollout import (
    AB,
    CANARY,
    CANDIDATE,
    ERROR_OBJECTIVE,
    LATENCY_OBJECTIVE,
    PRODUCTION,
    PROMOTED,
    ROLLED_BACK,
    SHADOW,
    SHADOW_ARM,
    ABReport,
    Promote,
    Rollback,
    RolloutPolicy,
    RolloutState,
    StepUp,
    arm_for,
    bucket,
    event_to_dict,
)

PINNED_IDS = ["user-1", "user-2", "acct-42", "", "é-unicode", 12345]
PINNED_BUCKETS = [0.459697719935537, 0.500547968852867, 0.6226111328262061,
                  0.5818916442384907, 0.7489539195361693, 0.6194634598430236]


def _canary(**overrides) -> RolloutPolicy:
    config = {"kind": CANARY, "steps": [0.05, 0.25, 0.5, 1.0], "step_after_outcomes": 2000,
              "min_outcomes": 1000, "max_error_rate_increase": 0.01,
              "max_p99_latency_ms": 250.0}
    return RolloutPolicy.from_mapping({**config, **overrides})


def _state(policy: RolloutPolicy) -> RolloutState:
    return RolloutState(policy, production_version=3, candidate_version=4, started_ms=0)


def _run(state: RolloutState, seed: int, error_rate: dict[str, float], batches: int,
         batch: int = 2000, slow_share: float = 0.0, start: int = 0,
         population: np.ndarray | None = None) -> list[tuple[int, object]]:
    """Route `batch` entities per batch, draw each arm's errors and latencies, observe both
    arms; returns (batch index, event) pairs. Stops once the rollout has ended."""
    rng = np.random.default_rng(seed)
    events = []
    for b in range(start, start + batches):
        ids = population if population is not None else \
            np.array([f"e-{b}-{i}" for i in range(batch)])
        arms, _ = state.route(ids)
        observed = [SHADOW_ARM] if state.policy.kind == SHADOW else []
        for arm in [PRODUCTION, CANDIDATE, *observed]:
            if arm == CANDIDATE and state.policy.kind == SHADOW:
                continue
            n = ids.size if arm == SHADOW_ARM else int((arms == arm).sum())
            errors = rng.random(n) < error_rate[arm]
            latency = rng.lognormal(np.log(20.0), 0.3, n)
            if arm != PRODUCTION:
                latency[rng.random(n) < slow_share] = 400.0
            events += [(b, e) for e in state.observe(arm, errors, latency, now_ms=b * 1000)]
        if state.status != "running":
            break
    return events


# -- hashing and arms ---------------------------------------------------------------------------

def test_bucket_values_are_pinned():
    assert bucket(np.array(PINNED_IDS, dtype=object)).tolist() == PINNED_BUCKETS


def test_bucket_is_the_same_in_a_fresh_process_with_another_hash_seed():
    code = ("import json; from driftline.core.rollout import bucket; "
            f"print(json.dumps(bucket({PINNED_IDS!r}).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert json.loads(out) == PINNED_BUCKETS


def test_salt_gives_an_independent_assignment():
    ids = np.array([f"id-{i}" for i in range(2000)])
    assert not np.array_equal(bucket(ids), bucket(ids, salt="fraud-model"))
    assert np.array_equal(bucket(ids, salt="m"), bucket(ids, salt="m"))


def test_buckets_are_uniform_over_100k_ids():
    values = bucket(np.array([f"customer-{i}" for i in range(100_000)]))
    assert values.min() >= 0 and values.max() < 1
    counts = np.bincount((values * 100).astype(int), minlength=100)
    assert chisquare(counts).pvalue > 0.001


def test_arms_are_monotone_in_share_and_match_it():
    ids = np.array([f"acct-{i}" for i in range(20_000)])
    shares = (0.0, 0.05, 0.25, 0.5, 0.9, 1.0)
    arms = [arm_for(ids, s) for s in shares]
    for lower, higher in zip(arms, arms[1:], strict=False):
        assert not (lower & ~higher).any()  # never back from the candidate to Production
    for share, arm in zip(shares, arms, strict=True):
        assert abs(arm.mean() - share) < 0.01


# -- canary -------------------------------------------------------------------------------------

def test_a_healthy_canary_steps_through_every_share_to_promotion():
    state = _state(_canary())
    opening = state.opening_events()
    assert [e.share for e in opening] == [0.05]
    events = [e for _, e in _run(state, 1, {PRODUCTION: 0.05, CANDIDATE: 0.05}, batches=60)]
    assert [type(e) for e in events] == [StepUp, StepUp, StepUp, Promote]
    assert [(e.previous_share, e.share) for e in events[:3]] == [(0.05, 0.25), (0.25, 0.5),
                                                                 (0.5, 1.0)]
    assert state.status == PROMOTED and state.share == 1.0


def test_an_entity_changes_version_only_when_the_share_steps_and_never_back():
    population = np.array([f"acct-{i}" for i in range(4000)])
    state = _state(_canary())
    history, shares = [], []
    rng_events = []
    for b in range(200):
        rng_events += _run(state, b, {PRODUCTION: 0.05, CANDIDATE: 0.05}, batches=1, start=b,
                           population=population)
        history.append(state.route(population)[1])
        shares.append(state.share)
        if state.status != "running":
            break
    versions = np.array(history)
    assert set(np.unique(versions)) == {3, 4}
    assert (np.diff(versions, axis=0) >= 0).all()  # 3 -> 4 only, never 4 -> 3
    changed = np.flatnonzero((np.diff(versions, axis=0) != 0).any(axis=1)) + 1
    stepped = np.flatnonzero(np.diff(shares) > 0) + 1
    assert changed.size and set(changed) <= set(stepped)


def test_a_worse_candidate_is_rolled_back_naming_the_error_objective():
    state = _state(_canary())
    events = _run(state, 2, {PRODUCTION: 0.05, CANDIDATE: 0.10}, batches=60)
    assert [type(e) for _, e in events][-1] is Rollback
    rollback = events[-1][1]
    assert rollback.objective == ERROR_OBJECTIVE and ERROR_OBJECTIVE in rollback.reason
    assert "error rate" in rollback.reason and "CI [" in rollback.reason
    assert rollback.interval[0] > 0.01 and rollback.observed > 0.01
    assert state.counts[CANDIDATE].outcomes >= state.policy.min_outcomes
    assert state.status == ROLLED_BACK and state.share == 0.0
    arms, versions = state.route(np.array(["a", "b", "c"]))
    assert set(arms) == {PRODUCTION} and set(versions) == {3}
    assert state.observe(CANDIDATE, np.ones(5000, bool), np.zeros(0), now_ms=10**9) == []


def test_no_rollback_on_a_point_estimate_alone():
    state = _state(_canary(min_outcomes=100))
    state.observe(PRODUCTION, np.arange(2000) % 20 == 0, np.zeros(0), now_ms=1)  # 5 %
    # 9 errors in 100: the point estimate is 4 points worse, the interval still contains 1 %.
    assert state.observe(CANDIDATE, np.arange(100) < 9, np.zeros(0), now_ms=2) == []
    assert state.status == "running"
    # Below min_outcomes nothing is decided, even with every outcome an error.
    fresh = _state(_canary())
    fresh.observe(PRODUCTION, np.zeros(5000, bool), np.zeros(0), now_ms=1)
    assert fresh.observe(CANDIDATE, np.ones(999, bool), np.zeros(0), now_ms=2) == []
    assert fresh.observe(CANDIDATE, np.ones(1, bool), np.zeros(0), now_ms=3)[0].objective \
        == ERROR_OBJECTIVE
    # Latency: 2 of 100 over the objective is a p99 past it, but the interval contains 1 %.
    slow = _state(_canary(min_outcomes=100))
    slow.observe(PRODUCTION, np.zeros(2000, bool), np.full(2000, 5.0), now_ms=1)
    latencies = np.where(np.arange(100) < 2, 400.0, 5.0)
    assert slow.observe(CANDIDATE, np.zeros(100, bool), latencies, now_ms=2) == []
    assert slow.counts[CANDIDATE].p99() > 250


def test_a_latency_breach_rolls_back_naming_latency():
    state = _state(_canary())
    events = _run(state, 3, {PRODUCTION: 0.05, CANDIDATE: 0.05}, batches=60, slow_share=0.05)
    rollback = events[-1][1]
    assert isinstance(rollback, Rollback) and rollback.objective == LATENCY_OBJECTIVE
    assert "p99 latency" in rollback.reason and "max_p99_latency_ms=250" in rollback.reason
    assert rollback.observed > 250 and rollback.interval[0] > 0.01


def test_steps_wait_for_time_when_step_after_ms_is_set():
    state = _state(_canary(step_after_outcomes=None, step_after_ms=60_000, min_outcomes=10))
    state.observe(PRODUCTION, np.zeros(100, bool), np.full(100, 5.0), now_ms=1)
    assert state.observe(CANDIDATE, np.zeros(100, bool), np.full(100, 5.0), now_ms=59_999) == []
    [step] = state.observe(CANDIDATE, np.zeros(1, bool), np.zeros(0), now_ms=60_000)
    assert isinstance(step, StepUp) and step.share == 0.25 and state.step_started_ms == 60_000


# -- shadow and A/B -----------------------------------------------------------------------------

def _shadow(**overrides) -> RolloutPolicy:
    return RolloutPolicy.from_mapping({"kind": SHADOW, "min_outcomes": 5000, "margin": 0.01,
                                       **overrides})


def test_shadow_promotes_only_when_it_wins_by_the_margin_over_min_outcomes():
    winner = _state(_shadow())
    events = _run(winner, 4, {PRODUCTION: 0.10, SHADOW_ARM: 0.05}, batches=10)
    assert [type(e) for _, e in events] == [Promote]
    assert events[0][0] == 2  # the third batch of 2000 is the first with 5000 outcomes
    assert "shadow wins" in events[0][1].reason
    assert winner.status == PROMOTED
    # Better, but by less than the margin: never promoted.
    close = _state(_shadow())
    assert _run(close, 5, {PRODUCTION: 0.10, SHADOW_ARM: 0.095}, batches=20) == []
    # Better by twice the margin on the point estimate alone, over too few outcomes.
    noisy = _state(_shadow(min_outcomes=500))
    noisy.observe(PRODUCTION, np.arange(500) % 10 == 0, np.zeros(0), now_ms=1)  # 10 %
    assert noisy.observe(SHADOW_ARM, np.arange(500) < 40, np.zeros(0), now_ms=2) == []  # 8 %
    # A clear win that has not yet reached min_outcomes: not promoted.
    early = _state(_shadow(min_outcomes=50_000))
    assert _run(early, 4, {PRODUCTION: 0.10, SHADOW_ARM: 0.05}, batches=10) == []


def test_shadow_publishes_only_production():
    state = _state(_shadow())
    arms, versions = state.route(np.array([f"x{i}" for i in range(500)]))
    assert set(arms) == {PRODUCTION} and set(versions) == {3}
    with pytest.raises(ValueError, match="not part of a shadow rollout"):
        state.observe(CANDIDATE, np.zeros(1, bool), np.zeros(0), now_ms=0)


def test_ab_reports_an_interval_per_comparison_and_never_promotes():
    policy = RolloutPolicy.from_mapping({"kind": AB, "split": 0.5, "min_outcomes": 1000,
                                         "step_after_outcomes": 4000})
    state = _state(policy)
    events = _run(state, 6, {PRODUCTION: 0.05, CANDIDATE: 0.15}, batches=20)
    assert events and all(isinstance(e, ABReport) for _, e in events)
    assert len(events) == 10 and state.status == "running"
    last = events[-1][1]
    assert last.candidate_outcomes + last.production_outcomes == 40_000
    assert last.interval[0] < last.difference < last.interval[1]
    assert 0.07 < last.interval[0] and last.interval[1] < 0.13
    assert abs(state.route(np.array([f"z{i}" for i in range(10_000)]))[0].tolist()
               .count(CANDIDATE) / 10_000 - 0.5) < 0.02
    assert json.loads(json.dumps(event_to_dict(last)))["kind"] == "ab_report"


# -- persistence and config ---------------------------------------------------------------------

def test_snapshot_and_restore_mid_rollout_give_identical_later_events():
    rates = {PRODUCTION: 0.05, CANDIDATE: 0.05}
    original = _state(_canary())
    first = _run(original, 7, rates, batches=25)
    assert any(isinstance(e, StepUp) for _, e in first) and original.status == "running"
    restored = RolloutState.restore(json.loads(json.dumps(original.snapshot())))
    assert restored.snapshot() == original.snapshot()
    later = _run(original, 8, rates, batches=60, start=25)
    assert later and _run(restored, 8, rates, batches=60, start=25) == later


def test_from_mapping_refuses_unknown_keys_by_name():
    with pytest.raises(ValueError, match="unknown rollout policy keys: share, stepps"):
        RolloutPolicy.from_mapping({"kind": CANARY, "stepps": [0.1, 1.0], "share": 0.1})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        RolloutPolicy.from_mapping({"steps": [0.1, 1.0]})


@pytest.mark.parametrize("bad", [
    {"kind": "blue-green"},
    {"kind": CANARY, "steps": [0.5, 0.25, 1.0]},
    {"kind": CANARY, "steps": [0.1, 0.5]},
    {"kind": CANARY, "steps": [1.0]},
    {"kind": CANARY, "step_after_outcomes": None},
    {"kind": CANARY, "min_outcomes": 0},
    {"kind": AB, "split": 1.0},
    {"kind": CANARY, "max_p99_latency_ms": 0},
])
def test_invalid_policies_are_refused(bad):
    with pytest.raises(ValueError):
        RolloutPolicy.from_mapping(bad)


def test_direct_promotes_at_once():
    state = _state(RolloutPolicy(kind="direct"))
    [event] = state.opening_events()
    assert isinstance(event, Promote) and event.candidate_version == 4
    assert set(state.route(np.array(["a", "b"]))[1]) == {4}


def test_observe_together_decides_once_on_both_halves_of_the_same_rows():
    """A shadow judged on the same rows as Production: one arm at a time can promote on
    Production's half of a file alone (Production's errors on hard rows counted, the shadow's
    on those rows not yet); together, every decision sees both halves of the same rows."""
    rows = np.arange(300)
    easy_prod, easy_shadow = rows % 20 == 0, rows % 20 == 1  # 5 % each
    hard_prod, hard_shadow = rows % 2 == 0, rows % 20 < 9  # 50 % vs 45 %
    # One arm at a time: the Production half of the hard file promotes the shadow.
    apart = _state(_shadow(min_outcomes=300, margin=0.0))
    assert apart.observe(PRODUCTION, easy_prod, np.zeros(0), now_ms=1) == []
    assert apart.observe(SHADOW_ARM, easy_shadow, np.zeros(0), now_ms=1) == []
    early = apart.observe(PRODUCTION, hard_prod, np.zeros(0), now_ms=2)
    assert [type(e) for e in early] == [Promote]
    # Together: 27.5 % vs 25 % over the same 600 rows is no confident win.
    together = _state(_shadow(min_outcomes=300, margin=0.0))
    for prod, shadow in ((easy_prod, easy_shadow), (hard_prod, hard_shadow)):
        assert together.observe_together({PRODUCTION: (prod, np.zeros(0)),
                                          SHADOW_ARM: (shadow, np.zeros(0))}, now_ms=3) == []
    assert together.status == "running"
    assert together.counts[PRODUCTION].outcomes == together.counts[SHADOW_ARM].outcomes == 600
    with pytest.raises(ValueError, match="not part of a shadow rollout"):
        together.observe_together({CANDIDATE: (np.zeros(1, bool), np.zeros(0))}, now_ms=9)
