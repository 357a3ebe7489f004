"""The producer client: what an application imports to publish events and labels to Driftline.

    from driftline.adapters.event_producer import EventProducer
    with EventProducer.connect("localhost:9092") as producer:
        producer.send_event({...})         # Avro single-object, keyed by entity_id
        producer.send_label({...})

``EventProducer()`` with no settings reads ``DRIFTLINE_*`` variables, else uses the stack a
running ``driftline dev`` recorded (``Settings.discover``).

Events are validated against ``driftline.TransactionEvent`` before they leave the process, so a
producer learns about a bad record at the call site instead of in the dead-letter topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from driftline.adapters import kafka
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.settings import Settings

EVENT_SCHEMA = "driftline.TransactionEvent"
LABEL_SCHEMA = "driftline.Label"


class EventProducer:
    def __init__(self, settings: Settings | None = None, fmt: str = "avro") -> None:
        if fmt not in ("avro", "json"):
            raise ValueError(f"format must be 'avro' or 'json', got {fmt!r}")
        self.settings = settings = Settings.discover() if settings is None else settings
        self.fmt = fmt
        self.schemas = SchemaSet.load()
        self.producer = kafka.make_producer(settings)

    @classmethod
    def connect(cls, bootstrap: str, fmt: str = "avro", **settings: Any) -> EventProducer:
        return cls(Settings(kafka_bootstrap=bootstrap, **settings), fmt)

    def _value(self, schema: str, record: Mapping[str, Any]) -> bytes:
        if self.fmt == "json":
            encode(schema, record, self.schemas)  # validates
            return json.dumps(dict(record)).encode()
        return encode(schema, record, self.schemas)

    def send_event(self, event: Mapping[str, Any]) -> None:
        self.producer.produce(self.settings.topic_events, self._value(EVENT_SCHEMA, event),
                              key=str(event["entity_id"]).encode())
        self.producer.poll(0)

    def send_label(self, label: Mapping[str, Any]) -> None:
        self.producer.produce(self.settings.topic_labels, self._value(LABEL_SCHEMA, label),
                              key=str(label["entity_id"]).encode())
        self.producer.poll(0)

    def send_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for event in events:
            self.send_event(event)
            n += 1
        return n

    def flush(self) -> None:
        self.producer.flush_or_raise(60)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def produce_demo(settings: Settings, n_events: int, fmt: str = "avro", seed: int = 7,
                 drift_at_event: int | None = None, n_entities: int = 2000) -> dict[str, Any]:
    """Publish `n_events` synthetic card transactions and their delayed labels."""
    from driftline.core.demo_events import DemoConfig, DemoGenerator

    config = DemoConfig(seed=seed, n_entities=n_entities)
    generator = DemoGenerator(config)
    events = generator.events(n_events)
    if drift_at_event is not None:  # re-generate with the drift switched on at that event time
        drift_at_ms = events[min(drift_at_event, len(events) - 1)]["event_time"]
        generator = DemoGenerator(DemoConfig(seed=seed, n_entities=n_entities,
                                             drift_at_ms=drift_at_ms, covariate_shift=1.0,
                                             concept_shift=True))
        events = generator.events(n_events)
    labels = generator.labels_for(events)
    with EventProducer(settings, fmt) as producer:
        producer.send_events(events)
        for label in labels:
            producer.send_label(label)
    return {"events": len(events), "labels": len(labels), "format": fmt,
            "first_event_time": events[0]["event_time"],
            "last_event_time": events[-1]["event_time"]}
