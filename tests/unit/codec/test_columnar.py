"""The columnar decoder agrees with the per-record decoder, value for value and error for error.

The property (`check_agrees`): for any batch, ``ColumnarDecoder.decode_columns`` yields the very
records ``Decoder.decode_many`` yields, as typed columns (each value equal in type and bits,
-0.0 included), at the same positions, and the very failures (index, reason, detail); or both
raise ``RegistryUnavailable``. Batches mix valid records of every framing with the garbage of
the decoder fuzz suite (``test_fuzz_decoders``), Avro bodies with strings that are not UTF-8,
NaN doubles and older writer schemas. A second property checks that the fast path is the one
taking plain valid records (the per-record decoder never sees them), so the first cannot pass
merely because everything fell back. Both are shown to fail on broken decoders.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from driftline.core.codec import (
    ConfluentRegistry,
    DecodeError,
    Decoder,
    RegistryUnavailable,
    avro_columns,
    columnar,
    encode,
    encode_confluent,
    json_columns,
    to_json,
)
from driftline.core.codec.columnar import ColumnarDecoder, RecordColumns
from driftline.core.codec.flat_schema import flat_fields
from driftline.core.demo_events import DemoConfig, DemoGenerator

from .conftest import SAMPLES
from .test_fuzz_decoders import (
    DOWN_ID,
    FOUND_BY_FUZZING,
    FRAMINGS,
    ID_OF,
    NO_NUL,
    OLD_EVENT,
    OLD_EVENT_ID,
    REGISTRY_URL,
    SCHEMAS,
    SUPPRESS,
    any_value,
    budget,
    fake_fetch,
    records,
    render,
    shown,
)

EVENT = "driftline.TransactionEvent"
FLAT = [name for name in SCHEMAS.names if flat_fields(SCHEMAS.get(name)) is not None]


def make_columnar(name: str = EVENT, registry: bool = True,
                  decoder: type[Decoder] = Decoder) -> ColumnarDecoder:
    """A columnar decoder whose fast path takes batches of any size, however small."""
    columnar = ColumnarDecoder(decoder(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch)
                                       if registry else None))
    columnar.per_record_below = 0
    return columnar


def _same(expected: Any, got: Any) -> bool:
    """Equal in type and value, floats bit for bit (so -0.0 is not 0.0)."""
    if isinstance(expected, float) or isinstance(got, float):
        return type(got) is float and struct.pack("<d", float(expected)) == struct.pack("<d", got)
    return type(expected) is type(got) and expected == got


def check_agrees(decoder: ColumnarDecoder, values: Sequence[bytes]) -> RecordColumns | None:
    """THE property: the columnar decoder's records and failures are the per-record ones."""
    reference = Decoder(decoder.schema.name, SCHEMAS, decoder.decoder.registry)
    try:
        records, failures = reference.decode_many(values)
    except RegistryUnavailable:
        with pytest.raises(RegistryUnavailable):
            decoder.decode_columns(values)
        return None
    rows, column_failures = decoder.decode_columns(values)
    assert [(i, e.reason, e.detail) for i, e in column_failures] == \
        [(i, e.reason, e.detail) for i, e in failures], "failures differ"
    failed = {i for i, _ in failures}
    assert rows.index.tolist() == [i for i in range(len(values)) if i not in failed]
    assert list(rows) == [spec.name for spec in decoder.fields], "columns not in field order"
    for spec in decoder.fields:
        column = rows[spec.name]
        assert column.dtype == spec.dtype and column.shape == (len(records),), spec.name
        for k, (record, got) in enumerate(zip(records, column.tolist(), strict=True)):
            assert _same(record[spec.name], got), \
                f"row {k} ({rows.index[k]}) field {spec.name}: {got!r} != {record[spec.name]!r}"
    return rows


