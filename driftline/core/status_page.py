"""The monitor's status page as one HTML string with inline SVG charts: data in, HTML out.

`render_status` draws a `StatusData` (gathered by ``agents/status.py``): header cards (each
model's Production version and rollout plan, throughput, consumer lag, counters), PSI per
series over the last hour against the warn and drift thresholds with a marker per drift event,
the fairness gaps per slice attribute as bars with their interval as whiskers beside the
threshold, and a timeline of drift events, retraining jobs and registry transitions that shares
the PSI chart's time axis. No JavaScript, no external asset (the page works offline and behind
any proxy); it reloads itself every few seconds. Every chart element carries an id, a class
and ``data-*`` attributes naming what it shows, so a test can check the rendered DOM, and every
string from outside is escaped. `status_json` is the same data for ``/status.json``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from driftline.core.monitoring.history import DriftMark, GapReading, Point, SeriesKey

LABEL_SUBJECT = "label"  # label PSI has thresholds of its own: a caption, not a line
TOP_SERIES = 8
MIN_SPAN_MS = 10_000
RETRAIN, REGISTRY = "retrain", "registry"
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#ff7f0e")
WARN_COLOUR, DRIFT_COLOUR, OTHERS_COLOUR = "#d4a000", "#d62728", "#9a9a9a"
OTHER_DRIFT_COLOUR = "#7b3294"  # drift events of ADWIN, DDM and fairness
LAG_NOTE = ("from broker high watermarks; the embedded broker reports them wrong "
            "(docs/embedded-broker.md), Kafka right")
_DIFFERENCE_LABELS = {
    "demographic_parity_difference": "demographic parity diff.",
    "equal_opportunity_difference": "equal opportunity diff.",
    "equalized_odds_difference": "equalized odds diff.",
    "false_positive_rate_difference": "FPR diff.",
}
_RATIO = "demographic_parity_ratio"


@dataclass(frozen=True)
class ModelCard:
    """A registered model: its Production version, its newest version and rollout plan."""

    name: str
    production: int | None
    versions: int
    newest: int | None = None
    newest_stage: str | None = None
    plan: str | None = None  # "canary of v3 at 10%"


@dataclass(frozen=True)
class TimelineEntry:
    """A retraining job (``lane`` RETRAIN, a bar to ``end_ms``, or to now while running) or a
    registry transition (REGISTRY, a point). ``ref`` identifies it (job id, transition)."""

    lane: str
    at_ms: int
    label: str
    status: str
    ref: str
    detail: str = ""
    end_ms: int | None = None
    drift_ids: tuple[str, ...] = ()
    version: int | None = None


@dataclass(frozen=True)
class StatusData:
    """Everything the page shows; times are epoch ms of the monitor's wall clock."""

    now_ms: int
    window_ms: int
    points: tuple[Point, ...] = ()
    marks: tuple[DriftMark, ...] = ()
    gaps: tuple[GapReading, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    models: tuple[ModelCard, ...] = ()
    psi_thresholds: tuple[float, float] = (0.1, 0.25)
    label_thresholds: tuple[float, float] = (0.02, 0.05)
    rates: tuple[float, float] | None = None  # predictions/s, outcomes/s
    predictions: int = 0
    outcomes: int = 0
    lag: Mapping[str, int] = field(default_factory=dict)  # "topic/partition" -> messages
    detectors: str = "running"
    notes: tuple[str, ...] = ()


def psi_series(points: Sequence[Point]) -> dict[SeriesKey, list[tuple[int, float]]]:
    """Each series' (time, PSI) pairs, in time order."""
    series: dict[SeriesKey, list[tuple[int, float]]] = {}
    for p in points:
        for key, value in p.psi.items():
            series.setdefault(key, []).append((p.at_ms, value))
    return dict(sorted(series.items()))


def top_series(series: Mapping[SeriesKey, list[tuple[int, float]]],
               marks: Iterable[DriftMark], n: int = TOP_SERIES) -> list[SeriesKey]:
    """The `n` series to draw, most telling first: those a drift event names, then by their
    peak PSI. Half the places go to current series (with a value at the newest point), so a
    version that replaced a drifted one is seen beside it, not hidden by its past."""
    if not series:
        return []
    named = {(m.model_name, m.model_version, m.subject) for m in marks}
    newest = max(pts[-1][0] for pts in series.values())

    def rank(k: SeriesKey) -> tuple[bool, float, SeriesKey]:
        return k not in named, -max(v for _, v in series[k]), k

    current = sorted((k for k in series if series[k][-1][0] == newest), key=rank)[:n // 2]
    rest = sorted((k for k in series if k not in current), key=rank)
    return sorted((current + rest)[:n], key=rank)


def status_json(data: StatusData) -> dict[str, object]:
    """The page's data as JSON-safe values (NaN as null)."""
    series = psi_series(data.points)
    return {
        "now_ms": data.now_ms, "window_ms": data.window_ms, "detectors": data.detectors,
        "models": [vars(m) for m in data.models],
        "throughput": None if data.rates is None else
        {"predictions_per_s": data.rates[0], "outcomes_per_s": data.rates[1]},
        "predictions": data.predictions, "outcomes": data.outcomes,
        "lag": {"partitions": dict(data.lag), "total": sum(data.lag.values()), "note": LAG_NOTE},
        "psi": {"thresholds": {"warn": data.psi_thresholds[0], "drift": data.psi_thresholds[1]},
                "label_thresholds": {"warn": data.label_thresholds[0],
                                     "drift": data.label_thresholds[1]},
                "series": [{"model": k[0], "version": k[1], "subject": k[2],
                            "points": [[t, v] for t, v in pts]} for k, pts in series.items()]},
        "drift_events": [_safe(vars(m)) for m in data.marks],
        "fairness": [_safe({**vars(g), "values": list(g.values)}) for g in data.gaps],
        "timeline": [{**vars(e), "drift_ids": list(e.drift_ids)} for e in data.timeline],
        "notes": list(data.notes),
    }


def render_status(data: StatusData, refresh_s: int = 5) -> str:
    """The whole page."""
    domain = _domain(data)
    body = "\n".join([
        '<header><h1>Driftline status</h1>'
        f'<p class="generated" data-now="{data.now_ms}">monitor, {_e(_clock(data.now_ms))} UTC; '
        f'last {_duration(data.window_ms)}; reloads every {refresh_s} s</p></header>',
        *(f'<p class="note">{_e(n)}</p>' for n in data.notes),
        _cards(data),
        '<section><h2>PSI per feature</h2>', _psi_chart(data, domain), '</section>',
        '<section><h2>Fairness gaps per slice attribute</h2>', _fairness_chart(data.gaps),
        '</section>',
        '<section><h2>Drift events, retraining and promotions</h2>', _timeline(data, domain),
        '</section>',
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
            f'<title>Driftline status</title><style>{_CSS}</style></head>\n'
            f'<body>\n{body}\n</body></html>\n')


# -- header cards -----------------------------------------------------------------------------

def _cards(data: StatusData) -> str:
    models = "".join(
        f'<div class="model" data-model="{_e(m.name)}" data-production="{m.production or ""}">'
        f'<span class="big">{_e(m.name)} '
        f'{"v" + str(m.production) if m.production is not None else "(none)"}</span>'
        f'<span class="small">Production; {m.versions} version(s)'
        + (f', newest v{m.newest} {_e(m.newest_stage or "")}' if m.newest is not None else "")
        + '</span>'
        + (f'<span class="small plan">rollout: {_e(m.plan)}</span>' if m.plan else "")
        + '</div>' for m in data.models) or '<span class="small">no registered model</span>'
    if data.rates is None:
        rates = '<span class="big">-</span><span class="small">no batch yet</span>'
    else:
        rates = (f'<span class="big">{data.rates[0]:,.0f} /s</span>'
                 f'<span class="small">predictions; {data.rates[1]:,.0f} outcomes/s</span>')
    total_lag = sum(data.lag.values())
    cards = [
        ('card-model', 'Model in Production', models),
        ('card-throughput', 'Throughput', rates),
        ('card-lag', 'Consumer lag',
         f'<span class="big" data-lag="{total_lag}">{total_lag:,}</span>'
         f'<span class="small">messages over {len(data.lag)} partition(s)</span>'
         f'<span class="small caveat">{_e(LAG_NOTE)}</span>'),
        ('card-counts', 'Outcomes',
         f'<span class="big" data-outcomes="{data.outcomes}">{data.outcomes:,}</span>'
         f'<span class="small">joined of {data.predictions:,} predictions; '
         f'{len(data.marks)} drift event(s)</span>'
         f'<span class="small">detectors: {_e(data.detectors)}</span>'),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card" id="{i}"><h3>{title}</h3>{inner}</div>'
        for i, title, inner in cards) + '</div>'


# -- PSI ---------------------------------------------------------------------------------------

_W, _LEFT, _RIGHT = 1300, 110, 300
_PLOT = _W - _LEFT - _RIGHT


def _domain(data: StatusData) -> tuple[int, int]:
    """The shared time axis: from the oldest point or event of the window to now."""
    end = data.now_ms
    start = end - data.window_ms
    times = [p.at_ms for p in data.points] + [m.at_ms for m in data.marks] + \
        [e.at_ms for e in data.timeline]
    inside = [t for t in times if start <= t <= end]
    first = min(inside, default=end)
    return min(first, end - MIN_SPAN_MS), end


def _x(t: int, domain: tuple[int, int]) -> float:
    return _LEFT + _PLOT * (t - domain[0]) / max(domain[1] - domain[0], 1)


def _psi_chart(data: StatusData, domain: tuple[int, int]) -> str:
    height, top, bottom = 380, 24, 40
    plot_h = height - top - bottom
    all_series = psi_series(data.points)
    label = {k: v for k, v in all_series.items() if k[2] == LABEL_SUBJECT}
    series = {k: v for k, v in all_series.items() if k[2] != LABEL_SUBJECT}
    chosen = top_series(series, data.marks)
    rest = [k for k in series if k not in chosen]
    warn, drift = data.psi_thresholds
    peak = max((v for pts in series.values() for _, v in pts), default=0.0)
    ymax = _nice(max(peak * 1.05, drift * 1.2))

    def y(v: float) -> float:
        # A square-root scale: a PSI of 3 and the thresholds at 0.1 and 0.25 stay readable.
        return top + plot_h * (1 - math.sqrt(min(max(v, 0.0), ymax) / ymax))

    parts = [_axes(domain, top, plot_h, ymax, y)]
    for name, value, colour in (("warn", warn, WARN_COLOUR), ("drift", drift, DRIFT_COLOUR)):
        parts.append(
            f'<line class="threshold {name}" data-threshold="{value:g}" x1="{_LEFT}" '
            f'y1="{y(value):.1f}" x2="{_LEFT + _PLOT}" y2="{y(value):.1f}" stroke="{colour}" '
            f'stroke-width="1.5" stroke-dasharray="7 5"/>'
            f'<text class="threshold-label" x="{_LEFT + _PLOT - 4}" y="{y(value) - 4:.1f}" '
            f'text-anchor="end" fill="{colour}">{name} {value:g}</text>')
    if rest:
        times = sorted({t for k in rest for t, _ in series[k]})
        latest = {k: dict(series[k]) for k in rest}
        envelope = [(t, max(v[t] for v in latest.values() if t in v)) for t in times]
        parts.append(
            f'<polyline class="series others" data-subject="(others)" data-count="{len(rest)}" '
            f'fill="none" stroke="{OTHERS_COLOUR}" stroke-width="1.5" stroke-dasharray="2 3" '
            f'points="{_points(envelope, domain, y)}"><title>highest PSI of the {len(rest)} '
            f'other series</title></polyline>')
    for i, key in enumerate(chosen):
        colour, pts = PALETTE[i % len(PALETTE)], series[key]
        t_last, v_last = pts[-1]
        parts.append(
            f'<polyline class="series" {_key_attrs(key)} data-latest="{v_last:.4g}" '
            f'fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{_points(pts, domain, y)}"><title>{_e(_name(key, series))}: PSI '
            f'{v_last:.3g}</title></polyline>'
            f'<circle class="series-end" {_key_attrs(key)} cx="{_x(t_last, domain):.1f}" '
            f'cy="{y(v_last):.1f}" r="3" fill="{colour}"/>')
    marks = sorted((m for m in data.marks if domain[0] <= m.at_ms <= domain[1]),
                   key=lambda m: m.at_ms)
    placed = _place_labels([(_x(m.at_ms, domain), f"drift: {m.subject}") for m in marks], 4)
    texts = []  # drawn after every marker, so no line crosses a label
    for i, m in enumerate(marks):
        x, colour = _x(m.at_ms, domain), _mark_colour(m)
        if i in placed:
            texts.append(f'<text class="drift-label" data-drift-id="{_e(m.drift_id)}" '
                         f'{placed[i][1]} y="{top + 12 + 14 * placed[i][0]}" fill="{colour}" '
                         f'stroke="#fff" stroke-width="3" paint-order="stroke">drift: '
                         f'{_e(m.subject)}</text>')
        parts.append(
            f'<g class="drift-marker" data-drift-id="{_e(m.drift_id)}" '
            f'data-detector="{_e(m.detector)}" data-subject="{_e(m.subject)}" '
            f'data-model="{_e(m.model_name)}" data-version="{m.model_version}">'
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="{colour}" stroke-width="{2 if m.detector == "psi" else 1.5}"/>'
            f'<title>{_e(m.summary)}</title></g>')
    parts += texts
    parts.append(_legend(chosen, rest, series, label, data.label_thresholds, top))
    if not series:
        parts.append(f'<text class="empty" x="{_LEFT + _PLOT / 2}" y="{top + plot_h / 2}" '
                     'text-anchor="middle">no PSI yet: a window fills after its first '
                     'predictions of a profiled model version</text>')
    return (f'<svg id="psi-chart" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
            f'role="img" aria-label="PSI per feature over time">{"".join(parts)}</svg>')


def _axes(domain: tuple[int, int], top: int, plot_h: int, ymax: float, y) -> str:
    parts = [f'<rect class="plot" x="{_LEFT}" y="{top}" width="{_PLOT}" height="{plot_h}" '
             'fill="#fff" stroke="#ccc"/>']
    last = math.inf
    for v in [t for t in _PSI_TICKS if t <= ymax]:
        if last - y(v) < 12:  # the square-root scale crowds the small ticks
            continue
        last = y(v)
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#eee"/><text class="tick" x="{_LEFT - 6}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:g}</text>')
    parts.append(_time_ticks(domain, top + plot_h))
    parts.append(f'<text class="axis-title" x="{_LEFT - 60}" y="{top + plot_h / 2:.0f}" '
                 f'transform="rotate(-90 {_LEFT - 60} {top + plot_h / 2:.0f})" '
                 'text-anchor="middle">PSI (square-root scale)</text>')
    return "".join(parts)


_PSI_TICKS = (0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100)


def _time_ticks(domain: tuple[int, int], baseline: float) -> str:
    parts = []
    for i in range(6):
        t = domain[0] + (domain[1] - domain[0]) * i // 5
        x = _x(t, domain)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{baseline}" y2="{baseline + 5}" '
                     f'stroke="#999"/><text class="tick" x="{x:.1f}" y="{baseline + 18}" '
                     f'text-anchor="middle">{_clock(t)}</text>')
    return "".join(parts)


def _legend(chosen: Sequence[SeriesKey], rest: Sequence[SeriesKey],
            series: Mapping[SeriesKey, list[tuple[int, float]]],
            label: Mapping[SeriesKey, list[tuple[int, float]]],
            label_thresholds: tuple[float, float], top: int) -> str:
    x = _LEFT + _PLOT + 16
    rows = []
    for i, key in enumerate(chosen):
        rows.append((PALETTE[i % len(PALETTE)], "legend-item", key,
                     f"{_name(key, series)}  {series[key][-1][1]:.3g}"))
    if rest:
        worst = max(rest, key=lambda k: series[k][-1][1])
        rows.append((OTHERS_COLOUR, "legend-others", None,
                     f"{len(rest)} more, max {series[worst][-1][1]:.3g} ({worst[2]})"))
    for key, pts in label.items():
        rows.append(("none", "legend-label", key, f"{_name(key, series)} {pts[-1][1]:.3g}"))
    if label:
        rows.append(("none", "legend-label-thresholds", None, f"(label: warn "
                     f"{label_thresholds[0]:g}, drift {label_thresholds[1]:g})"))
    rows += [(DRIFT_COLOUR, "legend-drift", None, "drift event (PSI)"),
             (OTHER_DRIFT_COLOUR, "legend-drift", None, "drift event (other detector)")]
    out = []
    for i, (colour, cls, key, text) in enumerate(rows):
        yy = top + 10 + 20 * i
        attrs = _key_attrs(key) if key else ""
        out.append(f'<g class="{cls}" {attrs}><rect x="{x}" y="{yy - 9}" width="14" height="4" '
                   f'fill="{colour}"/><text x="{x + 20}" y="{yy - 3}">{_e(text)}</text></g>')
    return "".join(out)


# -- fairness ----------------------------------------------------------------------------------

def _fairness_chart(gaps: Sequence[GapReading]) -> str:
    groups: dict[tuple[str, int], list[GapReading]] = {}
    for g in gaps:
        groups.setdefault((g.model_name, g.model_version), []).append(g)
    rows: list[GapReading | tuple[str, list[GapReading]]] = []  # a gap, or a group's summary
    captions = []
    for key, members in sorted(groups.items()):
        who = _who(key, groups)
        shown = [g for g in members if g.metric in _DIFFERENCE_LABELS]
        rows += [g for g in shown if math.isfinite(g.statistic)]
        unsupported = [g for g in shown if not math.isfinite(g.statistic)]
        if unsupported:
            rows.append((who, unsupported))
        ratios = "; ".join(f"{g.attribute} {g.statistic:.3f} [{g.low:.3f}, {g.high:.3f}]"
                           for g in members if g.metric == _RATIO and math.isfinite(g.statistic))
        threshold = next((g.threshold for g in members if g.metric == _RATIO), math.nan)
        if ratios:
            captions.append(f"{who}demographic parity ratio (alarm below {threshold:g}): "
                            f"{ratios}")
    left, row_h, top = 330, 26, 10
    plot = _W - left - _RIGHT
    if not rows:
        return ('<svg id="fairness-chart" viewBox="0 0 1300 60" width="1300" height="60">'
                '<text class="empty" x="650" y="34" text-anchor="middle">no fairness '
                'evaluation yet: it needs labelled outcomes</text></svg>')
    finite = [v for g in gaps if g.metric in _DIFFERENCE_LABELS for v in (g.high, g.threshold)
              if math.isfinite(v)]
    xmax = _nice(max(finite + [0.15]) * 1.1)

    def x(v: float) -> float:
        return left + plot * min(max(v, 0.0), xmax) / xmax

    bottom = top + row_h * len(rows)
    height = bottom + 24 + 16 * len(captions)
    parts = [f'<rect class="plot" x="{left}" y="{top}" width="{plot}" height="{bottom - top}" '
             'fill="#fff" stroke="#ccc"/>']
    for i in range(6):
        v = xmax * i / 5
        parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{bottom}" '
                     f'stroke="#eee"/><text class="tick" x="{x(v):.1f}" y="{bottom + 16}" '
                     f'text-anchor="middle">{v:.3g}</text>')
    for i, row in enumerate(rows):
        y0 = top + row_h * i
        if isinstance(row, tuple):
            parts.append(_unsupported(*row, left, y0 + row_h / 2))
        else:
            parts.append(_gap_row(row, _who((row.model_name, row.model_version), groups),
                                  left, y0, row_h, x))
    for i, caption in enumerate(captions):
        parts.append(f'<text class="ratios" x="{left}" y="{bottom + 34 + 16 * i}">'
                     f'{_e(caption)}</text>')
    return (f'<svg id="fairness-chart" viewBox="0 0 {_W} {height}" width="{_W}" '
            f'height="{height}" role="img" aria-label="fairness gaps">{"".join(parts)}</svg>')


def _who(key: tuple[str, int], groups: Mapping[tuple[str, int], object]) -> str:
    """A row's version prefix, needed only when more than one version is shown."""
    if len({k[0] for k in groups}) > 1:
        return f"{key[0]} v{key[1]} "
    return f"v{key[1]} " if len(groups) > 1 else ""


def _gap_row(g: GapReading, who: str, left: int, y0: float, row_h: int, x) -> str:
    mid = y0 + row_h / 2
    past = math.isfinite(g.threshold) and g.low > g.threshold
    near = math.isfinite(g.threshold) and g.high > g.threshold
    colour = DRIFT_COLOUR if past else WARN_COLOUR if near else "#4e79a7"
    pair = " vs ".join(_e(v) for v in g.values) if all(g.values) else ""
    threshold = (f'<line class="threshold" data-threshold="{g.threshold:g}" '
                 f'x1="{x(g.threshold):.1f}" x2="{x(g.threshold):.1f}" y1="{y0 + 2}" '
                 f'y2="{y0 + row_h - 2}" stroke="{DRIFT_COLOUR}" stroke-width="2" '
                 'stroke-dasharray="4 3"/>') if math.isfinite(g.threshold) else ""
    caps = "".join(f'<line class="gap-interval-cap" x1="{x(v):.1f}" x2="{x(v):.1f}" '
                   f'y1="{y0 + 7}" y2="{y0 + row_h - 7}" stroke="#222" stroke-width="1.5"/>'
                   for v in (g.low, g.high))
    return (
        f'<text class="row-label" x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">'
        f'{_e(who + g.attribute)}: {_DIFFERENCE_LABELS[g.metric]}</text>'
        f'<g class="gap" data-model="{_e(g.model_name)}" data-version="{g.model_version}" '
        f'data-attribute="{_e(g.attribute)}" data-metric="{_e(g.metric)}" '
        f'data-statistic="{g.statistic:.4g}" data-low="{g.low:.4g}" data-high="{g.high:.4g}" '
        f'data-threshold="{g.threshold:.4g}">'
        f'<rect class="gap-bar" x="{left}" y="{y0 + 6}" width="{x(g.statistic) - left:.1f}" '
        f'height="{row_h - 12}" fill="{colour}" fill-opacity="0.75"/>'
        f'<line class="gap-interval" x1="{x(g.low):.1f}" x2="{x(g.high):.1f}" y1="{mid}" '
        f'y2="{mid}" stroke="#222" stroke-width="1.5"/>{caps}{threshold}'
        f'<text class="gap-value" x="{x(g.high) + 8:.1f}" y="{mid + 4:.1f}">'
        f'{g.statistic:.3f} [{g.low:.3f}, {g.high:.3f}] {pair}</text>'
        f'<title>{_e(g.metric)} of {_e(g.attribute)}: {g.statistic:.4f}, interval '
        f'[{g.low:.4f}, {g.high:.4f}], threshold {g.threshold:g}, {g.compared} values '
        f'compared</title></g>')


def _unsupported(who: str, gaps: Sequence[GapReading], left: int, mid: float) -> str:
    """One row for a version's gaps that lack support: "channel (all), segment: equal
    opportunity diff." rather than a row each."""
    by_attribute: dict[str, list[str]] = {}
    for g in gaps:
        by_attribute.setdefault(g.attribute, []).append(g.metric)
    what = ", ".join(
        f"{a} (all)" if len(metrics) == len(_DIFFERENCE_LABELS) else
        f"{a}: " + ", ".join(_DIFFERENCE_LABELS[m] for m in metrics)
        for a, metrics in by_attribute.items())
    keys = " ".join(f"{g.attribute}:{g.metric}" for g in gaps)
    return (f'<text class="row-label" x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">'
            f'{_e(who)}not compared</text>'
            f'<text class="gap-unsupported" data-model="{_e(gaps[0].model_name)}" '
            f'data-version="{gaps[0].model_version}" data-gaps="{_e(keys)}" x="{left + 8}" '
            f'y="{mid + 4:.1f}">too few outcomes per value: {_e(what)}</text>')


# -- timeline ----------------------------------------------------------------------------------

def _timeline(data: StatusData, domain: tuple[int, int]) -> str:
    lanes = (("drift", "drift events"), (RETRAIN, "retraining"), (REGISTRY, "registry"))
    lane_h, top = 56, 10
    height = top + lane_h * len(lanes) + 30
    lane_y = {name: top + lane_h * i for i, (name, _) in enumerate(lanes)}
    parts = []
    for name, title in lanes:
        y0 = lane_y[name]
        parts.append(f'<rect class="lane" data-lane="{name}" x="{_LEFT}" y="{y0}" '
                     f'width="{_PLOT}" height="{lane_h - 6}" fill="#fff" stroke="#ddd"/>'
                     f'<text class="lane-label" x="{_LEFT - 8}" y="{y0 + lane_h / 2:.0f}" '
                     f'text-anchor="end">{title}</text>')
    parts.append(_time_ticks(domain, top + lane_h * len(lanes) - 6))
    earlier = {name: 0 for name, _ in lanes}
    shown = sorted((m for m in data.marks if m.at_ms >= domain[0]), key=lambda m: m.at_ms)
    earlier["drift"] = len(data.marks) - len(shown)
    words = [f"{m.detector} {m.subject} {m.statistic:.3g}" for m in shown]
    placed = _place_labels([(_x(m.at_ms, domain), w) for m, w in zip(shown, words, strict=True)],
                           9)
    texts = []
    for i, m in enumerate(shown):
        x, y0 = _x(m.at_ms, domain), lane_y["drift"]
        if i in placed:
            texts.append(f'<text class="drift-label" data-drift-id="{_e(m.drift_id)}" '
                         f'{placed[i][1]} y="{y0 + 22 + 14 * placed[i][0]}" stroke="#fff" '
                         f'stroke-width="3" paint-order="stroke">{_e(words[i])}</text>')
        parts.append(
            f'<g class="timeline-drift" data-drift-id="{_e(m.drift_id)}" '
            f'data-subject="{_e(m.subject)}" data-detector="{_e(m.detector)}">'
            f'<path d="M{x:.1f} {y0 + 8} l7 10 l-7 10 l-7 -10 z" fill="{_mark_colour(m)}" '
            f'fill-opacity="0.8"/><title>{_e(m.summary)}</title></g>')
    parts += texts
    for i, e in enumerate(sorted(data.timeline, key=lambda e: e.at_ms)):
        end = e.at_ms if e.lane != RETRAIN else e.end_ms if e.end_ms is not None \
            else data.now_ms  # a running job's bar reaches now
        if max(e.at_ms, end) < domain[0] or e.lane not in lane_y:
            earlier[e.lane] = earlier.get(e.lane, 0) + 1
            continue
        x, y0 = _x(max(e.at_ms, domain[0]), domain), lane_y[e.lane]
        attrs = (f'data-ref="{_e(e.ref)}" data-status="{_e(e.status)}" '
                 f'data-drift-ids="{_e(" ".join(e.drift_ids))}" '
                 f'data-version="{"" if e.version is None else e.version}"')
        colour = _STATUS_COLOURS.get(e.status, "#555")
        if e.lane == RETRAIN:
            width = max(_x(min(end, domain[1]), domain) - x, 4)
            shape = (f'<rect x="{x:.1f}" y="{y0 + 8}" width="{width:.1f}" height="14" rx="3" '
                     f'fill="{colour}"/>')
        else:
            shape = f'<circle cx="{x:.1f}" cy="{y0 + 15}" r="6" fill="{colour}"/>'
        parts.append(f'<g class="timeline-{e.lane}" {attrs}>{shape}'
                     f'<text {_label_span(x, 9, e.label)[2]} y="{y0 + 34 + 12 * (i % 2)}">'
                     f'{_e(e.label)}</text>'
                     f'<title>{_e(e.detail or e.label)}</title></g>')
    for name, count in earlier.items():
        if count:
            parts.append(f'<text class="timeline-earlier" data-lane="{name}" '
                         f'x="{_LEFT + _PLOT + 10}" y="{lane_y[name] + 20}">+{count} earlier'
                         '</text>')
    return (f'<svg id="timeline" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
            f'role="img" aria-label="timeline">{"".join(parts)}</svg>')


_STATUS_COLOURS = {"running": "#4e79a7", "registered": "#59a14f", "rejected": "#e15759",
                   "failed": "#b07aa1", "production": "#59a14f", "staging": "#76b7b2",
                   "archived": "#9a9a9a", "rollback": "#e15759"}


# -- small helpers -----------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _place_labels(labels: Sequence[tuple[float, str]], pad: float,
                  rows: int = 2) -> dict[int, tuple[int, str]]:
    """Where to write each (x, text) label, in x order: index -> (row, x attributes). A label
    goes in the first row where it overlaps no other; one with no room gets none (its element
    keeps a tooltip), so a storm of events stays readable."""
    ends = [-math.inf] * rows
    placed: dict[int, tuple[int, str]] = {}
    for i, (x, text) in enumerate(labels):
        start, end, attrs = _label_span(x, pad, text)
        row = next((r for r in range(rows) if start >= ends[r] + 6), None)
        if row is not None:
            ends[row] = end
            placed[i] = (row, attrs)
    return placed


