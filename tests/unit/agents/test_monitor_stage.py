"""The monitor stage in process, on the in-memory state backend: the outcome Parquet files.

No broker and no Redis: encoded `FakeMessage` batches of predictions and labels go through
:class:`MonitorStage`, whose partition state is a :class:`MemoryStateBackend`; Parquet goes to
a temporary folder. Each outcome row must carry its prediction's rollout arm and latency, also
for predictions that waited in the join's state across a restart.
"""

from __future__ import annotations

import pyarrow as pa

from driftline.adapters.batch_loop import PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.offline_store import AllPending, OfflineStore, PendingParquet
from driftline.agents.monitor import DETECTORS, JOIN, MonitorStage, MonitorTopics
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.codec.single_object import encode
from driftline.core.state import MemoryStateBackend, PartitionState
from tests.fakes import RecordingProducer, batches, messages

TOPICS = MonitorTopics("predictions", "labels", "drift")
INPUTS, SLICES = ("amount",), ("segment",)
T0 = 1_700_000_000_000
SCHEMAS = SchemaSet.load()


class Monitor:
    """One monitor process: its own stage and producer over a shared backend and folder."""

    def __init__(self, backend: MemoryStateBackend, root) -> None:
        self.producer = RecordingProducer()
        self.offline = OfflineStore(root)
        files = AllPending([PendingParquet(self.offline, t, [self.offline.outcomes_dir(t)])
                            for t in (TOPICS.labels, TOPICS.predictions)])
        state = PartitionState(backend, topics=[TOPICS.predictions, TOPICS.labels],
                               stores=[JOIN, DETECTORS], files=files, compact_every=2)
        self.stage = MonitorStage(
            TOPICS, state, self.offline, self.producer,
            DeadLetterSink(self.producer, "dlq", SCHEMAS), SCHEMAS,
            profiles=lambda name, version: None, input_names=INPUTS, slice_names=SLICES,
            horizon_ms=3_600_000, label_guard=None, clock_ms=lambda: T0,
            prediction_decoder=Decoder("driftline.Prediction", SCHEMAS),
            label_decoder=Decoder("driftline.Label", SCHEMAS))
        self.offsets = self.stage.on_assign([PartitionId(TOPICS.predictions, 0),
                                             PartitionId(TOPICS.labels, 0)])

    def feed(self, predictions: list[dict], labels: list[dict]) -> None:
        p_at = self.offsets.get(PartitionId(TOPICS.predictions, 0), 0)
        l_at = self.offsets.get(PartitionId(TOPICS.labels, 0), 0)
        self.stage.process(batches(
            messages(TOPICS.predictions, 0,
                     [encode("driftline.Prediction", r, SCHEMAS) for r in predictions], p_at),
            messages(TOPICS.labels, 0, [encode("driftline.Label", r, SCHEMAS) for r in labels],
                     l_at)))
        self.offsets[PartitionId(TOPICS.predictions, 0)] = p_at + len(predictions)
        self.offsets[PartitionId(TOPICS.labels, 0)] = l_at + len(labels)

    def outcomes(self) -> pa.Table:
        tables = [self.offline.read(d) for d in self.offline.outcomes_dirs()]
        return pa.concat_tables([t for t in tables if t.num_rows])


def prediction(i: int, arm: str | None = None, latency_ms: float | None = None) -> dict:
    """Prediction ``e<i>``; without `arm` and `latency_ms` unless given, as an older writer
    would send it (the decoder fills in the schema's defaults)."""
    record = {"event_id": f"e{i}", "entity_id": "card-1", "event_time": T0 + i * 1000,
              "score": 0.75, "decision": True, "threshold": 0.5, "model_name": "fraud",
              "model_version": 2 if arm == "candidate" else 1, "view": "txn", "view_version": "v",
              "slices": {"segment": "student"}, "inputs": {"amount": float(i)}}
    if arm is not None:
        record["arm"] = arm
    if latency_ms is not None:
        record["latency_ms"] = latency_ms
    return record


def label(i: int, delay_ms: int = 60_000) -> dict:
    return {"event_id": f"e{i}", "entity_id": "card-1", "label": i % 2,
            "label_time": T0 + i * 1000 + delay_ms}


def test_outcome_files_carry_each_predictions_arm_and_latency_across_a_restart(tmp_path):
    backend = MemoryStateBackend()
    first = Monitor(backend, tmp_path)
    # e0 and e1 join at once; e2-e4 wait for their labels; e9's label comes first.
    first.feed([prediction(0, "production", 4.5), prediction(1, "candidate", 11.25),
                prediction(2, "candidate", 9.0), prediction(3)],
               [label(0), label(1), label(9, delay_ms=-5_000)])
    first.feed([prediction(4, "production", 0.5)], [])
    first.feed([], [])  # an empty batch is skipped
    first.feed([prediction(5, "production", 1.0)], [])
    assert [bool(piece["snapshot"][0]) for piece in backend.logs[(JOIN, 0)]] == [True]
    # The process dies; the next one restores the join with e2-e5 (and e9's label) waiting.
    second = Monitor(backend, tmp_path)
    assert second.offsets == {PartitionId(TOPICS.predictions, 0): 6,
                              PartitionId(TOPICS.labels, 0): 3}
    second.feed([prediction(9, "candidate", 7.75)], [label(2), label(3), label(4), label(5)])

    table = second.outcomes()
    assert table.schema.field("arm").type == pa.string()
    assert table.schema.field("latency_ms").type == pa.float64()
    rows = sorted(zip(table["event_id"].to_pylist(), table["arm"].to_pylist(),
                      table["latency_ms"].to_pylist(), table["model_version"].to_pylist(),
                      strict=True))
    assert rows == [("e0", "production", 4.5, 1), ("e1", "candidate", 11.25, 2),
                    ("e2", "candidate", 9.0, 2), ("e3", "production", 0.0, 1),
                    ("e4", "production", 0.5, 1), ("e5", "production", 1.0, 1),
                    ("e9", "candidate", 7.75, 2)]
    assert second.stage.outcomes == 5 and first.stage.outcomes == 2
    assert not list(tmp_path.rglob("*.pending-*")), "pending files left behind"
