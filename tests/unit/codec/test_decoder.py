"""Format detection, a reason code and readable detail per kind of bad input, batch decoding."""

from __future__ import annotations

import json

import pytest

from driftline.core.codec import REASONS, DecodeError, Decoder, encode

from .conftest import SAMPLES


@pytest.fixture
def decoder(schemas) -> Decoder:
    return Decoder("driftline.TransactionEvent", schemas)


def _avro(event) -> bytes:
    return encode("driftline.TransactionEvent", event)


@pytest.mark.parametrize(
    "value, reason, detail",
    [
        (b"GARBAGE!", "decode_error", "first bytes 0x47 0x41 0x52 0x42 0x41 0x47 0x45 0x21;"),
        (b"", "decode_error", "empty value"),
        (b"{not json", "decode_error", "invalid JSON at line 1 column 2"),
        (b'{"amount": "\xff"}', "decode_error", "not valid UTF-8"),
        (b"\xc3\x01\x00\x01\x02\x03\x04\x05\x06\x07rest", "unknown_schema", "0001020304050607"),
        (b"\xc3\x01\x00", "decode_error", "single-object"),
        (b"\x00\x00\x00\x00\x01body", "decode_error", "DRIFTLINE_SCHEMA_REGISTRY_URL"),
    ],
)
def test_bad_input_reason_and_detail(decoder, value, reason, detail):
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason == reason
    assert detail in info.value.detail
    assert info.value.reason in REASONS


def test_unrecognised_detail_names_the_accepted_encodings(decoder):
    with pytest.raises(DecodeError) as info:
        decoder.decode(b"GARBAGE, lots of it")
    assert info.value.detail.endswith(
        "expected a JSON object, Avro single-object (C3 01) or Confluent wire format (00)"
    )
    assert "..." in info.value.detail


def test_truncated_avro_body(decoder, event):
    with pytest.raises(DecodeError, match="truncated") as info:
        decoder.decode(_avro(event)[:-5])
    assert info.value.reason == "decode_error"


def test_trailing_bytes_are_rejected(decoder, event):
    with pytest.raises(DecodeError, match="trailing bytes") as info:
        decoder.decode(_avro(event) + b"\x00\x00")
    assert info.value.reason == "decode_error"


def test_nan_inside_avro_is_a_validation_error(decoder, schemas, event):
    import io

    from fastavro import schemaless_writer

    body = io.BytesIO()
    schema = schemas.get("TransactionEvent")
    schemaless_writer(body, schema.wire, {**event, "amount": float("nan")})
    with pytest.raises(DecodeError, match="field 'amount'") as info:
        decoder.decode(b"\xc3\x01" + schema.fingerprint + body.getvalue())
    assert info.value.reason == "validation_error"


def test_a_json_array_is_not_a_record(decoder):
    with pytest.raises(DecodeError) as info:
        decoder.decode(b"[1, 2]")
    assert info.value.reason == "decode_error"


def test_decode_many_keeps_going_past_bad_records(decoder, event):
    good_json = json.dumps(event).encode()
    values = [
        _avro(event),
        b"GARBAGE",
        good_json,
        json.dumps({**event, "amount": "x"}).encode(),
        encode("Label", SAMPLES["driftline.Label"]),
        b"",
        _avro({**event, "event_id": "ev-2"}),
    ]
    records, failures = decoder.decode_many(values)
    assert [r["event_id"] for r in records] == ["ev-1", "ev-1", "ev-2"]
    assert [(i, e.reason) for i, e in failures] == [
        (1, "decode_error"),
        (3, "validation_error"),
        (4, "schema_mismatch"),
        (5, "decode_error"),
    ]


def test_decode_many_of_only_bad_input_never_raises(decoder):
    values = [bytes([b]) * 12 for b in range(256)]
    records, failures = decoder.decode_many(values)
    assert len(records) + len(failures) == 256
    assert all(e.reason in REASONS for _, e in failures)


class _Settings:
    schema_registry_url = None


def test_for_settings_without_registry_has_no_confluent(schemas):
    decoder = Decoder.for_settings(_Settings(), "driftline.Label", schemas)
    assert decoder.registry is None


def test_allowed_values_are_checked_inside_avro_too(schemas):
    import io

    from fastavro import schemaless_writer

    schema = schemas.get("Label")
    body = io.BytesIO()
    schemaless_writer(body, schema.wire, {**SAMPLES["driftline.Label"], "label": 7})
    with pytest.raises(DecodeError, match="field 'label': 7 is not one of") as info:
        Decoder("Label", schemas).decode(b"\xc3\x01" + schema.fingerprint + body.getvalue())
    assert info.value.reason == "validation_error"
