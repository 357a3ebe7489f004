"""Compiled loops over the row runs of a window read row by row (`aggregations._Selection`).

Each query's candidate rows are one contiguous run ``[lo, hi)`` of the sorted `RowTable`; a row
counts for the query unless it arrived after it (``seq > visible``: only ever a row of the
current batch). Expanding every run into a flat ``(query, row)`` list and reducing it with numpy
moved ~160 pairs an event through a dozen array passes on the demo stream, most of the engine's
time; these loops visit each pair once, with no intermediate arrays.

Every function adds, compares and walks in exactly the order the numpy formulation did (the
rows of a run in table order, i.e. (event_time, seq) order; ``np.bincount`` adds its weights in
input order, ``np.maximum.reduceat`` folds from the left), with strict IEEE arithmetic (no
``fastmath``), so the values are bit for bit those of that formulation
(``tests/unit/features/test_kernels.py`` checks it on random runs). Numba compiles them on first
use and caches the machine code next to this file (``__pycache__``), so a process pays the
compilation once per machine, not per start.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "error_model": "numpy"}


@njit(**_JIT)
def count(lo, hi, seq, visible):  # pragma: no cover - compiled
    """Rows of each run with ``seq <= visible`` of its query."""
    out = np.zeros(len(lo), dtype=np.int64)
    for q in range(len(lo)):
        bound, c = visible[q], 0
        for r in range(lo[q], hi[q]):
            if seq[r] <= bound:
                c += 1
        out[q] = c
    return out


@njit(**_JIT)
def total(lo, hi, seq, visible, x):  # pragma: no cover - compiled
    """Sum of ``x`` over each query's visible rows, added in row order; 0.0 for none."""
    out = np.zeros(len(lo))
    for q in range(len(lo)):
        bound, s = visible[q], 0.0
        for r in range(lo[q], hi[q]):
            if seq[r] <= bound:
                s += x[r]
        out[q] = s
    return out


@njit(**_JIT)
def squared_deviations(lo, hi, seq, visible, x, mean):  # pragma: no cover - compiled
    """Sum of ``(x - mean[q])**2`` over each query's visible rows, in row order (the second
    pass of a two-pass variance); 0.0 for none."""
    out = np.zeros(len(lo))
    for q in range(len(lo)):
        bound, m, s = visible[q], mean[q], 0.0
        for r in range(lo[q], hi[q]):
            if seq[r] <= bound:
                d = x[r] - m
                s += d * d
        out[q] = s
    return out


@njit(**_JIT)
def extreme(lo, hi, seq, visible, x, greatest):  # pragma: no cover - compiled
    """Max (``greatest``) or min of ``x`` over each query's visible rows, folded from the left
    as ``np.maximum`` / ``np.minimum`` do (a NaN wins); NaN for none."""
    out = np.full(len(lo), np.nan)
    for q in range(len(lo)):
        bound, found, m = visible[q], False, np.nan
        for r in range(lo[q], hi[q]):
            if seq[r] <= bound:
                v = x[r]
                if not found:
                    m, found = v, True
                elif greatest:
                    if not (m >= v or m != m):
                        m = v
                elif not (m <= v or m != m):
                    m = v
        out[q] = m
    return out


@njit(**_JIT)
def last(lo, hi, seq, visible, x):  # pragma: no cover - compiled
    """``x`` of each query's last visible row (its greatest (event_time, seq)); NaN for none."""
    out = np.full(len(lo), np.nan)
    for q in range(len(lo)):
        bound = visible[q]
        for r in range(hi[q] - 1, lo[q] - 1, -1):
            if seq[r] <= bound:
                out[q] = x[r]
                break
    return out


@njit(**_JIT)
def distinct(lo, hi, seq, visible, codes):  # pragma: no cover - compiled
    """Distinct ``codes`` (int64 >= 0) among each query's visible rows: each code seen is
    stamped with the query that saw it last."""
    top = -1
    for q in range(len(lo)):
        for r in range(lo[q], hi[q]):
            top = max(top, codes[r])
    stamp = np.full(top + 1, -1, dtype=np.int64)
    out = np.zeros(len(lo))
    for q in range(len(lo)):
        bound, c = visible[q], 0
        for r in range(lo[q], hi[q]):
            if seq[r] <= bound:
                code = codes[r]
                if stamp[code] != q:
                    stamp[code] = q
                    c += 1
        out[q] = c
    return out


@njit(**_JIT)
def previous(lo, hi, seq, visible, own):  # pragma: no cover - compiled
    """Each query's last visible row other than its own event's (``seq == own``), -1 for none:
    the row `seconds_since_previous` measures from."""
    out = np.full(len(lo), -1, dtype=np.int64)
    for q in range(len(lo)):
        bound, mine = visible[q], own[q]
        for r in range(hi[q] - 1, lo[q] - 1, -1):
            if seq[r] <= bound and seq[r] != mine:
                out[q] = r
                break
    return out
