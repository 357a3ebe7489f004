"""Compiled loops over Avro single-object FeatureRecords: writing a batch of them into one
buffer, and reading the values maps the array reader cannot settle (those with nulls).

Both walk bytes one record at a time, which numpy can only do with a pass per field and per
case; numba compiles them on first use and caches the machine code next to this file. They
touch no Python object and release the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
_SEVEN_BITS = np.uint64(0x7F)
_SEVEN = np.uint64(7)


@njit(**_JIT)
def _varint_size(z):  # pragma: no cover - compiled
    """Bytes of the varint of the unsigned (already zig-zagged) `z`."""
    size = 1
    while z > _SEVEN_BITS:
        z >>= _SEVEN
        size += 1
    return size


@njit(**_JIT)
def _put_varint(out, p, z):  # pragma: no cover - compiled
    """Write the varint of the unsigned `z` at ``out[p]``; returns the position after it."""
    while z > _SEVEN_BITS:
        out[p] = np.uint8((z & _SEVEN_BITS) | np.uint64(0x80))
        z >>= _SEVEN
        p += 1
    out[p] = np.uint8(z)
    return p + 1


@njit(**_JIT)
def _put_bytes(out, p, source, start, length):  # pragma: no cover - compiled
    for k in range(length):
        out[p + k] = source[start + k]
    return p + length


@njit(**_JIT)
def _put_string(out, p, source, start, length):  # pragma: no cover - compiled
    """An Avro string: its length as a zig-zag varint, then its bytes."""
    p = _put_varint(out, p, np.uint64(2 * length))
    return _put_bytes(out, p, source, start, length)


@njit(**_JIT)
def feature_records(header, view_part, values_head, keys, key_starts, key_lengths,
                    slices_head, slice_keys, slice_key_starts, slice_key_lengths,
                    text, starts, lengths, times, values):  # pragma: no cover - compiled
    """Avro single-object FeatureRecords, one per row, in one buffer: returns (buffer, ends).

    Row ``i`` is: `header`; the strings ``text`` at column 0 (event_id) and 1 (entity_id) of
    `starts` / `lengths`; the zig-zagged ``times[i]`` (uint64) as a varint; `view_part`; the
    values map (`values_head`, then per feature its key from `keys`, branch 0 for NaN, else
    branch 1 and the eight little-endian bytes of the double, then a 0 count); the slices map
    (`slices_head`, then per slice its key and the string at column ``2 + s``, then a 0 count;
    just the 0 count without slices)."""
    n, features = values.shape
    slices = len(slice_key_starts)
    raw = values.view(np.uint8).reshape(n, features * 8)
    fixed = len(header) + len(view_part) + len(values_head) + 1 + len(slices_head) + 1
    for f in range(features):
        fixed += key_lengths[f] + 1
    for s in range(slices):
        fixed += slice_key_lengths[s]
    ends = np.empty(n, dtype=np.int64)
    total = 0
    for i in range(n):
        size = fixed + _varint_size(times[i])
        for c in range(2 + slices):
            size += lengths[c, i] + _varint_size(np.uint64(2 * lengths[c, i]))
        for f in range(features):
            if values[i, f] == values[i, f]:  # not NaN: the double's eight bytes
                size += 8
        total += size
        ends[i] = total
    out = np.empty(total, dtype=np.uint8)
    p = 0
    for i in range(n):
        p = _put_bytes(out, p, header, 0, len(header))
        p = _put_string(out, p, text, starts[0, i], lengths[0, i])
        p = _put_string(out, p, text, starts[1, i], lengths[1, i])
        p = _put_varint(out, p, times[i])
        p = _put_bytes(out, p, view_part, 0, len(view_part))
        p = _put_bytes(out, p, values_head, 0, len(values_head))
        for f in range(features):
            p = _put_bytes(out, p, keys, key_starts[f], key_lengths[f])
            if values[i, f] == values[i, f]:
                out[p] = 2
                p = _put_bytes(out, p + 1, raw[i], 8 * f, 8)
            else:
                out[p] = 0
                p += 1
        out[p] = 0
        p += 1
        p = _put_bytes(out, p, slices_head, 0, len(slices_head))
        for s in range(slices):
            p = _put_bytes(out, p, slice_keys, slice_key_starts[s], slice_key_lengths[s])
            p = _put_string(out, p, text, starts[2 + s, i], lengths[2 + s, i])
        out[p] = 0
        p += 1
    return out, ends


@njit(**_JIT)
def _same(buf, p, end, pattern, start, length):  # pragma: no cover - compiled
    """Whether ``buf[p:p + length]`` (ending by `end`) is ``pattern[start:start + length]``."""
    if p + length > end:
        return False
    for k in range(length):
        if buf[p + k] != pattern[start + k]:
            return False
    return True


@njit(**_JIT)
def values_maps(buf, at, ends, count, keys, key_starts, key_lengths):  # pragma: no cover
    """The values maps at positions `at` of `buf` (each record ending before ``ends``), read
    as `FeatureRecordEncoder` writes them, nulls included: the `count` bytes, then per feature
    its key bytes, branch 0 (null: NaN here) or branch 1 and eight bytes of a finite double,
    then a 0 count. Returns (matrix, each map's size in bytes, whether each is such a map);
    a row that is not (another order or count, an unknown branch, a NaN or an infinity written
    as a double, a map running past its record) is left for the generic decoder."""
    rows, n = len(at), len(key_starts)
    matrix = np.full((rows, n), np.nan)
    sizes = np.zeros(rows, dtype=np.int64)
    ok = np.zeros(rows, dtype=np.bool_)
    scratch = np.empty(8, dtype=np.uint8)
    as_double = scratch.view(np.float64)
    for i in range(rows):
        p, end = at[i], ends[i]
        if not _same(buf, p, end, count, 0, len(count)):
            continue
        p += len(count)
        good = True
        for f in range(n):
            if not _same(buf, p, end, keys, key_starts[f], key_lengths[f]):
                good = False
                break
            p += key_lengths[f]
            if p >= end:
                good = False
                break
            branch = buf[p]
            p += 1
            if branch == 2 and p + 8 <= end:
                for k in range(8):
                    scratch[k] = buf[p + k]
                value = as_double[0]
                if not np.isfinite(value):
                    good = False
                    break
                matrix[i, f] = value
                p += 8
            elif branch != 0:
                good = False
                break
        if good and p < end and buf[p] == 0:
            sizes[i] = p + 1 - at[i]
            ok[i] = True
    return matrix, sizes, ok