# -- strategies -----------------------------------------------------------------------------------
def _raw_string(name: str, raw: bytes) -> bytes:
    """A single-object record whose first string field holds `raw`, which need not be UTF-8."""
    schema = SCHEMAS.get(name)
    first = next(s.name for s in flat_fields(schema) if s.kind == "string")
    marker = "\x7f" * len(raw)
    sample = {**SAMPLES[name], first: marker}
    data = encode(name, sample, SCHEMAS)
    at = data.index(marker.encode(), 10)
    return data[:at] + raw + data[at + len(raw):]


def _nan_double(name: str) -> bytes | None:
    schema = SCHEMAS.get(name)
    doubles = [s.name for s in flat_fields(schema) if s.kind == "double"]
    if not doubles:
        return None
    data = encode(name, {**SAMPLES[name], doubles[0]: 1.5}, SCHEMAS)
    return data.replace(struct.pack("<d", 1.5), struct.pack("<d", math.nan), 1)


def special_values(name: str) -> st.SearchStrategy[bytes]:
    """Values aimed at the columnar decoder's own edges."""
    options = [
        st.binary(min_size=1, max_size=6).map(lambda raw: _raw_string(name, raw)),
        st.text(min_size=1, max_size=4).map(
            lambda text: _raw_string(name, text.encode("utf-8", "surrogatepass"))),
        st.just(b"\xc3\x01" + SCHEMAS.get(name).fingerprint),  # a header without a body
    ]
    nan = _nan_double(name)
    if nan is not None:
        options.append(st.just(nan))
    if name == EVENT:  # an older writer version: resolved by the per-record decoder
        options.append(records(EVENT).map(lambda r: encode_confluent(
            OLD_EVENT_ID, OLD_EVENT, {k: v for k, v in r.items() if k != "segment"})))
    return st.one_of(options)


def batches(name: str) -> st.SearchStrategy[list[bytes]]:
    valid = st.tuples(records(name), st.sampled_from(FRAMINGS)).map(
        lambda rf: render(name, rf[0], rf[1]))
    return st.lists(st.one_of(valid, valid, any_value(name), special_values(name)),
                    max_size=24)


# -- the property, over every flat schema ------------------------------------------------------
@pytest.mark.parametrize("name", FLAT)
def test_columns_and_failures_equal_the_per_record_decoder(name):
    """Random batches of valid and invalid values in every framing: `check_agrees`."""
    decoder = make_columnar(name)

    @settings(max_examples=budget(300), suppress_health_check=SUPPRESS)
    @given(values=batches(name))
    def run(values: list[bytes]) -> None:
        note(f"{name}: {shown(values)}")
        check_agrees(decoder, values)

    run()


@pytest.mark.parametrize("name, value", [c for c in FOUND_BY_FUZZING if c[0] in FLAT])
def test_what_fuzzing_found_in_the_per_record_decoder(name, value):
    """The inputs that once broke the per-record decoder (4300-digit numbers, lone surrogates,
    longs beyond 64 bits), among good values."""
    good = encode(name, SAMPLES[name], SCHEMAS)
    check_agrees(make_columnar(name), [good, value, to_json(name, SAMPLES[name], SCHEMAS)])


def test_the_flat_schemas_include_the_raw_events():
    assert {"driftline.TransactionEvent", "driftline.Label"} <= set(FLAT)


# -- the fast path takes plain valid records -------------------------------------------------
def _plain_records(name: str) -> st.SearchStrategy[dict]:
    """Valid records with longs below 2**62 and doubles below 2**63 in magnitude: what the
    fast path must read itself (beyond those, it defers to fastavro and json on purpose)."""
    fields = SCHEMAS.get(name).declared["fields"]
    values = {"string": st.text(NO_NUL, max_size=12), "long": st.integers(-(2**62), 2**62 - 1),
              "double": st.floats(-(2.0**62), 2.0**62, allow_nan=False, allow_infinity=False)}
    out = {}
    for field in fields:
        kind = field["type"]["type"] if isinstance(field["type"], dict) else field["type"]
        if "driftline.allowed" in field:
            out[field["name"]] = st.sampled_from(field["driftline.allowed"])
        else:
            out[field["name"]] = values.get(kind, st.integers(-(2**31), 2**31 - 1))
    return st.fixed_dictionaries(out)


