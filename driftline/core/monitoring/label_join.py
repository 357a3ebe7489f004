"""The late-label join: one partition's predictions and delayed labels in, outcomes out.

Predictions and labels are both keyed by entity_id, so a prediction and its label reach the same
partition and one `LabelJoin` per partition sees both. It is pure (numpy only, no clock, no I/O)
and batch-first. Semantics (full text in ``docs/label-join-and-concept-drift.md``); all times are
event times in integer ms and ``H`` is the horizon (default 7 days):

* **Watermark** ``W`` = the greatest prediction ``event_time`` or label ``label_time`` of any
  record seen so far (duplicates included). It only grows. The batch's records are joined
  against the state as it stood at the start of the batch, then ``W`` advances, then state
  older than ``W - H`` expires.
* **Retention.** An unlabelled prediction is kept while ``event_time >= W - H``; a label that
  arrived before its prediction while ``label_time >= W - H``; the event id of a joined pair
  while ``max(event_time, label_time) >= W - H``. Exactly at ``W - H`` a record is still kept.
* **Join.** A prediction and a label with the same ``event_id`` join, in whichever order they
  arrive, if both are retained (or arrive in the same batch) and
  ``|label_time - event_time| <= H``: a label exactly ``H`` late joins, ``H + 1`` ms does not.
  A label earlier than its prediction (``label_time < event_time``) joins with a negative delay.
* **Duplicates.** The first prediction and the first label of an event id are *the* records;
  any later prediction (label) whose id is retained as a prediction (label) or as a joined
  pair, or repeats one earlier in the same batch, is ignored and counted.
* **Expiry.** A prediction that expires unlabelled and a label that expires without a
  prediction are counted (``predictions_expired``, ``labels_expired``) and forgotten; label
  coverage is ``joined / (joined + predictions_expired)``.
* **Outcomes** of a batch are ordered by ``(label_time, event_id)``; their label delay is
  ``label_time - event_time``. Each carries its prediction's columns, including the rollout
  ``arm`` that scored it and the model call's ``latency_ms``.

Event ids are identified inside the state by a 128-bit fingerprint (two 64-bit polynomial
hashes); distinct ids that collide in both would be treated as one. The result of a join does
not depend on how the two streams are cut into batches, except for a pair whose later half
arrives after the watermark, driven by other records, has passed the earlier half's retention.

>>> join = LabelJoin(input_names=["amount"], slice_names=["segment"], horizon_ms=3_600_000)
>>> preds = PredictionBatch.from_records(
...     [{"event_id": "e1", "event_time": 1_000, "score": 0.9, "decision": True,
...       "model_name": "fraud", "model_version": 3, "slices": {"segment": "student"},
...       "inputs": {"amount": 12.5}}],
...     input_names=["amount"], slice_names=["segment"])
>>> labels = LabelBatch.from_records([{"event_id": "e1", "label": 1, "label_time": 61_000}])
>>> result = join.process(preds, labels)
>>> result.outcomes.label_delay_ms.tolist(), result.counts.joined
([60000], 1)
>>> result.outcomes.arm.tolist(), result.outcomes.latency_ms.tolist()  # the schema's defaults
(['production'], [0.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from driftline.core.monitoring.id_index import IdIndex, fingerprint
from driftline.core.rollout import PRODUCTION

DEFAULT_HORIZON_MS = 7 * 24 * 3600 * 1000
NO_TIME = -(2**62)  # "no record yet"; far from int64 min so subtracting a horizon cannot wrap
STATE_FORMAT = 2  # bump when the snapshot layout or the fingerprint changes
# Why the state of an earlier format cannot be restored, for the error that refuses it.
_FORMAT_CHANGES = {1: "format 1 did not keep the waiting predictions' arm and latency_ms"}
DEFAULT_ARM = PRODUCTION  # the Prediction schema's defaults for records written without them
DEFAULT_LATENCY_MS = 0.0


# ---------------------------------------------------------------- batches in and out


@dataclass(frozen=True)
class PredictionBatch:
    """Columnar predictions of one partition in arrival order (schemas/Prediction.avsc).

    `arm` and `latency_ms` may be left out (None): every row then gets the schema's default,
    ``"production"`` and ``0.0``. Once built, both are arrays.
    """

    event_id: np.ndarray  # str
    event_time_ms: np.ndarray  # int64
    score: np.ndarray  # float64
    decision: np.ndarray  # bool
    model_name: np.ndarray  # str
    model_version: np.ndarray  # int64
    slices: Mapping[str, np.ndarray]  # str column per slice name
    inputs: np.ndarray  # float64 (n, n_inputs), NaN where the input was null or absent
    arm: np.ndarray | None = None  # str: the rollout arm that scored it (production, ...)
    latency_ms: np.ndarray | None = None  # float64: model-call wall time of its scoring batch

    def __post_init__(self) -> None:
        _fill_rollout_defaults(self)

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        input_names: Sequence[str] = (),
        slice_names: Sequence[str] = (),
    ) -> PredictionBatch:
        """Build from decoded Prediction dicts; inputs in `input_names` order, slices by name,
        and the schema's defaults for an absent ``arm`` or ``latency_ms`` (older records)."""
        inputs = np.full((len(records), len(input_names)), np.nan)
        for i, record in enumerate(records):
            values = record.get("inputs") or {}
            for j, name in enumerate(input_names):
                value = values.get(name)
                if value is not None:
                    inputs[i, j] = value
        return cls(
            event_id=_str([r["event_id"] for r in records]),
            event_time_ms=np.asarray([r["event_time"] for r in records], dtype=np.int64),
            score=np.asarray([r["score"] for r in records], dtype=np.float64),
            decision=np.asarray([r["decision"] for r in records], dtype=bool),
            model_name=_str([r["model_name"] for r in records]),
            model_version=np.asarray([r["model_version"] for r in records], dtype=np.int64),
            slices={
                s: _str([(r.get("slices") or {}).get(s, "") for r in records])
                for s in slice_names
            },
            inputs=inputs,
            arm=_str([r.get("arm", DEFAULT_ARM) for r in records]),
            latency_ms=np.asarray([r.get("latency_ms", DEFAULT_LATENCY_MS) for r in records],
                                  dtype=np.float64),
        )


