"""A retraining job's dataset: filters, de-duplication, event-time order, max_rows, time split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.core.retraining.dataset import DROP_REASONS, build_retraining_data

FEATURES = ("amount", "count")


def outcomes(n: int, *, seed: int = 0, model: str = "fraud") -> dict[str, np.ndarray]:
    """`n` distinct outcomes of `model` in shuffled order; event ids encode the row."""
    rng = np.random.default_rng(seed)
    times = 1_000 + rng.permutation(n).astype(np.int64) * 10
    return {
        "event_id": np.array([f"e{i:05d}" for i in range(n)], dtype=object),
        "event_time": times,
        "label_time": times + rng.integers(1, 500, n),
        "label": rng.integers(0, 2, n),
        "model_name": np.array([model] * n, dtype=object),
        "model_version": np.ones(n, dtype=np.int64),
        "score": rng.random(n),
        "segment": np.array(rng.choice(["a", "b"], n), dtype=object),
        "amount": rng.normal(100, 30, n),
        "count": rng.integers(0, 5, n).astype(np.float64),
    }


def build(columns, **kw):
    args = {"model_name": "fraud", "feature_names": FEATURES, "slice_names": ("segment",),
            "max_rows": 10_000, "holdout_fraction": 0.25} | kw
    return build_retraining_data(columns, **args)


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_rows_are_in_event_time_order_with_features_in_view_order():
    cols = outcomes(200)
    data = build(cols)
    assert len(data) == 200 and data.read == 200
    assert np.all(np.diff(data.event_time_ms) >= 0)
    by_id = {e: i for i, e in enumerate(cols["event_id"])}
    rows = [by_id[e] for e in data.event_id]
    np.testing.assert_array_equal(data.y, cols["label"][rows])
    np.testing.assert_array_equal(data.slices["segment"], cols["segment"][rows])
    # Column order follows feature_names, whatever the mapping's order.
    swapped = build(cols, feature_names=("count", "amount"))
    np.testing.assert_array_equal(swapped.X, data.X[:, ::-1])
    assert data.X.dtype == np.float64 and data.y.dtype == np.int64
    assert data.dropped == dict.fromkeys(DROP_REASONS, 0)


def test_features_are_float32_rounded_and_nulls_are_nan():
    cols = outcomes(4)
    cols["amount"] = np.array([0.1, None, 1e-3, 12345.6789], dtype=object)
    data = build(cols, holdout_fraction=0.0)
    by_id = dict(zip(data.event_id, data.X[:, 0], strict=True))
    assert np.isnan(by_id["e00001"])
    assert by_id["e00000"] == float(np.float32(0.1)) != 0.1
    assert by_id["e00003"] == float(np.float32(12345.6789))


def test_other_models_and_rows_before_since_are_dropped_and_counted():
    mine, other = outcomes(100, seed=1), outcomes(30, seed=2, model="other")
    other["event_id"] = np.array([f"x{i}" for i in range(30)], dtype=object)
    since = int(np.sort(mine["event_time"])[40])
    data = build(concat(mine, other), since_ms=since)
    assert data.read == 130 and len(data) == 60
    assert data.dropped["other_model"] == 30 and data.dropped["before_since"] == 40
    assert data.event_time_ms.min() == since
    assert not any(e.startswith("x") for e in data.event_id)


def test_a_duplicated_event_keeps_its_first_label_by_label_time():
    cols = outcomes(50, seed=3)
    again = {k: v[:10].copy() for k, v in cols.items()}
    again["label"] = 1 - again["label"]
    # Five redeliveries carry an earlier label_time (theirs is the first label), five a later.
    again["label_time"][:5] -= 1_000
    again["label_time"][5:] += 1_000
    data = build(concat(again, cols))  # the duplicates come first in the input
    assert len(data) == 50 and data.dropped["duplicate"] == 10
    label = dict(zip(data.event_id, data.y, strict=True))
    for i in range(10):
        expected = again["label"][i] if i < 5 else cols["label"][i]
        assert label[cols["event_id"][i]] == expected


def test_max_rows_keeps_the_most_recent():
    cols = outcomes(100, seed=4)
    data = build(cols, max_rows=30)
    assert len(data) == 30 and data.dropped["beyond_max_rows"] == 70
    np.testing.assert_array_equal(data.event_time_ms, np.sort(cols["event_time"])[-30:])


def test_the_holdout_is_the_most_recent_fraction():
    data = build(outcomes(101, seed=5), holdout_fraction=0.2)
    assert (data.n_train, data.n_holdout) == (81, 20)
    train, holdout = data.event_time_ms[data.train], data.event_time_ms[data.holdout]
    assert train.max() <= holdout.min()
    assert data.training_range == (int(train[0]), int(train[-1]))
    assert data.holdout_range == (int(holdout[0]), int(holdout[-1]))
    assert data.rows() == {"read": 101, "train": 81, "holdout": 20,
                           "dropped": dict.fromkeys(DROP_REASONS, 0)}


def test_ties_in_event_time_are_ordered_by_event_id():
    cols = outcomes(6)
    cols["event_time"] = np.array([5, 5, 5, 1, 1, 9])
    cols["event_id"] = np.array(["c", "a", "b", "z", "y", "m"], dtype=object)
    assert build(cols).event_id.tolist() == ["y", "z", "a", "b", "c", "m"]


def test_missing_or_invalid_labels_are_dropped_and_counted():
    cols = outcomes(10)
    cols["label"] = np.array([0, 1, None, 2, 1, 0, 1, float("nan"), 0, 1], dtype=object)
    data = build(cols)
    assert len(data) == 7 and data.dropped["invalid_label"] == 3
    assert set(data.y.tolist()) <= {0, 1}


def test_no_rows_gives_empty_data_without_ranges():
    empty = {k: v[:0] for k, v in outcomes(5).items()}
    data = build(empty)
    assert len(data) == 0 and data.X.shape == (0, 2)
    assert data.training_range is None and data.holdout_range is None
    data = build(outcomes(5, model="other"))
    assert len(data) == 0 and data.dropped["other_model"] == 5


def test_a_missing_column_is_named():
    cols = outcomes(5)
    del cols["count"], cols["label_time"]
    with pytest.raises(ValueError, match="label_time, count"):
        build(cols)
    with pytest.raises(ValueError, match="channel"):
        build(outcomes(5), slice_names=("segment", "channel"))


@pytest.mark.parametrize("kw", [{"max_rows": 0}, {"holdout_fraction": 1.0},
                                {"holdout_fraction": -0.1}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        build(outcomes(5), **kw)


@given(times=st.lists(st.integers(0, 20), min_size=0, max_size=60),
       fraction=st.floats(0.0, 0.9), max_rows=st.integers(1, 80),
       duplicates=st.integers(0, 10))
def test_split_properties_hold_for_any_input(times, fraction, max_rows, duplicates):
    n = len(times)
    cols = {
        "event_id": np.array([f"e{i}" for i in range(n)] + [f"e{i}" for i in
                                                            range(min(duplicates, n))],
                             dtype=object),
        "event_time": np.array(times + times[:min(duplicates, n)], dtype=np.int64),
        "label_time": np.arange(n + min(duplicates, n), dtype=np.int64),
        "label": np.zeros(n + min(duplicates, n), dtype=np.int64),
        "model_name": np.array(["fraud"] * (n + min(duplicates, n)), dtype=object),
        "amount": np.zeros(n + min(duplicates, n)),
        "count": np.zeros(n + min(duplicates, n)),
        "segment": np.array(["a"] * (n + min(duplicates, n)), dtype=object),
    }
    data = build(cols, max_rows=max_rows, holdout_fraction=fraction)
    assert len(data) == min(n, max_rows)
    assert data.read == len(data) + sum(data.dropped.values())
    assert len(set(data.event_id.tolist())) == len(data)
    train, holdout = data.event_time_ms[data.train], data.event_time_ms[data.holdout]
    if len(train) and len(holdout):
        assert train.max() <= holdout.min()  # no holdout row is older than a training row
    assert np.all(np.diff(data.event_time_ms) >= 0)
    assert data.n_holdout == round(len(data) * fraction)