class CountingDecoder(Decoder):
    """A per-record decoder that remembers the values it was asked to decode."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[bytes] = []

    def decode(self, value: bytes) -> dict[str, Any]:
        self.seen.append(value)
        return super().decode(value)


def check_fast(decoder: ColumnarDecoder, values: Sequence[bytes]) -> None:
    """No plain valid value reaches the per-record decoder, and the columns still agree."""
    counting = make_columnar(decoder.schema.name, decoder=CountingDecoder)
    counting.per_record_below = decoder.per_record_below
    check_agrees(counting, values)
    seen = counting.decoder.seen
    assert seen == [], f"{len(seen)} plain values took the per-record path"


@pytest.mark.parametrize("name", FLAT)
def test_plain_valid_records_never_fall_back(name):
    decoder = make_columnar(name)
    framings = st.sampled_from(["single-object", "confluent", "json"])

    @settings(max_examples=budget(150), suppress_health_check=SUPPRESS)
    @given(batch=st.lists(st.tuples(_plain_records(name), framings), max_size=20))
    def run(batch: list[tuple[dict, str]]) -> None:
        values = [render(name, record, framing) for record, framing in batch]
        note(f"{name}: {shown(values)}")
        check_fast(decoder, values)

    run()


def test_demo_events_in_every_framing_never_fall_back():
    events = DemoGenerator(DemoConfig(seed=3)).events(13_000)
    values = [render(EVENT, e, FRAMINGS[i % 3]) for i, e in enumerate(events)]
    decoder = ColumnarDecoder.for_schema(EVENT, SCHEMAS, ConfluentRegistry(REGISTRY_URL,
                                                                          fake_fetch))
    check_fast(decoder, values)  # several passes of both readers
    assert min(avro_columns.CHUNK_ROWS, json_columns.CHUNK_ROWS) < len(values) / 3


def test_small_batches_are_decoded_record_by_record():
    """Below `per_record_below` values the fast path's fixed cost is not worth paying."""
    decoder = make_columnar(decoder=CountingDecoder)
    decoder.per_record_below = 4
    values = [GOOD, to_json(EVENT, SAMPLES[EVENT], SCHEMAS), b"junk"]
    rows, failures = decoder.decode_columns(values)
    assert decoder.decoder.seen == values
    assert rows.index.tolist() == [0, 1] and [i for i, _ in failures] == [2]
    assert rows["amount"].dtype == np.float64 and rows.to_records() == [SAMPLES[EVENT]] * 2
    decoder.decoder.seen.clear()
    decoder.decode_columns(values + [GOOD])
    assert decoder.decoder.seen == [b"junk"]
    assert ColumnarDecoder.per_record_below > 1  # the default: some 50 values


# -- the properties can fail ---------------------------------------------------------------------
NAN_AMOUNT = _nan_double(EVENT)
GOOD = encode(EVENT, SAMPLES[EVENT], SCHEMAS)


def test_the_property_fails_when_a_column_check_is_skipped(monkeypatch):
    monkeypatch.setattr(columnar, "invalid_rows", lambda spec, column: np.zeros(len(column), bool))
    with pytest.raises(AssertionError, match="failures differ"):
        check_agrees(make_columnar(), [GOOD, NAN_AMOUNT])


def test_the_property_fails_when_body_ends_are_not_checked(monkeypatch):
    """A reader that ignores a trailing byte (here: every body is taken to end one byte
    early) accepts a record the per-record decoder refuses."""
    read = avro_columns._read_chunk
    monkeypatch.setattr(avro_columns, "_read_chunk",
                        lambda buf, starts, ends, fields: read(buf, starts, ends - 1, fields))
    with pytest.raises(AssertionError, match="failures differ"):
        check_agrees(make_columnar(), [GOOD + b"\x01"])


