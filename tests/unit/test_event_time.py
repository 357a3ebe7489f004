"""The event-time guard: the pure rule, and the worker's ingest with it on the in-memory backend.

The rule (docs/feature-definitions.md): an event more than the source's `max_future_skew` ahead of
the reader's clock is dead-lettered as `future_event_time`, one before `min_event_time` as
`invalid_event_time`; neither reaches an engine, so neither moves a watermark.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import fastavro
import numpy as np
import pytest

from driftline.adapters.offline_store import OfflineStore
from driftline.core.event_time import EventTimeGuard, Rejection, format_ms
from driftline.core.features import load_definitions
from driftline.core.online import MemoryOnlineStore
from driftline.core.state import MemoryStateBackend
from driftline.feature_defs import DEFINITIONS_DIR
from tests.fakes import batches, messages
from tests.integration.helpers import avro_schema
from tests.unit.agents.test_feature_stage import DLQ, EVENTS, FEATURES, Worker
from tests.unit.features.feature_oracle import run_oracle_by_partition

NOW = 1_800_000_000_000  # 2027-01-15, the clock every test here reads
GUARD = EventTimeGuard("t", max_future_skew_ms=60_000, min_event_time_ms=946_684_800_000)
VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")


def times(*values: int) -> list[dict]:
    return [{"t": v} for v in values]


def test_the_limits_are_inclusive_and_everything_past_them_is_refused():
    records = times(NOW + 60_000, NOW + 60_001, 946_684_800_000, 946_684_799_999, NOW, 0, -1)
    got = GUARD.reject(records, NOW)
    assert [(r.index, r.reason) for r in got] == [
        (1, "future_event_time"), (3, "invalid_event_time"),
        (5, "invalid_event_time"), (6, "invalid_event_time")]


def test_the_detail_names_the_time_the_clock_and_the_setting():
    (future,) = GUARD.reject(times(NOW + 100 * 365 * 86_400_000), NOW)
    assert future == Rejection(0, "future_event_time", future.detail)
    assert "36500.0 days ahead of this worker's clock 1800000000000" in future.detail
    assert "2027-01-15T08:00:00.000Z" in future.detail and "(max_future_skew)" in future.detail
    (small,) = GUARD.reject(times(NOW + 90_000), NOW)
    assert "90.0 s ahead" in small.detail
    (old,) = GUARD.reject(times(-5), NOW)
    assert "t -5 (1969-12-31T23:59:59.995Z) is before" in old.detail
    assert "946684800000 (2000-01-01T00:00:00.000Z) (min_event_time)" in old.detail


@pytest.mark.parametrize("t", [2**63 - 1, -(2**63)])
def test_times_outside_the_calendar_are_refused_with_a_readable_detail(t):
    (r,) = GUARD.reject(times(t), NOW)
    assert "outside the calendar range" in r.detail
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"


def test_several_sources_on_one_topic_get_the_strictest_guard():
    a = SimpleNamespace(event_time_field="t", max_future_skew_ms=60_000, min_event_time_ms=5)
    b = SimpleNamespace(event_time_field="t", max_future_skew_ms=300_000, min_event_time_ms=9)
    assert EventTimeGuard.strictest([a, b]) == EventTimeGuard("t", 60_000, 9)
    with pytest.raises(ValueError, match="different event-time fields"):
        EventTimeGuard.strictest([a, SimpleNamespace(event_time_field="u",
                                                     max_future_skew_ms=1, min_event_time_ms=1)])
    with pytest.raises(ValueError, match="max_future_skew_ms"):
        EventTimeGuard("t", max_future_skew_ms=-1)


def test_ingest_dead_letters_guarded_events_and_applies_every_good_one(tmp_path):
    """One partition: good events with a century-ahead, a negative and a 1999 event among them.
    Every good event is applied with the values of a stream without the bad ones (which would
    be late after the century-ahead one, were it to move the watermark)."""
    events = _demo_events(600)
    bad = {
        200: dict(events[200], event_id="ahead", event_time=NOW + 100 * 365 * 86_400_000),
        201: dict(events[201], event_id="negative", event_time=-1),
        400: dict(events[400], event_id="y1999", event_time=915_148_800_000),
    }
    stream = [bad.get(i, e) for i, e in enumerate(events)]
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    worker = Worker(backend, tmp_path)
    worker.pipeline.guard = EventTimeGuard.strictest([VIEW.source])
    worker.pipeline.clock_ms = lambda: NOW
    worker.assign(0)
    for lo in range(0, len(stream), 150):
        values = [json.dumps(e).encode() for e in stream[lo:lo + 150]]
        worker.pipeline.process(batches(messages(EVENTS, 0, values, lo)))

    letters = [fastavro.schemaless_reader(io.BytesIO(v[10:]), avro_schema("DeadLetter"))
               for v, _ in worker.producer.on(DLQ)]
    assert [(d["source_offset"], d["reason"]) for d in letters] == [
        (200, "future_event_time"), (201, "invalid_event_time"), (400, "invalid_event_time")]
    good = [e for i, e in enumerate(stream) if i not in bad]
    (result,) = run_oracle_by_partition(VIEW, {0: good}).values()
    assert not result.late.any()
    for entity, (event_time, values) in result.final_online.items():
        row = backend.online.read(VIEW.name, entity)
        assert row.event_time_ms == event_time
        np.testing.assert_allclose([row.values[n] for n in VIEW.feature_names], values,
                                   rtol=1e-9, atol=1e-9, err_msg=entity)
    table = OfflineStore(tmp_path).read(OfflineStore(tmp_path).features_dir(VIEW.name))
    assert sorted(table.column("event_id").to_pylist()) == sorted(e["event_id"] for e in good)
    assert len(worker.producer.on(FEATURES)) == len(good)
    # Every offset is consumed, the guarded ones included: nothing is read twice or stalls.
    assert backend.offsets == {(EVENTS, 0): len(stream)}


def _demo_events(n: int) -> list[dict]:
    from driftline.core.demo_events import DemoConfig, DemoGenerator

    return DemoGenerator(DemoConfig(seed=3, n_entities=15, events_per_second=2.0)).events(n)
