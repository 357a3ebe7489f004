"""The status page renderer: the charts' elements carry their data, strings are escaped."""

from __future__ import annotations

import json
import math

from driftline.core.monitoring.history import DriftMark, GapReading, StatusHistory
from driftline.core.status_page import (
    REGISTRY,
    RETRAIN,
    ModelCard,
    StatusData,
    TimelineEntry,
    render_status,
    status_json,
    top_series,
)
from tests.dom import Dom

NOW = 1_700_000_000_000
SHIFTED = "amount_max_1h"
SUBJECTS = [f"f{i:02d}" for i in range(12)] + [SHIFTED, "score", "segment", "label"]
DRIFT_ID = f"psi:fraud:1:{SHIFTED}:1699999990000"


def gap(attribute: str, metric: str, statistic: float, low: float, high: float,
        threshold: float = 0.1) -> GapReading:
    return GapReading("fraud", 1, attribute, metric, statistic, low, high, threshold,
                      ("student", "retail"), 3)


def data(**changes) -> StatusData:
    """A minute of history: every subject calm, SHIFTED drifting from the middle on."""
    history = StatusHistory(min_interval_ms=0)
    for k in range(60):
        psi = {("fraud", 1, s): 0.02 + 0.001 * i for i, s in enumerate(SUBJECTS)}
        if k >= 30:
            psi[("fraud", 1, SHIFTED)] = 0.1 * (k - 29)
        history.record(NOW - 60_000 + 1_000 * k, psi, predictions=500 * k, outcomes=400 * k)
    history.add_drift(DriftMark(DRIFT_ID, NOW - 25_000, "psi", "feature", SHIFTED, 0.9, 0.25,
                                "fraud", 1, NOW - 30_000, "drift", f"PSI of {SHIFTED} 0.9"))
    values = dict(
        now_ms=NOW, window_ms=3_600_000, points=history.points(NOW), marks=history.drift_marks(),
        gaps=(gap("segment", "demographic_parity_difference", 0.04, 0.01, 0.07),
              gap("segment", "equal_opportunity_difference", math.nan, math.nan, math.nan),
              gap("channel", "demographic_parity_difference", 0.18, 0.12, 0.24),
              gap("channel", "false_positive_rate_difference", 0.02, 0.0, 0.05, math.nan),
              gap("segment", "demographic_parity_ratio", 0.9, 0.85, 0.95, 0.8)),
        timeline=(
            TimelineEntry(RETRAIN, NOW - 20_000, "retrain fraud: registered v2", "registered",
                          "job-1", end_ms=NOW - 8_000, drift_ids=(DRIFT_ID,), version=2),
            TimelineEntry(REGISTRY, NOW - 7_000, "fraud v2 → Production", "production",
                          "fraud:v2:Production", version=2),
            TimelineEntry(REGISTRY, 3, "fraud v1 → Production", "production",
                          "fraud:v1:Production", version=1)),
        models=(ModelCard("fraud", 2, 2, 2, "Production", None),),
        rates=(500.0, 400.0), predictions=30_000, outcomes=24_000, lag={"p/0": 3, "p/1": 4})
    values.update(changes)
    return StatusData(**values)


def test_the_psi_chart_draws_the_top_series_the_others_the_thresholds_and_the_drift():
    dom = Dom(render_status(data()))
    assert len(dom.find("svg", id="psi-chart")) == 1
    series = dom.find("polyline", "series")
    drawn = [s for s in series if "others" not in s["class"].split()]
    assert len(drawn) == 8
    assert drawn[0]["data-subject"] == SHIFTED, "the drifted subject is drawn first"
    assert all(len(s["points"].split()) == 60 for s in drawn)
    assert float(drawn[0]["data-latest"]) == 3.0
    # 16 subjects: the label is a caption (thresholds of its own), 8 drawn, 7 summarised.
    (others,) = dom.find("polyline", "others")
    assert others["data-count"] == "7" and len(others["points"].split()) == 60
    assert not dom.find("polyline", subject="label")
    assert dom.find("g", "legend-label", subject="label")
    assert {t["data-threshold"] for t in dom.find("line", "threshold")} >= {"0.1", "0.25"}
    (marker,) = dom.find("g", "drift-marker")
    assert marker["data-drift-id"] == DRIFT_ID and marker["data-subject"] == SHIFTED


