"""The worker's ingest and feature stage in process, on the in-memory state backend.

No broker and no Redis: `FakeMessage` batches go through :class:`IngestPipeline` into
:class:`FeatureStage`, whose partition state is a :class:`MemoryStateBackend` with a
:class:`MemoryOnlineStore`; Parquet goes to a temporary folder. Every online value and Parquet
row is checked against the naive oracle, across a restart, a failed flush and a fenced owner.
"""

from __future__ import annotations

import io
import json
import zlib

import fastavro
import numpy as np
import pytest

from driftline.adapters.batch_loop import PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.offline_store import OfflineStore, PendingParquet
from driftline.agents.features import FeatureStage
from driftline.agents.ingest import IngestPipeline
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.core.online import MemoryOnlineStore, StoreUnavailable
from driftline.core.state import Fenced, MemoryStateBackend, PartitionState
from driftline.feature_defs import DEFINITIONS_DIR
from tests.fakes import RecordingProducer, batches, messages
from tests.integration.helpers import avro_schema
from tests.unit.features.feature_oracle import run_oracle_by_partition

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
EVENTS, FEATURES, DLQ = "events", "features", "dlq"
END = 1200  # past the end of either partition: later slices are empty
SCHEMAS = SchemaSet.load()


class Worker:
    """One feature worker: its own stage and producer over a shared backend and folder."""

    def __init__(self, backend: MemoryStateBackend, root) -> None:
        self.producer = RecordingProducer()
        offline = OfflineStore(root)
        bases = [offline.events_dir(EVENTS), offline.features_dir(VIEW.name)]
        state = PartitionState(backend, [EVENTS], [VIEW.name],
                               files=PendingParquet(offline, EVENTS, bases), compact_every=4)
        dead_letters = DeadLetterSink(self.producer, DLQ, SCHEMAS)
        self.stage = FeatureStage([VIEW], EVENTS, state, offline, self.producer, FEATURES,
                                  dead_letters, SCHEMAS)
        self.pipeline = IngestPipeline(Decoder.for_settings(_Settings(), VIEW.source.schema,
                                                            SCHEMAS),
                                       dead_letters, self.producer, self.stage)

    def assign(self, *partitions: int) -> dict[PartitionId, int]:
        return self.pipeline.on_assign([PartitionId(EVENTS, p) for p in partitions])


class _Settings:
    schema_registry_url = None


@pytest.fixture
def stream() -> dict[int, list[dict]]:
    config = DemoConfig(seed=11, n_entities=60, events_per_second=3.0, shuffle_within_ms=30_000)
    events = DemoGenerator(config).events(1200)
    for i in (700, 900, 1100):  # far beyond the 60 s lateness: dead-lettered as late
        events[i] = dict(events[i], event_time=events[i]["event_time"] - 3_600_000)
    by_partition: dict[int, list[dict]] = {0: [], 1: []}
    for event in events:  # keyed by entity, as a producer would
        by_partition[zlib.crc32(event["entity_id"].encode()) % 2].append(event)
    return by_partition


def encoded(stream, p: int, lo: int, hi: int):
    return messages(EVENTS, p, [json.dumps(e).encode() for e in stream[p][lo:hi]], lo,
                    keys=[e["entity_id"].encode() for e in stream[p][lo:hi]])


def feed(worker: Worker, stream, lo: int, hi: int) -> None:
    worker.pipeline.process(batches(encoded(stream, 0, lo, hi), encoded(stream, 1, lo, hi)))


def oracle(stream):
    return run_oracle_by_partition(VIEW, stream)


def check(backend: MemoryStateBackend, root, stream) -> None:
    expected = oracle(stream)
    online = backend.online
    for result in expected.values():
        for entity, (event_time, values) in result.final_online.items():
            row = online.read(VIEW.name, entity)
            assert row is not None and row.event_time_ms == event_time, entity
            got = np.array([row.values[n] for n in VIEW.feature_names])
            np.testing.assert_allclose(got, values, rtol=1e-9, atol=1e-9, err_msg=entity)
    table = OfflineStore(root).read(OfflineStore(root).features_dir(VIEW.name)).to_pandas()
    assert not table.duplicated(["partition", "offset"]).any()
    for p, result in expected.items():
        rows = table[table["partition"] == p].sort_values("offset")
        applied = np.flatnonzero(~result.late)
        np.testing.assert_array_equal(rows["offset"].to_numpy(), applied)
        np.testing.assert_allclose(rows[list(VIEW.feature_names)].to_numpy(),
                                   result.values[applied], rtol=1e-9, atol=1e-9)
    assert backend.offsets == {(EVENTS, p): len(events) for p, events in stream.items()}
    assert not list(root.rglob("*.pending-*")), "pending files left behind"


def test_a_stream_in_batches_equals_the_oracle_and_late_events_are_dead_lettered(
        tmp_path, stream):
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    worker = Worker(backend, tmp_path)
    assert worker.assign(0, 1) == {}
    for lo in range(0, END, 150):
        feed(worker, stream, lo, lo + 150)
    check(backend, tmp_path, stream)
    n_late = sum(int(r.late.sum()) for r in oracle(stream).values())
    letters = [fastavro.schemaless_reader(io.BytesIO(v[10:]), avro_schema("DeadLetter"))
               for v, _ in worker.producer.on(DLQ)]
    assert n_late >= 3 and [d["reason"] for d in letters] == ["late"] * n_late
    assert len(worker.producer.on(FEATURES)) == 1200 - n_late
    assert worker.stage.stats() == {"feature_rows": 1200 - n_late, "late_events": n_late}


