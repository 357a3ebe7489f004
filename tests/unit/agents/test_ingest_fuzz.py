"""Property-based fuzzing (hypothesis) of the worker's ingest and feature stage, in process.

A batch mixes good demo events (``DemoGenerator``, in JSON, Avro single-object, Confluent and
JSON with ISO times), odd events (demo events with fields replaced by arbitrary text, amounts and
event times over the whole int64 range and beyond), and garbage (arbitrary bytes, arbitrary JSON,
mutated Avro of any schema, None values: the fuzz strategies of the decoder suite,
``tests/unit/codec/test_fuzz_decoders.py``), interleaved at random across two partitions and fed
in one or two consumed batches through :class:`IngestPipeline` into :class:`FeatureStage` (the
in-memory state backend and online store, Parquet in a temporary folder, as in
``test_feature_stage.py``). The property, `check_ingest`:

* nothing raises: no exception escapes the batch;
* every message has exactly the fate computed independently from the reference decoder, the
  event-time rule (``future_event_time`` beyond the clock plus the source's skew,
  ``invalid_event_time`` before its floor, year 2000) and the naive feature oracle
  (``run_oracle_by_partition``): garbage and invalid events give exactly one dead letter each,
  with the decoder's reason (all in ``ALL_REASONS``), guarded and late events one each with
  their reason, and every other event is applied: its feature record is produced, its Parquet
  row and the online values of its entity are the oracle's; the raw-event Parquet holds the
  accepted events only (a guarded one never reaches the offline store), and each partition's
  committed offset is past its last consumed message, rejected ones included (so a restart
  does not dead-letter them again);
* a guarded event stalls nothing: a plain demo event is only late behind an accepted event.

The same property runs against broken set-ups (``test_the_ingest_suite_finds_*``): a decoder
that dead-letters the good event after a bad one, a decoder that raises on short input, and a
pipeline without the event-time guard; hypothesis must find each. It also found that the
feature engine's fixed-width string arrays drop trailing NULs ('card-1\x00' merged into
'card-1'); strings with a NUL are now refused by validation
(``test_a_nul_in_an_entity_id_is_dead_lettered_not_merged``).

Examples are deterministic (profile "ci", ``tests/conftest.py``). For a long random hunt:
``HYPOTHESIS_PROFILE=soak python -m pytest tests/unit/agents/test_ingest_fuzz.py``.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from driftline.adapters.batch_loop import PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.offline_store import OfflineStore, PendingParquet
from driftline.agents.features import FeatureStage
from driftline.agents.ingest import IngestPipeline
from driftline.core.codec import ALL_REASONS, ConfluentRegistry, DecodeError, Decoder
from driftline.core.codec.columnar import ColumnarDecoder
from driftline.core.codec.errors import FUTURE_EVENT_TIME, INVALID_EVENT_TIME, LATE
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.event_time import EventTimeGuard
from driftline.core.features import load_definitions
from driftline.core.online import MemoryOnlineStore
from driftline.core.state import MemoryStateBackend, PartitionState
from driftline.feature_defs import DEFINITIONS_DIR
from tests.fakes import RecordingProducer, batches, messages
from tests.unit.codec.test_fuzz_decoders import (
    ANY_CHAR,
    FRAMINGS,
    REFERENCE,
    REGISTRY_URL,
    SCHEMAS,
    any_bytes,
    avro_mutants,
    budget,
    fake_fetch,
    json_bytes,
    registry_is_down_for,
    render,
    shown,
)
from tests.unit.features.feature_oracle import run_oracle_by_partition

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
SOURCE = VIEW.source
EVENTS, FEATURES, DLQ = "events", "features", "dlq"
POOL = DemoGenerator(DemoConfig(seed=7, n_entities=6, events_per_second=1.0)).events(300)
NOW = POOL[-1]["event_time"] + 60_000  # the worker's clock: a minute after the newest event
FUTURE_LIMIT = NOW + SOURCE.max_future_skew_ms
FLOOR = SOURCE.min_event_time_ms
LATENESS = SOURCE.allowed_lateness_ms
EVENT_DECODER = REFERENCE[SOURCE.schema]
LETTER_DECODER = REFERENCE["driftline.DeadLetter"]
RECORD_DECODER = REFERENCE["driftline.FeatureRecord"]


# -- one worker's ingest and feature stage, in memory -------------------------------------------
MakeDecoder = Callable[[str], Decoder]


def real_decoder(name: str) -> Decoder:
    return Decoder(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch))


class Worker:
    """IngestPipeline + FeatureStage over a fresh in-memory backend and a Parquet folder."""

    def __init__(self, root: Path, make_decoder: MakeDecoder, guarded: bool = True) -> None:
        self.root = root
        self.backend = MemoryStateBackend(online=MemoryOnlineStore())
        self.producer = RecordingProducer()
        offline = OfflineStore(root)
        bases = [offline.events_dir(EVENTS), offline.features_dir(VIEW.name)]
        state = PartitionState(self.backend, [EVENTS], [VIEW.name],
                               files=PendingParquet(offline, EVENTS, bases), compact_every=4)
        dead_letters = DeadLetterSink(self.producer, DLQ, SCHEMAS)
        stage = FeatureStage([VIEW], EVENTS, state, offline, self.producer, FEATURES,
                             dead_letters, SCHEMAS)
        guard = EventTimeGuard.strictest([SOURCE]) if guarded else None
        self.pipeline = IngestPipeline(make_decoder(SOURCE.schema), dead_letters, self.producer,
                                       stage, guard=guard, clock_ms=lambda: NOW)
        self.pipeline.on_assign([PartitionId(EVENTS, 0), PartitionId(EVENTS, 1)])


# -- strategies ---------------------------------------------------------------------------------
@dataclass
class Item:
    """One message of the fuzzed stream: what it is, its value and its partition."""

    kind: str  # "demo" (an unchanged demo event), "odd" (a demo event fuzzed), "garbage"
    value: bytes | None
    partition: int
    event: dict[str, Any] | None = None


def _partition_of(entity: Any) -> int:
    return zlib.crc32(str(entity).encode("utf-8", "surrogatepass")) % 2  # keyed by entity


EVENT_TIMES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), -1, 0, 1, FLOOR - 1, FLOOR, FUTURE_LIMIT, FUTURE_LIMIT + 1,
                     NOW, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    st.integers(POOL[0]["event_time"] - 3_600_000, FUTURE_LIMIT + 600_000),  # near the stream
)
"""Event times anywhere in int64, at the guard's limits, just beyond int64, and near the demo."""


