"""Decode one topic's values, whatever accepted encoding each arrives in, into validated dicts.

A `Decoder` expects one reader schema and detects the encoding per value from its first bytes:
`C3 01` Avro single-object, `00` Confluent wire format (needs a registry), `{` a JSON object.
Every failure is a `DecodeError` carrying a DLQ reason code; `decode_many` collects them so one
bad record never stops a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from driftline.core.codec.confluent import ConfluentRegistry, Fetch, read_confluent, urllib_fetch
from driftline.core.codec.errors import DECODE_ERROR, DecodeError
from driftline.core.codec.json_codec import read_json
from driftline.core.codec.schema_set import AvroSchema, SchemaSet, default_schema_set
from driftline.core.codec.single_object import read_single_object

_SINGLE_OBJECT = 0xC3
_CONFLUENT = 0x00
_JSON_LEAD = b" \t\r\n\xef\xbb\xbf"  # whitespace and a UTF-8 BOM may precede '{'


class RegistrySettings(Protocol):
    """What `Decoder.for_settings` needs from the settings object (duck-typed, no import)."""

    schema_registry_url: str | None


class Decoder:
    """Decodes values for one expected schema into dicts with int epoch-ms timestamps."""

    def __init__(
        self,
        schema_name: str,
        schemas: SchemaSet | None = None,
        registry: ConfluentRegistry | None = None,
    ) -> None:
        self.schemas = schemas or default_schema_set()
        self.schema: AvroSchema = self.schemas.get(schema_name)
        self.registry = registry

    @classmethod
    def for_settings(
        cls,
        settings: RegistrySettings,
        schema_name: str,
        schemas: SchemaSet | None = None,
        fetch: Fetch = urllib_fetch,
    ) -> Decoder:
        """A decoder that accepts Confluent framing iff a registry URL is configured."""
        url = settings.schema_registry_url
        registry = ConfluentRegistry(url, fetch) if url else None
        return cls(schema_name, schemas, registry)

    def decode(self, value: bytes) -> dict[str, Any]:
        """One value to a validated dict; raises DecodeError (or RegistryUnavailable)."""
        if not value:
            raise DecodeError(DECODE_ERROR, "empty value (a tombstone or an empty message)")
        first = value[0]
        if first == _SINGLE_OBJECT and value[1:2] == b"\x01":
            return self.schema.check_decoded(read_single_object(value, self.schema, self.schemas))
        if first == _CONFLUENT:
            if self.registry is None:
                raise DecodeError(
                    DECODE_ERROR,
                    "value looks like Confluent wire format (starts with 00) but no schema "
                    "registry is configured; set DRIFTLINE_SCHEMA_REGISTRY_URL",
                )
            return self.schema.check_decoded(read_confluent(value, self.schema, self.registry))
        if value.lstrip(_JSON_LEAD)[:1] == b"{":
            return self.schema.validate(read_json(value))
        raise DecodeError(DECODE_ERROR, _unrecognised(value))

    def decode_many(
        self, values: Sequence[bytes]
    ) -> tuple[list[dict[str, Any]], list[tuple[int, DecodeError]]]:
        """Decode a batch; bad values become (index, error) failures instead of raising."""
        records: list[dict[str, Any]] = []
        failures: list[tuple[int, DecodeError]] = []
        decode = self.decode
        for index, value in enumerate(values):
            try:
                records.append(decode(value))
            except DecodeError as exc:
                failures.append((index, exc))
        return records, failures


def _unrecognised(value: bytes) -> str:
    shown = " ".join(f"0x{b:02X}" for b in value[:8])
    more = " ..." if len(value) > 8 else ""
    return (
        f"unrecognised encoding: first bytes {shown}{more}; expected a JSON object, "
        "Avro single-object (C3 01) or Confluent wire format (00)"
    )
