"""Backfill and skew audit: recompute features from archived raw events and compare.

``backfill`` replays ``offline/events`` partition by partition in offset order through the same
:class:`FeatureEngine` the worker uses; ``audit_skew`` joins that recomputation with the rows the
worker served (``offline/features``) on (partition, offset) and lists every difference. On a
healthy deployment the audit reports zero: one definition, two uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from driftline.adapters.offline_store import OfflineStore
from driftline.core.features import EventBatch, FeatureEngine, FeatureView

REPLAY_BATCH = 50_000


@dataclass
class Recomputed:
    partition: np.ndarray
    offset: np.ndarray
    event_id: list[str]
    applied: np.ndarray
    values: np.ndarray  # (n, n_features)


def backfill(store: OfflineStore, events_topic: str, view: FeatureView) -> Recomputed:
    table = store.read(store.events_dir(events_topic))
    if table.num_rows == 0:
        return Recomputed(np.zeros(0, np.int64), np.zeros(0, np.int64), [],
                          np.zeros(0, bool), np.zeros((0, len(view.feature_names))))
    table = table.sort_by([("partition", "ascending"), ("offset", "ascending")])
    partitions = table.column("partition").to_numpy()
    parts: list[Recomputed] = []
    for p in np.unique(partitions):
        rows = table.filter(pa.array(partitions == p))
        parts.append(_replay(view, int(p), rows))
    return Recomputed(
        np.concatenate([r.partition for r in parts]), np.concatenate([r.offset for r in parts]),
        [e for r in parts for e in r.event_id], np.concatenate([r.applied for r in parts]),
        np.concatenate([r.values for r in parts]))


def _replay(view: FeatureView, partition: int, rows: pa.Table) -> Recomputed:
    engine = FeatureEngine(view)
    offsets = rows.column("offset").to_numpy()
    applied, values = [], []
    for start in range(0, rows.num_rows, REPLAY_BATCH):
        chunk = rows.slice(start, REPLAY_BATCH)
        records = chunk.to_pylist()
        result = engine.process(EventBatch.from_records(
            records, offsets[start:start + len(records)], view))
        applied.append(result.applied)
        values.append(result.values)
    return Recomputed(np.full(rows.num_rows, partition, np.int64), offsets,
                      rows.column("event_id").to_pylist(), np.concatenate(applied),
                      np.concatenate(values))


def write_backfill(store: OfflineStore, view: FeatureView, result: Recomputed) -> int:
    """Store the recomputed rows (applied events only) under offline/backfill/view=…/."""
    keep = result.applied
    columns: dict[str, object] = {
        "event_id": [e for e, k in zip(result.event_id, keep, strict=True) if k],
        "view_version": [view.version] * int(keep.sum()),
        "partition": result.partition[keep], "offset": result.offset[keep],
    }
    for j, name in enumerate(view.feature_names):
        columns[name] = result.values[keep, j]
    target = store.root / "backfill" / f"view={view.name}" / "features.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(target)
    return int(keep.sum())


@dataclass
class SkewReport:
    view: str
    version: str
    compared: int = 0
    mismatches: list[dict] = field(default_factory=list)
    served_only: int = 0
    recomputed_only: int = 0

    @property
    def clean(self) -> bool:
        return not self.mismatches and not self.served_only and not self.recomputed_only

    def as_dict(self) -> dict:
        return {"view": self.view, "version": self.version, "compared_rows": self.compared,
                "mismatches": len(self.mismatches), "served_only": self.served_only,
                "recomputed_only": self.recomputed_only, "examples": self.mismatches[:20]}


def audit_skew(store: OfflineStore, events_topic: str, view: FeatureView,
               rtol: float = 1e-9) -> SkewReport:
    report = SkewReport(view.name, view.version)
    recomputed = backfill(store, events_topic, view)
    served = store.read(store.features_dir(view.name))
    keep = recomputed.applied
    expected = {(int(p), int(o)): i for i, (p, o) in enumerate(
        zip(recomputed.partition, recomputed.offset, strict=True)) if keep[i]}
    if served.num_rows:
        served = served.filter(pc.equal(served.column("view_version"), view.version))
    names = view.feature_names
    got = {name: served.column(name).to_numpy() for name in names} if served.num_rows else {}
    seen = set()
    for j, (p, o) in enumerate(zip(served.column("partition").to_pylist() if served.num_rows
                                   else [], served.column("offset").to_pylist()
                                   if served.num_rows else [], strict=True)):
        i = expected.get((p, o))
        if i is None:
            report.served_only += 1
            continue
        seen.add((p, o))
        report.compared += 1
        for k, name in enumerate(names):
            a, b = float(got[name][j]), float(recomputed.values[i, k])
            if not _equal(a, b, rtol):
                report.mismatches.append({"event_id": recomputed.event_id[i], "partition": p,
                                          "offset": o, "feature": name, "served": a,
                                          "recomputed": b})
    report.recomputed_only = len(expected) - len(seen)
    return report


def _equal(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1.0)