def _label_span(x: float, pad: float, text: str) -> tuple[float, float, str]:
    """A label's extent and x attributes: right of `x`, or left of it where it would leave the
    plot (12 px sans-serif is about 6.5 px a character)."""
    width = 6.5 * len(text)
    if x + pad + width > _LEFT + _PLOT:
        return x - pad - width, x - pad, f'x="{x - pad:.1f}" text-anchor="end"'
    return x + pad, x + pad + width, f'x="{x + pad:.1f}"'


def _mark_colour(mark: DriftMark) -> str:
    return DRIFT_COLOUR if mark.detector == "psi" else OTHER_DRIFT_COLOUR


def _key_attrs(key: SeriesKey) -> str:
    return (f'data-model="{_e(key[0])}" data-version="{key[1]}" '
            f'data-subject="{_e(key[2])}"')


def _name(key: SeriesKey, series: Mapping[SeriesKey, object]) -> str:
    """The subject alone when one model version is shown, else prefixed by it."""
    versions = {k[:2] for k in series} | {key[:2]}
    return key[2] if len(versions) == 1 else f"{key[0]} v{key[1]} {key[2]}"


def _points(pts: Iterable[tuple[int, float]], domain: tuple[int, int], y) -> str:
    return " ".join(f"{_x(t, domain):.1f},{y(v):.1f}" for t, v in pts)


def _nice(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at least `v`."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    power = 10 ** math.floor(math.log10(v))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= v * (1 - 1e-9))


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M:%S")


def _duration(ms: int) -> str:
    return f"{ms / 3_600_000:g} h" if ms >= 3_600_000 else f"{ms / 60_000:g} min"


def _safe(d: Mapping[str, object]) -> dict[str, object]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in d.items()}


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#222;
background:#f6f6f8}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:18px 0 6px}h3{font-size:12px;margin:0 0 6px;
color:#666;text-transform:uppercase;letter-spacing:.05em}
header{display:flex;align-items:baseline;gap:16px}.generated{color:#666;margin:0}
.note{background:#fff3cd;padding:6px 10px;border-radius:4px}
.cards{display:flex;gap:12px;margin-top:12px}.card{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:10px 14px;flex:1;min-width:0}.card .big{display:block;font-size:24px;
font-weight:600}.card .small{display:block;font-size:12px;color:#555}.caveat{font-style:italic}
.legend-item,.legend-others,.legend-label,.legend-label-thresholds,.legend-drift{font-size:11px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:4px 10px;
margin-top:12px;overflow-x:auto}svg{font-size:12px;display:block}.tick{fill:#666;font-size:11px}
"""
