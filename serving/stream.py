"""The stream scorer: ``driftline.features`` in batches, one prediction per record out.

Records as the feature worker writes them take a fast path (``FeatureRecordReader``: straight
into the model's matrix; the prediction reuses the record's bytes); anything else is decoded and
validated one by one. Each batch is scored with the :class:`~driftline.serving.models.Serving`
snapshot the holder serves when the batch starts, so a hot swap or a rollout step falls between
batches: no record is scored twice or by two versions of one arm.

While a rollout runs, canary and A/B plans route every record by its entity id
(``ServingPlan.to_candidate``): the candidate scores and publishes the entity's records (arm
``candidate``), Production the others (arm ``production``), so an entity sees one version and
moves to the candidate only when the share rises. Under a shadow plan Production scores and
publishes everything and the candidate scores every record too; its predictions (arm
``shadow``) go to the shadow topic only. Should the candidate fail at scoring time, Production
scores its records instead: a rollout never stops scoring. ``latency_ms`` is the wall time of
the model call that scored the record.

Undecodable records and records of another view version go to the DLQ with the reason. With no
servable model the batch fails and the batch loop retries it after a back-off, so nothing is
dropped while a model is missing. Predictions are flushed before the loop commits the offsets,
in the order of their records; the loop scores batch N+1 while batch N's predictions are being
acknowledged (``prepare``, then N's ``finish``, then N+1's ``send``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from driftline.adapters.batch_loop import MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.kafka import CheckedProducer
from driftline.adapters.metrics import (
    BATCH_SECONDS,
    FEATURE_TO_PREDICTION_SECONDS,
    PREDICTIONS,
    RECORDS_DECODED,
)
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import VIEW_MISMATCH
from driftline.core.codec.feature_records import FastBatch, FeatureRecordReader, PredictionWriter
from driftline.core.codec.single_object import encode
from driftline.core.rollout import CANDIDATE, PRODUCTION, SHADOW_ARM
from driftline.serving.models import LoadedModel, ModelHolder, Serving
from driftline.serving.scoring import score_records

PREDICTION_SCHEMA = "driftline.Prediction"
DEFAULT_SHADOW_TOPIC = "driftline.shadow"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Arm:
    """One model's share of a batch: ``rows`` are positions in the batch's scored records."""

    model: LoadedModel
    label: str
    rows: np.ndarray


def _arms(serving: Serving, entity_ids: Sequence[str]) -> list[_Arm]:
    """Who scores which records of a batch, candidate first (its failure falls back)."""
    everyone = np.arange(len(entity_ids))
    if serving.candidate is None:
        return [_Arm(serving.production, PRODUCTION, everyone)]
    if serving.shadow is not None:
        return [_Arm(serving.shadow, SHADOW_ARM, everyone),
                _Arm(serving.production, PRODUCTION, everyone)]
    to_candidate = serving.to_candidate(entity_ids)
    return [_Arm(serving.candidate, CANDIDATE, np.flatnonzero(to_candidate)),
            _Arm(serving.production, PRODUCTION, np.flatnonzero(~to_candidate))]


class ScoringPipeline:
    def __init__(self, holder: ModelHolder, decoder: Decoder, producer: CheckedProducer,
                 dead_letters: DeadLetterSink, predictions_topic: str, *,
                 shadow_topic: str = DEFAULT_SHADOW_TOPIC) -> None:
        self.holder = holder
        self.decoder = decoder
        self.producer = producer
        self.dead_letters = dead_letters
        self.predictions_topic = predictions_topic
        self.shadow_topic = shadow_topic
        self.scored = 0  # predictions published on the predictions topic
        self.shadow_scored = 0  # shadow predictions published on the shadow topic
        self._reader: tuple[tuple, FeatureRecordReader] | None = None
        self._writers: dict[tuple[str, int], PredictionWriter] = {}

    def stats(self) -> dict[str, int]:
        return {"predictions": self.scored, "shadow_predictions": self.shadow_scored,
                "dead_letters": self.dead_letters.sent}

    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        return {}  # stateless: resume from the committed offsets

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        pass

    def process(self, batches: Sequence[MessageBatch]) -> None:
        staged = self.prepare(batches)
        staged.send()
        staged.finish()

    def prepare(self, batches: Sequence[MessageBatch]) -> ScoredBatch:
        """Read and score the batch; nothing is produced before ``send``. The batch loop calls
        this while the previous batch's predictions are being acknowledged."""
        messages = [m for batch in batches for m in batch.messages]
        out = ScoredBatch(self, messages)
        if not messages:
            return out
        start = time.perf_counter()
        serving = self.holder.serving()  # once per batch; ModelUnavailable -> retried
        values = [m.value() or b"" for m in messages]
        fast = self._reader_for(serving.production).read(values)
        if fast.index:
            self._score_fast(serving, fast, out)
        if fast.others:
            self._score_generic(serving, [messages[i] for i in fast.others], fast.others, out)
        out.seconds = time.perf_counter() - start
        return out

    # -- the two paths ------------------------------------------------------------------------

    def _score_fast(self, serving: Serving, fast: FastBatch, out: ScoredBatch) -> None:
        """Records the fast reader took: each arm scores its rows, bytes copied through."""
        def score(arm: _Arm) -> None:
            part = fast if len(arm.rows) == len(fast.index) else fast.take(arm.rows)
            began = time.perf_counter()
            scores = arm.model.score(part.matrix)
            latency_ms = (time.perf_counter() - began) * 1000.0
            written = self._writer_for(arm.model).write(part, scores, arm.label, latency_ms)
            out.add(arm, part.index, written)

        self._each_arm(_arms(serving, fast.entity_ids), serving, score)

    def _score_generic(self, serving: Serving, messages: Sequence[Message],
                       positions: Sequence[int], out: ScoredBatch) -> None:
        """Records the fast reader left: decode and validate each, dead-letter what fails."""
        records, failures = self.decoder.decode_many([m.value() or b"" for m in messages])
        failed = {i for i, _ in failures}
        for i, error in failures:
            self.dead_letters.send(messages[i], error.reason, error.detail)
        kept = [k for k in range(len(messages)) if k not in failed]
        if not records:
            return
        schemas = self.decoder.schemas

        def score(arm: _Arm) -> None:
            rows = arm.rows.tolist()
            scored = score_records(arm.model, [records[r] for r in rows], arm.label)
            if arm.label != SHADOW_ARM:  # the shadow arm sees the same records as Production
                for k, detail in scored.refused:
                    self.dead_letters.send(messages[kept[rows[k]]], VIEW_MISMATCH, detail)
            where = [positions[kept[rows[k]]] for k in scored.positions]
            out.add(arm, where, [encode(PREDICTION_SCHEMA, p, schemas)
                                 for p in scored.predictions])

        self._each_arm(_arms(serving, [r["entity_id"] for r in records]), serving, score)

    @staticmethod
    def _each_arm(arms: list[_Arm], serving: Serving, score: Callable[[_Arm], None]) -> None:
        """Score every arm with rows; a failing candidate hands its rows to Production (a
        failing shadow is dropped), a failing Production fails the batch."""
        extra: np.ndarray | None = None
        for arm in arms:
            if arm.label == PRODUCTION and extra is not None:
                arm = _Arm(arm.model, PRODUCTION, np.sort(np.concatenate([arm.rows, extra])))
            if not len(arm.rows):
                continue
            if arm.label == PRODUCTION:
                score(arm)
                continue
            try:
                score(arm)
            except Exception:  # noqa: BLE001 - the candidate must never stop scoring
                log.exception("%s candidate %s v%d failed to score %d records; Production "
                              "scores them", serving.plan.kind, arm.model.name,
                              arm.model.version, len(arm.rows))
                if arm.label == CANDIDATE:
                    extra = arm.rows

    # -- codecs, one per view version and per model -------------------------------------------

    def _reader_for(self, model: LoadedModel) -> FeatureRecordReader:
        meta = model.meta
        key = (meta.view, meta.view_version, model.inputs)
        if self._reader is None or self._reader[0] != key:
            self._reader = (key, FeatureRecordReader(meta.view, meta.view_version, model.inputs,
                                                     self.decoder.schemas))
        return self._reader[1]

    def _writer_for(self, model: LoadedModel) -> PredictionWriter:
        key = (model.name, model.version)
        writer = self._writers.get(key)
        if writer is None:
            if len(self._writers) >= 4:  # Production and a candidate, across a swap or two
                self._writers.clear()
            meta = model.meta
            writer = self._writers[key] = PredictionWriter(
                model.name, model.version, meta.view, meta.view_version, model.threshold,
                self.decoder.schemas)
        return writer


