"""JSON raw events of a flat record schema parsed with orjson and turned into checked columns.

orjson parses a TransactionEvent 3 to 6 times faster than the standard library (0.7 us against
2.2 from ``str``, 4.2 from ``bytes``). It is stricter, not looser: what it refuses (NaN and
Infinity tokens, 1e400, lone surrogates, a byte-order mark, invalid UTF-8) is left to the
per-record decoder, which parses with ``json`` and names the problem. What it accepts it reads
as ``json`` does (the last of repeated keys wins, ``-0`` is the integer 0, floats round alike),
with two exceptions kept off the fast path here: an integer literal beyond 64 bits, which
orjson reads as a float (so a double column takes no value of magnitude 2**63 or more), and
nesting between the standard library's depth limit and orjson's 1024 (so a row with a key the
schema does not know is left to the per-record decoder).

A row is read for sure when it is an object, every field holds the plain Python type of its
column (``str``; ``int`` for long and int; ``float`` or ``int`` for double and float; ``bool``),
or is missing and has a default, and it has no other key. ISO-8601 timestamps, ``null`` in a
field with no null, unknown keys: the per-record decoder handles (or refuses) them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from driftline.core.codec.flat_schema import DTYPES, FieldSpec

CHUNK_ROWS = 4096
"""Values parsed per pass, so that a pass's dicts are gone before the next one's are made (a
batch of 100k TransactionEvents: 2.0 us a record in passes of 4k, 2.4 in one pass)."""

_MISSING = object()
_PLAIN_TYPES = {"string": {str}, "long": {int}, "int": {int}, "double": {float, int},
                "float": {float, int}, "boolean": {bool}}
_LONG_RANGE = (-(2**63), 2**63 - 1)
_AMBIGUOUS_DOUBLE = 2.0**63
"""From this magnitude on, orjson may have read an integer literal as a float."""


def read_columns(values: Sequence[bytes], fields: Sequence[FieldSpec],
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parse JSON objects into the columns of the rows read for sure (in row order), and the
    bool mask of those rows. Values are checked for type only; ranges are the caller's."""
    if len(values) <= CHUNK_ROWS:
        return _read_chunk(values, fields)
    pieces = [_read_chunk(values[i:i + CHUNK_ROWS], fields)
              for i in range(0, len(values), CHUNK_ROWS)]
    columns = {spec.name: np.concatenate([c[spec.name] for c, _ in pieces]) for spec in fields}
    return columns, np.concatenate([sure for _, sure in pieces])


def _read_chunk(values: Sequence[bytes], fields: Sequence[FieldSpec],
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    try:
        docs = list(map(orjson.loads, values))  # the common case: every value parses
    except orjson.JSONDecodeError:
        docs = list(map(_parse, values))
    if set(map(type, docs)) == {dict}:
        sure = np.ones(len(docs), dtype=bool)
        objects = docs
    else:
        sure = np.fromiter((type(d) is dict for d in docs), dtype=bool, count=len(docs))
        objects = list(compress(docs, sure))
    raw, ok = _field_values(objects, fields)
    for spec in fields:
        raw[spec.name], typed = _with_defaults_typed(spec, raw[spec.name])
        ok &= typed
    kept = np.flatnonzero(ok)
    columns: dict[str, np.ndarray] = {}
    refused = np.zeros(len(kept), dtype=bool)
    for spec in fields:
        columns[spec.name], bad = _column(spec, list(compress(raw[spec.name], ok)))
        refused |= bad
    if refused.any():
        columns = {name: column[~refused] for name, column in columns.items()}
        ok[kept[refused]] = False
    sure[np.flatnonzero(sure)] = ok
    return columns, sure


def _parse(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _field_values(objects: list[dict], fields: Sequence[FieldSpec],
                  ) -> tuple[dict[str, Sequence[Any]], np.ndarray]:
    """Each field's values (`_MISSING` where absent) and the rows that have no unknown key."""
    names = [spec.name for spec in fields]
    n = len(objects)
    sizes = np.fromiter(map(len, objects), dtype=np.int64, count=n)
    try:  # every field present: the common case
        return ({name: list(map(itemgetter(name), objects)) for name in names},
                sizes == len(names))
    except KeyError:
        pass
    columns = {name: [o.get(name, _MISSING) for o in objects] for name in names}
    present = np.zeros(n, dtype=np.int64)
    for column in columns.values():
        present += np.fromiter((v is not _MISSING for v in column), dtype=bool, count=n)
    return columns, sizes == present


def _with_defaults_typed(spec: FieldSpec, values: Sequence[Any]) -> tuple[Sequence[Any],
                                                                        np.ndarray]:
    """The values with the default in place of a missing one, and the rows whose value has
    the column's plain type."""
    plain = _PLAIN_TYPES[spec.kind]
    if set(map(type, values)) <= plain:
        return values, np.ones(len(values), dtype=bool)
    if spec.has_default:
        values = [spec.default if v is _MISSING else v for v in values]
    typed = np.fromiter((type(v) in plain for v in values), dtype=bool, count=len(values))
    return values, typed


def _column(spec: FieldSpec, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The column of plain-typed values, and the rows a finer check leaves to the per-record
    decoder: an integer beyond 64 bits, an ambiguous huge double, a NUL or lone surrogate."""
    n = len(values)
    bad = np.zeros(n, dtype=bool)
    if spec.kind == "string":
        column = np.empty(n, dtype=object)
        column[:] = values
        return column, _bad_strings(values)
    if spec.kind in ("long", "int", "double", "float") and n and int in set(map(type, values)):
        low, high = _LONG_RANGE
        if not (low <= min(values) and max(values) <= high):  # rare: Python ints are unbounded
            bad = np.fromiter((type(v) is int and not low <= v <= high for v in values),
                              dtype=bool, count=n)
            values = [0 if b else v for v, b in zip(values, bad.tolist(), strict=True)]
    column = np.array(values, dtype=DTYPES[spec.kind]) if n else np.zeros(0, DTYPES[spec.kind])
    if spec.kind in ("double", "float"):
        bad |= np.abs(column) >= _AMBIGUOUS_DOUBLE
    return column, bad


def _bad_strings(values: list[str]) -> np.ndarray:
    """Rows holding a NUL or a lone surrogate, both refused by validation."""
    joined = "".join(values)
    if "\x00" not in joined and (joined.isascii() or _encodes(joined)):
        return np.zeros(len(values), dtype=bool)
    return np.fromiter(("\x00" in v or not _encodes(v) for v in values), dtype=bool,
                       count=len(values))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
