"""The pair helpers the long windows share: distinct pairs with each input's index among them,
and membership in a sorted set."""

from __future__ import annotations

import numpy as np

from driftline.core.features.slices import member, unique_pairs


def test_unique_pairs_are_sorted_and_every_input_finds_its_pair():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 7, 300)
    ua, ub, inverse = unique_pairs(a, b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    assert list(zip(ua.tolist(), ub.tolist(), strict=True)) == sorted(pairs)
    np.testing.assert_array_equal(ua[inverse], a)
    np.testing.assert_array_equal(ub[inverse], b)


def test_member_agrees_with_isin():
    rng = np.random.default_rng(5)
    values, sorted_set = rng.integers(-3, 40, 500), np.unique(rng.integers(0, 30, 12))
    np.testing.assert_array_equal(member(values, sorted_set), np.isin(values, sorted_set))
    assert not member(values, sorted_set[:0]).any()
