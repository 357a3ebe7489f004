"""ConceptDriftMonitor: one alarm per change with its delay, silence when stationary, exact
restore of river's detectors, and the whole join -> detectors path surviving a restart."""

from __future__ import annotations

import numpy as np
import pytest
from river.drift import ADWIN
from river.drift.binary import DDM

from driftline.adapters.redis_state import pack, unpack
from driftline.core.monitoring.concept import (
    ConceptDriftMonitor,
    DetectorConfig,
    DetectorStateError,
    adwin_export,
    adwin_import,
    ddm_export,
    ddm_import,
)
from driftline.core.monitoring.label_join import (
    LabelBatch,
    LabelJoin,
    OutcomeBatch,
    PredictionBatch,
)
from driftline.core.state import MemoryStateBackend, PartitionState

T0 = 1_700_000_000_000
CHANGE = 30_000
ADWIN_OFF = DetectorConfig(adwin_delta=1e-300)  # ADWIN's bound never met: DDM alone


def flip_stream(
    seed: int, n: int, changes: tuple[int, ...] = (CHANGE,), version: int = 1
) -> OutcomeBatch:
    """A fraud-like model, score = sigmoid(2x - 2), whose labels follow its score until the
    first of `changes`, then flip their relation to the feature (label ~ sigmoid(-2x - 2)),
    and flip back at the next change, and so on."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    logit = 2 * x - 2
    flipped = np.searchsorted(np.asarray(changes, dtype=np.int64), np.arange(n), "right") % 2
    truth = np.where(flipped == 1, -2 * x - 2, logit)
    score = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    t = T0 + 20 * np.arange(n, dtype=np.int64)
    return OutcomeBatch(
        event_id=np.char.add(f"v{version}-", np.arange(n).astype(str)), event_time_ms=t,
        label_time_ms=t + 60_000, score=score, decision=score >= 0.5, label=label,
        model_name=np.full(n, "fraud"), model_version=np.full(n, version, dtype=np.int64),
        slices={}, inputs=np.zeros((n, 0)),
    )


def feed(monitor: ConceptDriftMonitor, outcomes: OutcomeBatch, per_batch: int = 3_000) -> list:
    alarms = []
    for start in range(0, len(outcomes), per_batch):
        alarms += monitor.update(outcomes.take(slice(start, start + per_batch))).alarms
    return alarms


def position(alarm) -> int:
    return int(alarm.event_id.split("-")[1])


def river_reference(outcomes: OutcomeBatch, config: DetectorConfig) -> list[tuple[int, str]]:
    """The documented discipline written with river's public API only: update(), then
    drift_detected; after any alarm both detectors start over, taking only outcomes of events
    at or after the alarming outcome's label time."""
    def fresh():
        return (ADWIN(delta=config.adwin_delta, clock=config.adwin_clock,
                      max_buckets=config.adwin_max_buckets,
                      min_window_length=config.adwin_min_window_length,
                      grace_period=config.adwin_grace),
                DDM(warm_start=config.warmup, warning_threshold=config.ddm_warning_threshold,
                    drift_threshold=config.ddm_drift_threshold))
    adwin, ddm = fresh()
    found, since = [], -(2**63)
    errors = np.abs(outcomes.label - outcomes.score).tolist()
    misses = (outcomes.decision != outcomes.label).tolist()
    for i, (e, m) in enumerate(zip(errors, misses, strict=True)):
        if outcomes.event_time_ms[i] < since:
            continue
        adwin.update(e)
        ddm.update(m)
        hits = [name for name, d in (("adwin", adwin), ("ddm", ddm)) if d.drift_detected]
        found += [(i, name) for name in hits]
        if hits:
            adwin, ddm = fresh()
            since = outcomes.label_time_ms[i]
    return found


