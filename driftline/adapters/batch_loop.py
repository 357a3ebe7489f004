"""A consumer loop over one or more topics that hands a pipeline whole batches, on its own thread.

Contract with the pipeline it drives (everything runs on the loop's thread, never concurrently):
- ``on_assign(partitions) -> {partition: offset}``: the partitions are :class:`PartitionId`
  (topic, partition); load state and return the offset to resume each from (state-backed), or
  omit one to resume from the group's committed offset.
- ``process(batches)``: one :class:`MessageBatch` per topic-partition in the consumed batch
  (its messages in offset order); when it returns, the batch's effects have landed.
- ``on_revoke(partitions)``: drop state for partitions this consumer no longer owns.
- optionally ``prepare(batches) -> StagedBatch``, for a pipeline whose output must be
  acknowledged by the broker before it commits (the feature worker): see "No idle waits" below.
Several topics are consumed by one consumer in one group: with the same partition count and
key on each (co-partitioned, as predictions and labels are by entity), partition p of every
topic is assigned to the same consumer (the range assignor), so a stage can join them.
Offsets are committed to Kafka only after ``process`` returns, so a crash replays, never skips.
Batches adapt to load: a batch is what has arrived, not a fixed count. The loop waits (up to
``batch_timeout_s``) for the first message, then takes whatever else the consumer has already
fetched, at most ``batch_size`` (and, with ``batch_linger_s``, what arrives that much longer).
At low and medium rates a batch is the events that came in while the previous one was being
processed, so an event waits about one batch cycle; at full load the fetch queue is always full
and batches grow to ``batch_size``, for throughput.
When ``process`` raises (Redis or Kafka unreachable, say), the loop backs off, rebuilds the
pipeline's state for its partitions and rewinds to where that state ends: nothing is lost and
nothing is applied twice, however long the outage.

No idle waits. A pipeline with ``prepare`` is driven in overlapping steps: once batch N's output
is sent, ``N.finish()`` (wait for N's acknowledgements, then commit N) runs on the loop's commit
thread while the loop thread consumes and ``prepare``s batch N+1; the loop then waits for N's
finish, commits N's Kafka offsets, and only then ``N+1.send()`` produces N+1's output. So a
batch commits only after its own output landed, nothing of N+1 is sent before N is committed,
and an event waits for its own batch's commit, not for the next batch to be computed too. If
N's finish fails, both batches rewind to the pipeline's committed state; if only N+1's prepare or
send fails, N still commits and N+1 alone replays. When nothing new has arrived the loop waits
for N at once, and before a rebalance or a stop it finishes what it has. A pipeline's
``finish`` must therefore be safe to run while its next ``prepare`` runs (it touches only the
batch it belongs to, the producer and the stores).

With ``per_partition`` (the feature worker), each partition (every topic's partition p together)
goes through those steps as a batch of its own, in turns: the loop keeps what it consumed per
partition, and each step takes in what has arrived since, then stages the next partition in
round-robin order that has messages waiting, all of them. So partition 1 is sent and commits
while partition 2 is computed, and an event waits for its partition's next turn, its own
partition's computation and its commit, not for a whole round of every partition to start and
then its place in it. When a batch fails, it and every message still waiting replay; the
partitions before it have committed. A rebalance drops what waits for revoked partitions (their
next owner resumes from the committed state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from driftline.adapters.kafka import DeliveryFailed
from driftline.adapters.metrics import (
    BATCH_FAILURES,
    CONSUMER_LAG,
    DEPENDENCY_ERRORS,
    MESSAGES_CONSUMED,
)

log = logging.getLogger(__name__)


class PartitionId(NamedTuple):
    topic: str
    partition: int


@dataclass
class MessageBatch:
    """The messages of one topic-partition in a consumed batch, in offset order."""

    topic: str
    partition: int
    messages: list[Message] = field(default_factory=list)


class BatchPipeline(Protocol):
    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]: ...
    def on_revoke(self, partitions: Sequence[PartitionId]) -> None: ...
    def process(self, batches: Sequence[MessageBatch]) -> None: ...


class StagedBatch(Protocol):
    """A batch computed by ``prepare`` whose effects have not landed yet."""

    def send(self) -> None:
        """Produce the batch's output (called after the previous batch finished)."""

    def finish(self) -> None:
        """Wait for the output to be acknowledged, then commit; raise if either fails. Runs on
        the loop's commit thread, while the next batch's ``prepare`` runs on the loop's."""


