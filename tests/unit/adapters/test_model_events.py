"""ModelEvent publication: nothing sent (and a message) without a broker, keyed records with one."""

from __future__ import annotations

import pytest

from driftline.adapters import model_events
from driftline.adapters.model_events import NOT_PUBLISHED, ModelEventPublisher
from driftline.core.codec import Decoder
from driftline.core.registry import Transition
from driftline.settings import Settings
from tests.fakes import RecordingProducer

ARCHIVED = Transition("fraud", 1, "Production", "Archived", at_ms=10, reason="replaced")
PROMOTED = Transition("fraud", 2, "Staging", "Production", at_ms=10, reason="better",
                      archived=(ARCHIVED,))


def _no_producer(settings: Settings):
    raise AssertionError("no producer may be made without a broker")


def test_without_a_broker_nothing_is_published_and_the_reason_is_said():
    warnings: list[str] = []
    publisher = ModelEventPublisher(Settings(kafka_bootstrap=None), make_producer=_no_producer,
                                    warn=warnings.append)
    assert not publisher.enabled
    assert publisher.publish(PROMOTED) is False
    assert warnings == [NOT_PUBLISHED]
    assert "DRIFTLINE_KAFKA_BOOTSTRAP is not set" in NOT_PUBLISHED
    assert "POST /model/reload" in NOT_PUBLISHED


def test_the_one_shot_publish_prints_the_message_to_stderr(capsys, monkeypatch):
    monkeypatch.setattr(model_events.kafka, "make_producer", _no_producer)
    assert model_events.publish(Settings(kafka_bootstrap=None), PROMOTED) is False
    captured = capsys.readouterr()
    assert captured.out == "" and NOT_PUBLISHED in captured.err


def test_with_a_broker_every_transition_is_sent_keyed_by_model_and_flushed():
    producer = RecordingProducer()
    made = []

    def make(settings: Settings) -> RecordingProducer:
        made.append(settings)
        return producer

    settings = Settings(kafka_bootstrap="broker:9092", topic_models="t.models")
    publisher = ModelEventPublisher(settings, make_producer=make)
    assert publisher.publish(PROMOTED) is True
    assert publisher.publish(ARCHIVED) is True
    assert len(made) == 1 and producer.flushes == 2  # one producer, flushed per publish
    sent = producer.on("t.models")
    assert [key for _, key in sent] == [b"fraud"] * 3
    records, failures = Decoder("ModelEvent").decode_many([value for value, _ in sent])
    assert failures == []
    assert [(r["version"], r["from_stage"], r["to_stage"]) for r in records] == [
        (2, "Staging", "Production"), (1, "Production", "Archived"),
        (1, "Production", "Archived")]
    assert records[0]["reason"] == "better" and records[0]["at"] == 10


def test_a_lost_delivery_raises():
    producer = RecordingProducer(fail_next_flush="delivery failed")
    publisher = ModelEventPublisher(Settings(kafka_bootstrap="broker:9092"),
                                    make_producer=lambda s: producer)
    with pytest.raises(RuntimeError, match="delivery failed"):
        publisher.publish(PROMOTED)