@dataclass(frozen=True)
class LabelBatch:
    """Columnar labels of one partition in arrival order (schemas/Label.avsc)."""

    event_id: np.ndarray  # str
    label: np.ndarray  # int64, 0 or 1
    label_time_ms: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> LabelBatch:
        """Build from decoded Label dicts."""
        return cls(
            event_id=_str([r["event_id"] for r in records]),
            label=np.asarray([r["label"] for r in records], dtype=np.int64),
            label_time_ms=np.asarray([r["label_time"] for r in records], dtype=np.int64),
        )


@dataclass(frozen=True)
class OutcomeBatch:
    """Joined (prediction, label) pairs, ordered by (label_time, event_id).

    `arm` and `latency_ms` are the prediction's; left out (None), they are the schema's
    defaults, as in `PredictionBatch`.
    """

    event_id: np.ndarray  # str
    event_time_ms: np.ndarray  # int64, the prediction's event time
    label_time_ms: np.ndarray  # int64
    score: np.ndarray  # float64
    decision: np.ndarray  # bool
    label: np.ndarray  # int64
    model_name: np.ndarray  # str
    model_version: np.ndarray  # int64
    slices: Mapping[str, np.ndarray]
    inputs: np.ndarray  # float64 (n, n_inputs)
    arm: np.ndarray | None = None  # str, the prediction's rollout arm
    latency_ms: np.ndarray | None = None  # float64, the prediction's model-call time

    def __post_init__(self) -> None:
        _fill_rollout_defaults(self)

    def __len__(self) -> int:
        return len(self.event_id)

    @property
    def label_delay_ms(self) -> np.ndarray:
        """``label_time - event_time`` per outcome (negative if the label predates the event)."""
        return self.label_time_ms - self.event_time_ms

    def take(self, index: np.ndarray | slice) -> OutcomeBatch:
        """The outcomes at `index` (a slice, a boolean mask or positions)."""
        return OutcomeBatch(
            **{
                f.name: (
                    {k: v[index] for k, v in self.slices.items()}
                    if f.name == "slices"
                    else getattr(self, f.name)[index]
                )
                for f in fields(self)
            }
        )

    @classmethod
    def concat(cls, batches: Sequence[OutcomeBatch]) -> OutcomeBatch:
        """One batch holding `batches` in order (all from joins with the same inputs/slices)."""
        first = batches[0]
        return cls(
            **{
                f.name: (
                    {k: np.concatenate([b.slices[k] for b in batches]) for k in first.slices}
                    if f.name == "slices"
                    else np.concatenate([getattr(b, f.name) for b in batches])
                )
                for f in fields(cls)
            }
        )


