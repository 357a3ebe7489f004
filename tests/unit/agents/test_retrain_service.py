"""The retrain controller's edges without a broker: the drift-topic pipeline and the config
file."""

from __future__ import annotations

import pytest

from driftline.adapters.dead_letters import DeadLetterSink
from driftline.agents.retrain_service import DriftPipeline, load_config
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from tests.fakes import RecordingProducer, batches, messages

SCHEMAS = SchemaSet.load()


class Offered:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def offer(self, records) -> None:
        self.records.extend(records)


def drift_record(drift_id: str) -> dict:
    return {"detector": "adwin", "kind": "error", "subject": "abs_error", "statistic": 0.2,
            "threshold": 0.05, "model_name": "fraud", "model_version": 1, "window_start": 1,
            "window_end": 2, "detected_at": 2, "details": {"drift_id": drift_id}}


def test_undecodable_drift_events_are_dead_lettered_and_delivered_before_the_rest():
    producer, controller = RecordingProducer(), Offered()
    pipeline = DriftPipeline(controller, Decoder("driftline.DriftEvent", SCHEMAS),
                             DeadLetterSink(producer, "dlq", SCHEMAS))
    good = encode("driftline.DriftEvent", drift_record("d1"), SCHEMAS)
    pipeline.process(batches(messages("drift", 0, [good, b"not an event", good])))
    assert [r["details"]["drift_id"] for r in controller.records] == ["d1", "d1"]
    assert len(producer.on("dlq")) == 1 and pipeline.stats()["dead_letters"] == 1
    assert producer.flushes == 1
    # A dead letter the broker lost fails the batch before the controller sees it, so the
    # loop retries it instead of committing past it.
    producer.fail_next_flush = "1 failed"
    with pytest.raises(RuntimeError, match="1 failed"):
        pipeline.process(batches(messages("drift", 0, [b"{", good], first_offset=3)))
    assert len(controller.records) == 2


def test_a_bad_config_file_names_itself_and_the_key(tmp_path):
    path = tmp_path / "retraining.yaml"
    path.write_text("models:\n  fraud:\n    trigger: {kinds: [error], cooldown: 5}\n")
    with pytest.raises(ValueError, match=r"retraining\.yaml: .*cooldown"):
        load_config(path)
    assert load_config(None).for_model("fraud").rollout.kind == "direct"
