"""Raw events as columns into the engine: `EventBatch.from_columns` and the column-wise guard.

The feature stage will build its `EventBatch` from a `ColumnarDecoder`'s columns rather than
from dicts, and run the event-time guard on the event-time column. Both must be
indistinguishable from the per-record path: the same batch (arrays, dtypes and all), the same
engine output, the same rejections with the same details.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.core.codec import Decoder, SchemaSet, encode, to_json
from driftline.core.codec.columnar import ColumnarDecoder
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.event_time import EventTimeGuard
from driftline.core.features import EventBatch, FeatureEngine, load_definitions
from driftline.feature_defs import DEFINITIONS_DIR

SCHEMAS = SchemaSet.load()
VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
EVENT = "driftline.TransactionEvent"


def _both_ways(n: int, seed: int = 5) -> tuple[list[dict], EventBatch, EventBatch]:
    """Demo events decoded per record and as columns, each made into an EventBatch."""
    events = DemoGenerator(DemoConfig(seed=seed, n_entities=40)).events(n)
    values = [encode(EVENT, e, SCHEMAS) if i % 3 else to_json(EVENT, e, SCHEMAS)
              for i, e in enumerate(events)]
    decoder = Decoder(EVENT, SCHEMAS)
    records, _ = decoder.decode_many(values)
    rows, _ = ColumnarDecoder(decoder).decode_columns(values)
    seqs = np.arange(100, 100 + n)
    return (records, EventBatch.from_records(records, seqs, VIEW),
            EventBatch.from_columns(rows.columns, seqs, VIEW))


def assert_same_batch(expected: EventBatch, got: EventBatch) -> None:
    for name in ("entity", "event_time_ms", "seq"):
        a, b = getattr(expected, name), getattr(got, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert list(expected.fields) == list(got.fields)
    for name, column in expected.fields.items():
        assert column.dtype == got.fields[name].dtype, name
        assert column.tobytes() == got.fields[name].tobytes(), name


def test_from_columns_builds_the_batch_from_records_builds():
    _, by_records, by_columns = _both_ways(500)
    assert_same_batch(by_records, by_columns)
    assert by_columns.fields["amount"].dtype == np.float64
    assert by_columns.fields["merchant_id"].dtype.kind == "U"


def test_the_engine_computes_the_same_values_from_either_batch():
    _, by_records, by_columns = _both_ways(800, seed=9)
    a, b = FeatureEngine(VIEW), FeatureEngine(VIEW)
    for lo in range(0, 800, 250):
        ra, rb = a.process(by_records.take(slice(lo, lo + 250))), \
            b.process(by_columns.take(slice(lo, lo + 250)))
        assert np.array_equal(ra.values, rb.values, equal_nan=True)
        assert np.array_equal(ra.online_entity, rb.online_entity)
        assert np.array_equal(ra.online_values, rb.online_values, equal_nan=True)


def test_a_missing_column_is_left_out_as_a_missing_record_field_is():
    records, _, _ = _both_ways(5)
    without = [{k: v for k, v in r.items() if k != "merchant_id"} for r in records]
    columns = {name: [r[name] for r in without] for name in without[0]}  # lists do too
    assert_same_batch(EventBatch.from_records(without, range(5), VIEW),
                      EventBatch.from_columns(columns, range(5), VIEW))
    assert "merchant_id" not in EventBatch.from_columns(columns, range(5), VIEW).fields


def test_only_the_fields_some_feature_reads_are_carried():
    records, by_records, by_columns = _both_ways(5)
    assert set(by_records.fields) == set(by_columns.fields) == {"amount", "merchant_id"}
    assert {"event_id", "segment", "channel"} <= set(records[0])  # in the events, not read


def test_an_empty_batch():
    rows, _ = ColumnarDecoder.for_schema(EVENT, SCHEMAS).decode_columns([])
    assert_same_batch(EventBatch.from_records([], [], VIEW),
                      EventBatch.from_columns(rows.columns, [], VIEW))


# -- the event-time guard on a column ------------------------------------------------------------
NOW = 1_800_000_000_000
INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=300)
@given(
    times=st.lists(st.one_of(INT64, st.integers(NOW - 10**6, NOW + 10**6),
                             st.sampled_from([0, -1, 946_684_800_000, 946_684_799_999])),
                   max_size=30),
    now=st.one_of(st.just(NOW), INT64),
    skew=st.one_of(st.just(60_000), st.integers(0, 2**64)),
    floor=st.one_of(st.just(946_684_800_000), st.integers(1, 2**64)),
)
def test_reject_columns_rejects_what_reject_rejects(times, now, skew, floor):
    """Any times, any clock and limits (beyond int64 too): the same rejections, details and
    indices as the per-record guard."""
    guard = EventTimeGuard("event_time", skew, floor)
    expected = guard.reject([{"event_time": t} for t in times], now)
    assert guard.reject_columns(np.asarray(times, dtype=np.int64), now) == expected


def test_reject_columns_on_decoded_columns():
    guard = EventTimeGuard.strictest([VIEW.source])
    records, _, _ = _both_ways(50)
    records[7]["event_time"] = NOW + 86_400_000
    records[9]["event_time"] = 5
    columns = np.asarray([r["event_time"] for r in records], dtype=np.int64)
    got = guard.reject_columns(columns, NOW)
    assert [(r.index, r.reason) for r in got] == [(7, "future_event_time"),
                                                   (9, "invalid_event_time")]
    assert got == guard.reject(records, NOW)


@pytest.mark.parametrize("now", [2**63 - 1, -(2**63)])
def test_a_clock_at_the_ends_of_int64_does_not_wrap(now):
    guard = EventTimeGuard("t", 60_000, 1)
    times = np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64)
    assert guard.reject_columns(times, now) == guard.reject([{"t": int(t)} for t in times], now)
