"""Streaming features end to end against a real broker and Redis, checked by the naive oracle.

Events are produced to explicit partitions by the test, so the test knows every offset and can
compute the expected features itself (``tests/unit/features/feature_oracle.py``) without reading
anything Driftline wrote about the input. The oracle, kill -9, fencing and Redis-outage tests
run on one Redis and on a local three-node Redis Cluster (one MULTI per partition there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from driftline.adapters.offline_store import OfflineStore
from driftline.adapters.redis_client import connect
from driftline.adapters.redis_layout import OnlineKeys, StateKeys
from driftline.commands import local_servers
from driftline.commands.backfill import audit_skew
from driftline.core.demo_events import DemoConfig, DemoGenerator
from driftline.core.features import load_definitions
from driftline.feature_defs import DEFINITIONS_DIR
from tests.integration.conftest import on_redis_and_cluster, start_worker_process
from tests.integration.helpers import consume_all, metric_value, wait_for
from tests.unit.features.feature_oracle import run_oracle_by_partition

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")


def make_stream(n_events: int, n_entities: int, seed: int) -> list[dict]:
    config = DemoConfig(seed=seed, n_entities=n_entities, events_per_second=3.0,
                        shuffle_within_ms=40_000)
    events = DemoGenerator(config).events(n_events)
    rng = np.random.default_rng(seed)
    # A few events far beyond the 60 s lateness: they must be refused, counted and dead-lettered.
    for i in rng.choice(np.arange(n_events // 2, n_events), size=12, replace=False):
        events[i] = dict(events[i], event_time=events[i]["event_time"] - 3_600_000)
    return events


def partition_of(entity_id: str, partitions: int) -> int:
    return zlib.crc32(entity_id.encode()) % partitions


def produce_stream(settings, events: list[dict]) -> dict[int, list[dict]]:
    """Produce JSON events to explicit partitions; returns each partition's events by offset."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5,
                         "enable.idempotence": True})
    by_partition: dict[int, list[dict]] = {p: [] for p in range(settings.partitions)}
    for event in events:
        p = partition_of(event["entity_id"], settings.partitions)
        by_partition[p].append(event)
        producer.produce(settings.topic_events, json.dumps(event).encode(),
                         key=event["entity_id"].encode(), partition=p)
    assert producer.flush(30) == 0
    return by_partition


def expected(by_partition: dict[int, list[dict]]):
    """Oracle results per partition, with seq = the Kafka offset."""
    return run_oracle_by_partition(VIEW, by_partition)


def committed(client: redis.Redis, settings) -> dict[int, int]:
    """Partition -> next offset, as the worker's partition state committed it."""
    keys = StateKeys(settings.group_features, settings.topic_events)
    raw = {p: client.hget(keys.offsets(p), settings.topic_events)
           for p in range(settings.partitions)}
    return {p: int(v) for p, v in raw.items() if v is not None}


def wait_done(client, settings, by_partition, timeout=120):
    want = {p: len(ev) for p, ev in by_partition.items() if ev}
    wait_for(lambda: committed(client, settings) == want, timeout=timeout,
             what=f"offsets {want}")


def check_everything(settings, client, by_partition, oracle):
    names = list(VIEW.feature_names)
    # Online store: every entity's values equal the oracle's final online values.
    n_entities = 0
    online_keys = OnlineKeys.for_settings(settings)  # where readers look for an entity
    for result in oracle.values():
        for entity, (event_time, values) in result.final_online.items():
            key = online_keys.feature(VIEW.name, entity)
            raw = client.hgetall(key)
            assert raw, f"no online row for {entity}"
            assert 0 < client.pttl(key) <= settings.redis_ttl_s * 1000, "TTL not applied"
            row = {k.decode(): v.decode() for k, v in raw.items()}
            assert int(row["_event_time"]) == event_time
            assert row["_version"] == VIEW.version
            got = np.array([float(row[n]) for n in names])
            np.testing.assert_allclose(got, values, rtol=1e-9, atol=1e-9,
                                       err_msg=f"online values of {entity}")
            n_entities += 1
    assert n_entities == sum(len(r.final_online) for r in oracle.values()) > 100
    # Offline store: one row per applied event, values as of that event.
    table = OfflineStore(settings.data_dir / "offline").read(
        OfflineStore(settings.data_dir / "offline").features_dir(VIEW.name)).to_pandas()
    n_applied = sum(int((~r.late).sum()) for r in oracle.values())
    assert len(table) == n_applied
    assert not table.duplicated(["partition", "offset"]).any()
    for p, result in oracle.items():
        rows = table[table["partition"] == p].sort_values("offset")
        applied = np.flatnonzero(~result.late)
        np.testing.assert_array_equal(rows["offset"].to_numpy(), applied)
        np.testing.assert_allclose(rows[names].to_numpy(), result.values[applied],
                                   rtol=1e-9, atol=1e-9, err_msg=f"parquet rows of {p}")
        assert (rows["segment"].to_numpy()
                == np.array([by_partition[p][i]["segment"] for i in applied])).all()
    return n_applied


