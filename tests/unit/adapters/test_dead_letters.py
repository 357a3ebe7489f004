"""The dead-letter sink: the record it produces, and the one list of reasons it accepts."""

from __future__ import annotations

import pytest

from driftline.adapters.dead_letters import DeadLetterSink
from driftline.core.codec import (
    ALL_REASONS,
    FUTURE_EVENT_TIME,
    INVALID_EVENT_TIME,
    LATE,
    REASONS,
    VIEW_MISMATCH,
    Decoder,
    SchemaSet,
)
from tests.fakes import FakeMessage, RecordingProducer

SCHEMAS = SchemaSet.load()


def _sink() -> tuple[DeadLetterSink, RecordingProducer]:
    producer = RecordingProducer()
    return DeadLetterSink(producer, "t.dlq", SCHEMAS), producer


def test_the_reason_list_is_the_decoder_reasons_plus_the_stage_reasons():
    assert ALL_REASONS == (*REASONS, LATE, VIEW_MISMATCH, FUTURE_EVENT_TIME, INVALID_EVENT_TIME)
    assert (LATE, VIEW_MISMATCH, FUTURE_EVENT_TIME, INVALID_EVENT_TIME) == (
        "late", "view_mismatch", "future_event_time", "invalid_event_time")
    assert len(set(ALL_REASONS)) == len(ALL_REASONS)


@pytest.mark.parametrize("reason", ALL_REASONS)
def test_every_listed_reason_is_sent_with_the_original_record(reason):
    sink, producer = _sink()
    sink.send(FakeMessage("t.events", 2, 41, b"not an event", b"card-1"), reason, "why")
    ((value, key),) = producer.on("t.dlq")
    assert key == b"card-1" and sink.sent == 1
    (letter,), failures = Decoder("DeadLetter", SCHEMAS).decode_many([value])
    assert failures == []
    assert letter["reason"] == reason and letter["detail"] == "why"
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == \
        ("t.events", 2, 41)
    assert letter["original"] == b"not an event"


@pytest.mark.parametrize("reason", ["", "Late", "too_late", "decode-error"])
def test_a_reason_not_in_the_list_is_refused_and_nothing_is_sent(reason):
    sink, producer = _sink()
    with pytest.raises(ValueError, match="unknown dead-letter reason") as info:
        sink.send(FakeMessage("t.events", 0, 0, b"x"), reason, "why")
    assert "view_mismatch" in str(info.value)  # names the accepted codes
    assert producer.produced == [] and sink.sent == 0