def test_a_drift_marker_lies_on_the_time_axis_where_it_was_raised():
    page = render_status(data())
    dom = Dom(page)
    shifted = dom.find("polyline", "series", subject=SHIFTED)[0]
    xs = [float(p.split(",")[0]) for p in shifted["points"].split()]
    marker_x = float(page.split(f'data-drift-id="{DRIFT_ID}"')[1].split('x1="')[1].split('"')[0])
    # Raised 25 s before now on a 60 s axis: between the 35th and 36th point.
    assert xs[34] < marker_x < xs[36]


def test_top_series_prefers_subjects_named_by_a_drift_event_then_the_peak_psi():
    series = {("m", 1, "a"): [(0, 0.9), (1, 0.2)], ("m", 1, "b"): [(0, 0.01), (1, 0.01)],
              ("m", 1, "c"): [(0, 0.5), (1, 0.5)]}
    named = DriftMark("x", 0, "psi", "feature", "b", 0.3, 0.25, "m", 1, 0, "drift", "")
    assert top_series(series, [named], n=2) == [("m", 1, "b"), ("m", 1, "a")]
    assert top_series(series, [], n=2) == [("m", 1, "a"), ("m", 1, "c")]
    assert top_series({}, [named]) == []


def test_top_series_keeps_half_the_places_for_the_version_now_served():
    # v1 drifted and was replaced; v2's calm series are current (at the newest point).
    old = {("m", 1, f"x{i}"): [(0, 1.0 + i), (1, 2.0 + i)] for i in range(6)}
    new = {("m", 2, f"x{i}"): [(2, 0.01 * i), (3, 0.01 * i)] for i in range(6)}
    marks = [DriftMark(str(i), 0, "psi", "feature", f"x{i}", 1.0, 0.25, "m", 1, 0, "drift", "")
             for i in range(6)]
    chosen = top_series({**old, **new}, marks, n=4)
    assert chosen == [("m", 1, "x5"), ("m", 1, "x4"), ("m", 2, "x5"), ("m", 2, "x4")]


def test_the_fairness_chart_has_a_bar_an_interval_and_a_threshold_per_supported_gap():
    dom = Dom(render_status(data()))
    assert len(dom.find("svg", id="fairness-chart")) == 1
    gaps = {(g["data-attribute"], g["data-metric"]): g for g in dom.find("g", "gap")}
    assert set(gaps) == {("segment", "demographic_parity_difference"),
                         ("channel", "demographic_parity_difference"),
                         ("channel", "false_positive_rate_difference")}
    channel = gaps[("channel", "demographic_parity_difference")]
    assert (channel["data-statistic"], channel["data-low"], channel["data-high"]) == \
        ("0.18", "0.12", "0.24")
    assert len(dom.find("rect", "gap-bar")) == 3
    assert len(dom.find("line", "gap-interval")) == 3
    assert len(dom.find("line", "gap-interval-cap")) == 6
    # The FPR component alarms as equalized odds: no threshold of its own.
    fairness_thresholds = [t for t in dom.find("line", "threshold")
                           if t["data-threshold"] == "0.1"]
    assert len(fairness_thresholds) == 3  # two gaps, and the PSI warn line
    (unsupported,) = dom.find("text", "gap-unsupported")
    assert unsupported["data-gaps"] == "segment:equal_opportunity_difference"
    assert any("demographic parity ratio" in t for t in dom.texts)


def test_the_timeline_shows_drift_jobs_and_transitions_and_counts_older_ones():
    dom = Dom(render_status(data()))
    assert len(dom.find("svg", id="timeline")) == 1
    assert dom.find("g", "timeline-drift", drift_id=DRIFT_ID, subject=SHIFTED)
    (job,) = dom.find("g", "timeline-retrain")
    assert (job["data-ref"], job["data-status"], job["data-drift-ids"], job["data-version"]) == \
        ("job-1", "registered", DRIFT_ID, "2")
    (promotion,) = dom.find("g", "timeline-registry")
    assert promotion["data-ref"] == "fraud:v2:Production"
    (earlier,) = dom.find("text", "timeline-earlier", lane="registry")
    assert "+1 earlier" in dom.texts


def test_the_cards_show_the_production_version_throughput_lag_and_outcomes():
    page = render_status(data(models=(ModelCard("fraud", 2, 3, 3, "Staging",
                                                "canary of v3 at 10%"),)))
    dom = Dom(page)
    assert {c["id"] for c in dom.find("div", "card")} == {
        "card-model", "card-throughput", "card-lag", "card-counts"}
    assert dom.find("div", "model", model="fraud", production="2")
    assert "fraud v2" in dom.texts and "rollout: canary of v3 at 10%" in dom.texts
    assert "500 /s" in dom.texts
    assert dom.find("span", lag="7") and dom.find("span", outcomes="24000")
    assert any("embedded broker reports them wrong" in t for t in dom.texts)
    assert dom.find("meta", http_equiv="refresh", content="5")


