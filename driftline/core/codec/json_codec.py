"""Raw events as UTF-8 JSON objects: parse them and render records back to JSON.

Parsing only turns bytes into Python values; the schema's validator then checks fields and
normalises them (ISO-8601 timestamps to epoch ms), so JSON and Avro input yield equal dicts.
NaN and Infinity literals are parsed rather than rejected here, so that the validator can name
the field that carried them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from driftline.core.codec.errors import DECODE_ERROR, DecodeError
from driftline.core.codec.schema_set import SchemaSet, default_schema_set

_BOM = b"\xef\xbb\xbf"


def read_json(data: bytes) -> Any:
    """Parse UTF-8 JSON bytes, raising DecodeError(decode_error) with the position on failure."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(DECODE_ERROR, f"JSON is not valid UTF-8: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            DECODE_ERROR, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise DecodeError(DECODE_ERROR, "JSON is nested too deeply") from None
    except ValueError as exc:  # an integer literal beyond CPython's int_max_str_digits
        raise DecodeError(
            DECODE_ERROR, f"JSON holds a number too long to read: {str(exc).split(';')[0]}"
        ) from None


def to_json(schema_name: str, record: Mapping[str, Any], schemas: SchemaSet | None = None) -> bytes:
    """Validate `record` and render it as compact UTF-8 JSON (timestamps as epoch ms)."""
    schema = (schemas or default_schema_set()).get(schema_name)
    valid = schema.validate(record)
    return json.dumps(valid, separators=(",", ":"), allow_nan=False, default=_bytes).encode()


def _bytes(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro's JSON convention for bytes
    raise TypeError(f"cannot render {type(value).__name__} as JSON")