@on_redis_and_cluster
def test_features_equal_the_oracle_online_offline_and_on_the_topic(settings, tmp_path):
    settings = settings.replace(batch_size=2000)
    events = make_stream(6000, 800, seed=5)
    by_partition = produce_stream(settings, events)
    oracle = expected(by_partition)
    n_late = sum(int(r.late.sum()) for r in oracle.values())
    assert n_late >= 12
    proc = start_worker_process(settings, tmp_path / "logs")
    client = connect(settings.redis_url)
    try:
        wait_done(client, settings, by_partition)
        n_applied = check_everything(settings, client, by_partition, oracle)
    finally:
        proc.stop()
    features = consume_all(settings.kafka_bootstrap, settings.topic_features, n_applied)
    assert len(features) == n_applied
    dead = consume_all(settings.kafka_bootstrap, settings.topic_dlq, n_late)
    assert len(dead) == n_late
    check_backfill_and_audit(settings, client, n_applied)


def run_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = local_servers.child_env(settings.to_env())
    return subprocess.run(local_servers.python_argv(*args), env=env, capture_output=True, text=True,
                          timeout=120)


def check_backfill_and_audit(settings, client, n_applied):
    store = OfflineStore(settings.data_dir / "offline")
    report = audit_skew(store, settings.topic_events, VIEW)
    assert report.clean and report.compared == n_applied, report.as_dict()
    audit = run_cli(settings, "audit", "skew")
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["mismatches"] == 0
    backfilled = run_cli(settings, "backfill")
    assert backfilled.returncode == 0, backfilled.stderr
    assert json.loads(backfilled.stdout)["rows"] == n_applied
    listed = json.loads(run_cli(settings, "features", "list", "--json").stdout)
    assert [r["name"] for r in listed] == list(VIEW.feature_names)
    assert {r["version"] for r in listed} == {VIEW.version}
    online_keys = OnlineKeys.for_settings(settings)
    entity = online_keys.entity_of(next(client.scan_iter(match=online_keys.pattern(VIEW.name))),
                                   VIEW.name)
    got = json.loads(run_cli(settings, "features", "get", entity, "--json").stdout)
    assert got["views"][VIEW.name]["version"] == VIEW.version
    # The audit can fail: corrupt one served value and it must report exactly that row.
    path = sorted(store.features_dir(VIEW.name).glob("date=*/*.parquet"))[0]
    table = pq.read_table(path)
    column = table.column("amount_sum_1h").to_numpy().copy()
    column[0] += 1.0
    pq.write_table(table.set_column(table.schema.get_field_index("amount_sum_1h"),
                                    "amount_sum_1h", pa.array(column)), path)
    report = audit_skew(store, settings.topic_events, VIEW)
    assert [m["feature"] for m in report.mismatches] == ["amount_sum_1h"]
    assert run_cli(settings, "audit", "skew").returncode == 1


@on_redis_and_cluster
def test_kill_9_mid_stream_then_restart_changes_no_value(settings, tmp_path):
    settings = settings.replace(batch_size=300)
    events = make_stream(6000, 800, seed=9)
    by_partition = produce_stream(settings, events)
    oracle = expected(by_partition)
    client = connect(settings.redis_url)
    total = len(events)
    proc = start_worker_process(settings, tmp_path / "logs", name="worker-1")
    try:
        wait_for(lambda: sum(committed(client, settings).values()) >= total // 3, timeout=120,
                 interval=0.02, what="a third of the stream")
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        done_before = sum(committed(client, settings).values())
        assert done_before < total, "the worker finished before it was killed"
    finally:
        proc.stop()
    proc = start_worker_process(settings, tmp_path / "logs", name="worker-2")
    try:
        wait_done(client, settings, by_partition)
        check_everything(settings, client, by_partition, oracle)
    finally:
        proc.stop()


def test_a_second_worker_joining_mid_stream_takes_over_partitions_with_their_state(
        settings, tmp_path):
    """Rebalance hand-off: partitions move to the new worker with their window state (rebuilt
    from Redis), so the final values are still exactly the oracle's."""
    settings = settings.replace(batch_size=200)
    events = make_stream(6000, 800, seed=17)
    half = len(events) // 2
    by_partition = produce_stream(settings, events[:half])
    client = connect(settings.redis_url)
    first = start_worker_process(settings, tmp_path / "logs", name="worker-1")
    second = None
    try:
        wait_done(client, settings, by_partition)
        second = start_worker_process(settings.replace(worker_port=local_servers.free_port()),
                                      tmp_path / "logs", name="worker-2")
        # The second half arrives after the hand-off: both workers need the state of the first.
        for p, later in produce_stream(settings, events[half:]).items():
            by_partition[p] += later
        oracle = expected(by_partition)
        wait_done(client, settings, by_partition)
        check_everything(settings, client, by_partition, oracle)
        health = [json.loads(urllib.request.urlopen(f"{p.address}/health", timeout=5).read())
                  for p in (first, second)]
        assert all(h["assigned_partitions"] for h in health), "no rebalance happened"
        assert all(h["feature_rows"] > 0 for h in health), health
    finally:
        first.stop()
        if second is not None:
            second.stop()


