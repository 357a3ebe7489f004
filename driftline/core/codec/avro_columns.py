"""Avro bodies of a flat record schema read straight into columns, with numpy, for a whole batch.

All bodies of a batch lie in one byte buffer. The reader walks the schema's fields once for all
rows at a time: a ``long`` or a length is a zig-zag varint decoded for every row in a few array
operations, a ``double`` eight bytes viewed as float64, a ``string`` a (start, length) span. A
row is read *for sure* only if every varint ends within 9 bytes, every length is >= 0, every
boolean byte is 0 or 1, and the last field ends exactly where its body does; every other row
is reported as unsure and left to fastavro, one record at a time, which names what is wrong
(truncated, trailing bytes, corrupt). That boundary check is why this is not delegated to an
Avro container reader: joined bodies hide a truncated body followed by one with extra bytes,
and a container reader given a cut body may panic rather than raise.

The strings of all sure rows are gathered, each behind a NUL separator, into one buffer that is
decoded as UTF-8 once and split once. A string that is not UTF-8 or holds a NUL (which would
shift the split) makes its row unsure as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from driftline.core.codec.flat_schema import DTYPES, FieldSpec

PADDING = bytes(16)
"""What the caller appends to the joined bodies, so that reading a varint or a double at any
position up to the end never leaves the buffer."""

CHUNK_ROWS = 4096
"""Rows decoded per pass: the passes' arrays then stay in the CPU caches (measured on 100k
TransactionEvents: 0.51 us a record in passes of 4k rows, 0.56 at 8k, 1.15 in one pass)."""

_TEN = np.arange(10)
_FIXED_WIDTH = {"double": ("<f8", 8), "float": ("<f4", 4), "boolean": ("u1", 1)}


def read_columns(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 fields: Sequence[FieldSpec]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Decode the bodies ``buf[starts[k]:ends[k]]`` (uint8 `buf` ending in `PADDING`).

    Returns the columns of the rows read for sure, in row order, and the bool mask of those
    rows. No value is validated beyond its type (finite doubles and such are the caller's)."""
    if len(starts) <= CHUNK_ROWS:
        return _read_chunk(buf, starts, ends, fields)
    pieces = [_read_chunk(buf, starts[i:i + CHUNK_ROWS], ends[i:i + CHUNK_ROWS], fields)
              for i in range(0, len(starts), CHUNK_ROWS)]
    columns = {spec.name: np.concatenate([c[spec.name] for c, _ in pieces]) for spec in fields}
    return columns, np.concatenate([sure for _, sure in pieces])


