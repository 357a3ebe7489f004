"""JSON input: the same dicts as Avro, ISO-8601 timestamps, and field-naming validation errors."""

from __future__ import annotations

import json

import pytest

from driftline.core.codec import DecodeError, Decoder, encode, to_json

from .conftest import SAMPLES


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_and_avro_decode_to_equal_dicts(schemas, name):
    decoder = Decoder(name, schemas)
    from_json = decoder.decode(to_json(name, SAMPLES[name], schemas))
    from_avro = decoder.decode(encode(name, SAMPLES[name], schemas))
    assert from_json == from_avro == SAMPLES[name]


@pytest.mark.parametrize(
    "stamp, expected",
    [
        ("2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        ("2023-11-14T23:13:20.123+01:00", 1_700_000_000_123),
        ("2023-11-14T22:13:20.123456+00:00", 1_700_000_000_123),  # sub-ms truncated
        (1_700_000_000_123, 1_700_000_000_123),
    ],
)
def test_event_time_as_iso_or_epoch_ms(schemas, event, stamp, expected):
    raw = json.dumps({**event, "event_time": stamp}).encode()
    assert Decoder("TransactionEvent", schemas).decode(raw)["event_time"] == expected


def test_whitespace_bom_defaults_and_extra_keys(schemas, event):
    del event["segment"]
    raw = b"\xef\xbb\xbf \n" + json.dumps({**event, "extra": [1, 2]}).encode()
    decoded = Decoder("TransactionEvent", schemas).decode(raw)
    assert decoded == {**event, "segment": "unknown"}  # default filled, unknown key dropped


def test_integers_become_floats_for_doubles(schemas, event):
    raw = json.dumps({**event, "amount": 12}).encode()
    decoded = Decoder("TransactionEvent", schemas).decode(raw)
    assert decoded["amount"] == 12.0 and type(decoded["amount"]) is float


@pytest.mark.parametrize(
    "change, field, why",
    [
        ({"amount": "twelve"}, "amount", "expected a finite number"),
        ({"amount": float("nan")}, "amount", "nan is not allowed"),
        ({"amount": float("inf")}, "amount", "inf is not allowed"),
        ({"amount": None}, "amount", "got null"),
        ({"amount": True}, "amount", "expected a finite number"),
        ({"event_time": "2023-11-14T22:13:20"}, "event_time", "no timezone"),
        ({"event_time": "yesterday"}, "event_time", "not an ISO-8601"),
        ({"event_time": 1.7e12}, "event_time", "epoch milliseconds"),
        ({"entity_id": 17}, "entity_id", "expected a string"),
        ({"event_id": None}, "event_id", "got null"),
    ],
)
def test_bad_fields_name_the_field_and_the_reason(schemas, event, change, field, why):
    raw = json.dumps({**event, **change}).encode()  # json.dumps writes NaN/Infinity literals
    with pytest.raises(DecodeError) as info:
        Decoder("TransactionEvent", schemas).decode(raw)
    assert info.value.reason == "validation_error"
    assert f"field '{field}'" in info.value.detail
    assert why in info.value.detail


def test_missing_required_field(schemas, event):
    del event["merchant_id"]
    with pytest.raises(DecodeError, match="field 'merchant_id': required field is missing"):
        Decoder("TransactionEvent", schemas).decode(json.dumps(event).encode())


@pytest.mark.parametrize("label", [2, -1, True, "1"])
def test_label_must_be_0_or_1(schemas, label):
    raw = json.dumps({**SAMPLES["driftline.Label"], "label": label}).encode()
    with pytest.raises(DecodeError, match="field 'label'") as info:
        Decoder("Label", schemas).decode(raw)
    assert info.value.reason == "validation_error"


def test_map_values_are_checked_per_key(schemas):
    record = {**SAMPLES["driftline.FeatureRecord"], "values": {"a": 1.0, "b": "x"}}
    with pytest.raises(DecodeError, match=r"field 'values\['b'\]'"):
        Decoder("FeatureRecord", schemas).decode(json.dumps(record).encode())


def test_allowed_string_values(schemas):
    record = {**SAMPLES["driftline.ModelEvent"], "to_stage": "Prod"}
    with pytest.raises(DecodeError, match="'Prod' is not one of"):
        Decoder("ModelEvent", schemas).decode(json.dumps(record).encode())


def test_to_json_writes_bytes_with_the_avro_convention(schemas):
    letter = SAMPLES["driftline.DeadLetter"]
    decoded = Decoder("DeadLetter", schemas).decode(to_json("DeadLetter", letter, schemas))
    assert decoded["original"] == letter["original"]
