"""Reference profiles: bins from training data, vectorised window counts, merging, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftline.core.monitoring.profile import (
    FEATURE,
    LABEL,
    SCORE,
    SLICE,
    CategoricalBins,
    Histogram,
    LabelBins,
    NumericBins,
    ReferenceProfile,
)


def _independent_numeric_index(edges: list[float], values: np.ndarray) -> np.ndarray:
    """Right-closed bins by explicit comparisons: bin i holds edges[i-1] < x <= edges[i]."""
    out = []
    for x in values.tolist():
        if x != x:
            out.append(len(edges) + 1)
        else:
            out.append(sum(1 for e in edges if x > e))
    return np.array(out)


def test_numeric_edges_are_training_quantiles_and_bins_hold_a_tenth_each():
    bins = NumericBins.from_values(np.arange(100.0))
    assert bins.edges == (9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0)
    hist = Histogram(bins).count(np.arange(100.0))
    assert hist.counts.tolist() == [10] * 10 + [0]
    assert hist.missing == 0 and hist.total == 100


def test_outer_bins_are_open_and_missing_values_have_their_own_bin():
    hist = Histogram(NumericBins((0.0, 1.0)))
    counted = hist.count(np.array([-1e300, -np.inf, 0.0, 0.5, 1.0, 1.0000001, np.inf, np.nan]))
    # (-inf, 0] gets -1e300, -inf and 0 itself (right-closed); (0, 1] gets 0.5 and 1.
    assert counted.counts.tolist() == [3, 2, 2, 1]
    assert hist.count([1.5, None]).counts.tolist() == [0, 0, 1, 1]
    assert NumericBins((0.0, 1.0)).labels() == ["(-inf, 0]", "(0, 1]", "(1, inf)", "missing"]


def test_tied_quantiles_collapse_and_no_bin_is_empty_in_training():
    values = np.array([0.0] * 60 + [1.0] * 30 + [2.0] * 10)
    bins = NumericBins.from_values(values)
    assert bins.edges == (0.0, 1.0)
    assert Histogram(bins).count(values).counts.tolist() == [60, 30, 10, 0]
    constant = NumericBins.from_values(np.full(50, 3.0))
    assert constant.edges == () and constant.n_bins == 2
    assert NumericBins.from_values([np.nan, np.inf]).edges == ()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_binning_equals_explicit_comparisons(seed):
    rng = np.random.default_rng(seed)
    training = np.round(rng.lognormal(2.0, 1.0, size=5_000), 1)  # ties on purpose
    bins = NumericBins.from_values(training, bins=10)
    window = np.concatenate([np.round(rng.lognormal(2.5, 1.2, size=2_000), 1),
                             [np.nan, np.inf, -np.inf], np.array(bins.edges)])
    expected = _independent_numeric_index(list(bins.edges), window)
    assert np.array_equal(bins.index(window), expected)
    counts = np.bincount(expected, minlength=bins.n_bins)
    assert Histogram(bins).count(window).counts.tolist() == counts.tolist()
    # Every bin of the reference holds training data (none is empty by construction).
    assert np.all(Histogram(bins).count(training).counts[:-1] > 0)


def test_categorical_bins_pool_rare_categories_and_count_unseen_and_missing():
    values = ["pos"] * 600 + ["online"] * 300 + ["atm"] * 95 + ["kiosk"] * 5
    bins = CategoricalBins.from_values(values, max_categories=30, min_share=0.01)
    assert bins.categories == ("pos", "online", "atm")  # most frequent first
    assert bins.other == ("kiosk",)  # 0.5% < min_share: pooled
    assert bins.labels() == ["pos", "online", "atm", "other", "unseen", "missing"]
    window = Histogram(bins).count(
        np.array(["atm", "kiosk", "web", "web", None, "", float("nan"), "pos"], dtype=object))
    assert window.counts.tolist() == [1, 0, 1, 1, 2, 3]
    assert window.unseen == 2 and window.missing == 3
    capped = CategoricalBins.from_values(values, max_categories=2, min_share=0.0)
    assert capped.categories == ("pos", "online") and capped.other == ("atm", "kiosk")


def test_label_bins_count_negatives_positives_and_missing_and_refuse_other_values():
    hist = Histogram(LabelBins()).count(np.array([0, 1, 1, None, True, False], dtype=object))
    assert hist.counts.tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match="0 or 1"):
        Histogram(LabelBins()).count([0, 2])


def _training(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    amount = rng.lognormal(3.0, 0.8, size=n)
    amount[rng.random(n) < 0.03] = np.nan
    return {
        "amount": amount,
        "count": rng.poisson(2.0, size=n).astype(float),
        "score": rng.beta(1, 8, size=n),
        "channel": rng.choice(np.array(["pos", "online", "atm"]), size=n, p=[0.6, 0.3, 0.1]),
        "label": (rng.random(n) < 0.05).astype(int),
    }


def _profile(columns: dict[str, np.ndarray]) -> ReferenceProfile:
    return ReferenceProfile.from_columns(
        {"amount": columns["amount"], "count": columns["count"]}, score=columns["score"],
        slices={"channel": columns["channel"]}, label=columns["label"])


def test_a_profile_holds_every_subject_with_its_kind_and_counts_every_row():
    columns = _training(np.random.default_rng(5), 4_000)
    profile = _profile(columns)
    assert [(s.name, s.kind) for s in profile] == [
        ("amount", FEATURE), ("count", FEATURE), ("score", SCORE), ("channel", SLICE),
        ("label", LABEL)]
    assert profile.rows == 4_000
    assert all(s.histogram.total == 4_000 for s in profile)
    assert profile["amount"].histogram.missing == int(np.isnan(columns["amount"]).sum()) > 0
    assert profile["label"].histogram.counts[1] == columns["label"].sum()
    with pytest.raises(KeyError, match="nope"):
        profile["nope"]
    with pytest.raises(ValueError, match="differ in length"):
        ReferenceProfile.from_columns({"a": [1.0, 2.0]}, score=[0.5])


def test_counts_from_two_partitions_merge_into_the_counts_of_their_union():
    rng = np.random.default_rng(6)
    profile = _profile(_training(rng, 5_000))
    live = _training(rng, 3_000)
    cut = 1_234
    part_a = profile.recount({k: v[:cut] for k, v in live.items()})
    part_b = profile.recount({k: v[cut:] for k, v in live.items()})
    union = profile.recount(live)
    assert part_a.merge(part_b) == union
    assert union.rows == 3_000
    # Batch by batch on one histogram is the same as well.
    hist = Histogram(profile["amount"].histogram.bins)
    for start in range(0, 3_000, 700):
        hist = hist.add(live["amount"][start:start + 700])
    assert hist == union["amount"].histogram
    other = ReferenceProfile.from_columns({"amount": live["amount"]})["amount"].histogram
    with pytest.raises(ValueError, match="different bins"):
        hist.merge(other)


def test_json_round_trip_is_exact_and_the_fingerprint_is_stable():
    columns = _training(np.random.default_rng(7), 2_000)
    columns["amount"][:5] = [0.1 + 0.2, 1e-300, 123456789.123456789, 2.0 / 3.0, 1e300]
    profile = _profile(columns)
    text = json.dumps(profile.to_json(), sort_keys=True)
    back = ReferenceProfile.from_json(json.loads(text))
    assert back == profile
    assert back["amount"].histogram.bins.edges == profile["amount"].histogram.bins.edges
    assert back.fingerprint() == profile.fingerprint()
    assert profile.recount(columns).fingerprint() == profile.fingerprint()
    changed = profile.recount({k: v[:100] for k, v in columns.items()})
    assert changed.fingerprint() != profile.fingerprint()
    with pytest.raises(ValueError, match="format"):
        ReferenceProfile.from_json({"format": "something/else", "subjects": []})


def test_select_keeps_the_named_subjects_in_order():
    profile = _profile(_training(np.random.default_rng(8), 500))
    assert profile.select(["label", "amount"]).names == ["label", "amount"]
