"""Encoding and decoding of every record on every Driftline topic (pure: no broker, no clock).

Decoded records are plain dicts whose timestamps are int epoch milliseconds (UTC), whichever
encoding they arrived in: Avro single-object, Confluent wire format or JSON.
"""

from driftline.core.codec.confluent import ConfluentRegistry, encode_confluent, urllib_fetch
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import (
    ALL_REASONS,
    DECODE_ERROR,
    FUTURE_EVENT_TIME,
    INVALID_EVENT_TIME,
    LATE,
    REASONS,
    SCHEMA_MISMATCH,
    UNKNOWN_SCHEMA,
    VALIDATION_ERROR,
    VIEW_MISMATCH,
    DecodeError,
    RegistryUnavailable,
)
from driftline.core.codec.json_codec import to_json
from driftline.core.codec.schema_set import AvroSchema, SchemaSet, default_schema_set
from driftline.core.codec.single_object import encode

__all__ = [
    "ALL_REASONS",
    "DECODE_ERROR",
    "FUTURE_EVENT_TIME",
    "INVALID_EVENT_TIME",
    "LATE",
    "REASONS",
    "SCHEMA_MISMATCH",
    "UNKNOWN_SCHEMA",
    "VALIDATION_ERROR",
    "VIEW_MISMATCH",
    "AvroSchema",
    "ConfluentRegistry",
    "DecodeError",
    "Decoder",
    "RegistryUnavailable",
    "SchemaSet",
    "default_schema_set",
    "encode",
    "encode_confluent",
    "to_json",
    "urllib_fetch",
]