ODD_TEXT = st.text(ANY_CHAR, max_size=6)
"""Any text, NULs included (validation refuses them: see the NUL test at the end)."""


@st.composite
def odd_events(draw: st.DrawFn, event: dict[str, Any]) -> dict[str, Any]:
    """A demo event with one to three fields replaced: any text (lone surrogates included),
    a negative or large amount, any event time; or the defaulted segment left out."""
    odd = dict(event)
    for field in draw(st.lists(st.sampled_from(["event_time", "event_time", "entity_id",
                                                "amount", "merchant_id", "channel", "country",
                                                "segment", "event_id", "-segment"]),
                               min_size=1, max_size=3, unique=True)):
        if field == "event_time":
            odd[field] = draw(EVENT_TIMES)
        elif field == "amount":
            odd[field] = draw(st.floats(-1e6, 1e6))
        elif field == "-segment":
            odd.pop("segment", None)
        else:
            odd[field] = draw(ODD_TEXT)
    return odd


def _encode(event: dict[str, Any], framing: str) -> bytes:
    """The event in the framing, or as plain JSON when the framing's encoder refuses it."""
    try:
        return render(SOURCE.schema, event, framing)
    except DecodeError:  # invalid (a lone surrogate, a time beyond int64): JSON carries it
        return json.dumps(event).encode()


def _is_garbage(value: bytes | None) -> bool:
    """Refused by the decoder (a registry outage would be retried, not dead-lettered)."""
    if value is None:
        return True
    if registry_is_down_for(value):
        return False
    try:
        EVENT_DECODER.decode(value)
    except DecodeError:
        return True
    return False


GARBAGE = st.one_of(st.none(), any_bytes(), json_bytes(SOURCE.schema), avro_mutants()).filter(
    _is_garbage)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Item], int]:
    """Consecutive demo events (some fuzzed) in random framings, garbage inserted at random
    positions and partitions; and where the stream is cut into two consumed batches."""
    start = draw(st.integers(0, len(POOL) - 30))
    items = []
    for event in POOL[start:start + draw(st.integers(1, 30))]:
        if draw(st.integers(0, 3)) == 0:
            kind, event = "odd", draw(odd_events(event))
        else:
            kind = "demo"
        value = _encode(event, draw(st.sampled_from(FRAMINGS)))
        items.append(Item(kind, value, _partition_of(event["entity_id"]), event))
    for value in draw(st.lists(GARBAGE, max_size=12)):
        items.insert(draw(st.integers(0, len(items))),
                     Item("garbage", value, draw(st.integers(0, 1))))
    return items, draw(st.integers(0, len(items)))


# -- the property -------------------------------------------------------------------------------
@dataclass
class Fate:
    """What must become of one message: a dead letter with `reason`, or applied (None)."""

    partition: int
    offset: int
    reason: str | None
    record: dict[str, Any] | None = None


