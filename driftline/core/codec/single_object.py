"""Avro single-object encoding: `C3 01`, the writer schema's 8-byte fingerprint, the body.

The fingerprint is CRC-64-AVRO of the schema's Parsing Canonical Form, little-endian, as the
Avro specification defines it. A reader finds the writer schema by fingerprint among the known
current and historical schemas, then resolves it to the reader schema it expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftline.core.codec.avro_body import read_body, write_body
from driftline.core.codec.errors import DECODE_ERROR, UNKNOWN_SCHEMA, DecodeError
from driftline.core.codec.schema_set import AvroSchema, SchemaSet, default_schema_set

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


def header(schema: AvroSchema) -> bytes:
    """The 10-byte single-object header announcing `schema` as the writer."""
    return MAGIC + schema.fingerprint


def encode(schema_name: str, record: Mapping[str, Any], schemas: SchemaSet | None = None) -> bytes:
    """Validate `record` against the named schema and return its single-object encoding."""
    schema = (schemas or default_schema_set()).get(schema_name)
    return header(schema) + write_body(schema, record)


def read_single_object(data: bytes, reader: AvroSchema, schemas: SchemaSet) -> dict[str, Any]:
    """Decode single-object bytes into the reader's shape (not yet validated)."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        raise DecodeError(
            DECODE_ERROR, f"not an Avro single-object message ({len(data)} bytes, need C3 01 + 8)"
        )
    fingerprint = bytes(data[2:HEADER_SIZE])
    writer = schemas.by_fingerprint(fingerprint)
    if writer is None:
        raise DecodeError(
            UNKNOWN_SCHEMA,
            f"no known schema has fingerprint {fingerprint.hex()} (expected {reader.name}, "
            f"fingerprint {reader.fingerprint.hex()})",
        )
    return read_body(data, HEADER_SIZE, writer, reader)