@dataclass(frozen=True)
class JoinCounts:
    """Counters of one batch (`JoinResult.counts`) or of a join's life (`LabelJoin.totals`)."""

    joined: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    predictions_expired: int = 0  # left the horizon without a label
    labels_expired: int = 0  # left the horizon without a prediction

    def __add__(self, other: JoinCounts) -> JoinCounts:
        return JoinCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def coverage(self) -> float:
        """Share of resolved predictions that got a label; NaN before any was resolved."""
        resolved = self.joined + self.predictions_expired
        return self.joined / resolved if resolved else float("nan")


@dataclass(frozen=True)
class JoinResult:
    """What one `LabelJoin.process` call produced."""

    outcomes: OutcomeBatch
    counts: JoinCounts
    watermark_ms: int
    state_delta: dict[str, np.ndarray]  # in `LabelJoin.snapshot` format


class _Rows:
    """Append-only columns with a live mask. Joined and expired rows are only marked dead; the
    columns are compacted when dead rows outnumber live ones, so a row costs O(1) amortised."""

    def __init__(self, shapes: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        self._cols = {n: np.zeros((1024, *shape), dtype) for n, (dtype, shape) in shapes.items()}
        self.live = np.zeros(1024, dtype=bool)
        self._n = 0
        self.n_live = 0

    @property
    def nbytes(self) -> int:
        return self.live.nbytes + sum(c.nbytes for c in self._cols.values())

    @property
    def n_rows(self) -> int:
        """Rows ever appended since the last compaction, live or dead: the next row number."""
        return self._n

    def take(self, rows: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return {n: self._cols[n][rows] for n in (names or self._cols)}

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self._n])

    def append(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Add rows; their row numbers."""
        m = len(columns["h1"])
        if self._n + m > len(self.live):
            capacity = max(2 * len(self.live), self._n + m)
            for name, col in self._cols.items():
                self._cols[name] = _grown(col, self._n, capacity)
            self.live = _grown(self.live, self._n, capacity)
        for name, values in columns.items():
            col = self._cols[name]
            if values.dtype.kind == "U" and values.dtype.itemsize > col.dtype.itemsize:
                col = self._cols[name] = col.astype(values.dtype)  # a longer string arrived
            col[self._n : self._n + m] = values
        rows = np.arange(self._n, self._n + m)
        self.live[rows] = True
        self._n += m
        self.n_live += m
        return rows

    def kill(self, rows: np.ndarray) -> None:
        self.live[rows] = False
        self.n_live -= len(rows)

    def expire(self, time_column: str, cutoff: int) -> np.ndarray:
        """Kill the live rows with ``time < cutoff``; their row numbers."""
        rows = np.flatnonzero(self.live[: self._n] & (self._cols[time_column][: self._n] < cutoff))
        self.kill(rows)
        return rows

    def compact(self) -> np.ndarray | None:
        """If dead rows outnumber live ones, drop them; the live rows' new numbers (in order)."""
        if self._n - self.n_live <= max(self.n_live, 1024):
            return None
        keep = self.live_rows()
        for name, col in self._cols.items():
            self._cols[name] = _grown(col[keep], len(keep), max(1024, 2 * len(keep)))
        self.live = _grown(np.ones(len(keep), dtype=bool), len(keep), max(1024, 2 * len(keep)))
        self._n = self.n_live = len(keep)
        return np.arange(len(keep))


def _grown(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[:used] = array[:used]
    return out


# ---------------------------------------------------------------- the join

# What the index holds for a fingerprint: code = payload * 4 + tag.
_GONE, _PREDICTION, _LABEL, _JOINED = 0, 1, 2, 3  # payload: -, row, row, max(event, label) time


class LabelJoin:
    """The late-label join of one partition; see the module docstring for its semantics.

    `input_names` fixes the column order of the outcomes' input matrix and `slice_names` the
    slice columns carried from predictions to outcomes. One index maps every event id the
    state knows to what it is: an unlabelled prediction, an early label, a joined pair, or
    nothing any more; so each record costs one lookup and one update of it.
    """

    def __init__(
        self,
        input_names: Sequence[str] = (),
        slice_names: Sequence[str] = (),
        horizon_ms: int = DEFAULT_HORIZON_MS,
    ) -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
        self.input_names = tuple(input_names)
        self.slice_names = tuple(slice_names)
        self.horizon_ms = int(horizon_ms)
        u, i8, f8, h = (np.dtype(t) for t in ("<U1", np.int64, np.float64, np.uint64))
        self._predictions = _Rows(
            {
                "h1": (h, ()),
                "h2": (h, ()),
                "event_id": (u, ()),
                "event_time_ms": (i8, ()),
                "score": (f8, ()),
                "decision": (np.dtype(bool), ()),
                "model_name": (u, ()),
                "model_version": (i8, ()),
                "arm": (u, ()),
                "latency_ms": (f8, ()),
                "inputs": (f8, (len(self.input_names),)),
                **{f"slice.{s}": (u, ()) for s in self.slice_names},
            }
        )
        self._labels = _Rows(
            {"h1": (h, ()), "h2": (h, ()), "event_id": (u, ()), "label": (i8, ()),
             "label_time_ms": (i8, ())}
        )
        self._index = IdIndex()
        self._purged_at = NO_TIME  # the cutoff when the index last dropped forgotten ids
        self._watermark = NO_TIME
        self._batches = 0
        self.totals = JoinCounts()

    @property
    def watermark_ms(self) -> int:
        return self._watermark

    @property
    def state_rows(self) -> dict[str, int]:
        """Retained unlabelled predictions and early labels, and the event ids the index holds
        (those two, the joined pairs, and ids forgotten within the last eighth of a horizon)."""
        return {
            "predictions": self._predictions.n_live,
            "labels": self._labels.n_live,
            "ids": len(self._index),
        }

    @property
    def state_bytes(self) -> int:
        """Memory held by the state's arrays (allocated capacity)."""
        return self._predictions.nbytes + self._labels.nbytes + self._index.nbytes

    def _cutoff(self) -> int:
        return self._watermark - self.horizon_ms

    def process(self, predictions: PredictionBatch, labels: LabelBatch) -> JoinResult:
        """Join one batch of each stream; return its outcomes, counters and state delta."""
        cutoff = self._cutoff()
        pred_cols = self._prediction_columns(predictions)
        label_cols = _label_columns(labels)
        p_tag, p_val = self._lookup(pred_cols["h1"], pred_cols["h2"])
        l_tag, l_val = self._lookup(label_cols["h1"], label_cols["h2"])
        joined_p = (p_tag == _JOINED) & (p_val >= cutoff)
        joined_l = (l_tag == _JOINED) & (l_val >= cutoff)
        p_new = np.flatnonzero(
            _first_occurrence(pred_cols["h1"], pred_cols["h2"]) & (p_tag != _PREDICTION)
            & ~joined_p
        )
        l_new = np.flatnonzero(
            _first_occurrence(label_cols["h1"], label_cols["h2"]) & (l_tag != _LABEL) & ~joined_l
        )
        pred_cols = {n: c[p_new] for n, c in pred_cols.items()}
        label_cols = {n: c[l_new] for n, c in label_cols.items()}
        p_time, l_time = pred_cols["event_time_ms"], label_cols["label_time_ms"]

        # A new label meets a retained prediction (a) or a new one (c), never both: that one
        # would have been a duplicate. A new prediction may meet a retained early label (b).
        in_batch = IdIndex()
        in_batch.put(pred_cols["h1"], pred_cols["h2"], np.arange(len(p_new)))
        c_pos = in_batch.get(label_cols["h1"], label_cols["h2"])
        a_row = np.where(l_tag[l_new] == _PREDICTION, l_val[l_new], -1)
        b_row = np.where(p_tag[p_new] == _LABEL, p_val[p_new], -1)
        horizon = self.horizon_ms
        a_ok = a_row >= 0
        a_pred = self._predictions.take(a_row[a_ok])
        a_ok[a_ok] = np.abs(l_time[a_ok] - a_pred["event_time_ms"]) <= horizon
        a_pred = {n: c[a_ok[a_row >= 0]] for n, c in a_pred.items()}
        c_ok = c_pos >= 0
        c_ok[c_ok] = np.abs(l_time[c_ok] - p_time[c_pos[c_ok]]) <= horizon
        b_ok = b_row >= 0
        b_label = self._labels.take(b_row[b_ok])
        b_ok[b_ok] = np.abs(b_label["label_time_ms"] - p_time[b_ok]) <= horizon
        b_label = {n: c[b_ok[b_row >= 0]] for n, c in b_label.items()}

        outcome_pred = _concat_columns(
            [a_pred, {n: c[c_pos[c_ok]] for n, c in pred_cols.items()},
             {n: c[b_ok] for n, c in pred_cols.items()}]
        )
        outcome_label = _concat_columns(
            [{n: c[a_ok] for n, c in label_cols.items()},
             {n: c[c_ok] for n, c in label_cols.items()}, b_label]
        )
        outcomes = self._outcomes(outcome_pred, outcome_label)

        self._predictions.kill(a_row[a_ok])
        self._labels.kill(b_row[b_ok])
        p_keep = np.ones(len(p_new), dtype=bool)
        p_keep[c_pos[c_ok]] = False
        p_keep[b_ok] = False
        l_keep = ~(a_ok | c_ok)
        for times in (predictions.event_time_ms, labels.label_time_ms):
            if len(times):
                self._watermark = max(self._watermark, int(np.max(times)))
        joined = (
            outcome_pred["h1"],
            outcome_pred["h2"],
            np.maximum(outcome_pred["event_time_ms"], outcome_label["label_time_ms"]),
        )
        expired_p, expired_l, delta = self._commit(
            joined,
            {n: c[p_keep] for n, c in pred_cols.items()},
            {n: c[l_keep] for n, c in label_cols.items()},
        )
        counts = JoinCounts(
            joined=len(outcomes),
            duplicate_predictions=len(predictions) - len(p_new),
            duplicate_labels=len(labels) - len(l_new),
            predictions_expired=expired_p,
            labels_expired=expired_l,
        )
        self.totals = self.totals + counts
        self._batches += 1
        delta.update(self._header())
        return JoinResult(outcomes, counts, self._watermark, delta)

    def snapshot(self) -> dict[str, np.ndarray]:
        """All retained state as plain arrays (``np.savez`` without pickle)."""
        h1, h2, code = self._index.items()
        keep = np.flatnonzero(((code & 3) == _JOINED) & ((code >> 2) >= self._cutoff()))
        keep = keep[np.lexsort((h2[keep], h1[keep]))]  # slot order is an accident of history
        out = self._header(snapshot=True)
        out.update({"joined.h1": h1[keep], "joined.h2": h2[keep],
                    "joined.until_ms": code[keep] >> 2})
        out.update(_prefixed("predictions.", self._predictions.take(self._predictions.live_rows())))
        out.update(_prefixed("labels.", self._labels.take(self._labels.live_rows())))
        return out

    @classmethod
    def restore(
        cls,
        log: Sequence[Mapping[str, np.ndarray]],
        input_names: Sequence[str] = (),
        slice_names: Sequence[str] = (),
        horizon_ms: int = DEFAULT_HORIZON_MS,
    ) -> LabelJoin:
        """Rebuild from a snapshot followed by later `state_delta`s (or deltas from the start).

        Pieces carry the number of the batch they end with; a piece not newer than what is
        already applied (a delta the snapshot covers) is skipped, and a newer snapshot replaces
        what came before it, so overlapping logs are harmless.
        """
        join = cls(input_names, slice_names, horizon_ms)
        for piece in log:
            join._apply(piece)
        return join

    # ------------------------------------------------------------ internals

    def _lookup(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        code = self._index.get(h1, h2, default=_GONE)
        return code & 3, code >> 2

    def _commit(
        self,
        joined: tuple[np.ndarray, np.ndarray, np.ndarray],
        preds: Mapping[str, np.ndarray],
        labels: Mapping[str, np.ndarray],
    ) -> tuple[int, int, dict[str, np.ndarray]]:
        """Retain the batch's unmatched rows, expire what the watermark left behind and bring
        the index up to date; rows already joined must have been killed by the caller."""
        p_before, l_before = self._predictions.n_rows, self._labels.n_rows
        p_rows = self._predictions.append(preds)
        l_rows = self._labels.append(labels)
        cutoff = self._cutoff()
        p_old = self._predictions.expire("event_time_ms", cutoff)
        l_old = self._labels.expire("label_time_ms", cutoff)
        p_rows = p_rows[self._predictions.live[p_rows]]
        l_rows = l_rows[self._labels.live[l_rows]]
        # Rows from before this batch own their id's code; new ones get theirs now. A pair that
        # failed the delay check has both halves stored under one id until one of them expires,
        # in this very batch: a new survivor's code goes in last, an old one's is left alone.
        p_gone, l_gone = p_old[p_old < p_before], l_old[l_old < l_before]
        ids = [self._predictions.take(p_gone, ("h1", "h2")),
               self._labels.take(l_gone, ("h1", "h2")),
               {"h1": joined[0], "h2": joined[1]},
               self._predictions.take(p_rows, ("h1", "h2")),
               self._labels.take(l_rows, ("h1", "h2"))]
        codes = [np.full(len(p_gone) + len(l_gone), _GONE, dtype=np.int64),
                 joined[2] * 4 + _JOINED, p_rows * 4 + _PREDICTION, l_rows * 4 + _LABEL]
        h1 = np.concatenate([i["h1"] for i in ids])
        h2 = np.concatenate([i["h2"] for i in ids])
        last = _first_occurrence(h1[::-1], h2[::-1])[::-1]
        self._index.put(h1[last], h2[last], np.concatenate(codes)[last])
        delta = {"joined.h1": joined[0], "joined.h2": joined[1], "joined.until_ms": joined[2]}
        delta.update(_prefixed("predictions.", self._predictions.take(p_rows)))
        delta.update(_prefixed("labels.", self._labels.take(l_rows)))

        for rows, tag in ((self._predictions, _PREDICTION), (self._labels, _LABEL)):
            renumbered = rows.compact()
            if renumbered is not None:
                fp = rows.take(renumbered, ("h1", "h2"))
                self._index.put(fp["h1"], fp["h2"], renumbered * 4 + tag)
        if cutoff - self._purged_at >= self.horizon_ms // 8:
            # Forget ids that are gone or joined past the horizon (lookups ignore them anyway).
            h1, h2, code = self._index.items()
            tag = code & 3
            keep = (tag == _PREDICTION) | (tag == _LABEL) | ((tag == _JOINED)
                                                            & ((code >> 2) >= cutoff))
            self._index = IdIndex()
            self._index.put(h1[keep], h2[keep], code[keep])
            self._purged_at = cutoff
        return len(p_old), len(l_old), delta

    def _prediction_columns(self, batch: PredictionBatch) -> dict[str, np.ndarray]:
        inputs = np.asarray(batch.inputs, dtype=np.float64)
        if inputs.shape != (len(batch), len(self.input_names)):
            raise ValueError(
                f"prediction inputs have shape {inputs.shape}, the join expects "
                f"({len(batch)}, {len(self.input_names)}): columns {self.input_names}"
            )
        event_id = np.asarray(batch.event_id, dtype=str)
        h1, h2 = fingerprint(event_id)
        cols = {
            "h1": h1,
            "h2": h2,
            "event_id": event_id,
            "event_time_ms": np.asarray(batch.event_time_ms, dtype=np.int64),
            "score": np.asarray(batch.score, dtype=np.float64),
            "decision": np.asarray(batch.decision, dtype=bool),
            "model_name": np.asarray(batch.model_name, dtype=str),
            "model_version": np.asarray(batch.model_version, dtype=np.int64),
            "arm": np.asarray(batch.arm, dtype=str),
            "latency_ms": np.asarray(batch.latency_ms, dtype=np.float64),
            "inputs": inputs,
        }
        for s in self.slice_names:
            try:
                cols[f"slice.{s}"] = np.asarray(batch.slices[s], dtype=str)
            except KeyError:
                raise KeyError(f"prediction batch lacks slice column {s!r}") from None
        return cols

    def _outcomes(self, pred: dict[str, np.ndarray], label: dict[str, np.ndarray]) -> OutcomeBatch:
        order = _by_time_then_id(label["label_time_ms"], pred["event_id"])
        return OutcomeBatch(
            event_id=pred["event_id"][order],
            event_time_ms=pred["event_time_ms"][order],
            label_time_ms=label["label_time_ms"][order],
            score=pred["score"][order],
            decision=pred["decision"][order],
            label=label["label"][order],
            model_name=pred["model_name"][order],
            model_version=pred["model_version"][order],
            slices={s: pred[f"slice.{s}"][order] for s in self.slice_names},
            inputs=pred["inputs"][order],
            arm=pred["arm"][order],
            latency_ms=pred["latency_ms"][order],
        )

    def _header(self, snapshot: bool = False) -> dict[str, np.ndarray]:
        return {
            "format": np.array([STATE_FORMAT], dtype=np.int64),
            "snapshot": np.array([snapshot]),  # the whole state, not a change to it
            "horizon_ms": np.array([self.horizon_ms], dtype=np.int64),
            "input_names": np.array(self.input_names, dtype=str).reshape(-1),
            "slice_names": np.array(self.slice_names, dtype=str).reshape(-1),
            "batch": np.array([self._batches], dtype=np.int64),
            "watermark_ms": np.array([self._watermark], dtype=np.int64),
            "purged_at_ms": np.array([self._purged_at], dtype=np.int64),
            "totals": np.array(self.totals.as_tuple(), dtype=np.int64),
        }

    def _apply(self, piece: Mapping[str, np.ndarray]) -> None:
        found = int(piece["format"][0])
        if found != STATE_FORMAT:
            why = f" ({_FORMAT_CHANGES[found]})" if found in _FORMAT_CHANGES else ""
            raise ValueError(f"label-join state format {found} is not {STATE_FORMAT}; it "
                             f"cannot be restored by this version{why}")
        stored = (tuple(piece["input_names"].tolist()), tuple(piece["slice_names"].tolist()),
                  int(piece["horizon_ms"][0]))
        if stored != (self.input_names, self.slice_names, self.horizon_ms):
            raise ValueError(f"state was written for (inputs, slices, horizon) {stored}, not "
                             f"{(self.input_names, self.slice_names, self.horizon_ms)}")
        batch = int(piece["batch"][0])
        if batch <= self._batches:
            return
        if bool(piece["snapshot"][0]) and self._batches:
            self.__dict__.update(LabelJoin(*stored).__dict__)  # a snapshot replaces everything
        joined = (np.asarray(piece["joined.h1"]), np.asarray(piece["joined.h2"]),
                  np.asarray(piece["joined.until_ms"]))
        tag, row = self._lookup(joined[0], joined[1])
        self._predictions.kill(row[tag == _PREDICTION])
        self._labels.kill(row[tag == _LABEL])
        self._watermark = max(self._watermark, int(piece["watermark_ms"][0]))

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: np.asarray(v) for k, v in piece.items()
                    if k.startswith(prefix)}

        self._commit(joined, part("predictions."), part("labels."))
        self._purged_at = int(piece["purged_at_ms"][0])
        self.totals = JoinCounts(*(int(v) for v in piece["totals"]))
        self._batches = batch


def rows_by_model(
    names: np.ndarray, versions: np.ndarray
) -> list[tuple[tuple[str, int], np.ndarray]]:
    """(model name, version) -> its rows in batch order, for each pair present, sorted by
    (name, version): how the monitor's detectors split a batch of predictions or outcomes."""
    if not len(names):
        return []
    name_u, name_i = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    version_u, version_i = np.unique(np.asarray(versions, dtype=np.int64), return_inverse=True)
    code = name_i.astype(np.int64) * len(version_u) + version_i
    order = np.argsort(code, kind="stable")
    codes, starts = np.unique(code[order], return_index=True)
    groups = np.split(order, starts[1:])
    return [((str(name_u[c // len(version_u)]), int(version_u[c % len(version_u)])), rows)
            for c, rows in zip(codes.tolist(), groups, strict=True)]


def _prefixed(prefix: str, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {prefix + name: col for name, col in columns.items()}


def _by_time_then_id(time: np.ndarray, event_id: np.ndarray) -> np.ndarray:
    """The order by (time, event_id); strings are compared only within equal times."""
    order = np.argsort(time, kind="stable")
    t = time[order]
    tied = np.concatenate([[False], t[1:] == t[:-1]])
    if tied.any():
        tied[:-1] |= tied[1:]  # both members of each equal pair
        rows = np.flatnonzero(tied)
        order[rows] = order[rows][np.lexsort((event_id[order[rows]], t[rows]))]
    return order


def _first_occurrence(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """True for the first occurrence (in order) of each fingerprint."""
    first = np.zeros(len(h1), dtype=bool)
    if len(h1):
        order = np.argsort(h1, kind="stable")  # equal keys stay in arrival order
        a, b = h1[order], h2[order]
        same = (a[1:] == a[:-1]) & (b[1:] == b[:-1])
        if np.any((a[1:] == a[:-1]) & (b[1:] != b[:-1])):  # a 64-bit collision: sort by both
            order = np.lexsort((np.arange(len(h1)), h2, h1))
            a, b = h1[order], h2[order]
            same = (a[1:] == a[:-1]) & (b[1:] == b[:-1])
        first[order[np.concatenate([[True], ~same])]] = True
    return first


def _label_columns(batch: LabelBatch) -> dict[str, np.ndarray]:
    event_id = np.asarray(batch.event_id, dtype=str)
    h1, h2 = fingerprint(event_id)
    return {
        "h1": h1,
        "h2": h2,
        "event_id": event_id,
        "label": np.asarray(batch.label, dtype=np.int64),
        "label_time_ms": np.asarray(batch.label_time_ms, dtype=np.int64),
    }


def _concat_columns(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _str(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=str)


def _fill_rollout_defaults(batch: PredictionBatch | OutcomeBatch) -> None:
    """Give a batch built without `arm` or `latency_ms` the schema's default in every row."""
    n = len(batch.event_id)
    if batch.arm is None:
        object.__setattr__(batch, "arm", np.full(n, DEFAULT_ARM))
    if batch.latency_ms is None:
        object.__setattr__(batch, "latency_ms", np.full(n, DEFAULT_LATENCY_MS))