def expected_fates(items: list[Item], guarded: bool = True) -> list[Fate]:
    """Each message's fate: the reference decoder, then the event-time rule, then the oracle."""
    fates, next_offset = [], {0: 0, 1: 0}
    for item in items:
        offset = next_offset[item.partition]
        next_offset[item.partition] += 1
        try:
            record = EVENT_DECODER.decode(item.value or b"")
        except DecodeError as exc:
            fates.append(Fate(item.partition, offset, exc.reason))
            continue
        t = record[SOURCE.event_time_field]
        if guarded and t > FUTURE_LIMIT:
            fates.append(Fate(item.partition, offset, FUTURE_EVENT_TIME))
        elif guarded and t < FLOOR:
            fates.append(Fate(item.partition, offset, INVALID_EVENT_TIME))
        else:
            fates.append(Fate(item.partition, offset, None, record))
    accepted = {p: [f for f in fates if f.partition == p and f.record is not None]
                for p in (0, 1)}
    oracle = run_oracle_by_partition(
        VIEW, {p: [f.record for f in fs] for p, fs in accepted.items() if fs})
    for p, result in oracle.items():
        for fate, late in zip(accepted[p], result.late, strict=True):
            fate.reason = LATE if late else None
    return fates


def check_ingest(make_decoder: MakeDecoder, items: list[Item], cut: int,
                 guarded: bool = True) -> None:
    """THE ingest property (see the module docstring)."""
    fates = expected_fates(items, guarded=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        worker = Worker(root, make_decoder, guarded)
        offsets = {0: 0, 1: 0}
        consumed = []
        for item in items:
            consumed.append(messages(EVENTS, item.partition, [item.value], offsets[item.partition],
                                     keys=[None])[0])
            offsets[item.partition] += 1
        for part in (consumed[:cut], consumed[cut:]):
            if part:
                worker.pipeline.process(batches(part))
        _check_dead_letters(worker, fates)
        _check_features(worker, root, fates)
        _check_no_stall(items, fates)
        for p in (0, 1):
            if offsets[p]:  # every consumed message is committed, bad ones at the end too
                assert worker.backend.offsets[(EVENTS, p)] == offsets[p], f"partition {p}"


def _check_dead_letters(worker: Worker, fates: list[Fate]) -> None:
    letters = [LETTER_DECODER.decode(value) for value, _ in worker.producer.on(DLQ)]
    for letter in letters:
        assert letter["reason"] in ALL_REASONS and letter["detail"].strip()
    got = Counter((d["source_partition"], d["source_offset"], d["reason"]) for d in letters)
    expected = Counter((f.partition, f.offset, f.reason) for f in fates if f.reason is not None)
    assert got == expected, (f"dead letters differ: missing {expected - got}, "
                             f"unexpected {got - expected}")


def _check_features(worker: Worker, root: Path, fates: list[Fate]) -> None:
    applied = [f for f in fates if f.record is not None and f.reason is None]
    records = [RECORD_DECODER.decode(value) for value, _ in worker.producer.on(FEATURES)]
    assert Counter((r["event_id"], r["entity_id"], r["event_time"]) for r in records) == Counter(
        (f.record["event_id"], f.record["entity_id"], f.record["event_time"]) for f in applied)
    accepted = {p: [f.record for f in fates if f.partition == p and f.record is not None]
                for p in (0, 1)}
    oracle = run_oracle_by_partition(VIEW, {p: rs for p, rs in accepted.items() if rs})
    online = worker.backend.online
    expected_entities = {e for result in oracle.values() for e in result.final_online}
    assert {entity for _, entity in online.rows} == expected_entities
    for result in oracle.values():
        for entity, (event_time, values) in result.final_online.items():
            row = online.read(VIEW.name, entity)
            assert row.event_time_ms == event_time, entity
            got = np.array([row.values[n] for n in VIEW.feature_names], dtype=np.float64)
            np.testing.assert_allclose(got, values, rtol=1e-9, atol=1e-9, err_msg=entity)
    store = OfflineStore(root)
    table = store.read(store.features_dir(VIEW.name)).to_pandas()
    raw = store.read(store.events_dir(EVENTS)).to_pandas()
    assert len(raw) == sum(len(rs) for rs in accepted.values()), "guarded events archived"
    if not applied:
        assert len(table) == 0
        return
    for p, result in oracle.items():
        rows = table[table["partition"] == p].sort_values("offset")
        offsets = np.array([f.offset for f in fates if f.partition == p and f.record is not None])
        keep = ~result.late
        np.testing.assert_array_equal(rows["offset"].to_numpy(), offsets[keep])
        np.testing.assert_allclose(rows[list(VIEW.feature_names)].to_numpy(dtype=np.float64),
                                   result.values[keep], rtol=1e-9, atol=1e-9)


def _check_no_stall(items: list[Item], fates: list[Fate]) -> None:
    """A plain demo event (the demo stream is in event-time order) is only ever late behind
    an accepted odd event more than the allowed lateness ahead of it; a guarded one counts not."""
    newest = {0: None, 1: None}
    for item, fate in zip(items, fates, strict=True):
        if fate.record is None:
            continue
        t = fate.record[SOURCE.event_time_field]
        if item.kind == "demo":
            assert fate.reason is None or (newest[item.partition] is not None
                                           and newest[item.partition] - LATENESS > t)
        newest[item.partition] = t if newest[item.partition] is None else max(
            newest[item.partition], t)


# -- the suite, parametrised by what is under test ----------------------------------------------
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def fuzz_ingest(make_decoder: MakeDecoder, guarded: bool = True,
                **overrides: Any) -> Callable[[], None]:
    @settings(**{"max_examples": budget(80), "suppress_health_check": SUPPRESS, **overrides})
    @given(stream=streams())
    def run(stream: tuple[list[Item], int]) -> None:
        items, cut = stream
        note(f"cut after {cut}: " + shown([(i.kind, i.partition, i.value) for i in items]))
        check_ingest(make_decoder, items, cut, guarded)

    return run


def test_any_batch_is_processed_or_dead_lettered_exactly():
    """Fuzzed batches through ingest and the feature stage: `check_ingest`."""
    fuzz_ingest(real_decoder)()


# -- tests of the test ---------------------------------------------------------------------------
BROKEN_RUN: dict[str, Any] = {"report_multiple_bugs": False, "max_examples": budget(200),
                              "phases": [Phase.generate]}


class _RejectsAfterGarbage(ColumnarDecoder):
    """Batch decoding whose error state leaks: the value after a bad one is dead-lettered too."""

    def decode_columns(self, values):
        rows, failures = super().decode_columns(values)
        failed = {index for index, _ in failures}
        leaked = [i + 1 for i in sorted(failed) if i + 1 < len(values) and i + 1 not in failed]
        position = {int(index): k for k, index in enumerate(rows.index)}
        rows = rows.drop([position[i] for i in leaked])
        failures += [(i, DecodeError("decode_error", "left over from the previous value"))
                     for i in leaked]
        return rows, sorted(failures, key=lambda failure: failure[0])


class _RaisesOnShortInput(Decoder):
    """Reads a header byte before checking the length: IndexError escapes the batch."""

    def decode(self, value: bytes) -> dict[str, Any]:
        if value[:1] == b"\xc3":
            _ = value[9]
        return super().decode(value)


def _broken(cls: type[Decoder]) -> MakeDecoder:
    return lambda name: cls(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch))