@dataclass
class _Pending:
    staged: StagedBatch
    messages: list[Message]
    batches: list[MessageBatch]  # the same messages by topic-partition, in offset order
    finished: Future  # staged.finish() on the commit thread


def group_by_partition(messages: Sequence[Message]) -> list[MessageBatch]:
    """Split a consumed batch by topic-partition, keeping each one's offset order."""
    batches: dict[tuple[str, int], MessageBatch] = {}
    current: list[Message] = []
    last: tuple[str, int] | None = None
    for msg in messages:  # a consumed batch comes in runs of one partition: look up per run
        key = (msg.topic(), msg.partition())
        if key != last:
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = MessageBatch(key[0], key[1])
            current, last = batch.messages, key
        current.append(msg)
    return list(batches.values())


class BatchLoop:
    def __init__(self, consumer_factory: Callable[[], Consumer], topics: str | Sequence[str],
                 pipeline: BatchPipeline, batch_size: int, batch_timeout_s: float,
                 max_backoff_s: float = 30.0, batch_linger_s: float = 0.0,
                 committer: Executor | None = None, per_partition: bool = False) -> None:
        self._consumer_factory = consumer_factory
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.topic = ",".join(self.topics)  # for logs and /health
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s  # longest wait for a batch's first message
        self.batch_linger_s = batch_linger_s  # then how long to wait for more (0: no wait)
        self.max_backoff_s = max_backoff_s
        self.assigned: set[PartitionId] = set()
        self.batches = 0
        self.messages = 0
        self.retrying: str | None = None  # the error being retried, for /health
        self.failure: BaseException | None = None
        self.lag: dict[str, int] = {}  # "topic/partition" -> messages behind
        self._lag_measured_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: _Pending | None = None  # sent, not yet finished (pipelines with prepare)
        self._staged = hasattr(pipeline, "prepare")
        self.per_partition = per_partition  # stage each partition on its own, in turns
        self._waiting: dict[PartitionId, list[Message]] = {}  # consumed, not yet staged
        self._turn = -1  # the partition staged last (per_partition)
        # Runs each sent batch's finish() (one at a time, in order); its thread starts with the
        # first batch. Tests pass an executor that runs a task when its result is asked for.
        self._committer = committer or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"commits:{self.topic}")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"batches:{self.topic}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return self.failure is None and self._thread is not None and self._thread.is_alive()

    def health(self) -> dict:
        """For ``/health``; ``retrying`` (an outage being waited out) is still healthy."""
        body = {
            "status": "ok" if self.healthy else "failing",
            "topic": self.topic,
            "assigned_partitions": sorted({p.partition for p in self.assigned}),
            "assigned": sorted(f"{p.topic}/{p.partition}" for p in self.assigned),
            "batches": self.batches,
            "messages": self.messages,
            "lag": self.lag,
            "retrying": self.retrying,
        }
        stats = getattr(self.pipeline, "stats", None)
        if stats is not None:
            body.update(stats())
        if self.failure is not None:
            body["error"] = repr(self.failure)
        return body

    def _run(self) -> None:
        try:
            consumer = self._consumer_factory()
            consumer.subscribe(self.topics, on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_revoke)
            try:
                while not self._stop.is_set():
                    self._step(consumer)
                self._finish_pending(consumer, rewind=False)
            finally:
                consumer.close()
                self._committer.shutdown(wait=True)
        except BaseException as exc:  # surfaced by /health; the process must not hide it
            self.failure = exc
            log.exception("batch loop for %s failed", self.topic)

    # -- rebalance ---------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = [PartitionId(tp.topic, tp.partition) for tp in partitions]
        self._finish_pending(consumer, rewind=False)  # state changes only with nothing in flight
        for pid in ids:  # read again from where the restored state resumes
            self._waiting.pop(pid, None)
        resume = self._retry(lambda: self.pipeline.on_assign(ids), "restoring state")
        for tp, pid in zip(partitions, ids, strict=True):
            if pid in resume:
                tp.offset = resume[pid]
        consumer.assign(partitions)
        self.assigned.update(ids)
        log.info("assigned %s (resume %s)", ids, resume)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = [PartitionId(tp.topic, tp.partition) for tp in partitions]
        # Commit what we computed while we still own it; if that fails, the next owner (perhaps
        # us) replays it from the committed state.
        self._finish_pending(consumer, rewind=False)
        for pid in ids:  # consumed, never staged: the next owner reads them from the commit
            self._waiting.pop(pid, None)
        self.pipeline.on_revoke(ids)
        self.assigned.difference_update(ids)
        consumer.unassign()
        log.info("revoked %s", ids)

    # -- the loop ----------------------------------------------------------------------------
    def _consume(self, consumer: Consumer, limit: int | None = None,
                 wait: bool = True) -> list[Message]:
        """The next batch: up to ``batch_size`` (or `limit`) messages, without waiting for it to
        fill.

        ``consume(n, timeout)`` returns only when it has n messages or the timeout expired, so
        asking for a full batch made every batch below ``batch_size`` wait the whole timeout.
        Instead: wait for one message, then take what is already in the fetch queue.
        """
        limit = self.batch_size if limit is None else limit
        # With a batch in flight (or messages waiting), only take what has already arrived: if
        # nothing has, that batch is finished at once instead of after a wait.
        timeout = self.batch_timeout_s if wait and self._pending is None else 0
        raw = consumer.consume(num_messages=1, timeout=timeout)
        if raw and limit > 1:
            raw += consumer.consume(num_messages=limit - 1, timeout=self.batch_linger_s)
        return raw

    def _step_in_turns(self, consumer: Consumer) -> None:
        """Take in what has arrived (while fewer than ``batch_size`` messages wait), then stage
        the next partition in turn with messages waiting (see the module docstring)."""
        room = self.batch_size - sum(map(len, self._waiting.values()))
        if room > 0:
            raw = self._consume(consumer, limit=room, wait=not self._waiting)
            self._measure_lag(consumer)
            for batch in group_by_partition(self._usable(raw)):
                MESSAGES_CONSUMED.labels(batch.topic).inc(len(batch.messages))
                self._waiting.setdefault(PartitionId(batch.topic, batch.partition),
                                         []).extend(batch.messages)
        if not self._waiting:
            self._finish_pending(consumer)
            return
        numbers = sorted({pid.partition for pid in self._waiting})
        self._turn = next((p for p in numbers if p > self._turn), numbers[0])
        mine = sorted(pid for pid in self._waiting if pid.partition == self._turn)
        batches = [MessageBatch(pid.topic, pid.partition, self._waiting.pop(pid)) for pid in mine]
        self._step_staged(consumer, batches, [m for b in batches for m in b.messages])

    def _usable(self, raw: list[Message]) -> list[Message]:
        """The messages of `raw` without errors (logging the errors that matter)."""
        messages = [m for m in raw if m.error() is None]
        if len(messages) != len(raw):
            for msg in raw:
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s: %s", self.topic, err)
        return messages

    def _step(self, consumer: Consumer) -> None:
        if self._staged and self.per_partition:
            self._step_in_turns(consumer)
            return
        raw = self._consume(consumer)
        self._measure_lag(consumer)
        messages = self._usable(raw)
        if not messages:
            self._finish_pending(consumer)
            return
        batches = group_by_partition(messages)
        for batch in batches:  # every service counts what it consumed, by topic
            MESSAGES_CONSUMED.labels(batch.topic).inc(len(batch.messages))
        if self._staged:
            self._step_staged(consumer, batches, messages)
            return
        try:
            self.pipeline.process(batches)
        except Exception as exc:  # noqa: BLE001 - any failure is retried from known state
            self._failed(consumer, exc, messages)
            return
        self._committed(consumer, batches)

    def _step_staged(self, consumer: Consumer, batches: list[MessageBatch],
                     messages: list[Message]) -> None:
        """Compute this batch while the previous one finishes on the commit thread, then
        commit the previous one, then send this one and start its finish (see "No idle waits"
        in the module docstring)."""
        pending, self._pending = self._pending, None
        try:
            staged = self.pipeline.prepare(batches)
        except Exception as exc:  # noqa: BLE001 - replays from the committed state
            error = self._land(consumer, pending)
            if error is None:
                self._failed(consumer, exc, messages)
            else:  # the previous batch did not commit either: both replay
                self._failed(consumer, error, pending.messages + messages)
            return
        error = self._land(consumer, pending)
        if error is not None:
            self._failed(consumer, error, pending.messages + messages)
            return
        try:
            staged.send()
        except Exception as exc:  # noqa: BLE001
            self._failed(consumer, exc, messages)
            return
        self._pending = _Pending(staged, messages, batches,
                                 self._committer.submit(staged.finish))

    def _land(self, consumer: Consumer, pending: _Pending | None) -> Exception | None:
        """Wait for `pending`'s finish; if it committed, commit its Kafka offsets too. Returns
        the error it failed with (its state is then rebuilt by the caller), else None."""
        if pending is None:
            return None
        try:
            pending.finished.result()
        except Exception as exc:  # noqa: BLE001
            return exc
        self._committed(consumer, pending.batches)
        return None

    def _finish_pending(self, consumer: Consumer, rewind: bool = True) -> None:
        pending, self._pending = self._pending, None
        error = self._land(consumer, pending)
        if error is None:
            return
        if rewind:
            self._failed(consumer, error, pending.messages)
        else:
            BATCH_FAILURES.labels(self.topic, type(error).__name__).inc()
            log.warning("last batch on %s failed (%s); it replays from the committed state",
                        self.topic, describe(error))

    def _failed(self, consumer: Consumer, exc: Exception, messages: list[Message]) -> None:
        BATCH_FAILURES.labels(self.topic, type(exc).__name__).inc()
        DEPENDENCY_ERRORS.labels(dependency_of(exc)).inc()
        log.warning("batch on %s failed (%s); rebuilding state and retrying", self.topic,
                    describe(exc))
        self._rewind(consumer, messages)

    def _committed(self, consumer: Consumer, batches: Sequence[MessageBatch]) -> None:
        """The batch's effects have landed: commit its offsets to Kafka too."""
        try:
            consumer.commit(offsets=[TopicPartition(b.topic, b.partition,
                                                    b.messages[-1].offset() + 1)
                                     for b in batches], asynchronous=False)
        except KafkaException as exc:  # e.g. revoked meanwhile; state-backed offsets rule
            log.warning("offset commit on %s failed: %s", self.topic, exc)
        self.batches += 1
        self.messages += sum(len(b.messages) for b in batches)

    def _rewind(self, consumer: Consumer, failed: Sequence[Message]) -> None:
        """Rebuild the pipeline's state and seek every partition back to where it resumes: the
        failed messages and those still waiting for their turn are read again."""
        waiting = [m for messages in self._waiting.values() for m in messages]
        self._waiting.clear()
        first: dict[PartitionId, int] = {}
        for msg in [*failed, *waiting]:
            first.setdefault(PartitionId(msg.topic(), msg.partition()), msg.offset())
        partitions = sorted(self.assigned)

        def rebuild() -> dict[PartitionId, int]:
            self.pipeline.on_revoke(partitions)
            return self.pipeline.on_assign(partitions)

        resume = self._retry(rebuild, "rebuilding state after a failed batch", first_wait=0.5)
        for p in partitions:
            offset = resume.get(p, first.get(p))
            if offset is not None:
                consumer.seek(TopicPartition(p.topic, p.partition, offset))

    def _retry(self, action: Callable[[], dict[PartitionId, int]], what: str,
               first_wait: float = 0.0) -> dict[PartitionId, int]:
        wait = first_wait
        while True:
            if wait:
                self._stop.wait(wait)
            try:
                result = action()
                self.retrying = None
                return result
            except Exception as exc:  # noqa: BLE001
                if self._stop.is_set():
                    raise
                self.retrying = f"{what}: {describe(exc)}"
                wait = min(max(wait * 2, 0.5), self.max_backoff_s)
                log.warning("%s on %s failed (%s); retrying in %.1fs", what, self.topic,
                            describe(exc), wait)

    def _measure_lag(self, consumer: Consumer) -> None:
        """Messages behind the high watermark per assigned partition, at most once a second."""
        now = time.monotonic()
        if now - self._lag_measured_at < 1.0 or not self.assigned:
            return
        self._lag_measured_at = now
        lag = {}
        positions = consumer.position([TopicPartition(p.topic, p.partition)
                                       for p in self.assigned])
        for tp in positions:
            low, high = consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            position = tp.offset if tp.offset >= 0 else low
            lag[f"{tp.topic}/{tp.partition}"] = max(high - position, 0)
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))
        self.lag = lag


def dependency_of(exc: BaseException) -> str:
    """Which dependency an exception (or its cause) came from: redis, kafka or other."""
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__
        if module.startswith("redis"):
            return "redis"
        if isinstance(seen, (KafkaException, DeliveryFailed)) or \
                module.startswith(("confluent_kafka", "cimpl")):
            return "kafka"
        seen = seen.__cause__ or seen.__context__
    return "other"


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs and /health (redis-py 8's repr drops the message)."""
    return f"{type(exc).__name__}: {exc}"
