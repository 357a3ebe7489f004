"""The monitor's composition of detectors: routing by model version, alarms as drift events,
and one snapshot that restores every detector exactly."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.core.codec import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.monitoring.label_join import OutcomeBatch, PredictionBatch
from driftline.core.monitoring.monitor import Alarm, Monitor
from driftline.core.monitoring.profile import ReferenceProfile

INPUTS = ("f0", "f1", "f2")
SLICES = ("segment",)
N_TRAIN = 50_000
SCHEMAS = SchemaSet.load()


def training(rng: np.random.Generator) -> ReferenceProfile:
    x = rng.normal(size=(N_TRAIN, 3))
    return ReferenceProfile.from_columns(
        {n: x[:, j] for j, n in enumerate(INPUTS)}, score=_score(x),
        slices={"segment": rng.choice(["a", "b", "c"], N_TRAIN)},
        label=(rng.random(N_TRAIN) < 0.1).astype(np.int64))


def _score(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x[:, 0] - 2)))


def batch(rng: np.random.Generator, start: int, n: int, model: str = "fraud", version: int = 1,
          shift: float = 0.0) -> tuple[PredictionBatch, OutcomeBatch]:
    """`n` predictions and the outcomes of the same events (labels at once, for the test)."""
    x = rng.normal(size=(n, 3))
    x[:, 1] += shift
    t = 1_700_000_000_000 + (start + np.arange(n, dtype=np.int64)) * 100
    ids = np.array([f"e{start + i}" for i in range(n)])
    score = _score(x)
    segment = rng.choice(["a", "b", "c"], n)
    names, versions = np.full(n, model), np.full(n, version, dtype=np.int64)
    predictions = PredictionBatch(ids, t, score, score >= 0.5, names, versions,
                                  {"segment": segment}, x)
    label = (rng.random(n) < 0.1).astype(np.int64)
    outcomes = OutcomeBatch(ids, t, t + 1000, score, score >= 0.5, label, names, versions,
                            {"segment": segment}, x)
    return predictions, outcomes


def monitor(profile: ReferenceProfile | None) -> Monitor:
    return Monitor(lambda name, version: profile if name == "fraud" else None,
                   input_names=INPUTS, slice_names=SLICES)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return training(np.random.default_rng(0))


def test_a_shift_in_one_input_raises_one_psi_alarm_naming_it(profile):
    m, rng = monitor(profile), np.random.default_rng(1)
    alarms: list[Alarm] = []
    for i in range(40):
        alarms += m.observe(*batch(rng, i * 1000, 1000, shift=1.5 if i >= 20 else 0.0))
    psi = [a for a in alarms if a.detector == "psi"]
    assert [(a.subject, a.kind, a.model_name, a.model_version) for a in psi] == [
        ("f1", "feature", "fraud", 1)]
    assert psi[0].window_end_ms >= 1_700_000_000_000 + 20_000 * 100  # after the change
    assert psi[0].statistic > psi[0].threshold
    assert {s for _, _, s, _ in m.psi()} == {*INPUTS, "score", "segment", "label"}


def test_a_version_without_a_profile_is_counted_not_compared(profile):
    m, rng = monitor(profile), np.random.default_rng(2)
    m.observe(*batch(rng, 0, 500, model="other"))
    assert m.unprofiled == 500 and m.versions[("other", 1)].psi is None
    assert not list(m.psi())


def test_snapshot_restore_mid_stream_gives_the_same_alarms(profile):
    def run(restart_at: int | None) -> list[Alarm]:
        rng = np.random.default_rng(3)
        m, out = monitor(profile), []
        for i in range(40):
            if i == restart_at:
                m = Monitor.restore(m.snapshot(), m.profiles, input_names=INPUTS,
                                    slice_names=SLICES)
            out += m.observe(*batch(rng, i * 1000, 1000, shift=1.5 if i >= 20 else 0.0))
        return out

    straight = run(None)
    assert straight, "the shift must raise an alarm for the comparison to mean anything"
    assert run(25) == straight and run(10) == straight


def test_an_alarm_is_a_valid_drift_event_record(profile):
    alarm = Alarm("psi", "feature", "f1", 0.4, 0.25, "fraud", 3, 10, 20, 20, "drift", "f1 moved",
                  {"critical": "0.01"})
    record = alarm.as_record()
    assert record["details"]["drift_id"] == "psi:fraud:3:f1:20" == alarm.drift_id
    encoded = encode("driftline.DriftEvent", record, SCHEMAS)
    assert encoded[:2] == b"\xc3\x01"


def test_every_statistic_is_exported_and_the_open_episode_is_listed(profile):
    m, rng = monitor(profile), np.random.default_rng(1)
    for i in range(40):
        m.observe(*batch(rng, i * 1000, 1000, shift=1.5 if i >= 20 else 0.0))
    stats = {(s.statistic, s.subject): s.value for s in m.statistics(max_slice_values=2)}
    assert stats[("psi", "f1")] > 0.25 > stats[("psi", "f0")]
    assert {"fairness_demographic_parity_difference", "fairness_equal_opportunity_difference"} \
        <= {name for name, subject in stats if subject == "segment"}
    low, high = (stats[("fairness_demographic_parity_difference" + s, "segment")]
                 for s in ("_low", "_high"))
    assert low <= stats[("fairness_demographic_parity_difference", "segment")] <= high
    rated = {subject for name, subject in stats if name == "slice_selection_rate"}
    assert len(rated) == 2 and rated <= {"segment=a", "segment=b", "segment=c"}  # the cap
    assert 0 < stats[("error_rate", "adwin_window")] < 0.5
    assert list(m.alarming()) == [("fraud", 1, "psi", "f1")]


def test_a_reloaded_profile_restarts_only_the_psi_windows(profile):
    current = {"p": profile}
    m = Monitor(lambda name, version: current["p"], input_names=INPUTS, slice_names=SLICES)
    rng = np.random.default_rng(4)
    alarms = []
    for i in range(12):
        alarms += m.observe(*batch(rng, i * 1000, 1000, shift=1.5))
    assert [a.subject for a in alarms if a.detector == "psi"] == ["f1"]
    # The user accepts the change: the reference becomes the shifted data.
    x = np.random.default_rng(5).normal(size=(N_TRAIN, 3))
    x[:, 1] += 1.5
    current["p"] = ReferenceProfile.from_columns(
        {n: x[:, j] for j, n in enumerate(INPUTS)}, score=_score(x),
        slices={"segment": rng.choice(["a", "b", "c"], N_TRAIN)},
        label=(rng.random(N_TRAIN) < 0.1).astype(np.int64))
    fairness = m.versions[("fraud", 1)].fairness
    m.reload_profile(("fraud", 1))
    assert m.versions[("fraud", 1)].fairness is fairness
    later = []
    for i in range(12, 24):
        later += m.observe(*batch(rng, i * 1000, 1000, shift=1.5))
    assert [a for a in later if a.detector == "psi"] == []
    assert list(m.alarming()) == []


def test_a_view_without_slices_gets_every_detector_but_fairness(profile):
    m = Monitor(lambda name, version: profile.select(["f0", "f1", "f2", "score", "label"]),
                input_names=INPUTS)
    rng = np.random.default_rng(6)
    for i in range(12):
        m.observe(*batch(rng, i * 1000, 1000, shift=1.5))
    assert m.versions[("fraud", 1)].fairness is None
    restored = Monitor.restore(m.snapshot(), m.profiles, input_names=INPUTS)
    assert restored.versions[("fraud", 1)].fairness is None
    assert list(restored.alarming()) == list(m.alarming()) == [("fraud", 1, "psi", "f1")]
