"""Avro single-object round trips for every schema, and writer-to-reader schema resolution."""

from __future__ import annotations

import io
import json

import pytest
from fastavro import schemaless_writer

from driftline.core.codec import DecodeError, Decoder, SchemaSet, encode
from driftline.core.codec.schema_set import compile_schema
from driftline.core.codec.single_object import MAGIC
from driftline.schemas import SCHEMA_DIR

from .conftest import SAMPLES, T0


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_schema(schemas, name):
    record = SAMPLES[name]
    decoded = Decoder(name, schemas).decode(encode(name, record, schemas))
    assert decoded == record
    assert type(decoded[_first_timestamp(name)]) is int  # never datetime


def _first_timestamp(name):
    declared = json.loads((SCHEMA_DIR / f"{name.split('.')[1]}.avsc").read_text())
    return next(
        f["name"]
        for f in declared["fields"]
        if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
    )


def test_defaults_are_filled_on_encode(schemas):
    drift = {
        k: v
        for k, v in SAMPLES["driftline.DriftEvent"].items()
        if k not in ("model_name", "model_version", "details")
    }
    decoded = Decoder("DriftEvent", schemas).decode(encode("DriftEvent", drift, schemas))
    assert decoded["model_name"] is None and decoded["model_version"] is None
    assert decoded["details"] == {}


def test_encode_rejects_an_invalid_record(schemas):
    with pytest.raises(DecodeError, match="label") as info:
        encode("Label", {**SAMPLES["driftline.Label"], "label": 2}, schemas)
    assert info.value.reason == "validation_error"


def test_older_writer_resolves_to_current_reader(event):
    old = json.loads((SCHEMA_DIR / "TransactionEvent.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "segment"]
    current = [json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.avsc"))]
    schemas = SchemaSet(current, history=[old])
    writer = compile_schema(old)
    body = io.BytesIO()
    schemaless_writer(body, writer.wire, {k: v for k, v in event.items() if k != "segment"})
    decoded = Decoder("TransactionEvent", schemas).decode(
        MAGIC + writer.fingerprint + body.getvalue()
    )
    assert decoded == {**event, "segment": "unknown"}


def test_a_known_but_different_schema_is_a_mismatch(schemas):
    label = encode("Label", SAMPLES["driftline.Label"], schemas)
    with pytest.raises(DecodeError) as info:
        Decoder("TransactionEvent", schemas).decode(label)
    assert info.value.reason == "schema_mismatch"
    assert "driftline.Label" in info.value.detail


def test_timestamps_before_1970_survive(schemas, event):
    event["event_time"] = -T0
    assert Decoder("TransactionEvent", schemas).decode(encode("TransactionEvent", event)) == event
