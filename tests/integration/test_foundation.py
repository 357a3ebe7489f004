"""The foundation against real servers: topics, decoding of every accepted encoding, the DLQ."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import fastavro
import pytest
from confluent_kafka.admin import AdminClient

from driftline.adapters.kafka import create_topics
from driftline.core.codec.single_object import encode
from tests.avro_spec import crc64_avro
from tests.integration.helpers import (
    avro_schema,
    consume_all,
    get_json,
    metric_value,
    produce,
    wait_for,
)

EVENT = {"event_id": "e-1", "entity_id": "card-1", "event_time": 1_700_000_000_000,
         "amount": 12.5, "merchant_id": "m-1", "channel": "pos", "country": "DE",
         "segment": "consumer"}


def independent_single_object(record: dict) -> bytes:
    schema = avro_schema("TransactionEvent")
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return b"\xc3\x01" + crc64_avro(canonical.encode()).to_bytes(8, "little") + body.getvalue()


def test_topics_are_created_idempotently_and_visible_to_any_client(settings):
    assert set(create_topics(settings).values()) == {"exists"}
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    for topic in settings.topics.values():
        assert len(metadata.topics[topic].partitions) == settings.partitions


def test_independently_encoded_avro_matches_driftline_encoding():
    assert independent_single_object(EVENT) == encode("driftline.TransactionEvent", EVENT)


def test_worker_decodes_json_and_avro_and_dead_letters_garbage(settings, worker):
    garbage = b"GARBAGE\x00\xff not an event"
    bad_json = json.dumps({**EVENT, "amount": "twelve"}).encode()
    produce(settings.kafka_bootstrap, settings.topic_events, [
        (b"card-1", json.dumps(EVENT).encode()),
        (b"card-2", independent_single_object({**EVENT, "event_id": "e-2",
                                               "entity_id": "card-2"})),
        (b"card-3", garbage),
        (b"card-4", bad_json),
        (b"card-1", json.dumps({**EVENT, "event_id": "e-3",
                                "event_time": EVENT["event_time"] + 1000}).encode()),
    ])
    dead = consume_all(settings.kafka_bootstrap, settings.topic_dlq, expected=2)
    assert len(dead) == 2
    letters = sorted((fastavro.schemaless_reader(io.BytesIO(m.value()[10:]),
                                                 avro_schema("DeadLetter")) for m in dead),
                     key=lambda d: d["source_offset"])
    by_original = {d["original"]: d for d in letters}
    assert by_original[garbage]["reason"] == "decode_error"
    assert "unrecognised encoding" in by_original[garbage]["detail"]
    assert by_original[garbage]["source_topic"] == settings.topic_events
    assert by_original[bad_json]["reason"] == "validation_error"
    assert "amount" in by_original[bad_json]["detail"]
    # The worker kept going: the three good events (one after the garbage) were all decoded.
    metrics_url = f"{worker.address}/metrics"

    def decoded() -> float:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return metric_value(text, "driftline_records_decoded_total",
                            topic=settings.topic_events)

    wait_for(lambda: decoded() == 3, what="3 decoded records")
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert metric_value(text, "driftline_dead_letters_total", reason="decode_error") >= 1
    assert metric_value(text, "driftline_dead_letters_total", reason="validation_error") >= 1
    health = get_json(f"{worker.address}/health")
    assert health["status"] == "ok" and health["messages"] == 5


def _pids_with(argument: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if argument.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_dev_command_is_ready_fast_and_leaves_nothing_behind(tmp_path, stop_signal):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    record = tmp_path / "dev-stack.json"
    env.update({"DRIFTLINE_DATA_DIR": str(tmp_path / "data"), "DRIFTLINE_PARTITIONS": "2",
                "DRIFTLINE_WORKER_PORT": "0", "DRIFTLINE_SCORER_PORT": "0",
                "DRIFTLINE_MONITOR_PORT": "0", "DRIFTLINE_DEV_RECORD": str(record)})
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "driftline.commands.cli", "dev"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.strip() == "ready":
                break
        elapsed = time.monotonic() - started
        assert lines and lines[-1] == "ready", "\n".join(lines)
        assert elapsed < 20, f"ready after {elapsed:.1f}s"
        endpoints = dict(line.split(None, 1) for line in lines if line.split(None, 1)[0]
                         in ("kafka", "redis", "worker", "scorer", "monitor"))
        bootstrap = endpoints["kafka"]
        port = bootstrap.rsplit(":", 1)[1]
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        assert {"driftline.events", "driftline.features", "driftline.predictions",
                "driftline.labels", "driftline.drift", "driftline.models",
                "driftline.dlq"} <= set(topics)
        assert get_json(endpoints["worker"].split()[0] + "/health")["status"] == "ok"
        assert "scorer" in endpoints, "the scorer service is part of the dev stack"
        monitor = get_json(endpoints["monitor"].split()[0] + "/health")
        assert monitor["status"] == "ok" and monitor["detectors"] == "running", monitor
        assert _pids_with(f"tcp://127.0.0.1:{port}"), "broker process not found"
        recorded = json.loads(record.read_text())
        assert recorded["pid"] == proc.pid and recorded["kafka_bootstrap"] == bootstrap
        assert recorded["endpoints"]["worker"] == endpoints["worker"].split()[0]
    finally:
        proc.send_signal(stop_signal)
        proc.wait(30)
    assert proc.returncode == 0
    assert not record.exists(), "a clean stop removes the dev-stack record"
    wait_for(lambda: not _pids_with(f"tcp://127.0.0.1:{port}"), timeout=10,
             what="broker gone")
    redis_port = endpoints["redis"].rsplit(":", 1)[1].split("/")[0]
    wait_for(lambda: not _pids_with(redis_port) or all(
        b"redis-server" not in open(f"/proc/{p}/cmdline", "rb").read()
        for p in _pids_with(redis_port)), timeout=10, what="redis gone")
    for service in ("worker", "scorer", "monitor"):
        port = endpoints[service].split()[0].rsplit(":", 1)[1]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def _start_dev(env: dict[str, str], cwd) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "driftline.commands.cli", "dev"], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip() == "ready":
            return proc, lines
    proc.wait(30)
    raise AssertionError("driftline dev exited before ready:\n" + "\n".join(lines))


def test_commands_in_another_terminal_find_the_dev_stack_and_notice_when_it_is_gone(tmp_path):
    from driftline.core.demo_events import DemoConfig, DemoGenerator

    bare = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    record = tmp_path / "home" / "dev-stack.json"
    dev_dir, elsewhere = tmp_path / "dev", tmp_path / "elsewhere"
    dev_dir.mkdir()
    elsewhere.mkdir()
    dev_env = {**bare, "DRIFTLINE_DEV_RECORD": str(record), "DRIFTLINE_PARTITIONS": "2",
               "DRIFTLINE_WORKER_PORT": "0", "DRIFTLINE_SCORER_PORT": "0"}
    client_env = {**bare, "DRIFTLINE_DEV_RECORD": str(record)}  # nothing else set

    def driftline(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "driftline.commands.cli", *args],
                              env=client_env, cwd=elsewhere, capture_output=True, text=True,
                              timeout=120)

    proc, lines = _start_dev(dev_env, dev_dir)  # data dir: the relative default, dev/data
    try:
        assert json.loads(record.read_text())["data_dir"] == str(dev_dir / "data")
        produced = driftline("produce-demo", "--events", "200")
        assert produced.returncode == 0, produced.stderr
        assert json.loads(produced.stdout)["events"] == 200

        events = DemoGenerator(DemoConfig(seed=7, n_entities=2000)).events(200)  # the same ones
        entity = max({e["entity_id"] for e in events},
                     key=lambda x: sum(e["entity_id"] == x for e in events))
        mine = [e for e in events if e["entity_id"] == entity]
        assert len(mine) >= 2

        def served() -> dict | None:
            got = driftline("features", "get", entity, "--json")
            if got.returncode != 0:
                assert f"no features for entity {entity!r}" in got.stderr, got.stderr
                return None
            values = json.loads(got.stdout)["views"]["transactions_v1"]["values"]
            return values if values["txn_count_24h"] == len(mine) else None

        wait_for(lambda: served() is not None, timeout=60, what=f"features of {entity}")
        values = served()
        assert values["amount_sum_24h"] == pytest.approx(sum(e["amount"] for e in mine))
        assert values["last_amount_24h"] == pytest.approx(mine[-1]["amount"])

        trained = driftline("models", "train-initial", "--events", "6000")
        assert trained.returncode == 0, trained.stderr
        assert "not published" not in trained.stderr  # it found the dev broker too
        listed = driftline("models", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["name"], r["version"], r["stage"]) for r in rows] == [
            ("fraud", 1, "Production")]
        assert (dev_dir / "data" / "registry" / "fraud").is_dir()
        assert not (elsewhere / "data").exists(), "the dev stack's data dir, not the cwd's"
    finally:
        proc.kill()  # as if its terminal were closed: no chance to remove the record
        proc.wait(30)
    assert record.exists()
    broker_port = json.loads(record.read_text())["kafka_bootstrap"].rsplit(":", 1)[1]
    wait_for(lambda: not _pids_with(f"tcp://127.0.0.1:{broker_port}"), timeout=10,
             what="broker gone")
    gone = driftline("features", "get", entity, "--json")
    assert gone.returncode == 2
    assert f"stale `driftline dev` record at {record} (pid {proc.pid} gone)" in gone.stderr
    assert "DRIFTLINE_REDIS_URL is not set" in gone.stderr


def test_checked_producer_waits_for_queue_room_and_reports_delivery(settings):
    from driftline.adapters.kafka import make_producer

    producer = make_producer(settings, **{"queue.buffering.max.messages": 5, "linger.ms": 0})
    for i in range(200):  # a plain Producer raises BufferError at the 6th
        producer.produce(settings.topic_labels, b"x", key=str(i).encode())
    keys = [str(i).encode() for i in range(200, 400)]
    producer.produce_many(settings.topic_labels, [b"y"] * len(keys), keys)  # the same, in bulk
    producer.flush_or_raise()
    got = consume_all(settings.kafka_bootstrap, settings.topic_labels, 400, linger=1.0)
    assert len(got) == 400
    assert sorted(m.key() for m in got if m.value() == b"y") == sorted(keys)  # each exactly once


def test_checked_producer_raises_when_deliveries_fail(settings):
    from driftline.adapters.kafka import make_producer
    from driftline.commands.local_servers import free_port

    nobody = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # a broker that is down
    producer = make_producer(nobody, **{"message.timeout.ms": 1000})
    producer.produce(settings.topic_labels, b"x")
    with pytest.raises(RuntimeError, match="1 failed"):
        producer.flush_or_raise(10)
