"""A retraining job's data: one model's labelled outcomes as feature rows, labels and a time split.

The monitor stores every prediction it joined with its delayed label as an *outcome* (``offline/
outcomes``): the prediction's logged inputs, the label, the event and label times, the slices.
`build_retraining_data` turns those columns into training and holdout rows.

**Point in time.** The inputs are exactly the values the scorer logged with its prediction: the
features as they stood when the event was scored, not recomputed later from fuller history. A
retrained model therefore learns from what serving saw and will see again (no leakage from the
future, no training/serving skew). The only later fact joined to a row is its label. One bias
remains by construction: the newest events are present only if their label has already
arrived, so the holdout leans towards events whose labels come quickly.

The rules, in the order applied (``dropped`` counts the rows each one removes):

1. ``other_model``: rows of another model are dropped;
2. ``before_since``: with ``since_ms``, rows whose event time is before it are dropped;
3. ``invalid_label``: rows whose label is missing or not 0/1 are dropped;
4. ``duplicate``: the upstream is at-least-once, so an event may have several outcomes: the one
   with the earliest ``label_time`` is kept, the first in input order on a tie (the label
   join's rule: an event's first label is *the* label);
5. the rows are sorted by (event time, event id);
6. ``beyond_max_rows``: only the ``max_rows`` most recent rows are kept;
7. the most recent ``holdout_fraction`` of them is the holdout, the rest trains. It is a time
   split: no holdout row is older than a training row (rows of the same millisecond may straddle
   the cut).

Feature values are rounded to float32, as the ONNX model receives them, so a trained model and
its export split on the same values. NaN stands for a null input. Pure numpy: columns in,
arrays out.

>>> data = build_retraining_data({
...     "event_id": ["a", "b", "b", "c", "d"], "event_time": [4, 1, 1, 2, 3],
...     "label_time": [9, 7, 5, 8, 9], "label": [1, 0, 1, 0, 1],
...     "model_name": ["fraud"] * 4 + ["other"], "amount": [4.0, 1.0, 1.5, 2.0, 3.0]},
...     model_name="fraud", feature_names=["amount"], max_rows=10, holdout_fraction=0.34)
>>> data.event_id.tolist(), data.y.tolist()  # "b" keeps its first label (label_time 5)
(['b', 'c', 'a'], [1, 0, 1])
>>> data.n_train, data.n_holdout, data.training_range, data.holdout_range
(2, 1, (1, 2), (4, 4))
>>> data.dropped
{'other_model': 1, 'before_since': 0, 'invalid_label': 0, 'duplicate': 1, 'beyond_max_rows': 0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

OTHER_MODEL, BEFORE_SINCE, INVALID_LABEL = "other_model", "before_since", "invalid_label"
DUPLICATE, BEYOND_MAX_ROWS = "duplicate", "beyond_max_rows"
DROP_REASONS = (OTHER_MODEL, BEFORE_SINCE, INVALID_LABEL, DUPLICATE, BEYOND_MAX_ROWS)

# The outcome columns every rule needs, besides one per feature and one per slice.
REQUIRED_COLUMNS = ("event_id", "event_time", "label_time", "label", "model_name")


@dataclass(frozen=True)
class RetrainingData:
    """One model's usable outcomes in (event time, event id) order: rows ``[:n_train]`` train,
    rows ``[n_train:]`` are the holdout."""

    feature_names: tuple[str, ...]
    X: np.ndarray  # float64 (rows, features) in feature_names order, float32-rounded, NaN = null
    y: np.ndarray  # int64 0/1
    event_time_ms: np.ndarray  # int64, non-decreasing
    event_id: np.ndarray  # str (object)
    slices: dict[str, np.ndarray]  # per slice name: str per row (object), None where missing
    n_train: int
    read: int  # outcome rows read, before any rule
    dropped: dict[str, int]  # rows removed per reason, in DROP_REASONS order

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_holdout(self) -> int:
        return len(self.y) - self.n_train

    @property
    def train(self) -> slice:
        return slice(0, self.n_train)

    @property
    def holdout(self) -> slice:
        return slice(self.n_train, len(self.y))

    @property
    def training_range(self) -> tuple[int, int] | None:
        """First and last training event time (epoch ms); None without training rows."""
        return _range(self.event_time_ms[self.train])

    @property
    def holdout_range(self) -> tuple[int, int] | None:
        return _range(self.event_time_ms[self.holdout])

    def rows(self) -> dict[str, Any]:
        """``{"read", "train", "holdout", "dropped": {reason: count}}``, JSON-ready."""
        return {"read": self.read, "train": self.n_train, "holdout": self.n_holdout,
                "dropped": dict(self.dropped)}


def build_retraining_data(
    columns: Mapping[str, ArrayLike], *, model_name: str, feature_names: Sequence[str],
    slice_names: Sequence[str] = (), since_ms: int | None = None, max_rows: int,
    holdout_fraction: float,
) -> RetrainingData:
    """Apply the module's rules to outcome ``columns`` (name -> one value per row).

    ``columns`` needs ``event_id``, ``event_time``, ``label_time``, ``label``, ``model_name``,
    one column per name in ``feature_names`` (numbers, None or NaN where null) and one per name
    in ``slice_names``; other columns are ignored. Raises ``ValueError`` naming any missing
    column, or for ``max_rows < 1`` or a ``holdout_fraction`` outside [0, 1).
    """
    names = tuple(feature_names)
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    missing = [c for c in (*REQUIRED_COLUMNS, *names, *slice_names) if c not in columns]
    if missing:
        raise ValueError(f"the outcomes lack the column(s) {', '.join(missing)}")
    n = len(columns["event_id"])
    lengths = {c: len(columns[c]) for c in (*REQUIRED_COLUMNS, *names, *slice_names)}
    if set(lengths.values()) != {n}:
        raise ValueError(f"outcome columns differ in length: {lengths}")

    dropped = dict.fromkeys(DROP_REASONS, 0)
    rows = np.arange(n)

    def keep(mask: np.ndarray, reason: str) -> None:
        nonlocal rows
        dropped[reason] += int(np.count_nonzero(~mask))
        rows = rows[mask]

    model = np.asarray(columns["model_name"], dtype=object)
    keep(model[rows] == model_name, OTHER_MODEL)
    event_time = _int64(columns["event_time"], "event_time")
    if since_ms is not None:
        keep(event_time[rows] >= since_ms, BEFORE_SINCE)
    label = _float64(columns["label"])
    keep((label[rows] == 0) | (label[rows] == 1), INVALID_LABEL)

    # Duplicates: sorted by (event id, label time), the first row of each event id stays.
    event_id = np.asarray(columns["event_id"]).astype(str)
    label_time = _int64(columns["label_time"], "label_time")
    order = rows[np.lexsort((label_time[rows], event_id[rows]))]
    first = np.r_[True, event_id[order][1:] != event_id[order][:-1]] if len(order) else \
        np.zeros(0, dtype=bool)
    dropped[DUPLICATE] += int(np.count_nonzero(~first))
    rows = order[first]

    rows = rows[np.lexsort((event_id[rows], event_time[rows]))]
    keep(np.arange(len(rows)) >= len(rows) - max_rows, BEYOND_MAX_ROWS)

    X = np.empty((len(rows), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        X[:, j] = _float64(columns[name])[rows]
    # Rounded to float32 as served, so the trained model and its ONNX export agree.
    X = X.astype(np.float32).astype(np.float64)
    slices = {s: _strings(columns[s])[rows] for s in slice_names}
    n_train = len(rows) - int(round(len(rows) * holdout_fraction))
    return RetrainingData(
        feature_names=names, X=X, y=label[rows].astype(np.int64),
        event_time_ms=event_time[rows], event_id=event_id[rows].astype(object), slices=slices,
        n_train=n_train, read=n, dropped=dropped)


def _range(times: np.ndarray) -> tuple[int, int] | None:
    return (int(times[0]), int(times[-1])) if len(times) else None


def _int64(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        as_float = array.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.floor(as_float)):
            raise ValueError(f"column {name} must hold whole numbers (epoch ms)")
        array = as_float
    return array.astype(np.int64)


def _float64(values: ArrayLike) -> np.ndarray:
    """Numbers as float64, None (a Parquet null) as NaN."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.array([np.nan if v is None else v for v in array.tolist()], dtype=np.float64)
    return array.astype(np.float64)


def _strings(values: ArrayLike) -> np.ndarray:
    """Slice values as str (object array), None kept as missing."""
    return np.array([None if v is None else str(v) for v in np.asarray(values, dtype=object)],
                    dtype=object)
