"""Per-slice fairness: equality with fairlearn, alarms (detection, support, false alarms),
de-duplication, event-time window expiry, merge, export cap and snapshot/restore."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    false_positive_rate_difference,
    selection_rate,
    true_positive_rate,
)
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score

from driftline.adapters.redis_state import pack, unpack
from driftline.core.monitoring.fairness import (
    DP_DIFFERENCE,
    DP_RATIO,
    EO_DIFFERENCE,
    EODDS_DIFFERENCE,
    FPR,
    FPR_DIFFERENCE,
    SELECTION,
    TPR,
    FairnessConfig,
    FairnessMonitor,
    FairnessReport,
    export_values,
)
from driftline.core.monitoring.intervals import (
    katz_log_interval,
    newcombe_interval,
    wilson_interval,
)

HOUR = 3_600_000
START = 1_700_000_000_000 // HOUR * HOUR  # an hour boundary, so windows are easy to reason on
ATTRIBUTES = ("segment", "channel", "country")
VALUES = {
    "segment": (("retail", "premium", "business", "student"), (0.5, 0.25, 0.15, 0.1)),
    "channel": (("web", "app", "pos"), (0.5, 0.3, 0.2)),
    "country": (("DE", "FR", "IT", "ES", "NL"), (0.2, 0.2, 0.2, 0.2, 0.2)),
}


@dataclass
class Stream:
    """Outcomes in arrival order (event times roughly increasing, some late by up to 2 min)."""

    time: np.ndarray
    decision: np.ndarray
    label: np.ndarray
    slices: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.time)

    def take(self, index) -> Stream:
        return Stream(self.time[index], self.decision[index], self.label[index],
                      {a: v[index] for a, v in self.slices.items()})

    def feed(self, monitor: FairnessMonitor, batch: int) -> list[FairnessReport]:
        """Update and evaluate after every `batch` outcomes."""
        reports = []
        for i in range(0, len(self), batch):
            part = self.take(slice(i, i + batch))
            monitor.update(part.time, part.decision, part.label, part.slices)
            reports.append(monitor.evaluate())
        return reports


def make_stream(seed: int, n: int, start_ms: int, per_hour: int, *, pos_rate=0.1, tpr=0.8,
                fpr=0.2, values=VALUES, rates=None) -> Stream:
    """A seeded stream; `rates` maps (attribute, value) to that value's own (tpr, fpr)."""
    rng = np.random.default_rng(seed)
    span = n * HOUR // per_hour
    time = start_ms + np.sort(rng.integers(0, span, n))
    time -= rng.integers(0, 120_000, n) * (rng.random(n) < 0.1)
    slices = {a: rng.choice(np.array(v), size=n, p=p) for a, (v, p) in values.items()}
    label = rng.random(n) < pos_rate
    p_tpr, p_fpr = np.full(n, tpr), np.full(n, fpr)
    for (attribute, value), (t, f) in (rates or {}).items():
        where = slices[attribute] == value
        p_tpr[where], p_fpr[where] = t, f
    decision = rng.random(n) < np.where(label, p_tpr, p_fpr)
    return Stream(time.astype(np.int64), decision, label.astype(np.int8), slices)


def concat(*streams: Stream) -> Stream:
    return Stream(np.concatenate([s.time for s in streams]),
                  np.concatenate([s.decision for s in streams]),
                  np.concatenate([s.label for s in streams]),
                  {a: np.concatenate([s.slices[a] for s in streams]) for a in streams[0].slices})


def events(reports: list[FairnessReport], kind: str | None = None):
    return [e for r in reports for e in r.events if kind is None or e.kind == kind]


def in_window(stream: Stream, report: FairnessReport) -> Stream:
    keep = (stream.time >= report.window_start_ms) & (stream.time < report.window_end_ms)
    return stream.take(keep)


# Equality with fairlearn on the same window.

FAIRLEARN_METRICS = {"selection_rate": selection_rate, "tpr": true_positive_rate,
                     "fpr": false_positive_rate, "accuracy": accuracy_score, "count": count}