# ---------------------------------------------------------------- one alarm per change


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_label_flip_raises_one_alarm_after_the_change_and_none_before(seed):
    outcomes = flip_stream(seed, CHANGE + 100_000)  # a long tail: re-settling must stay quiet
    alarms = feed(ConceptDriftMonitor(), outcomes)
    assert len(alarms) == 1, [a.summary for a in alarms]
    (alarm,) = alarms
    delay = position(alarm) - CHANGE
    # river's ADWIN at its defaults, on the same errors, with no warm-up and no discipline.
    river_adwin = ADWIN()
    first = next(i for i, e in enumerate(np.abs(outcomes.label - outcomes.score).tolist())
                 if river_adwin.update(e) or river_adwin.drift_detected)
    assert first >= CHANGE  # river's ADWIN, too, is silent before the change on these seeds
    assert 0 <= delay <= first - CHANGE  # no slower than river's ADWIN
    assert delay < 200, alarm.summary  # measured: 79, 79, 79 outcomes (ADWIN clock is 32)
    assert alarm.detector == "adwin" and alarm.after > alarm.before
    assert alarm.outcomes_since_reset == position(alarm) + 1
    assert alarm.window_start_ms == T0 and alarm.window_end_ms == alarm.event_time_ms
    assert alarm.label_time_ms == alarm.event_time_ms + 60_000
    assert "fraud v1" in alarm.summary


def test_ddm_alone_raises_one_alarm_and_river_ddm_at_its_defaults_bursts():
    outcomes = flip_stream(3, CHANGE + 100_000)
    alarms = feed(ConceptDriftMonitor(ADWIN_OFF), outcomes)
    assert [a.detector for a in alarms] == ["ddm"], [a.summary for a in alarms]
    (alarm,) = alarms
    assert 0 <= position(alarm) - CHANGE < 5_000  # measured: 2,020
    assert alarm.before < alarm.after  # DDM alarmed on after + its sd > threshold
    # The same stream through river's DDM at its defaults, resetting itself: two alarms for
    # the one change (the burst this module exists to prevent).
    river_ddm = DDM()
    raw = []
    for i, m in enumerate((outcomes.decision != outcomes.label).tolist()):
        river_ddm.update(m)
        if river_ddm.drift_detected:
            raw.append(i)
    assert len([i for i in raw if i >= CHANGE]) == 2, raw


def test_no_alarm_before_the_warm_up_even_when_the_change_comes_first():
    config = DetectorConfig(warmup=5_000, adwin_grace=5_000)
    outcomes = flip_stream(4, 20_000, changes=(3_000,))
    alarms = feed(ConceptDriftMonitor(config), outcomes)
    assert len(alarms) == 1
    assert alarms[0].outcomes_since_reset > config.warmup


def test_a_stationary_stream_raises_no_alarm():
    monitor = ConceptDriftMonitor()
    alarms = feed(monitor, flip_stream(100, 200_000, changes=()), per_batch=10_000)
    assert alarms == []  # across 40 seeds x 200,000: see docs/label-join-and-concept-drift.md
    assert monitor.outcomes_since_reset("fraud", 1) == 200_000


def test_alarms_match_rivers_public_api_with_the_same_discipline():
    config = DetectorConfig(warmup=300, ddm_drift_threshold=3.0)  # lively: many alarms
    outcomes = flip_stream(5, 60_000, changes=(10_000, 20_000, 30_000, 40_000, 50_000))
    alarms = feed(ConceptDriftMonitor(config), outcomes, per_batch=777)
    expected = river_reference(outcomes, config)
    assert [(position(a), a.detector) for a in alarms] == expected
    assert len(expected) >= 5 and {name for _, name in expected} == {"adwin", "ddm"}


def test_model_versions_are_watched_separately():
    stable = flip_stream(6, 60_000, changes=(), version=1)
    drifting = flip_stream(7, 60_000, version=2)
    both = OutcomeBatch.concat([stable, drifting])
    order = np.argsort(np.concatenate([np.arange(60_000), np.arange(60_000)]), kind="stable")
    monitor = ConceptDriftMonitor()
    alarms = feed(monitor, both.take(order))  # interleaved outcome by outcome
    assert [(a.model_version, a.detector) for a in alarms] == [(2, "adwin")]
    assert monitor.models == [("fraud", 1), ("fraud", 2)]
    assert monitor.alarm_counts("fraud", 2) == {"adwin": 1, "ddm": 0}


# ---------------------------------------------------------------- state


def _savez_roundtrip(arrays):
    """Through the bytes the Redis state backend stores (np.savez, loaded without pickle)."""
    return unpack(pack(arrays))