class OwnRedis:
    """A Redis of one test's own, persisted, that the test takes down and brings back (same
    port, same data): one redis-server, or on a Redis Cluster the node holding partition 0's
    state (its slots fail; the other nodes stay up)."""

    def __init__(self, kind: str, folder, settings) -> None:
        self.kind = kind
        if kind == "redis":
            self.server = local_servers.start_redis(folder, persist=True)
            self.port = int(self.server.address.rsplit(":", 1)[1].split("/")[0])
            self.url = self.server.address
        else:
            self.cluster = local_servers.start_redis_cluster(folder, persist=True)
            self.url = self.cluster.address
            key = StateKeys(settings.group_features, settings.topic_events).epoch(0)
            with connect(self.url) as client:
                self.node = self.cluster.ports.index(client.get_node_from_key(key).port)

    def take_down(self) -> None:
        if self.kind == "redis":
            self.server.stop()  # SIGTERM: Redis flushes its append-only file and exits
        else:
            self.cluster.stop_node(self.node)

    def bring_back(self) -> None:
        if self.kind == "redis":
            self.server = local_servers.start_redis(self.server.log_path.parent, port=self.port,
                                                    persist=True)
        else:
            self.cluster.start_node(self.node)

    def stop(self) -> None:
        (self.server if self.kind == "redis" else self.cluster).stop()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_redis_outage_mid_stream_is_waited_out_without_loss(settings, tmp_path, kind):
    """Redis goes away mid-stream and comes back (same data): the worker retries with back-off
    from its last committed state and ends exactly where the oracle says. On the cluster one
    node of three goes away: the partitions there fail, and nothing is lost or double-counted
    on any node."""
    own = OwnRedis(kind, tmp_path / "redis", settings)
    settings = settings.replace(redis_url=own.url, batch_size=300)
    events = make_stream(4000, 600, seed=13)
    by_partition = produce_stream(settings, events)
    oracle = expected(by_partition)
    client = connect(settings.redis_url)
    proc = start_worker_process(settings, tmp_path / "logs")
    try:
        wait_for(lambda: sum(committed(client, settings).values()) >= len(events) // 4,
                 timeout=120, interval=0.02, what="a quarter of the stream")
        own.take_down()
        time.sleep(3)
        health = json.loads(urllib.request.urlopen(f"{proc.address}/health", timeout=5).read())
        assert health["status"] == "ok" and health["retrying"], health
        own.bring_back()
        wait_done(client, settings, by_partition)
        check_everything(settings, client, by_partition, oracle)
        metrics = urllib.request.urlopen(f"{proc.address}/metrics", timeout=5).read().decode()
        assert metric_value(metrics, "driftline_batch_failures_total") >= 1
    finally:
        proc.stop()
        own.stop()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    # The worker child gets its settings from the fixture, never from the caller's environment.
    for key in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(key)


@on_redis_and_cluster
def test_a_worker_that_lost_its_partition_cannot_commit_over_the_new_owner(settings):
    """Zombie fencing, driven in-process on real Redis and Kafka: worker A is claimed over in
    the middle of a batch (its commit must fail), keeps trying (refused), and the partition's
    final state, Parquet rows and online values are exactly those of each event applied once."""
    from driftline.agents.ingest import PartitionBatch
    from driftline.agents.worker import build_pipeline
    from driftline.core.state import Fenced

    config = DemoConfig(seed=23, n_entities=120, events_per_second=3.0, shuffle_within_ms=20_000)
    events = DemoGenerator(config).events(1500)

    def batch(lo: int, hi: int) -> PartitionBatch:
        return PartitionBatch.of_records(0, events[lo:hi], list(range(lo, hi)))

    a = build_pipeline(settings).downstream
    b = build_pipeline(settings).downstream
    a.on_assign([0])
    flush = a.producer.flush_or_raise

    def claimed_meanwhile(*args):
        b.on_assign([0])  # the group handed partition 0 to B while A was busy
        return flush(*args)

    a.producer.flush_or_raise = claimed_meanwhile
    with pytest.raises(redis.WatchError):
        a.process([batch(0, 500)])
    a.producer.flush_or_raise = flush
    with pytest.raises(Fenced):
        a.process([batch(0, 500)])
    b.process([batch(0, 500)])
    b.process([batch(500, 1000)])
    a.on_assign([0])  # and back to A, which must continue from B's commits
    a.process([batch(1000, 1500)])

    client = connect(settings.redis_url)
    assert committed(client, settings) == {0: 1500}
    oracle = expected({0: events})
    check_everything(settings, client, {0: events}, oracle)
    leftovers = list((settings.data_dir / "offline").rglob("*.pending-*"))
    assert not leftovers, leftovers