def unequal_stream(seed: int = 1) -> Stream:
    rates = {("country", "DE"): (0.6, 0.25), ("country", "NL"): (0.9, 0.1),
             ("channel", "app"): (0.7, 0.3), ("segment", "student"): (0.75, 0.15)}
    return make_stream(seed, 60_000, START, 20_000, pos_rate=0.3, rates=rates)


def test_every_metric_and_gap_equals_fairlearn_on_the_window():
    stream = unequal_stream()  # 3 h of outcomes: two thirds have left the 1 h window at the end
    monitor = FairnessMonitor(FairnessConfig(min_support=50))
    report = stream.feed(monitor, batch=7_000)[-1]
    window = in_window(stream, report)
    assert 0 < len(window) < len(stream) / 2
    assert sum(s.n for s in report.slices if s.attribute == "country") == len(window)
    y, p = window.label, window.decision.astype(np.int8)
    for attribute in ATTRIBUTES:
        groups = window.slices[attribute]
        metric_frame = MetricFrame(metrics=FAIRLEARN_METRICS, y_true=y, y_pred=p,
                                   sensitive_features=groups)
        frame = metric_frame.by_group
        assert sorted(frame.index) == [s.value for s in report.slices if s.attribute == attribute]
        for value, row in frame.iterrows():
            stats = report.slice(attribute, value)
            assert stats.supported == (SELECTION, TPR, FPR)
            assert stats.n == row["count"]
            for ours, theirs in [(stats.selection_rate, "selection_rate"), (stats.tpr, "tpr"),
                                 (stats.fpr, "fpr"), (stats.accuracy, "accuracy")]:
                assert ours.value == pytest.approx(row[theirs], rel=1e-12, abs=1e-15)
                assert ours.low <= ours.value <= ours.high
        difference, ratio = metric_frame.difference(), metric_frame.ratio()  # between groups
        expected = {
            DP_DIFFERENCE: difference["selection_rate"], DP_RATIO: ratio["selection_rate"],
            EO_DIFFERENCE: difference["tpr"], FPR_DIFFERENCE: difference["fpr"],
            EODDS_DIFFERENCE: max(difference["tpr"], difference["fpr"]),
        }
        if attribute == "country":  # fairlearn's named metrics too (each is one more pass)
            kw = {"sensitive_features": groups}
            named = {
                DP_DIFFERENCE: demographic_parity_difference(y, p, **kw),
                DP_RATIO: demographic_parity_ratio(y, p, **kw),
                EO_DIFFERENCE: equal_opportunity_difference(y, p, **kw),
                EODDS_DIFFERENCE: equalized_odds_difference(y, p, **kw),
                FPR_DIFFERENCE: false_positive_rate_difference(y, p, **kw),
            }
            assert named == pytest.approx(expected, rel=1e-12, abs=1e-15)
        for metric, value in expected.items():
            gap = report.gap(attribute, metric)
            assert gap.statistic == pytest.approx(value, rel=1e-12, abs=1e-15), (attribute, metric)
            assert gap.low <= gap.statistic <= gap.high
            assert gap.compared == len(frame)
    # The injected differences are visible, so the equality is not between zeros.
    assert report.gap("country", EO_DIFFERENCE).statistic > 0.2


def test_gaps_leave_out_values_below_min_support_and_report_them():
    rare = {"country": (("DE", "FR", "IT", "LU"), (0.33, 0.33, 0.325, 0.015))}
    stream = make_stream(2, 10_000, START, 10_000, pos_rate=0.5, values=rare,
                         rates={("country", "LU"): (0.0, 1.0)})
    config = FairnessConfig(attributes=("country",), min_support=200)
    report = stream.feed(FairnessMonitor(config), batch=10_000)[-1]
    window = in_window(stream, report)
    lu = report.slice("country", "LU")
    assert 0 < lu.n < 200 and lu.supported == ()
    supported = window.take(window.slices["country"] != "LU")
    kw = {"sensitive_features": supported.slices["country"]}
    y, p = supported.label, supported.decision.astype(np.int8)
    assert report.gap("country", EODDS_DIFFERENCE).statistic == pytest.approx(
        equalized_odds_difference(y, p, **kw), rel=1e-12)
    assert report.gap("country", DP_RATIO).statistic == pytest.approx(
        demographic_parity_ratio(y, p, **kw), rel=1e-12)
    assert report.gap("country", DP_RATIO).compared == 3