def test_adwin_state_round_trips_to_rivers_own_bytes_and_continues_identically():
    config = DetectorConfig()
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.random(50_000) * 0.3, rng.random(50_000) * 0.6]).tolist()
    live = ADWIN(grace_period=config.adwin_grace)
    for v in values[:40_000]:
        live.update(v)
    arrays = _savez_roundtrip(adwin_export(live, config))
    assert len(arrays["bucket_count"]) > 10  # a deep histogram, not a trivial one
    copy = adwin_import(arrays, config)
    assert copy._helper.__getstate__() == live._helper.__getstate__()
    detections = [[], []]
    for i, v in enumerate(values[40_000:]):
        for k, detector in enumerate((live, copy)):
            detector.update(v)
            if detector.drift_detected:
                detections[k].append(i)
    assert detections[0] == detections[1] and detections[0]


def test_ddm_state_round_trips():
    config = DetectorConfig()
    live = DDM(warm_start=config.warmup, drift_threshold=config.ddm_drift_threshold)
    bits = (np.random.default_rng(9).random(30_000) < np.r_[[0.1] * 20_000, [0.3] * 10_000])
    for b in bits[:15_000].tolist():
        live.update(b)
    copy = ddm_import(_savez_roundtrip(ddm_export(live)), config)
    out = [[], []]
    for b in bits[15_000:].tolist():
        for k, d in enumerate((live, copy)):
            d.update(b)
            out[k].append((d.drift_detected, d._p.get(), d._ps_min))
    assert out[0] == out[1]


def test_adwin_export_refuses_a_layout_it_does_not_know():
    detector = ADWIN(delta=0.01, grace_period=1_000)  # not the config's delta
    with pytest.raises(DetectorStateError, match="river"):
        adwin_export(detector, DetectorConfig())


@pytest.mark.parametrize("stop", [5, 11, 17])  # mid warm-up, just after the alarm, later
def test_restore_mid_stream_gives_identical_alarms(stop):
    outcomes = OutcomeBatch.concat([flip_stream(10, 60_000), flip_stream(11, 60_000, version=2)])
    order = np.argsort(np.r_[np.arange(60_000), np.arange(60_000)], kind="stable")
    outcomes = outcomes.take(order)
    batches = [outcomes.take(slice(s, s + 5_000)) for s in range(0, len(outcomes), 5_000)]
    backend = MemoryStateBackend()
    state = PartitionState(backend, topics=[], stores=["concept"], compact_every=4)
    state.assign([0])
    live = ConceptDriftMonitor()
    seen = []
    for batch in batches[:stop]:
        result = live.update(batch)
        seen += result.alarms
        txn = state.begin([0])
        state.append(txn, 0, "concept", result.state_delta, live.snapshot)
        state.commit(txn)
    log = [_savez_roundtrip(piece) for piece in backend.logs[("concept", 0)]]
    assert not any(a.dtype == object for piece in log for a in piece.values())
    restored = ConceptDriftMonitor.restore(log)
    shuffled = ConceptDriftMonitor.restore([*log[::-1], log[0]])  # order and overlap: no matter
    rest = [[], [], []]
    for batch in batches[stop:]:
        for k, monitor in enumerate((live, restored, shuffled)):
            rest[k] += monitor.update(batch).alarms
    assert rest[0] == rest[1] == rest[2]
    assert len(seen + rest[0]) == 2  # one per drifting model version, none repeated
    a, b = live.snapshot(), restored.snapshot()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_restore_refuses_another_config():
    monitor = ConceptDriftMonitor()
    monitor.update(flip_stream(12, 2_000))
    with pytest.raises(ValueError, match="warmup"):
        ConceptDriftMonitor.restore([monitor.snapshot()], DetectorConfig(warmup=10))


# ---------------------------------------------------------------- join -> detectors, restarted


