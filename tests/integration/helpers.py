"""Independent clients for integration tests: raw confluent-kafka and fastavro, no Driftline code
on the checking side, so a test cannot pass because both sides share a bug."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def avro_schema(name: str):
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0,
                linger: float = 0.0) -> list:
    """Read `expected` messages of `topic` from the beginning with a throw-away group; with
    `linger`, keep reading that many seconds more, so that any message beyond `expected` (a
    duplicate) is in the result too."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "max.poll.interval.ms": 6000})
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    messages.append(msg)
        until = time.monotonic() + linger
        while linger and time.monotonic() < until:
            messages += [m for m in consumer.consume(1000, 0.2) if m.error() is None]
    finally:
        consumer.close()
    return messages


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in items:
        producer.produce(topic, value, key=key)
    assert producer.flush(30) == 0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
