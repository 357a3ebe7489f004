"""A deliberately naive reference for the feature semantics, used only by the tests.

It re-implements the spec from ``docs/feature-definitions.md`` with one Python loop per event and
per query, plain lists and pandas for input, no expiry, and window formulas written out again
rather than imported, so a bug in the engine cannot hide in shared code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftline.core.features import FeatureView


@dataclass
class OracleResult:
    late: np.ndarray  # bool per event
    values: np.ndarray  # (n, n_features)
    batch_online: list[dict[str, tuple[int, np.ndarray]]] = field(default_factory=list)
    final_online: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)


def _interval(spec: dict, t: int) -> tuple[int, int]:
    if spec["kind"] == "rolling":
        return t - spec["size_ms"] + 1, t + 1
    if spec["kind"] == "tumbling":
        start = (t // spec["size_ms"]) * spec["size_ms"]
        return start, start + spec["size_ms"]
    end = (t // spec["hop_ms"]) * spec["hop_ms"] + spec["hop_ms"]
    return end - spec["size_ms"], end


def _aggregate(feature, rows: list[dict], t: int, own_seq: int) -> float:
    start, end = _interval(feature.window.spec(), t)
    inside = [r for r in rows if start <= r["time"] < end]
    agg = feature.aggregation
    if agg == "count":
        return float(len(inside))
    if agg == "seconds_since_previous":
        others = [r["time"] for r in inside if r["seq"] != own_seq]
        return (t - max(others)) / 1000.0 if others else math.nan
    values = [r[feature.field] for r in inside]
    if agg == "sum":
        return float(sum(values))
    if agg == "distinct_count":
        return float(len(set(values)))
    if not values:
        return math.nan
    if agg == "mean":
        return float(np.mean(values))
    if agg == "min":
        return float(min(values))
    if agg == "max":
        return float(max(values))
    if agg == "std":
        return float(np.std(values))
    if agg == "last":
        return float(max(inside, key=lambda r: (r["time"], r["seq"]))[feature.field])
    raise AssertionError(agg)


def _online(view: FeatureView, rows: list[dict]) -> tuple[int, np.ndarray]:
    latest = max(rows, key=lambda r: (r["time"], r["seq"]))
    t = latest["time"]
    return t, np.array([_aggregate(f, rows, t, latest["seq"]) for f in view.features])


def run_oracle(view: FeatureView, events: pd.DataFrame, batch_ends: list[int]) -> OracleResult:
    """``events``: columns entity, event_time, seq and the fields, in arrival order."""
    lateness = view.source.allowed_lateness_ms
    n = len(events)
    late = np.zeros(n, dtype=bool)
    values = np.full((n, len(view.features)), np.nan)
    result = OracleResult(late, values)
    applied: dict[str, list[dict]] = {}
    max_seen: int | None = None
    touched: list[str] = []
    ends = set(batch_ends)
    for i, record in enumerate(events.to_dict("records")):
        t = int(record["event_time"])
        if max_seen is not None and t < max_seen - lateness:
            late[i] = True
        else:
            row = dict(record, time=t, seq=int(record["seq"]))
            rows = applied.setdefault(record["entity"], [])
            rows.append(row)
            values[i] = [_aggregate(f, rows, t, row["seq"]) for f in view.features]
            if record["entity"] not in touched:
                touched.append(record["entity"])
        max_seen = t if max_seen is None else max(max_seen, t)
        if i + 1 in ends:
            result.batch_online.append({e: _online(view, applied[e]) for e in touched})
            touched = []
    result.final_online = {e: _online(view, rows) for e, rows in applied.items()}
    return result


def run_oracle_by_partition(view: FeatureView, by_partition: dict[int, list[dict]]
                            ) -> dict[int, OracleResult]:
    """The oracle over each partition's events (dicts in offset order), seq = the offset."""
    results = {}
    for p, events in by_partition.items():
        frame = pd.DataFrame(events).rename(columns={"entity_id": "entity"})
        frame["seq"] = np.arange(len(frame))
        results[p] = run_oracle(view, frame, batch_ends=[len(frame)])
    return results
