"""The status page's history: bounded in points and age, de-duplicated drift events, rates."""

from __future__ import annotations

import math

import pytest

from driftline.core.monitoring.history import DriftMark, GapReading, StatusHistory

KEY = ("fraud", 1, "amount")


def mark(drift_id: str, at_ms: int = 0) -> DriftMark:
    return DriftMark(drift_id, at_ms, "psi", "feature", "amount", 0.5, 0.25, "fraud", 1, at_ms,
                     "drift", f"PSI of amount ({drift_id})")


def test_points_are_spaced_by_the_minimum_interval_which_defaults_to_age_over_points():
    history = StatusHistory(max_age_ms=60_000, max_points=60)
    assert history.min_interval_ms == 1_000
    appended = [history.record(t, {KEY: 0.01}, predictions=t, outcomes=0)
                for t in range(0, 10_000, 250)]
    assert sum(appended) == 10
    assert [p.at_ms for p in history.points(10_000)] == list(range(0, 10_000, 1_000))


def test_the_ring_never_holds_more_than_max_points_however_many_batches_come():
    history = StatusHistory(max_age_ms=10**9, max_points=5, min_interval_ms=0)
    for t in range(100):
        history.record(t, {KEY: t / 100}, predictions=t, outcomes=t)
    points = history.points(100)
    assert [p.at_ms for p in points] == [95, 96, 97, 98, 99]
    assert points[-1].psi == {KEY: 0.99}


def test_points_older_than_max_age_expire_and_are_not_shown():
    history = StatusHistory(max_age_ms=5_000, max_points=100, min_interval_ms=0)
    for t in (0, 1_000, 4_000, 7_000):
        history.record(t, {KEY: 0.1}, predictions=0, outcomes=0)
    # 0 and 1,000 are more than 5 s before the newest point (7,000): dropped at once.
    assert [p.at_ms for p in history.points(7_000)] == [4_000, 7_000]
    # Read later without a new point: the window moves with `now`.
    assert [p.at_ms for p in history.points(9_500)] == [7_000]
    assert history.points(20_000) == ()


def test_nan_psi_is_left_out_of_a_point():
    history = StatusHistory(min_interval_ms=0)
    history.record(0, {KEY: math.nan, ("fraud", 1, "score"): 0.2}, predictions=1, outcomes=0)
    assert history.points(0)[0].psi == {("fraud", 1, "score"): 0.2}


def test_a_clock_that_steps_back_drops_the_points_in_its_future():
    history = StatusHistory(min_interval_ms=0)
    for t in (1_000, 2_000, 3_000):
        history.record(t, {KEY: 0.1}, predictions=0, outcomes=0)
    assert history.record(1_500, {KEY: 0.2}, predictions=0, outcomes=0)
    assert [p.at_ms for p in history.points(5_000)] == [1_000, 1_500]


def test_drift_events_are_deduplicated_by_id_and_bounded_by_count():
    history = StatusHistory(max_events=3)
    assert history.add_drift(mark("a"))
    assert not history.add_drift(mark("a", at_ms=99)), "a replayed event is kept once"
    for name in "bcd":
        history.add_drift(mark(name))
    assert [m.drift_id for m in history.drift_marks()] == ["b", "c", "d"]


def test_gaps_are_replaced_whole():
    history = StatusHistory()
    gap = GapReading("fraud", 1, "segment", "demographic_parity_difference", 0.05, 0.01, 0.09,
                     0.1, ("student", "retail"), 3)
    history.set_gaps([gap])
    history.set_gaps([gap, gap])
    assert history.gaps == (gap, gap)
    history.set_gaps([])
    assert history.gaps == ()


def test_rates_use_the_newest_point_at_least_the_window_old():
    history = StatusHistory(min_interval_ms=0)
    assert history.rates(0, predictions=0, outcomes=0) is None
    for t, n in ((0, 0), (5_000, 1_000), (10_000, 3_000), (15_000, 6_000)):
        history.record(t, {}, predictions=n, outcomes=n // 2)
    # Now 22 s: the newest point >= 10 s old is the one at 10 s.
    assert history.rates(22_000, predictions=9_000, outcomes=4_500) == (500.0, 250.0)
    # Nothing that old yet: the oldest point.
    assert history.rates(4_000, predictions=400, outcomes=0) == (100.0, 0.0)
    # A stream that stopped: the rate falls towards zero as time passes.
    assert history.rates(60_000, predictions=6_000, outcomes=3_000) == (0.0, 0.0)


@pytest.mark.parametrize("kwargs", [{"max_age_ms": 0}, {"max_points": 1}, {"max_events": 0},
                                    {"min_interval_ms": -1}])
def test_bad_bounds_are_refused(kwargs):
    with pytest.raises(ValueError):
        StatusHistory(**kwargs)
