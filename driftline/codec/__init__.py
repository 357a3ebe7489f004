"""Encoding and decoding of every record on every Driftline topic (pure: no broker, no clock).

Decoded records are plain dicts whose timestamps are int epoch milliseconds (UTC), whichever
encoding they arrived in: Avro single-object, Confluent wire format or JSON.
"""

from driftline.codec.confluent import ConfluentRegistry, encode_confluent, urllib_fetch
from driftline.codec.decoder import Decoder
from driftline.codec.errors import (
    DECODE_ERROR,
    REASONS,
    SCHEMA_MISMATCH,
    UNKNOWN_SCHEMA,
    VALIDATION_ERROR,
    DecodeError,
    RegistryUnavailable,
)
from driftline.codec.json_codec import to_json
from driftline.codec.schema_set import AvroSchema, SchemaSet, default_schema_set
from driftline.codec.single_object import encode

__all__ = [
    "DECODE_ERROR",
    "REASONS",
    "SCHEMA_MISMATCH",
    "UNKNOWN_SCHEMA",
    "VALIDATION_ERROR",
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