def test_a_restart_resumes_from_the_committed_state_exactly(tmp_path, stream):
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    first = Worker(backend, tmp_path)
    first.assign(0, 1)
    feed(first, stream, 0, 250)  # the log passes compact_every: a snapshot replaces deltas
    feed(first, stream, 250, 300)
    # The process dies here; a new one takes the partitions and resumes at offset 300.
    second = Worker(backend, tmp_path)
    assert second.assign(0, 1) == {PartitionId(EVENTS, 0): 300, PartitionId(EVENTS, 1): 300}
    for lo in range(300, END, 100):
        feed(second, stream, lo, lo + 100)
    check(backend, tmp_path, stream)


def test_a_failed_flush_commits_nothing_and_the_replay_is_exact(tmp_path, stream):
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    worker = Worker(backend, tmp_path)
    worker.assign(0, 1)
    feed(worker, stream, 0, 200)
    commits = backend.commit_count
    worker.producer.fail_next_flush = "1 message undelivered"
    with pytest.raises(RuntimeError, match="undelivered"):
        feed(worker, stream, 200, 400)
    assert backend.commit_count == commits
    # What the batch loop does next: rebuild from the committed state and replay.
    worker.pipeline.on_revoke([PartitionId(EVENTS, 0), PartitionId(EVENTS, 1)])
    assert worker.assign(0, 1) == {PartitionId(EVENTS, 0): 200, PartitionId(EVENTS, 1): 200}
    feed(worker, stream, 200, END)
    check(backend, tmp_path, stream)


def test_a_fenced_worker_commits_nothing_and_the_new_owner_continues(tmp_path, stream):
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    zombie, owner = Worker(backend, tmp_path), Worker(backend, tmp_path)
    zombie.assign(0, 1)
    feed(zombie, stream, 0, 200)
    flush = zombie.producer.flush_or_raise

    def claimed_meanwhile(*args):
        owner.assign(0, 1)  # the group moved both partitions while the zombie was busy
        return flush(*args)

    zombie.producer.flush_or_raise = claimed_meanwhile
    with pytest.raises(Fenced):
        feed(zombie, stream, 200, 400)
    zombie.producer.flush_or_raise = flush
    with pytest.raises(Fenced):  # fenced before it computes anything more
        feed(zombie, stream, 200, 400)
    feed(owner, stream, 200, END)
    # The zombie's pending files were written before the owner's assignment settled them away.
    check(backend, tmp_path, stream)


def test_a_commit_that_landed_for_one_partition_only_replays_exactly(tmp_path, stream):
    """Committing partition by partition (a Redis Cluster), the store of partition 1 goes down
    in the middle of a commit, after partition 0's part landed. The batch loop's rebuild then
    resumes partition 0 after that batch and partition 1 at it: online values, Parquet rows and
    offsets end exactly as the oracle says, nothing pending or duplicated."""
    backend = MemoryStateBackend(online=MemoryOnlineStore(), per_partition=True,
                                 partition_of=lambda e: zlib.crc32(e.encode()) % 2)
    worker = Worker(backend, tmp_path)
    worker.assign(0, 1)
    feed(worker, stream, 0, 200)
    state = worker.stage.state
    last_check = state.check

    def store_of_1_goes_down(txn):
        last_check(txn)
        backend.unreachable = {1}  # after the batch's last check, before its commit

    state.check = store_of_1_goes_down
    with pytest.raises(StoreUnavailable):
        feed(worker, stream, 200, 400)
    state.check = last_check
    assert backend.offsets == {(EVENTS, 0): 400, (EVENTS, 1): 200}  # a partial commit
    assert list(tmp_path.rglob("p0-*.pending-*")) and list(tmp_path.rglob("p1-*.pending-*"))
    backend.unreachable = set()
    # What the batch loop does next: rebuild every partition and rewind each to its state.
    worker.pipeline.on_revoke([PartitionId(EVENTS, 0), PartitionId(EVENTS, 1)])
    assert worker.assign(0, 1) == {PartitionId(EVENTS, 0): 400, PartitionId(EVENTS, 1): 200}
    assert not list(tmp_path.rglob("*.pending-*"))  # p0's published, p1's removed
    worker.pipeline.process(batches(encoded(stream, 1, 200, 400)))
    feed(worker, stream, 400, END)
    check(backend, tmp_path, stream)


def test_garbage_between_good_events_is_dead_lettered_and_the_rest_processed(
        tmp_path, stream):
    backend = MemoryStateBackend(online=MemoryOnlineStore())
    worker = Worker(backend, tmp_path)
    worker.assign(0)
    good = [json.dumps(e).encode() for e in stream[0][:4]]
    values = [*good[:2], b"\x00\xffnot an event", b"{\"amount\": 1}", *good[2:]]
    worker.pipeline.process(batches(messages(EVENTS, 0, values)))
    letters = [fastavro.schemaless_reader(io.BytesIO(v[10:]), avro_schema("DeadLetter"))
               for v, _ in worker.producer.on(DLQ)]
    assert [d["reason"] for d in letters] == ["decode_error", "validation_error"]
    assert [d["source_offset"] for d in letters] == [2, 3]
    assert len(worker.producer.on(FEATURES)) == 4
    assert backend.offsets == {(EVENTS, 0): 6}