def _pipeline_batches(seed: int, n: int, per_batch: int):
    """Predictions of one model, 20 ms apart, and their labels 1-10 min later, cut into batches
    by event time; labels flip their relation to the feature for events from the middle on."""
    rng = np.random.default_rng(seed)
    outcomes = flip_stream(seed, n, changes=(n // 2,))
    label_time = outcomes.event_time_ms + rng.integers(60_000, 600_000, n)
    by_label = np.argsort(label_time, kind="stable")
    label_time_sorted = label_time[by_label]
    step = 20 * per_batch
    done = 0
    for start in range(0, n + 600_000 // 20, per_batch):  # then the labels still to come
        rows = slice(start, min(start + per_batch, n))
        now = T0 + 20 * start + step
        due = by_label[done : np.searchsorted(label_time_sorted, now, "left")]
        done += len(due)
        preds = PredictionBatch(
            outcomes.event_id[rows], outcomes.event_time_ms[rows], outcomes.score[rows],
            outcomes.decision[rows], outcomes.model_name[rows], outcomes.model_version[rows],
            {}, np.zeros((len(outcomes.event_id[rows]), 0)))
        labels = LabelBatch(outcomes.event_id[due], outcomes.label[due], label_time[due])
        yield preds, labels


def test_join_and_detectors_restart_from_their_state_with_the_same_outcomes_and_alarms():
    batches = list(_pipeline_batches(13, 120_000, 2_000))
    stop = 40  # after the flip's labels started arriving, before the alarm
    backend = MemoryStateBackend()
    state = PartitionState(backend, topics=[], stores=["join", "concept"], compact_every=7)
    state.assign([0])
    join, monitor = LabelJoin(), ConceptDriftMonitor()

    def step(j, m, batch):
        result = j.process(*batch)
        return result, m.update(result.outcomes)

    before = []
    for batch in batches[:stop]:
        joined, concept = step(join, monitor, batch)
        before += concept.alarms
        txn = state.begin([0])
        state.append(txn, 0, "join", joined.state_delta, join.snapshot)
        state.append(txn, 0, "concept", concept.state_delta, monitor.snapshot)
        state.commit(txn)
    # kill -9: only what the backend committed survives.
    logs = {s: [_savez_roundtrip(p) for p in backend.logs[(s, 0)]] for s in ("join", "concept")}
    join2 = LabelJoin.restore(logs["join"])
    monitor2 = ConceptDriftMonitor.restore(logs["concept"])
    after = [[], []]
    for batch in batches[stop:]:
        (j1, c1), (j2, c2) = step(join, monitor, batch), step(join2, monitor2, batch)
        np.testing.assert_array_equal(j1.outcomes.event_id, j2.outcomes.event_id)
        assert j1.counts == j2.counts
        after[0] += c1.alarms
        after[1] += c2.alarms
    assert after[0] == after[1]
    alarms = before + after[0]
    assert len(alarms) == 1, [a.summary for a in alarms]
    assert alarms[0].label_time_ms >= T0 + 20 * 60_000  # raised after the flip
    assert join.totals.joined == 120_000


def test_a_model_that_is_almost_always_right_raises_no_ddm_alarm_on_its_first_error():
    """Found by the monitor's end-to-end test: with no error over the warm-up, river's DDM has
    p_min + k * s_min = 0 and fires on the first error. Stationary 0.05% errors raise nothing;
    without the minimum-errors rule the first error is an alarm."""
    n = 60_000
    rng = np.random.default_rng(8)
    label = np.zeros(n, dtype=np.int64)
    label[rng.choice(np.arange(2_000, n), size=30, replace=False)] = 1  # missed frauds
    t = T0 + 20 * np.arange(n, dtype=np.int64)
    outcomes = OutcomeBatch(
        event_id=np.char.add("v1-", np.arange(n).astype(str)), event_time_ms=t,
        label_time_ms=t + 60_000, score=np.full(n, 0.01), decision=np.zeros(n, dtype=bool),
        label=label, model_name=np.full(n, "fraud"), model_version=np.ones(n, dtype=np.int64),
        slices={}, inputs=np.zeros((n, 0)))
    assert feed(ConceptDriftMonitor(ADWIN_OFF), outcomes) == []
    old_rule = DetectorConfig(adwin_delta=1e-300, ddm_min_errors=1)
    alarms = feed(ConceptDriftMonitor(old_rule), outcomes)
    assert alarms and alarms[0].detector == "ddm" and alarms[0].threshold == 0
