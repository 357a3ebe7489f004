"""The online store's value text: every double reads back bit for bit, NaN as ``nan``; a
batch's values are one comma-separated block, row by row."""

from __future__ import annotations

import numpy as np

from driftline.core.online import value_block


def value_texts(values: np.ndarray) -> list[str]:
    block = value_block(values).decode()
    return block.split(",") if block else []


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


def test_every_finite_double_reads_back_exactly():
    rng = np.random.default_rng(5)
    patterns = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 200_000,
                            dtype=np.int64, endpoint=True).view(np.float64)
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e16, 1e15,
                        9_999_999_999_999_998.0, 1e-5, 5e-5, 1e-4, 0.1, 1.7976931348623157e308,
                        -1.7976931348623157e308, 12.34, 123456789012345678.0])
    values = np.concatenate([special, patterns[np.isfinite(patterns)]])[:120_000].reshape(-1, 4)
    texts = value_texts(values)
    assert len(texts) == values.size
    np.testing.assert_array_equal(_bits(np.array([float(t) for t in texts])),
                                  _bits(values.ravel()))


def test_nan_is_written_nan_and_rows_stay_in_order():
    values = np.array([[1.5, np.nan, -0.0], [np.nan, 2.0, 3.25]])
    assert value_texts(values) == ["1.5", "nan", "-0.0", "nan", "2.0", "3.25"]
    assert value_texts(np.zeros((0, 3))) == [] and value_texts(np.zeros((2, 0))) == []


def test_an_infinity_is_written_as_python_writes_it():
    values = np.array([[np.inf, 1.0], [np.nan, -np.inf]])
    assert value_texts(values) == ["inf", "1.0", "nan", "-inf"]
    assert [float(t) for t in value_texts(values)][0] == np.inf
