"""The Avro schemas Driftline knows, indexed by full name and by CRC-64-AVRO fingerprint.

`SchemaSet.load()` reads `schemas/*.avsc` (the current, reader schemas, one per record name)
and `schemas/history/*.avsc` if present (older writer versions, only indexed by fingerprint so
that records written with them still resolve to the current reader schema).

Each schema is held in two forms: as declared (with logical types, docs and
`driftline.allowed`) for fingerprints and validation, and a fastavro-parsed "wire" form with
logical types removed. The wire form has the identical binary encoding, but makes fastavro read
and write timestamps as int epoch ms rather than `datetime`, the representation used in every
decoded dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint as _hex_fingerprint
from fastavro.schema import to_parsing_canonical_form

from driftline.core.codec.validation import compile_avro_check, compile_validator

DEFAULT_NAMESPACE = "driftline"


@dataclass(frozen=True)
class AvroSchema:
    """One record schema, ready to encode, decode and validate with."""

    name: str
    """Full name, e.g. `driftline.TransactionEvent`."""
    declared: Mapping[str, Any] = field(repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes
    """8-byte CRC-64-AVRO of the Parsing Canonical Form, little-endian (as on the wire)."""
    wire: dict[str, Any] = field(repr=False)
    validate: Callable[[Any], dict[str, Any]] = field(repr=False, compare=False)
    """Full check and normalisation of a record from JSON or from Python code."""
    check_decoded: Callable[[dict[str, Any]], dict[str, Any]] = field(repr=False, compare=False)
    """The cheaper check for a record this schema's reader just produced from Avro."""


def compile_schema(declared: Mapping[str, Any]) -> AvroSchema:
    """Parse one record schema given as its JSON object."""
    # A fresh named_schemas dict per schema keeps fastavro's parse free of shared global state.
    parsed = parse_schema(dict(declared), named_schemas={})
    canonical = to_parsing_canonical_form(parsed)
    return AvroSchema(
        name=parsed["name"],
        declared=declared,
        canonical_form=canonical,
        fingerprint=crc64_fingerprint(canonical),
        wire=parse_schema(strip_logical_types(parsed), named_schemas={}),
        validate=compile_validator(parsed),
        check_decoded=compile_avro_check(parsed),
    )


def crc64_fingerprint(canonical_form: str) -> bytes:
    """CRC-64-AVRO of a canonical form as the 8 little-endian bytes of single-object encoding."""
    # fastavro renders the fingerprint as hex of the little-endian bytes (checked in the tests
    # against the spec's algorithm), so the hex decodes straight to wire order.
    return bytes.fromhex(_hex_fingerprint(canonical_form, "CRC-64-AVRO"))


def strip_logical_types(schema: Any) -> Any:
    """A copy of a schema with every `logicalType` annotation (and fastavro's markers) removed."""
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {
            k: strip_logical_types(v)
            for k, v in schema.items()
            if k != "logicalType" and not k.startswith("__fastavro")
        }
    return schema


class SchemaSet:
    """Reader schemas by full name, plus every known writer schema by fingerprint."""

    def __init__(
        self, schemas: Iterable[Mapping[str, Any]], history: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self._by_name: dict[str, AvroSchema] = {}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        for declared in schemas:
            schema = compile_schema(declared)
            if schema.name in self._by_name:
                raise ValueError(f"schema {schema.name} is defined twice")
            self._by_name[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        for declared in history:
            schema = compile_schema(declared)
            self._by_fingerprint.setdefault(schema.fingerprint, schema)

    @classmethod
    def load(cls, directory: Path | str | None = None) -> SchemaSet:
        """Read `directory/*.avsc` (default: the packaged `schemas/`) and `directory/history/`."""
        if directory is None:
            from driftline.schemas import SCHEMA_DIR

            directory = SCHEMA_DIR
        root = Path(directory)
        current = [_read(p) for p in sorted(root.glob("*.avsc"))]
        if not current:
            raise FileNotFoundError(f"no .avsc files in {root}")
        history = [_read(p) for p in sorted((root / "history").glob("*.avsc"))]
        return cls(current, history)

    def get(self, name: str) -> AvroSchema:
        """The reader schema for a full name; a bare name means the `driftline` namespace."""
        full = name if "." in name else f"{DEFAULT_NAMESPACE}.{name}"
        try:
            return self._by_name[full]
        except KeyError:
            raise KeyError(f"unknown schema {name!r}; known: {sorted(self._by_name)}") from None

    def by_fingerprint(self, fingerprint: bytes) -> AvroSchema | None:
        """The schema (current or historical) with this fingerprint, or None."""
        return self._by_fingerprint.get(fingerprint)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[AvroSchema]:
        return iter(self._by_name.values())


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


@lru_cache(maxsize=1)
def default_schema_set() -> SchemaSet:
    """The packaged schemas, loaded once on first use (never at import time)."""
    return SchemaSet.load()