def test_every_outside_string_is_escaped():
    evil = '<script>alert("x")</script>'
    marks = (DriftMark(f'id"{evil}', NOW - 1_000, "psi", "feature", evil, 0.5, 0.25,
                       f"m{evil}", 1, NOW, "drift", evil),)
    page = render_status(data(
        marks=marks, models=(ModelCard(evil, None, 1, 1, evil, evil),),
        gaps=(GapReading(evil, 1, evil, "demographic_parity_difference", 0.2, 0.1, 0.3, 0.1,
                         (evil, evil), 2),),
        timeline=(TimelineEntry(RETRAIN, NOW - 5_000, evil, evil, evil, evil,
                                drift_ids=(evil,)),),
        notes=(evil,)))
    assert "<script" not in page and "&lt;script&gt;" in page
    dom = Dom(page)
    assert dom.find("g", "drift-marker")[0]["data-subject"] == evil  # intact once parsed
    assert not any(t == "script" for t, _ in dom.elements)


def test_an_empty_monitor_renders_placeholders_not_errors():
    page = render_status(StatusData(now_ms=NOW, window_ms=3_600_000))
    dom = Dom(page)
    for chart in ("psi-chart", "fairness-chart", "timeline"):
        assert dom.find("svg", id=chart)
    assert not dom.find("polyline", "series")
    assert dom.find("text", "empty")
    assert "no batch yet" in dom.texts and "no registered model" in dom.texts


def test_status_json_is_strict_json_with_the_same_data():
    body = status_json(data())
    text = json.dumps(body, allow_nan=False)  # NaN gaps become null
    assert json.loads(text)["fairness"][1]["statistic"] is None
    series = {s["subject"]: s for s in body["psi"]["series"]}
    assert len(series) == len(SUBJECTS) and len(series[SHIFTED]["points"]) == 60
    assert body["drift_events"][0]["drift_id"] == DRIFT_ID
    assert body["lag"]["total"] == 7 and body["throughput"]["predictions_per_s"] == 500.0
    assert body["psi"]["thresholds"] == {"warn": 0.1, "drift": 0.25}
    assert [e["ref"] for e in body["timeline"]][0] == "job-1"


def test_a_storm_of_drift_events_draws_every_marker_but_labels_only_where_there_is_room():
    marks = tuple(DriftMark(f"psi:fraud:1:f{i}:{i}", NOW - 30_000 + 100 * i, "psi", "feature",
                            f"f{i:02d}", 0.5, 0.25, "fraud", 1, i, "drift", f"event {i}")
                  for i in range(40))
    adwin = DriftMark("adwin:fraud:1:error:9", NOW - 5_000, "adwin", "error", "error", 0.05,
                      0.002, "fraud", 1, 9, "drift", "ADWIN")
    dom = Dom(render_status(data(marks=(*marks, adwin))))
    assert len(dom.find("g", "drift-marker")) == 41
    assert len(dom.find("g", "timeline-drift")) == 41
    labels = [t for t in dom.texts if t.startswith("drift: ")]
    assert 2 <= len(labels) <= 6, labels  # 40 events within 4 s of a 60 s axis
    assert "drift: error" in labels, "a marker far from the others is labelled"


def test_two_versions_prefix_their_rows_and_collapse_gaps_without_support():
    nan = math.nan
    gaps = tuple(GapReading("fraud", v, a, m, s, s, s, 0.1, ("x", "y"), 2)
                 for v, a, s in ((1, "segment", 0.05), (2, "segment", 0.02), (2, "channel", nan))
                 for m in ("demographic_parity_difference", "equal_opportunity_difference",
                           "equalized_odds_difference", "false_positive_rate_difference"))
    dom = Dom(render_status(data(gaps=gaps)))
    assert len(dom.find("g", "gap", version="1")) == len(dom.find("g", "gap", version="2")) == 4
    assert "v1 segment: demographic parity diff." in dom.texts
    (unsupported,) = dom.find("text", "gap-unsupported", version="2")
    assert "too few outcomes per value: channel (all)" in dom.texts
    assert unsupported["data-gaps"].split()[0] == "channel:demographic_parity_difference"
