"""Schema loading and fingerprints, checked against the Avro spec's CRC-64-AVRO and `avro`."""

from __future__ import annotations

import json

import pytest
from fastavro.schema import to_parsing_canonical_form

from driftline.core.codec import SchemaSet, encode
from driftline.core.codec.schema_set import compile_schema, strip_logical_types
from driftline.schemas import SCHEMA_DIR
from tests.avro_spec import crc64_avro

from .conftest import SAMPLES


def test_reference_crc_matches_the_avro_test_vector_for_null():
    # share/test/data/schema-tests.txt in the Avro repository: "null" -> 7195948357588979594
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_every_schema_file_is_loaded(schemas):
    assert schemas.names == sorted(SAMPLES)
    assert len(list(SCHEMA_DIR.glob("*.avsc"))) == len(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_single_object_header_is_c301_and_little_endian_crc64(schemas, name):
    declared = json.loads((SCHEMA_DIR / f"{name.split('.')[1]}.avsc").read_text())
    canonical = to_parsing_canonical_form(declared)
    assert "logicalType" not in canonical and "doc" not in canonical
    expected = b"\xc3\x01" + crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert encode(name, SAMPLES[name])[:10] == expected
    assert schemas.get(name).fingerprint == expected[2:]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fingerprint_agrees_with_the_avro_package(schemas, name):
    avro_schema = pytest.importorskip("avro.schema")
    declared = json.loads((SCHEMA_DIR / f"{name.split('.')[1]}.avsc").read_text())
    # avro 1.12 keeps {"type": "long"} for logical types in its canonical form, against the
    # spec's [PRIMITIVES] rule; stripping logicalType first gives it the spec's input.
    parsed = avro_schema.parse(json.dumps(strip_logical_types(declared)))
    assert parsed.fingerprint("CRC-64-AVRO") == schemas.get(name).fingerprint


def test_short_names_and_unknown_names(schemas):
    assert schemas.get("Label") is schemas.get("driftline.Label")
    with pytest.raises(KeyError, match="known"):
        schemas.get("driftline.Nope")


def test_history_schemas_are_indexed_by_fingerprint_only(tmp_path):
    for path in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    old = json.loads((SCHEMA_DIR / "TransactionEvent.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "segment"]
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "TransactionEvent.v1.avsc").write_text(json.dumps(old))
    loaded = SchemaSet.load(tmp_path)
    historic = loaded.by_fingerprint(compile_schema(old).fingerprint)
    assert historic is not None and historic is not loaded.get("TransactionEvent")
    assert "segment" not in [f["name"] for f in historic.declared["fields"]]
    assert loaded.names == SchemaSet.load().names  # history adds no reader schemas


def test_duplicate_names_are_rejected():
    declared = json.loads((SCHEMA_DIR / "Label.avsc").read_text())
    with pytest.raises(ValueError, match="twice"):
        SchemaSet([declared, declared])