def test_the_property_fails_on_a_wrong_json_reading(monkeypatch):
    real = json_columns.read_columns

    def lossy(values, fields):
        columns, sure = real(values, fields)
        return {n: (c[::-1] if c.dtype == object else c) for n, c in columns.items()}, sure

    monkeypatch.setattr(json_columns, "read_columns", lossy)
    values = [to_json(EVENT, {**SAMPLES[EVENT], "event_id": f"e{i}"}, SCHEMAS) for i in range(3)]
    with pytest.raises(AssertionError, match="field event_id"):
        check_agrees(make_columnar(), values)


def test_the_fast_path_check_fails_when_everything_falls_back(monkeypatch):
    monkeypatch.setattr(json_columns, "read_columns", lambda values, fields: (
        {spec.name: np.zeros(0, spec.dtype) for spec in fields}, np.zeros(len(values), bool)))
    monkeypatch.setattr(columnar.ColumnarDecoder, "_avro_headers",
                        lambda self, values, *args: np.zeros(len(values), np.int64))
    with pytest.raises(AssertionError, match="took the per-record path"):
        check_fast(make_columnar(), [GOOD, to_json(EVENT, SAMPLES[EVENT], SCHEMAS)])


# -- examples: what each bad value becomes, and the API ------------------------------------------
def _json(**changes: Any) -> bytes:
    return json.dumps({**SAMPLES[EVENT], **changes}).encode()


@pytest.mark.parametrize("value, reason, detail", [
    (b"", "decode_error", "empty value"),
    (GOOD[:-3], "decode_error", "truncated"),
    (GOOD + b"\x01", "decode_error", "1 trailing bytes"),
    (NAN_AMOUNT, "validation_error", "field 'amount': nan is not allowed"),
    (_raw_string(EVENT, b"\xff\xfe"), "decode_error", "can't decode byte 0xff"),
    (_raw_string(EVENT, b"a\x00"), "validation_error", "field 'event_id': contains a NUL"),
    (b"\xc3\x01" + bytes(8) + GOOD[10:], "unknown_schema", "0000000000000000"),
    (encode_confluent(ID_OF["driftline.Label"], SCHEMAS.get("driftline.Label"),
                      SAMPLES["driftline.Label"]), "schema_mismatch", "cannot be read"),
    (encode_confluent(99, SCHEMAS.get(EVENT), SAMPLES[EVENT]), "unknown_schema", "99"),
    (_json(amount=float("nan")), "validation_error", "field 'amount'"),
    (_json(entity_id=7), "validation_error", "field 'entity_id': expected a string"),
    (_json(event_time=2**63), "validation_error", "outside the Avro long range"),
    (_json(event_time="2023-11-14T22:13:20"), "validation_error", "has no timezone"),
    (b'{"event_id": "e"', "decode_error", "invalid JSON"),
    (b"GARBAGE", "decode_error", "unrecognised encoding"),
])
def test_a_bad_value_gets_the_per_record_reason_and_detail(value, reason, detail):
    rows, failures = make_columnar().decode_columns([GOOD, value, GOOD])
    assert rows.index.tolist() == [0, 2]
    ((index, error),) = failures
    assert (index, error.reason) == (1, reason) and detail in error.detail
    check_agrees(make_columnar(), [GOOD, value, GOOD])


@pytest.mark.parametrize("value", [
    _json(event_time="2023-11-14T22:13:20.123Z"),  # ISO time: the per-record decoder converts
    _json(unknown={"deep": [1, 2]}),  # an unknown key is dropped
    json.dumps({k: v for k, v in SAMPLES[EVENT].items() if k != "segment"}).encode(),
    b"\xef\xbb\xbf " + _json(),  # BOM and whitespace before the object
    _json(amount=12),  # an int for a double
    _raw_string(EVENT, "\u00e9t\u00e9".encode()),  # non-ASCII UTF-8 in Avro
    encode_confluent(OLD_EVENT_ID, OLD_EVENT,
                     {k: v for k, v in SAMPLES[EVENT].items() if k != "segment"}),
])
def test_unusual_good_values_are_decoded(value):
    rows = check_agrees(make_columnar(), [GOOD, value])
    assert rows is not None and len(rows) == 2