def _read_chunk(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                fields: Sequence[FieldSpec]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    limit = len(buf) - len(PADDING)
    n = len(starts)
    pos = np.asarray(starts, dtype=np.int64).copy()
    unsure = np.zeros(n, dtype=bool)
    fixed: dict[str, np.ndarray] = {}
    spans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for spec in fields:
        if spec.kind in _FIXED_WIDTH:
            dtype, width = _FIXED_WIDTH[spec.kind]
            raw = buf[pos[:, None] + np.arange(width)]
            fixed[spec.name] = np.ascontiguousarray(raw).view(dtype).reshape(n)
            if spec.kind == "boolean":
                unsure |= fixed[spec.name] > 1  # fastavro reads any non-zero byte as true
            pos += width
        else:
            value, size, bad = _varints(buf, pos)
            unsure |= bad
            pos += size
            if spec.kind == "string":
                unsure |= value < 0
                spans[spec.name] = (pos.copy(), value)
                pos += np.maximum(value, 0)
            else:
                fixed[spec.name] = value
        # A wild length must not carry later reads out of the buffer (or overflow int64);
        # the row is unsure anyway, since its position is past its body's end.
        np.minimum(pos, limit + 1, out=pos)
    sure = ~unsure & (pos == ends)
    rows = np.flatnonzero(sure)
    strings, bad_strings = _string_columns(
        buf, [spans[s.name][0][rows] for s in fields if s.name in spans],
        [spans[s.name][1][rows] for s in fields if s.name in spans])
    if bad_strings.any():
        sure[rows[bad_strings]] = False
        rows = rows[~bad_strings]
    columns: dict[str, np.ndarray] = {}
    string_iter = iter(strings)
    for spec in fields:
        if spec.name in spans:
            columns[spec.name] = next(string_iter)
        else:
            columns[spec.name] = fixed[spec.name][rows].astype(DTYPES[spec.kind])
    return columns, sure


def _varints(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The zig-zag varint at each position: (value, size in bytes, unsure).

    Varints of 10 bytes or more are left unsure: fastavro wraps such values at 64 bits in
    its own way, and no sane length or timestamp needs them."""
    n = len(pos)
    first = buf[pos]
    size = np.ones(n, dtype=np.int64)
    unsure = np.zeros(n, dtype=bool)
    z = first.astype(np.uint64)
    multi = np.flatnonzero(first >= 0x80)
    if len(multi):
        window = buf[pos[multi, None] + _TEN]
        last = window < 0x80
        multi_size = last.argmax(axis=1) + 1
        too_long = ~last[:, :9].any(axis=1)
        width = int(multi_size[~too_long].max(initial=1))
        acc = np.zeros(len(multi), dtype=np.uint64)
        for k in range(width):
            group = (window[:, k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
            acc |= np.where(k < multi_size, group, np.uint64(0))
        z[multi] = acc
        size[multi] = multi_size
        unsure[multi] = too_long
    value = (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)
    return value, size, unsure


def _string_columns(buf: np.ndarray, starts: list[np.ndarray], lengths: list[np.ndarray],
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """The string columns at the given spans (one list entry per string field; each span has
    its length varint right before it), as object arrays of str, and the rows dropped for a
    string that is not UTF-8 or holds a NUL."""
    n = len(starts[0]) if starts else 0
    k = len(starts)
    if k == 0 or n == 0:
        return [np.empty(n, dtype=object) for _ in range(k)], np.zeros(n, dtype=bool)
    flat_start = np.stack(starts, axis=1).ravel()  # row-major: row 0's fields, row 1's, ...
    flat_length = np.stack(lengths, axis=1).ravel()
    gathered, piece_at = _gather_with_separators(buf, flat_start, flat_length)
    try:
        pieces = gathered.tobytes().decode("utf-8").split("\x00")
        if len(pieces) != n * k + 1:
            raise ValueError("a string holds a NUL")
    except ValueError:  # UnicodeDecodeError is one
        bad = _bad_string_rows(buf, gathered, piece_at, flat_start, flat_length, k)
        keep = ~bad
        columns, _ = _string_columns(buf, [s[keep] for s in starts], [s[keep] for s in lengths])
        return columns, bad
    # One object array for all strings; each column is a strided view of it.
    table = np.array(pieces, dtype=object)[1:].reshape(n, k)
    return [table[:, j] for j in range(k)], np.zeros(n, dtype=bool)


def _gather_with_separators(buf: np.ndarray, start: np.ndarray, length: np.ndarray,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of every span, each preceded by a NUL, and where each piece begins: one
    gather over the string bytes alone. Each span is taken with the byte before it, the last
    byte of its length varint, which becomes the NUL."""
    size = length + 1
    at = np.cumsum(size) - size  # where each piece begins in the output
    source = np.arange(int(size.sum()), dtype=np.int64)
    source += np.repeat(start - 1 - at, size)
    out = buf[source]
    out[at] = 0
    return out, at


def _bad_string_rows(buf: np.ndarray, gathered: np.ndarray, piece_at: np.ndarray,
                     start: np.ndarray, length: np.ndarray, per_row: int) -> np.ndarray:
    """Rows with a string that is not UTF-8 or holds a NUL (the rare path): each string with a
    non-ASCII or NUL byte is decoded on its own."""
    suspect = (gathered >= 0x80) | (gathered == 0)
    suspect[piece_at] = False  # the separators
    pieces = np.unique(np.searchsorted(piece_at, np.flatnonzero(suspect), side="right") - 1)
    bad = np.zeros(len(start) // per_row, dtype=bool)
    for piece in pieces.tolist():
        s = int(start[piece])
        raw = buf[s:s + int(length[piece])].tobytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad[piece // per_row] = True
        if 0 in raw:
            bad[piece // per_row] = True
    return bad
