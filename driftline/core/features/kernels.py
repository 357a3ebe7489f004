"""Compiled loops over the row runs of the engine's windows (`aggregations`).

Each query's candidate rows are one contiguous run ``[lo, hi)`` of the sorted `RowTable`; a row
counts for the query unless it arrived after it (``seq > visible``: only ever a row of the
current batch). Expanding every run into a flat ``(query, row)`` list and reducing it with numpy
moved ~160 pairs an event through a dozen array passes on the demo stream, most of the engine's
time; these loops visit each pair once, with no intermediate arrays. A long window's pieces
(`aggregations._Pieces`: row runs grouped by slice, cached slices) are aggregated and combined
the same way, as `slices.StatsPlan.compute` and the combination rules in `slices` define.

Every function adds, compares and walks in exactly the order the numpy formulation did (the
rows of a run in table order, i.e. (event_time, seq) order; ``np.bincount`` adds its weights in
input order, ``np.maximum.reduceat`` folds from the left), with strict IEEE arithmetic (no
``fastmath``), so the values are bit for bit those of that formulation
(``tests/unit/features/test_kernels.py`` checks the short-window loops on random runs; the
engine's oracle and bitwise-batching tests cover the long-window ones). Numba compiles them on first
use and caches the machine code next to this file (``__pycache__``), so a process pays the
compilation once per machine, not per start.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
_NO_SEQ = np.iinfo(np.int64).min  # a seq no row has: `_last_visible` skips nothing


@njit(**_JIT)
def _maximum(a, b):  # pragma: no cover - compiled
    """``np.maximum(a, b)``: `a` unless `b` is greater, or `b` is NaN and `a` is not."""
    return a if a >= b or a != a else b


@njit(**_JIT)
def _minimum(a, b):  # pragma: no cover - compiled
    """``np.minimum(a, b)``, the same way round."""
    return a if a <= b or a != a else b


@njit(**_JIT)
def _last_visible(a, b, seq, bound, skip):  # pragma: no cover - compiled
    """The last row of ``[a, b)`` with ``seq <= bound`` and ``seq != skip``; -1 for none."""
    for r in range(b - 1, a - 1, -1):
        if seq[r] <= bound and seq[r] != skip:
            return r
    return -1


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
                else:
                    m = _maximum(m, v) if greatest else _minimum(m, v)
        out[q] = m
    return out


@njit(**_JIT)
def last(lo, hi, seq, visible, x):  # pragma: no cover - compiled
    """``x`` of each query's last visible row (its greatest (event_time, seq)); NaN for none."""
    out = np.full(len(lo), np.nan)
    for q in range(len(lo)):
        r = _last_visible(lo[q], hi[q], seq, visible[q], _NO_SEQ)
        if r >= 0:
            out[q] = x[r]
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
    out = np.empty(len(lo), dtype=np.int64)
    for q in range(len(lo)):
        out[q] = _last_visible(lo[q], hi[q], seq, visible[q], own[q])
    return out


# -- long windows by slices (`aggregations._Pieces`) ----------------------------------------------
# A query's pieces, in order: its start edge (rows ``[lo1, hi1)``), its cached whole slices
# (cache entries ``[clo, chi)``), its tail (rows ``[lo2, hi2)``); rows are grouped into one piece
# per slice (``time // width``), invisible rows left out. A piece's aggregates are those of
# `slices.StatsPlan.compute`, and they combine in piece order as `_Pieces` defines.


@njit(**_JIT)
def _row_pieces(a, b, bound, seq, time, width, x, count, total, m2, low, high, final, k):
    """Append the pieces of rows ``[a, b)`` visible at `bound` to the piece buffers at `k`;
    returns the next free index."""
    r = a
    while r < b:
        if seq[r] > bound:
            r += 1
            continue
        piece = time[r] // width
        end = r
        while end < b and time[end] // width == piece:
            end += 1
        c, s, lo, hi, last = 0, 0.0, np.nan, np.nan, np.nan
        for i in range(r, end):
            if seq[i] <= bound:
                v = x[i]
                if c == 0:
                    lo, hi = v, v
                else:
                    lo, hi = _minimum(lo, v), _maximum(hi, v)
                c += 1
                s += v
                last = v
        mean, d2 = s / c, 0.0
        for i in range(r, end):
            if seq[i] <= bound:
                d = x[i] - mean
                d2 += d * d
        count[k], total[k], m2[k], low[k], high[k], final[k] = c, s, d2, lo, hi, last
        k += 1
        r = end
    return k


