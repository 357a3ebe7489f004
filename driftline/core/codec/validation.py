"""Check and normalise a record against its Avro schema, naming the offending field on failure.

A compiled validator serves JSON input (coerce ISO-8601 timestamps to epoch ms, ints to floats)
and records about to be encoded; a lighter compiled check serves records fresh from an Avro body
(well-typed, but they may still carry NaN or a value outside a field's allowed set). The
output is the decoded-dict shape used everywhere in Driftline: timestamps are int epoch ms,
doubles are finite floats, missing fields with a default are filled in, unknown keys dropped.

Beyond plain Avro, a field may declare `"driftline.allowed": [...]`, the values it may take
(e.g. a label is 0 or 1); a plain string/int keeps the schema evolvable where an Avro enum
would not be.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from driftline.core.codec.errors import VALIDATION_ERROR, DecodeError

Coerce = Callable[[Any, str], Any]
"""Converts one value found at a path (e.g. `values['amount_1h']`) or raises DecodeError."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def compile_validator(schema: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """Build `validate(obj) -> dict` for a record schema as written in its .avsc."""
    coerce = _compile(schema, {})

    def validate(obj: Any) -> dict[str, Any]:
        return coerce(obj, "")

    return validate


def compile_avro_check(schema: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Build `check(record)` for records fresh from an Avro body, checking only what Avro cannot.

    Avro already guarantees types, shape and defaults, so only fields that can hold NaN, ints
    (fastavro reads an ``int`` as a varint of any length, so it may exceed 32 bits), strings
    (a NUL character) and fields that declare allowed values are checked: the hot path stays
    close to the raw fastavro speed.
    """
    names: dict[str, Coerce] = {}
    _compile(schema, names)  # registers named types for the per-field compiles below
    checks = []
    for field in schema["fields"]:
        if "driftline.allowed" in field or _needs_check(field["type"]):
            coerce = _compile(field["type"], names)
            if "driftline.allowed" in field:
                coerce = _allowed(coerce, field["driftline.allowed"])
            checks.append((field["name"], coerce))

    def check(record: dict[str, Any]) -> dict[str, Any]:
        for name, coerce in checks:
            coerce(record[name], name)
        return record

    return check