def test_columns_have_the_field_dtypes_and_values():
    sample = SAMPLES[EVENT]
    values = [encode(EVENT, sample, SCHEMAS), to_json(EVENT, sample, SCHEMAS),
              encode_confluent(ID_OF[EVENT], SCHEMAS.get(EVENT), sample)]
    rows, failures = make_columnar().decode_columns(values)
    assert failures == [] and rows.index.tolist() == [0, 1, 2]
    assert rows["event_time"].dtype == np.int64 and rows["amount"].dtype == np.float64
    assert rows["entity_id"].dtype == object
    assert rows.to_records() == [sample] * 3
    assert rows["event_time"].tolist() == [sample["event_time"]] * 3


def test_an_empty_batch_has_empty_typed_columns():
    rows, failures = make_columnar().decode_columns([])
    assert failures == [] and len(rows) == 0
    assert {n: c.dtype for n, c in rows.columns.items()} == \
        {s.name: s.dtype for s in make_columnar().fields}


def test_a_registry_outage_raises_as_decode_many_does():
    value = b"\x00" + struct.pack(">I", DOWN_ID) + GOOD[10:]
    with pytest.raises(RegistryUnavailable):
        make_columnar().decode_columns([GOOD, value])


def test_confluent_framing_without_a_registry_falls_back_to_the_reason():
    value = encode_confluent(ID_OF[EVENT], SCHEMAS.get(EVENT), SAMPLES[EVENT])
    rows, failures = make_columnar(registry=False).decode_columns([value])
    assert len(rows) == 0 and "DRIFTLINE_SCHEMA_REGISTRY_URL" in failures[0][1].detail


def test_a_schema_that_is_not_flat_is_refused():
    with pytest.raises(ValueError, match="not a flat record"):
        ColumnarDecoder.for_schema("driftline.FeatureRecord", SCHEMAS)


def test_take_drop_and_as_str():
    events = [{**SAMPLES[EVENT], "event_id": f"e{i}", "event_time": i} for i in range(4)]
    rows, _ = make_columnar().decode_columns(
        [b"junk", *(encode(EVENT, e, SCHEMAS) for e in events)])
    assert rows.index.tolist() == [1, 2, 3, 4]
    kept = rows.drop([0, 2])
    assert kept.index.tolist() == [2, 4] and kept["event_id"].tolist() == ["e1", "e3"]
    assert rows.take(rows["event_time"] >= 2).index.tolist() == [3, 4]
    assert rows.take([3]).to_records() == [events[3]]
    assert kept.as_str("event_time") == ["1", "3"] and kept.as_str("event_id") == ["e1", "e3"]
    assert rows.drop([]) is rows


def test_long_strings_and_many_rows():
    """Strings whose length needs a multi-byte varint, empty strings, non-ASCII, Avro and JSON,
    and bad values here and there, in a batch of several passes of both readers."""
    events = [{**SAMPLES[EVENT], "event_id": "x" * (i % 300), "merchant_id": "\u00e9" * (i % 90)}
              for i in range(4 * avro_columns.CHUNK_ROWS + 5)]
    values = [(encode if i % 2 else to_json)(EVENT, e, SCHEMAS) for i, e in enumerate(events)]
    bad = [NAN_AMOUNT, GOOD[:-1], _raw_string(EVENT, b"\xc3"), _json(amount="1"), b"{"]
    for k, i in enumerate((0, 17, avro_columns.CHUNK_ROWS - 1, avro_columns.CHUNK_ROWS,
                           2 * json_columns.CHUNK_ROWS + 1, len(values) - 1)):
        values[i] = bad[k % len(bad)]
    rows = check_agrees(make_columnar(), values)
    assert rows is not None and len(rows) == len(values) - 6


def test_a_decode_error_is_a_decode_error():
    _, failures = make_columnar().decode_columns([b"junk"])
    assert isinstance(failures[0][1], DecodeError)
