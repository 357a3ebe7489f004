"""Property-based fuzzing (hypothesis) of every decoder: bad input is a reason, never a crash.

Every record schema in ``schemas/`` has a :class:`Decoder` (the worker reads TransactionEvent,
the scorer FeatureRecord and ModelEvent, the producers write Label, ...), and each one is fed,
through all three framings (JSON, Avro single-object ``C3 01``, Confluent ``00`` with an
in-memory registry):

* arbitrary bytes, and arbitrary bytes behind every valid and invalid header;
* arbitrary JSON texts: nested objects and arrays, strings with lone surrogates, ints of up to
  6000 digits, NaN/Infinity tokens, deep nesting, BOMs and invalid UTF-8, and objects shaped
  like the schema whose fields hold anything;
* valid Avro records mutated: bytes flipped, the body truncated, extended, cut or given huge
  varint counts and lengths; written by one schema and read as another;
* valid records generated from the schema, which must decode back equal (round trip).

The property (`check_decode`): ``decode`` returns a dict that passes the schema's full
validation unchanged and can be encoded again, or raises :class:`DecodeError` whose ``reason``
is in ``REASONS`` and whose ``detail`` is a non-empty string. Any other exception fails.
``decode_many`` never raises (except ``RegistryUnavailable``, which means "retry", and only for a
value naming a registry id whose registry is down) and agrees value by value with ``decode``.
The bulk FeatureRecord reader of the scorer (``feature_records.py``) is fuzzed too: its fast path
must only take records the validating decoder accepts, with the very same values.

Each property is a plain function; the ``fuzz_*`` factories wrap it in ``@given`` for a decoder
factory, so the real decoders and deliberately broken ones (``test_*_can_fail``) run through the
same code: each suite is shown to fail on a broken decoder. Bugs these properties found are
kept as ``@example`` inputs.

Examples are deterministic (profile "ci", ``tests/conftest.py``). For a long random hunt:
``HYPOTHESIS_PROFILE=soak python -m pytest tests/unit/codec/test_fuzz_decoders.py`` (50 times
the examples, a fresh seed each run).
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any

import numpy as np
import pytest
from fastavro import schemaless_reader
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from driftline.core.codec import (
    REASONS,
    ConfluentRegistry,
    DecodeError,
    Decoder,
    RegistryUnavailable,
    SchemaSet,
    encode,
    encode_confluent,
    to_json,
)
from driftline.core.codec.feature_records import (
    FeatureRecordEncoder,
    FeatureRecordReader,
    PredictionWriter,
    zigzag_varint,
)
from driftline.core.codec.schema_set import compile_schema

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

SCHEMAS = SchemaSet.load()
NAMES = SCHEMAS.names  # every record schema Driftline has; each gets a Decoder


def budget(n: int) -> int:
    """`n` examples under the "ci" profile, scaled by the loaded profile's max_examples."""
    return max(1, n * settings.default.max_examples // 100)


# -- an in-memory Confluent schema registry ---------------------------------------------------
REGISTRY_URL = "http://registry.test"
ID_OF = {name: i for i, name in enumerate(NAMES, start=1)}
_OLD_EVENT = json.loads(json.dumps(SCHEMAS.get("driftline.TransactionEvent").declared))
_OLD_EVENT["fields"] = [f for f in _OLD_EVENT["fields"] if f["name"] != "segment"]
OLD_EVENT = compile_schema(_OLD_EVENT)  # an older writer version, resolvable to the reader
OLD_EVENT_ID, PROTOBUF_ID, MALFORMED_ID, BAD_SCHEMA_ID = 100, 101, 102, 103
DOWN_ID, UNREACHABLE_ID = 500, 503  # registry errors: RegistryUnavailable, not a dead letter
REGISTRY: dict[int, bytes] = {
    **{i: json.dumps({"schema": json.dumps(SCHEMAS.get(n).declared)}).encode()
       for n, i in ID_OF.items()},
    OLD_EVENT_ID: json.dumps({"schema": json.dumps(_OLD_EVENT)}).encode(),
    PROTOBUF_ID: json.dumps({"schemaType": "PROTOBUF", "schema": "syntax = 'proto3';"}).encode(),
    MALFORMED_ID: b"<html>not json</html>",
    BAD_SCHEMA_ID: json.dumps({"schema": '{"type": "record"}'}).encode(),
}
REGISTRY_IDS = [*REGISTRY, DOWN_ID, UNREACHABLE_ID, 0, 99, 2**32 - 1]


def fake_fetch(url: str) -> tuple[int, bytes]:
    """The registry's answer to ``GET .../schemas/ids/{id}``, without a network."""
    schema_id = int(url.rsplit("/", 1)[1])
    if schema_id == UNREACHABLE_ID:
        raise ConnectionRefusedError("connection refused")
    if schema_id == DOWN_ID:
        return 500, b'{"error_code": 50001, "message": "store down"}'
    if schema_id in REGISTRY:
        return 200, REGISTRY[schema_id]
    return 404, b'{"error_code": 40403, "message": "Schema not found"}'


def registry_is_down_for(value: bytes) -> bool:
    """Whether `value` is Confluent-framed with an id the fake registry cannot answer."""
    return (value[:1] == b"\x00" and len(value) >= 5
            and struct.unpack_from(">I", value, 1)[0] in (DOWN_ID, UNREACHABLE_ID))


MakeDecoder = Callable[[str], Decoder]


def shown(value: Any, limit: int = 3000) -> str:
    """The repr of a generated input for the failure report, cut to `limit` characters.

    The inputs are reported with ``note()``: the schemathesis pytest plugin (a test extra)
    replaces hypothesis's printer of falsifying examples by one that prints nothing."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def real_decoder(name: str) -> Decoder:
    return Decoder(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch))


REFERENCE = {name: real_decoder(name) for name in NAMES}  # re-decodes what a property checks


# -- the properties -----------------------------------------------------------------------------
def check_error(error: DecodeError) -> None:
    """A dead letter can be written for it: a known reason and a readable detail."""
    assert error.reason in REASONS, f"reason {error.reason!r} is not a DLQ reason"
    assert isinstance(error.detail, str) and error.detail.strip(), "empty detail"


def check_record(name: str, record: Any) -> None:
    """A decoded record is valid: full validation leaves it unchanged, and it can be written
    again (single-object) and read back equal, as every downstream stage will do."""
    assert type(record) is dict, f"decoded {type(record).__name__}, not a dict"
    try:
        revalidated = SCHEMAS.get(name).validate(record)
    except DecodeError as exc:
        raise AssertionError(f"a decoded record fails validation: {exc}") from None
    assert revalidated == record, "validation changes a decoded record"
    try:
        again = encode(name, record, SCHEMAS)
    except Exception as exc:  # any failure to write it back is the finding
        raise AssertionError(f"a decoded record cannot be encoded: {exc!r}") from None
    assert REFERENCE[name].decode(again) == record, "a decoded record does not round-trip"


def check_decode(decoder: Decoder, value: bytes) -> dict[str, Any] | DecodeError | None:
    """THE decoder property: a valid record or a DecodeError with a reason; None when the
    (fake) registry is down, which is the only other outcome allowed."""
    try:
        record = decoder.decode(value)
    except DecodeError as exc:
        check_error(exc)
        return exc
    except RegistryUnavailable:
        assert registry_is_down_for(value), "RegistryUnavailable for a registry that answered"
        return None
    check_record(decoder.schema.name, record)
    return record


def check_decode_many(decoder: Decoder, values: list[bytes]) -> None:
    """``decode_many`` never raises and agrees, value by value, with ``decode``: the records of
    the good values in order, one (index, error) per bad value."""
    try:
        records, failures = decoder.decode_many(values)
    except RegistryUnavailable:
        assert any(registry_is_down_for(v) for v in values), "RegistryUnavailable, registry up"
        return
    indices = [i for i, _ in failures]
    assert indices == sorted(set(indices)) and all(0 <= i < len(values) for i in indices)
    assert len(records) + len(failures) == len(values), "a value is neither record nor failure"
    expected = [check_decode(decoder, v) for v in values]
    assert records == [e for e in expected if isinstance(e, dict)]
    assert [(i, e.reason) for i, e in failures] == [
        (i, e.reason) for i, e in enumerate(expected) if isinstance(e, DecodeError)]
    for _, error in failures:
        check_error(error)


# -- strategies: bytes ----------------------------------------------------------------------
SINGLE_OBJECT_HEADERS = [b"\xc3\x01" + SCHEMAS.get(n).fingerprint for n in NAMES] + [
    b"\xc3\x01" + OLD_EVENT.fingerprint]
SPECIAL_VARINTS = [zigzag_varint(n) for n in (-1, -2**31, 2**31, 2**62, -(2**62), 2**63 - 1,
                                               -(2**63))] + [b"\xff" * 10 + b"\x01",
                                                            b"\x80" * 12 + b"\x00"]


@cache
def confluent_header() -> st.SearchStrategy[bytes]:
    ids = st.one_of(st.sampled_from(REGISTRY_IDS), st.integers(0, 2**32 - 1))
    return ids.map(lambda i: b"\x00" + struct.pack(">I", i))


@cache
def headers() -> st.SearchStrategy[bytes]:
    """Every framing's header, valid or not, whole or cut short."""
    whole = st.one_of(
        st.sampled_from(SINGLE_OBJECT_HEADERS),
        st.binary(min_size=8, max_size=8).map(lambda f: b"\xc3\x01" + f),
        confluent_header(),
        st.sampled_from([b"{", b"\xef\xbb\xbf{", b" \n\t{", b"\xc3", b"\xc3\x02", b"\x00"]),
    )
    return st.one_of(whole, st.tuples(whole, st.integers(0, 9)).map(lambda t: t[0][:t[1]]))


@cache
def any_bytes() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, bare or behind a (possibly valid) header."""
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(headers(), st.binary(max_size=120)).map(b"".join),
    )


# -- strategies: JSON texts ---------------------------------------------------------------------
# What a valid string may hold: validation refuses NUL (the engine's numpy strings drop it).
NO_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
SURROGATE_OR_ASCII = st.one_of(st.characters(max_codepoint=0x7F),
                               st.characters(categories=["Cs"]))  # \ud800 to \udfff
NUMBER_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "0.0e0", "1E+2",
                 "9223372036854775808", "-9223372036854775809", "4.9e-324",
                 "1.7976931348623157e308"]


def _string_token(text: str) -> str:
    return json.dumps(text)  # ensure_ascii: a lone surrogate becomes a \udxxx escape


@cache
def json_scalars() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["null", "true", "false", *NUMBER_TOKENS]),
        st.integers().map(str),
        st.integers(300, 6000).map(lambda n: "1" + "0" * n),  # CPython converts 4300 digits max
        st.floats().map(lambda f: json.dumps(f)),  # NaN, Infinity too
        st.text(ANY_CHAR, max_size=12).map(_string_token),
        st.text(SURROGATE_OR_ASCII, min_size=1, max_size=4).map(_string_token),
        st.text(ANY_CHAR, max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.sampled_from(["2023-11-14T22:13:20.123Z", "2023-11-14T22:13:20", "9999-12-31T23:59Z",
                         "0001-01-01T00:00:00+00:00", "not a time"]).map(_string_token),
    )


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{_string_token(k)}:{v}" for k, v in pairs) + "}"


@cache
def json_texts() -> st.SearchStrategy[str]:
    """Any JSON value as text, nested up to a few levels, plus very deep nesting."""
    keys = st.one_of(st.sampled_from([f["name"] for n in NAMES
                                      for f in SCHEMAS.get(n).declared["fields"]]),
                     st.text(ANY_CHAR, max_size=6))
    nested = st.recursive(
        json_scalars(),
        lambda inner: st.one_of(st.lists(inner, max_size=4).map(_array),
                                st.lists(st.tuples(keys, inner), max_size=4).map(_object)),
        max_leaves=16,
    )
    deep = st.integers(1, 5000).flatmap(lambda n: st.sampled_from([
        "[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n]))
    return st.one_of(nested, deep)


@cache
def field_values(name: str) -> list[tuple[str, st.SearchStrategy[str], st.SearchStrategy[str]]]:
    """Per field of the schema: its name, its valid values and anything at all, as JSON text."""
    wild = st.one_of(json_scalars(), json_scalars(), json_texts())
    return [(field["name"], _values_of(field).map(_valid_json), wild)
            for field in SCHEMAS.get(name).declared["fields"]]


@st.composite
def _shaped(draw: st.DrawFn, name: str) -> str:
    pairs = []
    for field, valid, wild in field_values(name):
        fate = draw(st.integers(0, 9))  # mostly valid, so that validation reaches every field
        if fate < 7:
            pairs.append((field, draw(valid)))
        elif fate < 9:
            pairs.append((field, draw(wild)))
    if draw(st.integers(0, 4)) == 0:  # an unknown key, or a repeated one (the last one wins)
        key = draw(st.one_of(st.text(ANY_CHAR, max_size=6), st.just(pairs[0][0] if pairs else "")))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(json_texts())))
    return _object(pairs)


@cache
def schema_shaped(name: str) -> st.SearchStrategy[str]:
    """JSON objects with the schema's fields, most of them valid, some anything, some missing,
    sometimes with an unknown or a repeated key."""
    return _shaped(name)


@st.composite
def _one_field_off(draw: st.DrawFn, name: str) -> str:
    fields = field_values(name)
    off = draw(st.integers(0, len(fields) - 1))
    pairs = [(field, draw(wild if i == off else valid))
             for i, (field, valid, wild) in enumerate(fields)]
    return _object(pairs)


@cache
def one_field_off(name: str) -> st.SearchStrategy[str]:
    """A valid record as JSON but for one field, which holds anything at all."""
    return _one_field_off(name)


@cache
def json_bytes(name: str) -> st.SearchStrategy[bytes]:
    """JSON texts serialised as a producer might: UTF-8 (lone surrogates passed through as
    invalid UTF-8), a BOM or whitespace before, UTF-16, trailing junk."""
    text = st.one_of(json_texts(), schema_shaped(name), one_field_off(name))
    lead = st.sampled_from(["", "", " \n", "\ufeff"])
    encoding = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16"])
    tail = st.sampled_from(["", "", "", " ", "}", "x", "\x00"])
    return st.builds(lambda lead, t, enc, tail: (lead + t + tail).encode(enc, "surrogatepass"),
                     lead, text, encoding, tail)


# -- strategies: valid records from the schema --------------------------------------------------
PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(NO_NUL, max_size=16),  # validation refuses NUL (engine strings drop it)
    "long": st.integers(-(2**63), 2**63 - 1),
    "int": st.integers(-(2**31), 2**31 - 1),
    "double": st.floats(allow_nan=False, allow_infinity=False),
    "float": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "boolean": st.booleans(),
    "bytes": st.binary(max_size=16),
    "null": st.none(),
}


def _type_values(avro_type: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of([_type_values(branch) for branch in avro_type])
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "map":
            return st.dictionaries(st.text(NO_NUL, max_size=8), _type_values(avro_type["values"]),
                                   max_size=3)
        if kind == "array":
            return st.lists(_type_values(avro_type["items"]), max_size=3)
        if kind == "enum":
            return st.sampled_from(avro_type["symbols"])
        if kind == "record":
            return records_of(avro_type)
        return _type_values(kind)  # a logical type: its underlying type's values
    return PRIMITIVES[avro_type]


def _values_of(field: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "driftline.allowed" in field:
        return st.sampled_from(field["driftline.allowed"])
    return _type_values(field["type"])


def _valid_json(value: Any) -> str:
    return json.dumps(value.decode("latin-1") if isinstance(value, bytes) else value)


@cache
def records(name: str) -> st.SearchStrategy[dict]:
    """Records that satisfy the schema (fields with a default may be left out)."""
    return records_of(SCHEMAS.get(name).declared)


def records_of(schema: Mapping[str, Any]) -> st.SearchStrategy[dict]:
    fields = schema["fields"]
    required = {f["name"]: _values_of(f) for f in fields if "default" not in f}
    optional = {f["name"]: _values_of(f) for f in fields if "default" in f}
    return st.fixed_dictionaries(required, optional=optional)


def _is_timestamp(field: dict[str, Any]) -> bool:
    return isinstance(field["type"], dict) and field["type"].get("logicalType") == \
        "timestamp-millis"


_MIN_ISO_MS, _MAX_ISO_MS = -62_135_596_800_000, 253_402_300_799_999  # years 1 to 9999


def _iso(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(name: str, record: dict[str, Any], framing: str) -> bytes:
    """`record` written in one of the accepted encodings."""
    schema = SCHEMAS.get(name)
    if framing == "single-object":
        return encode(name, record, SCHEMAS)
    if framing == "confluent":
        return encode_confluent(ID_OF[name], schema, record)
    if framing == "json":
        return to_json(name, record, SCHEMAS)
    # "json-iso": timestamps as ISO-8601 strings where the calendar reaches, a BOM before.
    valid = schema.validate(record)
    for field in schema.declared["fields"]:
        if _is_timestamp(field) and _MIN_ISO_MS <= valid[field["name"]] <= _MAX_ISO_MS:
            valid[field["name"]] = _iso(valid[field["name"]])
    text = json.dumps(valid, default=lambda b: b.decode("latin-1"))
    return "\ufeff\n".encode() + text.encode()


FRAMINGS = ["single-object", "confluent", "json", "json-iso"]


# -- strategies: mutated Avro -------------------------------------------------------------------
@st.composite
def avro_mutants(draw: st.DrawFn) -> bytes:
    """A valid record of any schema, Avro-framed, then flipped, cut, extended or stuffed with
    huge varints, mostly behind the header so the body is what is read."""
    writer = draw(st.sampled_from(NAMES))
    record = draw(records(writer))
    framing = draw(st.sampled_from(["single-object", "confluent"]))
    data = bytearray(render(writer, record, framing))
    keep = 10 if framing == "single-object" else 5
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(min(draw(st.sampled_from([keep, keep, keep, 0])), len(data)),
                               len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "varint",
                                   "double"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "varint":
            data[pos:pos + draw(st.integers(0, 2))] = draw(st.sampled_from(SPECIAL_VARINTS))
        elif op == "double":  # a NaN or an infinity where a double may be
            data[pos:pos + 8] = struct.pack("<d", draw(st.sampled_from([math.nan, math.inf])))
    return bytes(data)


# -- the fuzz suites, parametrised by the decoder under test ------------------------------------
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large]


@cache
def any_value(name: str) -> st.SearchStrategy[bytes]:
    return st.one_of(any_bytes(), json_bytes(name), avro_mutants())


def cases(values: Callable[[str], st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    """(schema name, something drawn for that schema)."""
    return st.one_of([st.tuples(st.just(n), values(n)) for n in NAMES])


def _json_event(**changes: str) -> bytes:
    """A valid TransactionEvent as JSON text, with some fields' JSON text replaced."""
    fields = {"event_id": '"ev-1"', "entity_id": '"card-1"', "event_time": "1700000000123",
              "amount": "42.5", "merchant_id": '"m-7"', "channel": '"pos"', "country": '"GB"',
              **changes}
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


# Inputs these suites found to break a decoder (fixed in driftline/core/codec), kept as examples.
FOUND_BY_FUZZING = [
    # json_codec: an integer literal of over 4300 digits made json.loads raise a bare ValueError.
    ("driftline.TransactionEvent", _json_event(amount="1" + "0" * 4300)),
    # validation: an integer too large for a double raised OverflowError in float().
    ("driftline.DriftEvent", b'{"detector":"","kind":"feature","subject":"","statistic":1'
     + b"0" * 309 + b',"threshold":0.0,"window_start":0,"window_end":0,"detected_at":0}'),
    ("driftline.TransactionEvent", _json_event(amount="1" + "0" * 309)),
    # validation: an epoch-ms timestamp beyond the Avro long range passed, then could not be
    # written (OverflowError in the Avro writer; int64 overflow in the feature engine).
    ("driftline.ModelEvent", b'{"model_name":"","version":0,"from_stage":"None",'
     b'"to_stage":"None","at":9223372036854775808}'),
    ("driftline.TransactionEvent", _json_event(event_time="-9223372036854775809")),
    # validation: a lone surrogate escape in a JSON string passed, then could not be written
    # as UTF-8 (UnicodeEncodeError in the Avro writer, Parquet, the feature records).
    ("driftline.FeatureRecord", b'{"event_id":"","entity_id":"","event_time":0,"view":"",'
     b'"view_version":"\\ud800"}'),
    ("driftline.TransactionEvent", _json_event(entity_id='"card-\\udc00"')),
    ("driftline.FeatureRecord", b'{"event_id":"","entity_id":"","event_time":0,"view":"",'
     b'"view_version":"","slices":{"\\ud800":""}}'),
    # validation: an Avro int read as a varint beyond 32 bits (2**31 here) passed the check of
    # Avro-decoded records.
    ("driftline.Prediction", b"\xc3\x01\xc3\xae\xf0\xd8\x80\x0f)\xae" + b"\x00" * 21
     + b"\x80\x80\x80\x80\x10\x00\x00\x00\x00"),
]


def _found(run: Callable[..., None]) -> Callable[..., None]:
    for case in FOUND_BY_FUZZING:
        run = example(case=case)(run)
    return run


def _reader_found(run: Callable[..., None]) -> Callable[..., None]:
    for batch in READER_FOUND_BY_FUZZING:
        run = example(batch=batch)(run)
    return run


def fuzz_any_value(make: MakeDecoder, **overrides: Any) -> Callable[[], None]:
    """Arbitrary bytes, JSON texts and mutated Avro into every decoder: `check_decode`."""

    @settings(max_examples=budget(2000), suppress_health_check=SUPPRESS, **overrides)
    @given(case=cases(any_value))
    @_found
    def run(case: tuple[str, bytes]) -> None:
        name, value = case
        note(f"decoder {name}, value {shown(value)}")
        check_decode(make(name), value)

    return run


def fuzz_round_trip(make: MakeDecoder, **overrides: Any) -> Callable[[], None]:
    """A valid record in any framing decodes to exactly the validated record."""

    @settings(max_examples=budget(500), suppress_health_check=SUPPRESS, **overrides)
    @given(data=st.data(), name=st.sampled_from(NAMES), framing=st.sampled_from(FRAMINGS))
    def run(data: st.DataObject, name: str, framing: str) -> None:
        record = data.draw(records(name), label="record")
        note(f"{name} in {framing}: {shown(record)}")
        expected = SCHEMAS.get(name).validate(record)
        decoded = check_decode(make(name), render(name, record, framing))
        assert decoded == expected, f"{framing} round trip changed the record"

    return run


def fuzz_old_writer(make: MakeDecoder, **overrides: Any) -> Callable[[], None]:
    """A TransactionEvent written with an older registered version resolves to the reader
    schema, the missing field taking its default."""

    @settings(max_examples=budget(50), suppress_health_check=SUPPRESS, **overrides)
    @given(record=records_of(_OLD_EVENT))
    def run(record: dict[str, Any]) -> None:
        note(f"old TransactionEvent: {shown(record)}")
        value = encode_confluent(OLD_EVENT_ID, OLD_EVENT, record)
        decoded = check_decode(make("driftline.TransactionEvent"), value)
        assert decoded == {**OLD_EVENT.validate(record), "segment": "unknown"}

    return run


@cache
def rendered(name: str) -> st.SearchStrategy[bytes]:
    """Valid records of the schema, in any framing."""
    return st.tuples(records(name), st.sampled_from(FRAMINGS)).map(
        lambda rf: render(name, rf[0], rf[1]))


@cache
def batch_values(name: str) -> st.SearchStrategy[list[bytes]]:
    """A batch of up to 8 values: valid records and garbage of every kind, in any order."""
    return st.lists(st.one_of(rendered(name), rendered(name), any_value(name)), max_size=8)


def fuzz_decode_many(make: MakeDecoder, **overrides: Any) -> Callable[[], None]:
    """Batches mixing valid records and garbage: `check_decode_many`."""

    @settings(max_examples=budget(400), suppress_health_check=SUPPRESS, **overrides)
    @given(case=cases(batch_values))
    def run(case: tuple[str, list[bytes]]) -> None:
        name, values = case
        note(f"decoder {name}, values {shown(values)}")
        check_decode_many(make(name), values)

    return run


def test_any_value_is_a_valid_record_or_a_reason():
    """Any bytes, JSON text or mutated Avro, into every schema's decoder: `check_decode`."""
    fuzz_any_value(real_decoder)()


def test_valid_records_round_trip_in_every_framing():
    """Records generated from each schema decode back to themselves (defaults filled) from
    single-object, Confluent, JSON and JSON with ISO-8601 times behind a BOM."""
    fuzz_round_trip(real_decoder)()


def test_an_older_writer_version_resolves_to_the_reader():
    """Schema evolution through the registry: the field the old writer lacked is defaulted."""
    fuzz_old_writer(real_decoder)()


def test_decode_many_never_raises_and_agrees_with_decode():
    """Mixed batches: `check_decode_many` (RegistryUnavailable only for a registry outage)."""
    fuzz_decode_many(real_decoder)()


# -- the scorer's bulk FeatureRecord reader -----------------------------------------------------
VIEW, VERSION = "transactions_v1", "0123456789ab"
FEATURE_DECODER = REFERENCE["driftline.FeatureRecord"]
PREDICTION_DECODER = REFERENCE["driftline.Prediction"]


@st.composite
def feature_batches(draw: st.DrawFn) -> tuple[list[str], list[bytes]]:
    """Feature names of a view, and messages for it: the encoder's records of this and other
    versions and name orders, some mutated, some garbage."""
    names = draw(st.lists(st.text(NO_NUL, min_size=1, max_size=6), max_size=4, unique=True))
    slice_names = draw(st.lists(st.text(NO_NUL, min_size=1, max_size=6), max_size=2,
                                unique=True))
    n = draw(st.integers(1, 6))
    messages: list[bytes] = []
    for _ in range(draw(st.integers(1, 2))):
        version = draw(st.sampled_from([VERSION, VERSION, "ffffffffffff"]))
        order = draw(st.permutations(names)) if draw(st.booleans()) else names
        encoder = FeatureRecordEncoder(VIEW, version, order, slice_names, SCHEMAS)
        values = np.array(draw(st.lists(
            st.lists(st.floats(), min_size=len(names), max_size=len(names)),
            min_size=n, max_size=n)), dtype=np.float64).reshape(n, len(names))
        ids = draw(st.lists(st.text(NO_NUL, max_size=8), min_size=n, max_size=n))
        times = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        slices = [draw(st.lists(st.text(max_size=6), min_size=n, max_size=n))
                  for _ in slice_names]
        messages += encoder.encode_batch(ids, ids[::-1], times, values, slices)
    for i in draw(st.lists(st.integers(0, len(messages) - 1), max_size=3)):
        messages[i] = draw(_mutation_of(messages[i]))
    extra = draw(st.lists(st.one_of(any_bytes(), avro_mutants()), max_size=2))
    order = draw(st.permutations(messages + extra))
    return names, list(order)


def _mutation_of(message: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(message)
        pos = draw(st.integers(10, len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "double"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "double":
            data[pos:pos + 8] = struct.pack("<d", draw(st.sampled_from([math.nan, -math.inf])))
        return bytes(data)

    return mutate()


def check_fast_read(reader: FeatureRecordReader, names: list[str], messages: list[bytes]) -> None:
    """Each message is taken by the fast path or left to the generic decoder, exactly once; a
    fast one is a record the validating decoder accepts, of this view version, with the same
    values in the matrix, and the prediction written from its raw bytes is a valid one."""
    fast = reader.read(messages)
    assert sorted(fast.index + fast.others) == list(range(len(messages))), "lost or doubled"
    assert fast.matrix.shape == (len(fast.index), len(names))
    scores = np.linspace(0.0, 1.0, len(fast.index))
    predictions = PredictionWriter("fraud", 3, VIEW, VERSION, 0.5, SCHEMAS).write(fast, scores)
    for k, i in enumerate(fast.index):
        try:
            record = FEATURE_DECODER.decode(messages[i])
        except DecodeError as exc:
            raise AssertionError(f"the fast path took a record the decoder refuses: {exc}") \
                from None
        assert (record["view"], record["view_version"]) == (VIEW, VERSION)
        assert list(record["values"]) == names
        expected = np.array([np.nan if v is None else v for v in record["values"].values()],
                            dtype=np.float64)  # a null is NaN in the matrix
        assert expected.tobytes() == fast.matrix[k].tobytes(), "fast values differ"
        try:
            prediction = PREDICTION_DECODER.decode(predictions[k])
        except DecodeError as exc:
            raise AssertionError(f"the fast path wrote an invalid prediction: {exc}") from None
        same = ("event_id", "entity_id", "event_time", "slices")
        assert {f: prediction[f] for f in same} == {f: record[f] for f in same}
        assert prediction["inputs"] == record["values"]


def _feature_record(names: list[str], values: list[float], event_id: str = "e",
                    slices: tuple[str, ...] = ()) -> bytes:
    encoder = FeatureRecordEncoder(VIEW, VERSION, names, slices, SCHEMAS)
    return encoder.encode_batch([event_id], ["k"], [0], np.array([values]).reshape(1, -1),
                                [["v"] for _ in slices])[0]


def _with_byte(message: bytes, index: int, byte: int) -> bytes:
    return message[:index] + bytes([byte]) + message[index + 1:]


# Batches that broke the fast reader (fixed in feature_records.py), kept as examples.
READER_FOUND_BY_FUZZING = [
    # An infinity (or NaN) in the values took the fast path; the decoder refuses it.
    (["0"], [_feature_record(["0"], [math.inf])]),
    # A view without features: the double offsets were a float array, an IndexError.
    ([], [_feature_record([], [])]),
    # Invalid UTF-8 in event_id (byte 11, after the header and the length) took the fast path.
    (["0"], [_with_byte(_feature_record(["0"], [1.0]), 11, 0xB0)]),
    # The same in a slice value (the byte before the map's end).
    (["0"], [_with_byte(_feature_record(["0"], [1.0], slices=("s",)), -2, 0xFF)]),
]


def fuzz_fast_reader(make: Callable[[list[str]], FeatureRecordReader],
                     **overrides: Any) -> Callable[[], None]:
    """Batches of feature records, valid, mutated and garbage: `check_fast_read`."""

    @settings(max_examples=budget(400), suppress_health_check=SUPPRESS, **overrides)
    @given(batch=feature_batches())
    @_reader_found
    def run(batch: tuple[list[str], list[bytes]]) -> None:
        names, messages = batch
        note(f"features {names!r}, messages {shown(messages)}")
        check_fast_read(make(names), names, messages)

    return run


def real_reader(names: list[str]) -> FeatureRecordReader:
    return FeatureRecordReader(VIEW, VERSION, names, SCHEMAS)


def test_the_fast_feature_reader_only_takes_what_the_decoder_accepts():
    """The scorer's fast path: `check_fast_read` on valid, mutated and garbage records."""
    fuzz_fast_reader(real_reader)()


# -- tests of the tests: each suite fails on a deliberately broken decoder ----------------------
BROKEN_RUN: dict[str, Any] = {"report_multiple_bugs": False,
                               "phases": [Phase.generate, Phase.shrink]}
"""Without the explicit examples: the failure must be found by the search."""
UNSHRUNK_RUN: dict[str, Any] = {**BROKEN_RUN, "phases": [Phase.generate]}
"""For the slow shrinks: that the suite fails is the point, not the minimal example."""


def _falsified(run: Callable[[], None], expected: type[BaseException]) -> BaseException:
    """Run a suite that must fail; the failure is the expected kind, found by hypothesis."""
    with pytest.raises(expected) as info:
        run()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Failing test case" in notes or "Falsifying example" in notes, notes
    return info.value


class _ReadsTheHeaderFirst(Decoder):
    """Reads a single-object header byte before checking the length: IndexError on short
    values."""

    failed_on: list[bytes] = []

    def decode(self, value: bytes) -> dict[str, Any]:
        if value[:1] == b"\xc3" and len(value) < 10:
            self.failed_on.append(value)
            _ = value[9]
        return super().decode(value)


class _UnguardedJson(Decoder):
    """Parses JSON itself and forgets that bytes may not be JSON at all."""

    def decode(self, value: bytes) -> dict[str, Any]:
        if value.lstrip()[:1] == b"{":
            return self.schema.validate(json.loads(value))
        return super().decode(value)


class _UnguardedAvro(Decoder):
    """Reads the single-object body with fastavro without mapping its errors to reasons."""

    def decode(self, value: bytes) -> dict[str, Any]:
        writer = self.schemas.by_fingerprint(value[2:10])
        if value[:2] == b"\xc3\x01" and writer is not None and writer.name == self.schema.name:
            return self.schema.check_decoded(
                schemaless_reader(io.BytesIO(value[10:]), writer.wire, None))
        return super().decode(value)


class _StripsStrings(Decoder):
    """"Normalises" string fields by stripping whitespace: a valid record does not survive."""

    def decode(self, value: bytes) -> dict[str, Any]:
        record = super().decode(value)
        return {k: v.strip() if isinstance(v, str) else v for k, v in record.items()}


class _SkipsAfterAFailure(Decoder):
    """Batch decoding with an off-by-one: the value after a bad one is skipped silently."""

    def decode_many(self, values):
        records, failures, skip = [], [], False
        for index, value in enumerate(values):
            if skip:
                skip = False
                continue
            try:
                records.append(self.decode(value))
            except DecodeError as exc:
                failures.append((index, exc))
                skip = True
        return records, failures


def _broken(cls: type[Decoder]) -> MakeDecoder:
    return lambda name: cls(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch))


def test_the_any_value_suite_can_fail():
    """Short single-object headers are found, and so is a JSON parse left unguarded."""
    _falsified(fuzz_any_value(_broken(_ReadsTheHeaderFirst), **BROKEN_RUN), IndexError)
    assert _ReadsTheHeaderFirst.failed_on[-1] == b"\xc3"  # shrunk to the minimal input
    error = _falsified(fuzz_any_value(_broken(_UnguardedJson), **BROKEN_RUN), ValueError)
    assert not isinstance(error, DecodeError)


def test_the_any_value_suite_can_fail_on_unmapped_avro_errors():
    """A truncated or corrupt body read without mapping fastavro's errors is found."""
    error = _falsified(fuzz_any_value(_broken(_UnguardedAvro), **BROKEN_RUN), Exception)
    assert not isinstance(error, (DecodeError, AssertionError)), repr(error)


def test_the_round_trip_suite_can_fail():
    """A decoder that strips whitespace from strings is caught by the round trip."""
    _falsified(fuzz_round_trip(_broken(_StripsStrings), **UNSHRUNK_RUN), AssertionError)


def test_the_decode_many_suite_can_fail():
    """A batch decoder that skips the value after a bad one is caught."""
    _falsified(fuzz_decode_many(_broken(_SkipsAfterAFailure), **UNSHRUNK_RUN), AssertionError)


class _LosesARecord(FeatureRecordReader):
    """A fast reader that drops the last record it was given from both paths."""

    def read(self, messages):
        batch = super().read(messages)
        last = len(messages) - 1
        if last in batch.others:
            batch.others.remove(last)
        return batch


def test_the_fast_reader_suite_can_fail():
    """A fast reader that loses a record (neither fast nor left to the decoder) is caught."""
    broken = _falsified(fuzz_fast_reader(
        lambda names: _LosesARecord(VIEW, VERSION, names, SCHEMAS), **BROKEN_RUN),
        AssertionError)
    assert "lost or doubled" in str(broken)