# Interval methods against independent references.

def test_wilson_matches_scipy_and_newcombe_matches_the_published_example():
    for k, n in [(0, 10), (3, 10), (81, 263), (200, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k, n, 1.959963984540054)
        assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # Newcombe (1998), Statistics in Medicine 17:873, table II (a): 56/70 - 48/80, method 10.
    low, high = newcombe_interval(56, 70, 48, 80, 1.959963984540054)
    assert (round(float(low), 4), round(float(high), 4)) == (0.0524, 0.3339)


def test_newcombe_and_katz_intervals_cover_at_their_level():
    rng = np.random.default_rng(3)
    p1, p2 = rng.uniform(0.05, 0.6, 20_000), rng.uniform(0.05, 0.6, 20_000)
    n1, n2 = rng.integers(200, 2_000, 20_000), rng.integers(200, 2_000, 20_000)
    k1, k2 = rng.binomial(n1, p1), rng.binomial(n2, p2)
    low, high = newcombe_interval(k1, n1, k2, n2, 1.959963984540054)
    assert np.mean((low <= p1 - p2) & (p1 - p2 <= high)) > 0.945
    low, high = katz_log_interval(k1, n1, k2, n2, 1.959963984540054)
    assert np.mean((low <= p1 / p2) & (p1 / p2 <= high)) > 0.945


# Alarms.

INJECTED_BATCH = 4_000


@dataclass
class Injected:
    stream: Stream
    start: int  # index of the first outcome with the gap
    end: int  # index of the first outcome after it
    reports: list[FairnessReport]  # evaluated every INJECTED_BATCH outcomes by a fresh monitor


@pytest.fixture(scope="module")
def injected() -> Injected:
    """2 h fair, 3 h with country=DE's TPR at 0.45 instead of 0.8, 3 h fair again."""
    per_hour = 60_000
    fair = make_stream(10, 2 * per_hour, START, per_hour)
    gap = make_stream(11, 3 * per_hour, START + 2 * HOUR, per_hour,
                      rates={("country", "DE"): (0.45, 0.2)})
    back = make_stream(12, 3 * per_hour, START + 5 * HOUR, per_hour)
    stream = concat(fair, gap, back)
    return Injected(stream, len(fair), len(fair) + len(gap),
                    stream.feed(FairnessMonitor(), batch=INJECTED_BATCH))


def test_an_injected_equal_opportunity_gap_raises_one_event_naming_it_until_it_recovers(
        injected):
    injected, removed, reports = injected.start, injected.end, injected.reports
    batch = INJECTED_BATCH
    alarms, recoveries = events(reports, "alarm"), events(reports, "recovered")
    assert len(alarms) == 1 and len(recoveries) == 1, [e.summary for e in events(reports)]
    alarm = alarms[0]
    assert (alarm.subject, alarm.attribute, alarm.value) == ("country=DE", "country", "DE")
    assert (alarm.rate, alarm.metric) == (TPR, EO_DIFFERENCE)
    assert EODDS_DIFFERENCE in alarm.metrics and alarm.interval[0] > alarm.threshold == 0.1
    assert "country=DE" in alarm.summary and alarm.severity in ("warning", "critical")
    assert recoveries[0].subject == "country=DE"
    raised = next(i for i, r in enumerate(reports) if r.events)
    closed = next(i for i, r in enumerate(reports) if i > raised and r.events)
    assert injected <= raised * batch and removed <= closed * batch
    # Open for every evaluation in between: one sustained change, one event.
    assert all(len(r.open_alarms) == 1 for r in reports[raised:closed])
    delay = (raised + 1) * batch - injected
    print(f"\nEO gap 0.35 on country=DE: raised {delay} outcomes "
          f"({delay / 60_000 * 60:.0f} min of event time) after injection, "
          f"recovered {(closed + 1) * batch - removed} outcomes after removal")


def test_a_slice_below_min_support_with_an_extreme_gap_raises_nothing():
    # country=LU: TPR 0 and FPR 1 (its selection rate stays at the others' 0.5) on about 150
    # positives and 150 negatives per window: below the default min support of 200.
    values = dict(VALUES, country=(("DE", "FR", "IT", "LU"), (0.33, 0.33, 0.325, 0.015)))
    stream = make_stream(5, 80_000, START, 20_000, pos_rate=0.5, values=values,
                         rates={("country", "LU"): (0.0, 1.0)})
    reports = stream.feed(FairnessMonitor(), batch=4_000)
    assert events(reports) == []
    lu = reports[-1].slice("country", "LU")
    assert lu.positives < 200 and lu.n - lu.positives < 200 and lu.supported == (SELECTION,)
    # The same outcomes with a lower minimum support alarm on LU: the test above can fail.
    low = stream.feed(FairnessMonitor(FairnessConfig(min_support=100)), batch=4_000)
    assert {(e.subject, e.rate) for e in events(low, "alarm")} == {
        ("country=LU", TPR), ("country=LU", FPR)}


def test_a_selection_gap_raises_one_event_for_both_demographic_parity_metrics():
    stream = make_stream(6, 60_000, START, 20_000, pos_rate=0.3,
                         rates={("channel", "pos"): (0.4, 0.05)})
    reports = stream.feed(FairnessMonitor(), batch=3_000)
    alarms = events(reports, "alarm")
    kinds = {(e.subject, e.rate) for e in alarms}
    assert kinds == {("channel=pos", SELECTION), ("channel=pos", TPR), ("channel=pos", FPR)}
    assert len(alarms) == 3
    dp = next(e for e in alarms if e.rate == SELECTION)
    assert set(dp.metrics) == {DP_DIFFERENCE, DP_RATIO}


def fair_stationary_stream(n: int) -> Stream:
    """Fair in every attribute, with many values just above min support, so point estimates of
    max-min gaps over a window often pass 0.1 by chance."""
    shares = np.array([0.2, 0.15, 0.1, 0.08, 0.07, 0.06, 0.05, 0.05, 0.05, 0.04, 0.04,
                       0.03, 0.03, 0.025, 0.025])
    values = dict(VALUES, country=(tuple(f"C{i:02d}" for i in range(len(shares))),
                                   tuple(shares / shares.sum())))
    values["segment"] = (values["segment"][0] + ("vip",), (0.5, 0.25, 0.13, 0.1, 0.02))
    return make_stream(7, n, START, 25_000, pos_rate=0.3, tpr=0.5, fpr=0.3, values=values)


@pytest.fixture(scope="module")
def stationary() -> Stream:
    return fair_stationary_stream(1_000_000)  # 40 h of event time, 40 disjoint windows


def test_a_stationary_fair_stream_raises_no_alarm_over_a_million_outcomes(stationary):
    reports = stationary.feed(FairnessMonitor(), batch=2_500)
    alarms = events(reports, "alarm")
    config = FairnessConfig()
    naive = sum(
        any(g.statistic > config.dp_difference if g.metric != DP_RATIO
            else g.statistic < config.dp_ratio
            for g in r.gaps if g.metric != FPR_DIFFERENCE)
        for r in reports)
    family = max(r.family_size for r in reports)
    print(f"\nstationary: {len(stationary)} outcomes, {len(reports)} evaluations, family up to "
          f"{family} intervals: {len(alarms)} alarms; point estimates past a threshold in "
          f"{naive} evaluations")
    assert alarms == []
    assert naive > 0  # without the intervals this stream would have alarmed


def test_at_zero_thresholds_the_family_error_stays_within_its_budget(stationary):
    """With every threshold at parity the null hypothesis holds exactly, so the share of
    evaluations with any gap past its threshold must stay below 1 - family_confidence, where
    unadjusted 95% pairwise intervals would exceed it in most evaluations."""
    strict = FairnessConfig(dp_difference=0.0, dp_ratio=1.0, eo_difference=0.0,
                            eodds_difference=0.0)
    reports = stationary.take(slice(0, 500_000)).feed(FairnessMonitor(strict), batch=2_500)
    crossing = sum(any(g.past_threshold for g in r.gaps) for r in reports)

    def unadjusted_crosses(report: FairnessReport) -> bool:
        for attribute in ATTRIBUTES:
            rows = [s for s in report.slices if s.attribute == attribute]
            for num, den in (("selected", "n"), ("true_positives", "positives")):
                k = np.array([getattr(s, num) for s in rows])
                n = np.array([getattr(s, den) for s in rows])
                k, n = k[n >= strict.min_support], n[n >= strict.min_support]
                low, _ = newcombe_interval(k[:, None], n[:, None], k[None, :], n[None, :], 1.96)
                if (low > 0).any():
                    return True
        return False

    unadjusted = sum(unadjusted_crosses(r) for r in reports)
    print(f"\nzero thresholds: {crossing} of {len(reports)} evaluations past a threshold "
          f"({len(events(reports, 'alarm'))} alarm events); unadjusted 95% intervals: "
          f"{unadjusted}")
    assert crossing <= (1 - strict.family_confidence) * len(reports)
    assert unadjusted > (1 - strict.family_confidence) * len(reports)


# De-duplication state survives a restart.

def test_snapshot_and_deltas_restore_exactly_and_give_identical_later_alarms(injected):
    stream, whole, batch = injected.stream, injected.reports, INJECTED_BATCH
    assert len(events(whole, "alarm")) == 1
    raised = next(i for i, r in enumerate(whole) if r.events)
    cut = (raised + 5) * batch  # mid-stream, while the alarm is open
    quarter = cut // 2 // batch * batch

    first = FairnessMonitor()
    stream.take(slice(0, quarter)).feed(first, batch=batch)
    log = [first.snapshot()]
    for i in range(quarter, cut, batch):
        part = stream.take(slice(i, i + batch))
        delta = first.update(part.time, part.decision, part.label, part.slices)
        log.append({**delta, **first.evaluate().state_delta})
    assert first.evaluate().open_alarms  # the restart happens with an alarm open

    def through_npz(arrays):  # the bytes the Redis state backend stores
        return unpack(pack(arrays))

    from_snapshot = FairnessMonitor.restore(FairnessConfig(), [through_npz(first.snapshot())])
    from_log = FairnessMonitor.restore(FairnessConfig(), [through_npz(p) for p in log])
    expected = first.snapshot()
    for restored in (from_snapshot, from_log):
        got = restored.snapshot()
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
            assert got[key].dtype == expected[key].dtype and got[key].dtype.kind != "O"
    rest = stream.take(slice(cut, None))
    later = [e for r in whole[cut // batch:] for e in r.events]
    assert later and all(e.kind == "recovered" for e in later)
    for restored in (from_snapshot, from_log):
        assert events(rest.feed(restored, batch=batch)) == later
    fresh_rest = rest.feed(FairnessMonitor(), batch=batch)
    assert events(fresh_rest, "alarm")  # a monitor that forgot the alarm would raise it again


def test_restore_refuses_a_snapshot_of_another_window_shape():
    monitor = FairnessMonitor()
    with pytest.raises(ValueError, match="snapshot is for"):
        FairnessMonitor.restore(FairnessConfig(bucket_ms=60_000), [monitor.snapshot()])


# The window is in event time.

def test_the_window_moves_with_the_newest_event_time_and_forgets_expired_values():
    config = FairnessConfig(attributes=("country",), min_support=1)
    monitor = FairnessMonitor(config)

    def add(times, country):
        n = len(times)
        monitor.update(np.array(times), np.ones(n, bool), np.ones(n, np.int8),
                       {"country": np.array([country] * n)})

    add([START + 1_000, START + 600_000], "DE")
    add([START + HOUR - 1], "FR")  # the 12th 5-min bucket: DE is still in the window
    assert [s.value for s in monitor.evaluate().slices] == ["DE", "FR"]
    assert monitor.window_ms == (START, START + HOUR)
    add([START + HOUR], "FR")  # a 13th bucket: the first one (START + 1 s) leaves
    report = monitor.evaluate()
    assert report.slice("country", "DE").n == 1
    assert (report.window_start_ms, report.window_end_ms) == (START + 300_000,
                                                              START + HOUR + 300_000)
    add([START + 2 * HOUR], "FR")
    assert [s.value for s in monitor.evaluate().slices] == ["FR"]
    assert monitor.state_cells == 1  # DE's and the old FR buckets are gone
    before = monitor.snapshot()
    add([START + 5_000], "DE")  # older than the window: counted as late, changes nothing
    assert monitor.late_outcomes == 1
    assert [s.value for s in monitor.evaluate().slices] == ["FR"]
    np.testing.assert_array_equal(monitor.snapshot()["cells.country.counts"],
                                  before["cells.country.counts"])
    # No clock: evaluating again without outcomes changes nothing.
    assert repr(monitor.evaluate()) == repr(monitor.evaluate())


def test_counts_do_not_depend_on_batching_and_partitions_merge():
    stream = unequal_stream(seed=8).take(slice(0, 30_000))
    one = FairnessMonitor()
    stream.feed(one, batch=len(stream))
    many = FairnessMonitor()
    stream.feed(many, batch=777)
    part = np.random.default_rng(8).random(len(stream)) < 0.4
    a, b = FairnessMonitor(), FairnessMonitor()
    stream.take(part).feed(a, batch=1_000)
    stream.take(~part).feed(b, batch=1_000)
    a.merge(b)
    expected = one.snapshot()
    for other in (many, a):
        got = other.snapshot()
        for key in expected:
            if not key.startswith(("alarm.", "late_")):  # alarms depend on evaluation points
                np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# Export cap and input checks.

def test_export_keeps_the_largest_values_and_any_value_in_alarm_within_the_cap():
    shares = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.05])
    names = tuple(f"C{i}" for i in range(len(shares)))
    values = {"country": (names, tuple(shares / shares.sum()))}
    stream = make_stream(9, 80_000, START, 40_000, pos_rate=0.5, values=values,
                         rates={("country", "C7"): (0.2, 0.2)})
    report = stream.feed(FairnessMonitor(FairnessConfig(attributes=("country",))),
                         batch=10_000)[-1]
    assert [(a.attribute, a.value) for a in report.open_alarms] == [("country", "C7")] * 2
    chosen = export_values(report, 3)
    assert chosen == {"country": ("C7", "C0", "C1")}
    quiet = replace(report, open_alarms=())
    assert export_values(quiet, 3) == {"country": ("C0", "C1", "C2")}
    assert export_values(quiet, 100)["country"] == tuple(
        s.value for s in sorted(report.slices, key=lambda s: (-s.n, s.value)))


@pytest.mark.parametrize("change, error", [
    ({"label": np.array([0, 2])}, ValueError),
    ({"decision": np.array([1, 0])}, ValueError),
    ({"slices": {"segment": np.array(["a", "b"]), "channel": np.array(["a", "b"])}}, KeyError),
    ({"slices": {a: np.array(["a"]) for a in ATTRIBUTES}}, ValueError),
])
def test_update_rejects_malformed_outcomes(change, error):
    args = {"event_time_ms": np.array([START, START]), "decision": np.array([True, False]),
            "label": np.array([1, 0]), "slices": {a: np.array(["a", "b"]) for a in ATTRIBUTES}}
    with pytest.raises(error):
        FairnessMonitor().update(**{**args, **change})
