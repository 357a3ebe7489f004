"""Read and write a bare (schemaless) Avro body with fastavro, mapping failures to DecodeError.

Both framings Driftline accepts, single-object and Confluent, wrap the same body; this module
is the one place that talks to fastavro's reader and writer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from driftline.core.codec.errors import DECODE_ERROR, SCHEMA_MISMATCH, DecodeError
from driftline.core.codec.schema_set import AvroSchema


def write_body(schema: AvroSchema, record: Mapping[str, Any]) -> bytes:
    """Validate a record and return its Avro binary body."""
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema.wire, schema.validate(record))
    return buffer.getvalue()


def read_body(data: bytes, offset: int, writer: AvroSchema, reader: AvroSchema) -> dict[str, Any]:
    """Decode `data[offset:]` written with `writer` into the shape of `reader`, unvalidated."""
    buffer = io.BytesIO(data)
    buffer.seek(offset)
    # Identical schemas skip fastavro's resolution step, the common and hot case.
    reader_wire = None if writer.fingerprint == reader.fingerprint else reader.wire
    try:
        record = schemaless_reader(buffer, writer.wire, reader_wire)
    except SchemaResolutionError as exc:
        raise DecodeError(
            SCHEMA_MISMATCH, f"writer schema {writer.name} cannot be read as {reader.name}: {exc}"
        ) from None
    except (EOFError, StopIteration):
        raise DecodeError(
            DECODE_ERROR, f"Avro body for {writer.name} is truncated ({len(data)} bytes in all)"
        ) from None
    except (ValueError, UnicodeDecodeError, OverflowError, IndexError, MemoryError) as exc:
        raise DecodeError(DECODE_ERROR, f"corrupt Avro body for {writer.name}: {exc}") from None
    trailing = len(data) - buffer.tell()
    if trailing:
        # Leftover bytes mean the body was not written with this schema.
        raise DecodeError(
            DECODE_ERROR,
            f"{trailing} trailing bytes after a {writer.name} record; wrong schema or framing?",
        )
    return record