def _needs_check(schema: Any) -> bool:
    """Whether a value Avro decoded may still be invalid: a NaN, an int beyond 32 bits, or a
    string with a NUL character."""
    if isinstance(schema, list):
        return any(_needs_check(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            fields = schema["fields"]
            return any(_needs_check(f["type"]) or "driftline.allowed" in f for f in fields)
        if kind in ("map", "array"):
            return _needs_check(schema["values" if kind == "map" else "items"])
        return _needs_check(kind)
    return schema in ("double", "float", "int", "string")


def _fail(path: str, why: str) -> None:
    where = f"field '{path}'" if path else "record"
    raise DecodeError(VALIDATION_ERROR, f"{where}: {why}")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if value is not None else "null"


def _compile(schema: Any, names: dict[str, Coerce]) -> Coerce:
    if isinstance(schema, list):
        return _union([_compile(branch, names) for branch in schema], schema)
    if isinstance(schema, str):
        if schema in names:
            return names[schema]
        return _primitive(schema)
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis" and kind == "long":
        return _timestamp_millis
    if kind == "record":
        return _record(schema, names)
    if kind == "map":
        return _map(_compile(schema["values"], names))
    if kind == "array":
        return _array(_compile(schema["items"], names))
    if kind == "enum":
        return _allowed(_primitive("string"), schema["symbols"])
    return _compile(kind, names)


def _record(schema: Mapping[str, Any], names: dict[str, Coerce]) -> Coerce:
    fields: list[tuple[str, Coerce, bool, Any]] = []

    def coerce(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_show(value)}")
        out = {}
        for name, field_coerce, has_default, default in fields:
            sub = f"{path}.{name}" if path else name
            if name in value:
                out[name] = field_coerce(value[name], sub)
            elif has_default:
                # Defaults like {} are shared; callers may mutate the record they get back.
                out[name] = copy.copy(default)
            else:
                _fail(sub, "required field is missing")
        return out

    names[schema["name"]] = coerce  # registered first so recursive types resolve
    for field in schema["fields"]:
        field_coerce = _compile(field["type"], names)
        if "driftline.allowed" in field:
            field_coerce = _allowed(field_coerce, field["driftline.allowed"])
        fields.append((field["name"], field_coerce, "default" in field, field.get("default")))
    return coerce


def _primitive(kind: str) -> Coerce:
    if kind in ("double", "float"):
        return _double
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]

        def integer(value: Any, path: str) -> int:
            if type(value) is not int:
                _fail(path, f"expected an integer ({kind}), got {_show(value)}")
            if not low <= value <= high:
                _fail(path, f"{value} is outside the Avro {kind} range")
            return value

        return integer
    if kind == "string":
        return _string
    simple: dict[str, tuple[type, str]] = {
        "boolean": (bool, "true or false"),
        "null": (type(None), "null"),
    }
    if kind in simple:
        expected, label = simple[kind]

        def exact(value: Any, path: str) -> Any:
            if type(value) is not expected:
                _fail(path, f"expected {label}, got {_show(value)}")
            return value

        return exact
    if kind == "bytes":
        return _bytes
    raise ValueError(f"unsupported Avro type in schema: {kind!r}")


def _string(value: Any, path: str) -> str:
    if type(value) is not str:
        _fail(path, f"expected a string, got {_show(value)}")
    _check_unicode(value, path)
    if "\x00" in value:
        # numpy's fixed-width strings (the feature engine's keys and categories) drop trailing
        # NULs, so 'card-1\x00' would silently become 'card-1': refused, never merged.
        _fail(path, f"contains a NUL character (U+0000) at position {value.index(chr(0))}")
    return value


def _check_unicode(text: str, path: str) -> None:
    """JSON can carry a lone surrogate (an escape like \\ud800), which no UTF-8 writer of the
    record (Avro, Parquet, Kafka) can encode."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        _fail(path, f"{text[exc.start]!r} at position {exc.start} is a lone surrogate, not a "
                    "character (UTF-8 cannot encode it)")


def _double(value: Any, path: str) -> float:
    if type(value) is float:
        if not math.isfinite(value):
            _fail(path, f"{value} is not allowed; send null for a missing value")
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # a JSON integer literal of over 308 digits
            _fail(path, f"{_show(value)} is too large for a double")
    _fail(path, f"expected a finite number, got {_show(value)}")
    raise AssertionError  # unreachable; keeps type checkers honest


def _bytes(value: Any, path: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Avro's JSON encoding carries bytes as a string of code points 0-255.
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            _fail(path, "bytes given as a string must only hold code points 0-255")
    _fail(path, f"expected bytes, got {_show(value)}")
    raise AssertionError


def _timestamp_millis(value: Any, path: str) -> int:
    if type(value) is int:
        low, high = _INT_RANGE["long"]
        if not low <= value <= high:
            _fail(path, f"{_show(value)} is outside the Avro long range of epoch milliseconds")
        return value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            _fail(path, f"{value!r} is not an ISO-8601 timestamp")
        if moment.tzinfo is None:
            _fail(path, f"{value!r} has no timezone; add 'Z' or an offset like '+00:00'")
        return (moment - _EPOCH) // _MS
    if isinstance(value, datetime) and value.tzinfo is not None:
        return (value - _EPOCH) // _MS
    _fail(path, f"expected epoch milliseconds (integer) or ISO-8601 string, got {_show(value)}")
    raise AssertionError


def _map(values: Coerce) -> Coerce:
    def coerce(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            _fail(path, f"expected an object (map), got {_show(value)}")
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                _fail(path, f"map key {key!r} is not a string")
            _check_unicode(key, f"{path} (a key)")
            out[key] = values(item, f"{path}[{key!r}]")
        return out

    return coerce


def _array(items: Coerce) -> Coerce:
    def coerce(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            _fail(path, f"expected an array, got {_show(value)}")
        return [items(item, f"{path}[{i}]") for i, item in enumerate(value)]

    return coerce


def _union(branches: list[Coerce], schema: list[Any]) -> Coerce:
    non_null = [b for b, s in zip(branches, schema, strict=True) if s != "null"]
    nullable = len(non_null) < len(branches)
    if len(non_null) == 1:
        # The common optional-value case: report the real type's error, not "no branch matched".
        only = non_null[0]

        def optional(value: Any, path: str) -> Any:
            return None if value is None and nullable else only(value, path)

        return optional

    def any_branch(value: Any, path: str) -> Any:
        for branch in branches:
            try:
                return branch(value, path)
            except DecodeError:
                continue
        _fail(path, f"{_show(value)} matches none of {schema}")

    return any_branch


def _allowed(inner: Coerce, allowed: list[Any]) -> Coerce:
    allowed_set = frozenset(allowed)

    def coerce(value: Any, path: str) -> Any:
        value = inner(value, path)
        if value not in allowed_set:
            _fail(path, f"{value!r} is not one of {allowed}")
        return value

    return coerce