@njit(**_JIT)
def sliced(lo1, hi1, clo, chi, lo2, hi2, seq, visible, time, width, x,
           c_count, c_sum, c_m2, c_min, c_max, c_last):  # pragma: no cover - compiled
    """Per query, over its pieces: (count, sum, squared deviations from the mean, min, max,
    last) of field `x` (cache columns ``c_*`` of the same field; pass a `c_count`-long array
    for a statistic the cache does not keep: it is then read but not used meaningfully).
    The count is a float64 sum of the pieces' counts; the sum adds the pieces' sums in piece
    order from 0.0; the squared deviations add ``m2_p + n_p (mean_p - mean)**2`` likewise."""
    n = len(lo1)
    size = 1
    for q in range(n):
        size = max(size, (hi1[q] - lo1[q]) + (chi[q] - clo[q]) + (hi2[q] - lo2[q]))
    count = np.zeros(size, dtype=np.int64)
    total, m2 = np.zeros(size), np.zeros(size)
    low, high, final = np.zeros(size), np.zeros(size), np.zeros(size)
    out_count, out_sum, out_m2 = np.zeros(n), np.zeros(n), np.zeros(n)
    out_min, out_max, out_last = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for q in range(n):
        bound = visible[q]
        k = _row_pieces(lo1[q], hi1[q], bound, seq, time, width, x,
                        count, total, m2, low, high, final, 0)
        for e in range(clo[q], chi[q]):
            count[k], total[k], m2[k] = c_count[e], c_sum[e], c_m2[e]
            low[k], high[k], final[k] = c_min[e], c_max[e], c_last[e]
            k += 1
        k = _row_pieces(lo2[q], hi2[q], bound, seq, time, width, x,
                        count, total, m2, low, high, final, k)
        if k == 0:
            continue
        c, s = 0.0, 0.0
        for p in range(k):
            c += count[p]
            s += total[p]
        mean, d2 = s / c, 0.0
        lo, hi = low[0], high[0]
        for p in range(k):
            between = total[p] / count[p] - mean
            d2 += m2[p] + count[p] * between * between
            if p:
                lo, hi = _minimum(lo, low[p]), _maximum(hi, high[p])
        out_count[q], out_sum[q], out_m2[q] = c, s, d2
        out_min[q], out_max[q], out_last[q] = lo, hi, final[k - 1]
    return out_count, out_sum, out_m2, out_min, out_max, out_last


@njit(**_JIT)
def sliced_previous(lo1, hi1, clo, chi, lo2, hi2, seq, visible, own, time,
                    c_last_time, none):  # pragma: no cover - compiled
    """Per query, the greatest event time among its included rows other than its own event's:
    the last cached slice's last time against the last visible row of its tail (else of its
    edge) that is not its own; `none` where there is neither."""
    out = np.full(len(lo1), none, dtype=np.int64)
    for q in range(len(lo1)):
        best = c_last_time[chi[q] - 1] if chi[q] > clo[q] else none
        r = _last_visible(lo2[q], hi2[q], seq, visible[q], own[q])  # the tail's, else the edge's
        if r < 0:
            r = _last_visible(lo1[q], hi1[q], seq, visible[q], own[q])
        out[q] = max(best, time[r]) if r >= 0 else best
    return out


@njit(**_JIT)
def sliced_distinct(lo1, hi1, clo, chi, lo2, hi2, seq, visible, codes,
                    c_start, c_count, c_codes, top):  # pragma: no cover - compiled
    """Distinct codes (all below `top`) per query among its cached slices' codes and its
    visible rows'. Queries come sorted by (entity, time), so neighbours mostly read the same
    run of cache entries: a run's codes are stamped once and shared until the run changes."""
    n = len(lo1)
    in_run = np.full(top, -1, dtype=np.int64)
    in_query = np.full(top, -1, dtype=np.int64)
    out = np.zeros(n)
    run, run_size, run_lo, run_hi = -1, 0, -1, -1
    for q in range(n):
        if run < 0 or clo[q] != run_lo or chi[q] != run_hi:
            run, run_size, run_lo, run_hi = run + 1, 0, clo[q], chi[q]
            for e in range(run_lo, run_hi):
                for i in range(c_start[e], c_start[e] + c_count[e]):
                    code = c_codes[i]
                    if in_run[code] != run:
                        in_run[code] = run
                        run_size += 1
        c, bound = run_size, visible[q]
        for a, b in ((lo1[q], hi1[q]), (lo2[q], hi2[q])):
            for r in range(a, b):
                if seq[r] <= bound:
                    code = codes[r]
                    if in_run[code] != run and in_query[code] != q:
                        in_query[code] = q
                        c += 1
        out[q] = c
    return out
