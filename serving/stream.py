"""The stream scorer: ``driftline.features`` in batches, one prediction per record out.

Records as the feature worker writes them take a fast path (``FeatureRecordReader``: straight
into the model's matrix; the prediction reuses the record's bytes); anything else is decoded and
validated one by one. Each batch is scored by the single model the holder serves when the batch
starts, so a hot swap falls between batches: no record is scored twice or by two versions.
Undecodable records and records of another view version go to the DLQ with the reason. With no
servable model the batch fails and the batch loop retries it after a back-off, so nothing is
dropped while a model is missing. Predictions are flushed before the loop commits the offsets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from confluent_kafka import Message

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import BATCH_SECONDS, PREDICTIONS, RECORDS_DECODED
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import VIEW_MISMATCH
from driftline.core.codec.feature_records import FeatureRecordReader, PredictionWriter
from driftline.core.codec.single_object import encode
from driftline.serving.models import ModelHolder
from driftline.serving.scoring import score_records

PREDICTION_SCHEMA = "driftline.Prediction"


class ScoringPipeline:
    def __init__(self, holder: ModelHolder, decoder: Decoder, producer: CheckedProducer,
                 dead_letters: DeadLetterSink, predictions_topic: str) -> None:
        self.holder = holder
        self.decoder = decoder
        self.producer = producer
        self.dead_letters = dead_letters
        self.predictions_topic = predictions_topic
        self.scored = 0
        self._codecs = None

    def stats(self) -> dict[str, int]:
        return {"predictions": self.scored, "dead_letters": self.dead_letters.sent}

    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        return {}  # stateless: resume from the committed offsets

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        pass

    def _codec(self, model) -> tuple[FeatureRecordReader, PredictionWriter]:
        key = (model.name, model.version)
        if self._codecs is None or self._codecs[0] != key:
            meta = model.meta
            self._codecs = (key, (
                FeatureRecordReader(meta.view, meta.view_version, model.inputs,
                                    self.decoder.schemas),
                PredictionWriter(model.name, model.version, meta.view, meta.view_version,
                                 model.threshold, self.decoder.schemas)))
        return self._codecs[1]

    def process(self, batches: Sequence[MessageBatch]) -> None:
        messages = [m for batch in batches for m in batch.messages]
        if not messages:
            return
        start = time.perf_counter()
        model = self.holder.get()  # raises ModelUnavailable -> retried, nothing dropped
        reader, writer = self._codec(model)
        values = [m.value() or b"" for m in messages]
        fast = reader.read(values)
        produce, topic = self.producer.produce, self.predictions_topic
        if fast.index:
            predictions = writer.write(fast, model.score(fast.matrix))
            for i, prediction in zip(fast.index, predictions, strict=True):
                produce(topic, prediction, key=messages[i].key())
        n = len(fast.index) + self._process_generic(model, [messages[i] for i in fast.others])
        self.producer.flush_or_raise()
        RECORDS_DECODED.labels(messages[0].topic()).inc(len(messages))
        PREDICTIONS.labels(model.name, str(model.version)).inc(n)
        self.scored += n
        BATCH_SECONDS.labels("scoring").observe(time.perf_counter() - start)

    def _process_generic(self, model, messages: Sequence[Message]) -> int:
        """Records the fast reader left: decode and validate each, dead-letter what fails."""
        if not messages:
            return 0
        records, failures = self.decoder.decode_many([m.value() or b"" for m in messages])
        failed = {i for i, _ in failures}
        for i, error in failures:
            self.dead_letters.send(messages[i], error.reason, error.detail)
        good = [m for i, m in enumerate(messages) if i not in failed]
        scored = score_records(model, records)
        for i, detail in scored.refused:
            self.dead_letters.send(good[i], VIEW_MISMATCH, detail)
        schemas = self.decoder.schemas
        for prediction, i in zip(scored.predictions, scored.positions, strict=True):
            self.producer.produce(self.predictions_topic,
                                  encode(PREDICTION_SCHEMA, prediction, schemas),
                                  key=good[i].key())
        return len(scored.predictions)