def _broken_batch(cls: type[ColumnarDecoder]) -> MakeDecoder:
    return lambda name: cls(Decoder(name, SCHEMAS, ConfluentRegistry(REGISTRY_URL, fake_fetch)))


def test_the_ingest_suite_finds_a_good_event_lost_after_garbage():
    """A decoder whose failure leaks onto the next value dead-letters a good event: caught."""
    with pytest.raises(AssertionError, match="dead letters differ"):
        fuzz_ingest(_broken_batch(_RejectsAfterGarbage), **BROKEN_RUN)()


def test_the_ingest_suite_finds_an_exception_escaping_the_batch():
    """A decoder raising IndexError on a short single-object value: the batch fails, caught."""
    with pytest.raises(IndexError):
        fuzz_ingest(_broken(_RaisesOnShortInput), **BROKEN_RUN)()


def test_the_ingest_suite_finds_events_the_missing_guard_lets_through():
    """Without the guard an implausible event time is accepted (and one far ahead makes the
    good events after it late): the property, which expects the guard's dead letters, fails."""
    with pytest.raises(AssertionError, match="dead letters differ"):
        fuzz_ingest(real_decoder, guarded=False, **BROKEN_RUN)()


# -- found by this suite outside the codec, fixed in validation ---------------------------------
@pytest.mark.parametrize("entity", ["\x00", "card-1\x00"])
def test_a_nul_in_an_entity_id_is_dead_lettered_not_merged(entity):
    """The minimal input hypothesis found (one event whose entity_id is a single NUL): numpy's
    fixed-width strings in the engine would drop the NUL and merge the entity with another, so
    validation refuses it, in every framing."""
    import io

    import fastavro

    from driftline.core.codec.single_object import header

    event = dict(POOL[0], entity_id=entity)
    schema = EVENT_DECODER.schema
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema.wire, event)  # a foreign writer: no validation
    for value in (header(schema) + body.getvalue(), json.dumps(event).encode()):
        with pytest.raises(DecodeError) as info:
            EVENT_DECODER.decode(value)
        assert info.value.reason == "validation_error"
        assert "entity_id" in info.value.detail and "NUL character" in info.value.detail