class ScoredBatch:
    """One batch's predictions, by record position, and their counts by (model, arm): the
    :class:`~driftline.adapters.batch_loop.StagedBatch` of the scorer."""

    def __init__(self, pipeline: ScoringPipeline, messages: list[Message]) -> None:
        self.pipeline = pipeline
        self.messages = messages
        # Per topic, each arm's (record positions, predictions), as scored.
        self.published: list[tuple[np.ndarray, list[bytes]]] = []
        self.shadowed: list[tuple[np.ndarray, list[bytes]]] = []
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self.seconds = 0.0  # spent scoring

    def add(self, arm: _Arm, positions: Sequence[int], predictions: list[bytes]) -> None:
        if len(positions) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(positions)} records")
        target = self.shadowed if arm.label == SHADOW_ARM else self.published
        target.append((np.asarray(positions, dtype=np.int64), predictions))
        self.counts[(arm.model.name, arm.model.version, arm.label)] += len(predictions)

    def send(self) -> None:
        """Produce the predictions in the order of their records."""
        pipeline, messages = self.pipeline, self.messages
        for topic, parts in ((pipeline.predictions_topic, self.published),
                             (pipeline.shadow_topic, self.shadowed)):
            if not parts:
                continue
            positions = np.concatenate([where for where, _ in parts])
            predictions = [p for _, part in parts for p in part]
            order = np.argsort(positions, kind="stable")
            pipeline.producer.produce_many(topic, [predictions[k] for k in order.tolist()],
                                           [messages[i].key() for i in positions[order].tolist()])

    @staticmethod
    def _count(parts: list[tuple[np.ndarray, list[bytes]]]) -> int:
        return sum(len(part) for _, part in parts)

    def finish(self) -> None:
        """Wait for the predictions (and dead letters) to be acknowledged, then count them."""
        if not self.messages:
            return
        start = time.perf_counter()
        pipeline, messages = self.pipeline, self.messages
        pipeline.producer.flush_or_raise()
        FEATURE_TO_PREDICTION_SECONDS.observe_many(
            time.time() - np.fromiter((m.timestamp()[1] for m in messages), np.float64,
                                      len(messages)) / 1000)
        RECORDS_DECODED.labels(messages[0].topic()).inc(len(messages))
        for (name, version, arm), n in self.counts.items():
            PREDICTIONS.labels(name, str(version), arm).inc(n)
        pipeline.scored += self._count(self.published)
        pipeline.shadow_scored += self._count(self.shadowed)
        BATCH_SECONDS.labels("scoring").observe(self.seconds + time.perf_counter() - start)
