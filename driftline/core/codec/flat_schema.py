"""The record schemas the columnar decoder reads: flat records of primitive fields.

A raw event (``TransactionEvent``, ``Label``) is a flat record of strings, numbers and
timestamps, which makes it a set of columns. This module describes such a schema field by field
(`FieldSpec`) and holds the checks a column must pass, the column-wise twin of what
``validation.compile_avro_check`` and ``compile_validator`` check per record: a double is
finite, an int fits 32 bits, a ``driftline.allowed`` field holds one of its values (strings,
no NUL and valid Unicode, are checked by each reader as it builds them). A row failing one is
not named here: the per-record decoder re-reads it, so that the dead letter says exactly what
it says today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.core.codec.schema_set import AvroSchema

KINDS = ("string", "long", "int", "double", "float", "boolean")
"""The Avro types a column can hold (``timestamp-millis`` is a ``long``)."""

DTYPES = {"string": np.dtype(object), "long": np.dtype(np.int64), "int": np.dtype(np.int64),
          "double": np.dtype(np.float64), "float": np.dtype(np.float64),
          "boolean": np.dtype(bool)}
"""The numpy dtype of each kind's column: strings are object arrays of ``str`` (no copy into
fixed-width unicode until a consumer asks for it); timestamps are int64 epoch ms."""

_INT32 = (-(2**31), 2**31 - 1)
_NOT_SET = object()


@dataclass(frozen=True)
class FieldSpec:
    """One field of a flat record schema."""

    name: str
    kind: str
    """One of `KINDS`."""
    allowed: frozenset[Any] | None = None
    """The ``driftline.allowed`` values, if the field declares them."""
    default: Any = _NOT_SET
    """The schema default, filled in when JSON leaves the field out."""

    @property
    def has_default(self) -> bool:
        return self.default is not _NOT_SET

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.kind]


def flat_fields(schema: AvroSchema) -> tuple[FieldSpec, ...] | None:
    """The fields of `schema` if it is a flat record of primitive fields, else None (unions,
    maps, arrays, nested records, enums and bytes are left to the per-record decoder)."""
    specs = []
    for field in schema.declared["fields"]:
        kind = _kind(field["type"])
        if kind is None:
            return None
        allowed = field.get("driftline.allowed")
        specs.append(FieldSpec(field["name"], kind,
                               frozenset(allowed) if allowed is not None else None,
                               field.get("default", _NOT_SET)))
    return tuple(specs)


def _kind(avro_type: Any) -> str | None:
    if isinstance(avro_type, Mapping):
        # A logical type on a primitive (timestamp-millis on a long) is that primitive on the
        # wire; validation treats only timestamp-millis specially, and only for JSON strings,
        # which the JSON reader leaves to the per-record decoder.
        avro_type = avro_type["type"]
    return avro_type if isinstance(avro_type, str) and avro_type in KINDS else None


def invalid_rows(spec: FieldSpec, column: np.ndarray) -> np.ndarray:
    """Rows of a well-typed column that validation would refuse (bool mask). Strings are
    checked by each reader, as it builds them (a NUL, a lone surrogate)."""
    n = len(column)
    bad = np.zeros(n, dtype=bool)
    if spec.kind in ("double", "float"):
        bad |= ~np.isfinite(column)  # NaN and infinities: null is the missing value
    elif spec.kind == "int":
        bad |= (column < _INT32[0]) | (column > _INT32[1])  # Avro ints read as any varint
    if spec.allowed is not None and n:
        if spec.kind == "string":
            allowed = spec.allowed
            bad |= np.fromiter((v not in allowed for v in column.tolist()), bool, n)
        else:
            # Compared as Python values, as validation does (1.0 is in {1}, True in {1}).
            uniques, inverse = np.unique(column, return_inverse=True)
            outside = np.array([v not in spec.allowed for v in uniques.tolist()], dtype=bool)
            bad |= outside[inverse.reshape(-1)]
    return bad

