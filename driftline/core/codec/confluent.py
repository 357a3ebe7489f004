"""Confluent wire format: `00`, a 4-byte big-endian schema id, then the Avro body.

The writer schema for an id comes from a Confluent-compatible schema registry
(`GET {url}/schemas/ids/{id}`) and is cached forever, since registry ids are immutable. The
HTTP call is an injected `Fetch` so tests and other transports can replace urllib. A registry
that cannot be reached raises `RegistryUnavailable` rather than `DecodeError`: the record is not
at fault and must be retried, not dead-lettered.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from driftline.core.codec.avro_body import read_body, write_body
from driftline.core.codec.errors import (
    DECODE_ERROR,
    UNKNOWN_SCHEMA,
    DecodeError,
    RegistryUnavailable,
)
from driftline.core.codec.schema_set import AvroSchema, compile_schema

MAGIC = b"\x00"
HEADER_SIZE = 5

Fetch = Callable[[str], tuple[int, bytes]]
"""GET a URL and return (HTTP status, body); raise OSError if there is no answer at all."""


def urllib_fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """The default `Fetch`, with the standard library."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ConfluentRegistry:
    """Writer schemas from a Confluent-compatible schema registry, cached by id."""

    def __init__(self, url: str, fetch: Fetch = urllib_fetch) -> None:
        self.url = url.rstrip("/")
        self._fetch = fetch
        self._cache: dict[int, AvroSchema] = {}

    def writer_schema(self, schema_id: int) -> AvroSchema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        url = f"{self.url}/schemas/ids/{schema_id}"
        try:
            status, body = self._fetch(url)
        except OSError as exc:
            raise RegistryUnavailable(f"schema registry {self.url} unreachable: {exc}") from exc
        if status == 404:
            raise DecodeError(UNKNOWN_SCHEMA, f"schema id {schema_id} is not in {self.url}")
        if status != 200:
            raise RegistryUnavailable(f"GET {url} answered HTTP {status}: {body[:200]!r}")
        schema = self._parse(schema_id, body)
        self._cache[schema_id] = schema
        return schema

    def _parse(self, schema_id: int, body: bytes) -> AvroSchema:
        try:
            answer = json.loads(body)
            kind = answer.get("schemaType", "AVRO")
            if kind != "AVRO":
                raise DecodeError(
                    UNKNOWN_SCHEMA, f"schema id {schema_id} is {kind}; only AVRO is supported"
                )
            return compile_schema(json.loads(answer["schema"]))
        except DecodeError:
            raise
        except Exception as exc:  # any malformed answer: the id cannot be used
            raise DecodeError(
                UNKNOWN_SCHEMA, f"schema id {schema_id} from {self.url} is unusable: {exc}"
            ) from None


def encode_confluent(schema_id: int, schema: AvroSchema, record: Mapping[str, Any]) -> bytes:
    """Frame a validated record in Confluent wire format under a registry id."""
    return MAGIC + struct.pack(">I", schema_id) + write_body(schema, record)


def read_confluent(data: bytes, reader: AvroSchema, registry: ConfluentRegistry) -> dict[str, Any]:
    """Decode Confluent-framed bytes into the reader's shape (not yet validated)."""
    if len(data) < HEADER_SIZE or data[:1] != MAGIC:
        raise DecodeError(
            DECODE_ERROR, f"not Confluent wire format ({len(data)} bytes, need 00 + 4-byte id)"
        )
    (schema_id,) = struct.unpack_from(">I", data, 1)
    return read_body(data, HEADER_SIZE, registry.writer_schema(schema_id), reader)
