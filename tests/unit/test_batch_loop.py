"""The batch loop without a broker: adaptive batches, the overlap of a batch's computation with
the previous batch's acknowledgements and commit, and `dependency_of` (which dependency failed a
batch, for driftline_dependency_errors_total)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import redis
from confluent_kafka import KafkaException

from driftline.adapters.batch_loop import BatchLoop, PartitionId, dependency_of
from driftline.adapters.kafka import DeliveryFailed
from tests.fakes import FakeMessage, messages


def test_failures_are_attributed_to_their_dependency():
    assert dependency_of(redis.ConnectionError("down")) == "redis"
    assert dependency_of(redis.WatchError()) == "redis"
    assert dependency_of(KafkaException("broker gone")) == "kafka"
    assert dependency_of(DeliveryFailed("3 messages undelivered")) == "kafka"
    assert dependency_of(ValueError("a bug")) == "other"
    try:
        try:
            raise redis.TimeoutError("slow")
        except redis.TimeoutError as exc:
            raise RuntimeError("commit failed") from exc
    except RuntimeError as wrapped:
        assert dependency_of(wrapped) == "redis"


class BufferedConsumer:
    """``consume`` as librdkafka's: up to n of the messages already fetched, and when there are
    fewer than n it blocks for the whole timeout (counted in ``waited``, nothing arrives)."""

    def __init__(self, fetched: int) -> None:
        self.fetched = list(range(fetched))
        self.waited = 0.0

    def consume(self, num_messages: int, timeout: float) -> list[int]:
        taken, self.fetched = self.fetched[:num_messages], self.fetched[num_messages:]
        if len(taken) < num_messages:
            self.waited += timeout
        return taken


def loop(batch_size: int = 100, linger_s: float = 0.0) -> BatchLoop:
    return BatchLoop(lambda: None, "events", pipeline=None, batch_size=batch_size,
                     batch_timeout_s=0.1, batch_linger_s=linger_s)


def test_a_batch_is_what_has_arrived_without_waiting_for_it_to_fill():
    consumer = BufferedConsumer(30)
    assert loop()._consume(consumer) == list(range(30))
    assert consumer.waited == 0


def test_batches_grow_to_batch_size_under_load():
    consumer, batches = BufferedConsumer(250), loop()
    assert [len(batches._consume(consumer)) for _ in range(3)] == [100, 100, 50]
    assert consumer.waited == 0


def test_an_idle_loop_waits_the_batch_timeout_and_a_linger_waits_for_more():
    consumer = BufferedConsumer(0)
    assert loop()._consume(consumer) == []
    assert consumer.waited == 0.1
    consumer = BufferedConsumer(30)
    assert loop(linger_s=0.02)._consume(consumer) == list(range(30))
    assert consumer.waited == 0.02


# -- pipelines with prepare: batch N+1 is computed while N's output is in flight -------------

class ScriptedConsumer:
    """Hands out prepared consume() results in order (then nothing), records commits, seeks."""

    def __init__(self, *polls: list[FakeMessage]) -> None:
        self.polls = [list(p) for p in polls]
        self.commits: list[dict[tuple[str, int], int]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.timeouts: list[float] = []

    def assign(self, partitions) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if num_messages == 1:
            self.timeouts.append(timeout)
            return self.polls.pop(0) if self.polls else []
        return []

    def commit(self, offsets, asynchronous: bool) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def seek(self, tp) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def position(self, partitions):
        return partitions

    def get_watermark_offsets(self, tp, cached: bool):
        return (0, 0)


class StagedPipeline:
    """Logs every call; ``fail`` names a call (e.g. "finish 1") that raises once."""

    def __init__(self, fail: str | None = None) -> None:
        self.log: list[str] = []
        self.fail = fail
        self.resume: dict[PartitionId, int] = {}

    def _call(self, what: str) -> None:
        self.log.append(what)
        if what == self.fail:
            self.fail = None
            raise RuntimeError(f"{what} failed")

    def on_assign(self, partitions):
        self.log.append("assign")
        return self.resume

    def on_revoke(self, partitions):
        self.log.append("revoke")

    def prepare(self, batches):
        n = batches[0].messages[0].offset() // 10  # batch n holds offsets 10n..10n+9
        self._call(f"prepare {n}")
        pipeline = self

        class Staged:
            def send(self):
                pipeline._call(f"send {n}")

            def finish(self):
                pipeline._call(f"finish {n}")

        return Staged()


class AtResult:
    """A commit 'thread' that runs each task when its result is first asked for: the latest
    moment the loop allows, which makes the call order of a test deterministic."""

    def submit(self, fn) -> Future:
        future: Future = Future()
        run = future.result

        def result(timeout=None):
            if not future.done():
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001
                    future.set_exception(exc)
            return run(timeout)

        future.result = result
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


def staged_loop(pipeline: StagedPipeline, commit_thread: bool = False) -> BatchLoop:
    """The loop under test; with `commit_thread`, its own commit thread, else `AtResult`."""
    batches = BatchLoop(lambda: None, "events", pipeline=pipeline, batch_size=100,
                        batch_timeout_s=0.1, committer=None if commit_thread else AtResult())
    batches.assigned = {PartitionId("events", 0)}
    return batches


def batch(n: int) -> list[FakeMessage]:
    return messages("events", 0, [b"x"] * 10, first_offset=10 * n)


def test_the_next_batch_is_computed_before_the_previous_one_commits_and_sent_after():
    consumer, pipeline = ScriptedConsumer(batch(0), batch(1), batch(2)), StagedPipeline()
    batches = staged_loop(pipeline)
    for _ in range(4):
        batches._step(consumer)
    assert pipeline.log == ["prepare 0", "send 0",
                            "prepare 1", "finish 0", "send 1",
                            "prepare 2", "finish 1", "send 2",
                            "finish 2"]  # nothing more arrived: finished without waiting
    assert consumer.commits == [{("events", 0): 10}, {("events", 0): 20}, {("events", 0): 30}]
    # while a batch was in flight the loop only took what had arrived (timeout 0)
    assert consumer.timeouts == [0.1, 0, 0, 0]
    assert batches.messages == 30 and batches._pending is None


def test_a_failed_commit_replays_both_batches_from_the_committed_state():
    consumer, pipeline = ScriptedConsumer(batch(0), batch(1)), StagedPipeline(fail="finish 0")
    batches = staged_loop(pipeline)
    batches._step(consumer)
    batches._step(consumer)
    assert pipeline.log == ["prepare 0", "send 0", "prepare 1", "finish 0",
                            "revoke", "assign"]  # batch 1 was computed, never sent
    assert consumer.commits == []
    assert consumer.seeks == [("events", 0, 0)]  # back to batch 0's first offset
    assert batches._pending is None


def test_a_stop_finishes_the_batch_in_flight():
    consumer, pipeline = ScriptedConsumer(batch(0)), StagedPipeline()
    batches = staged_loop(pipeline)
    batches._step(consumer)
    batches._finish_pending(consumer, rewind=False)
    assert pipeline.log == ["prepare 0", "send 0", "finish 0"]
    assert consumer.commits == [{("events", 0): 10}]


def test_a_failed_prepare_replays_only_that_batch_once_the_previous_one_committed():
    consumer, pipeline = ScriptedConsumer(batch(0), batch(1)), StagedPipeline(fail="prepare 1")
    batches = staged_loop(pipeline)
    batches._step(consumer)
    batches._step(consumer)
    assert pipeline.log == ["prepare 0", "send 0", "prepare 1", "finish 0", "revoke", "assign"]
    assert consumer.commits == [{("events", 0): 10}]  # batch 0 landed
    assert consumer.seeks == [("events", 0, 10)]  # batch 1 replays
    assert batches._pending is None


def test_a_batch_commits_on_the_commit_thread_while_the_next_one_is_computed():
    """With the real commit thread, batch 0's finish runs during batch 1's prepare (which
    waits for it: without the overlap it would wait in vain), and batch 1 is sent only after
    batch 0 committed."""
    consumer = ScriptedConsumer(batch(0), batch(1))
    finished_0 = threading.Event()
    threads: dict[str, str] = {}

    class Overlapping(StagedPipeline):
        def _call(self, what: str) -> None:
            threads[what] = threading.current_thread().name
            if what == "prepare 1":
                assert finished_0.wait(5), "batch 0 did not finish while batch 1 was computed"
            super()._call(what)
            if what == "finish 0":
                finished_0.set()

    pipeline = Overlapping()
    batches = staged_loop(pipeline, commit_thread=True)
    try:
        batches._step(consumer)
        batches._step(consumer)
        batches._finish_pending(consumer)
    finally:
        batches._committer.shutdown()
    assert pipeline.log == ["prepare 0", "send 0", "finish 0", "prepare 1", "send 1",
                            "finish 1"]
    assert threads["finish 0"] == threads["finish 1"] != threads["prepare 1"]
    assert threads["finish 0"].startswith("commits:events")
    assert consumer.commits == [{("events", 0): 10}, {("events", 0): 20}]


def test_a_failed_send_replays_that_batch_after_the_previous_one_committed():
    consumer, pipeline = ScriptedConsumer(batch(0), batch(1)), StagedPipeline(fail="send 1")
    batches = staged_loop(pipeline)
    batches._step(consumer)
    batches._step(consumer)
    assert pipeline.log == ["prepare 0", "send 0", "prepare 1", "finish 0", "send 1",
                            "revoke", "assign"]
    assert consumer.commits == [{("events", 0): 10}]  # batch 0 landed, batch 1 did not
    assert consumer.seeks == [("events", 0, 10)]  # back to batch 1's first offset
    assert batches._pending is None


# -- per partition: each partition's share of a consumed batch is a staged batch of its own ---

class PerPartitionPipeline(StagedPipeline):
    """Names each staged batch by its partitions and message count ("p0:10")."""

    def prepare(self, batches):
        name = "+".join(f"p{b.partition}:{len(b.messages)}" for b in batches)
        self._call(f"prepare {name}")
        pipeline = self

        class Staged:
            def send(self):
                pipeline._call(f"send {name}")

            def finish(self):
                pipeline._call(f"finish {name}")

        return Staged()


def partitions(*numbers: int, first_offset: int = 5) -> list[FakeMessage]:
    return [m for p in numbers
            for m in messages("events", p, [b"x"] * 10, first_offset=first_offset)]


def per_partition_loop(pipeline: StagedPipeline) -> BatchLoop:
    batches = BatchLoop(lambda: None, "events", pipeline=pipeline, batch_size=100,
                        batch_timeout_s=0.1, committer=AtResult(), per_partition=True)
    batches.assigned = {PartitionId("events", p) for p in range(3)}
    return batches


def test_per_partition_each_partition_commits_before_the_next_one_is_sent():
    consumer, pipeline = ScriptedConsumer(partitions(2, 0, 1)), PerPartitionPipeline()
    batches = per_partition_loop(pipeline)
    for _ in range(4):  # the last step finds nothing waiting: the last partition finishes
        batches._step(consumer)
    assert pipeline.log == ["prepare p0:10", "send p0:10",
                            "prepare p1:10", "finish p0:10", "send p1:10",
                            "prepare p2:10", "finish p1:10", "send p2:10",
                            "finish p2:10"]
    assert consumer.commits == [{("events", 0): 15}, {("events", 1): 15}, {("events", 2): 15}]
    # messages were waiting until the last step: only then did the loop wait for new ones
    assert consumer.timeouts == [0.1, 0, 0, 0]
    assert batches.messages == 30 and batches._pending is None and not batches._waiting


def test_per_partition_what_arrives_meanwhile_joins_its_partition_at_its_next_turn():
    """Partition 0 is staged first; what arrives while it is computed (more for 0 and for 1)
    is taken in before the next turn: partition 1 goes with everything it has, then 2, then 0
    again, round robin."""
    consumer = ScriptedConsumer(partitions(0, 1, 2), partitions(1, 0, first_offset=15))
    pipeline = PerPartitionPipeline()
    batches = per_partition_loop(pipeline)
    for _ in range(5):
        batches._step(consumer)
    assert [line for line in pipeline.log if line.startswith("prepare")] == [
        "prepare p0:10", "prepare p1:20", "prepare p2:10", "prepare p0:10"]
    assert consumer.commits == [{("events", 0): 15}, {("events", 1): 25}, {("events", 2): 15},
                                {("events", 0): 25}]
    assert batches.messages == 50 and not batches._waiting


def test_per_partition_a_failure_replays_that_partition_and_the_ones_still_waiting():
    consumer = ScriptedConsumer(partitions(2, 0, 1))
    pipeline = PerPartitionPipeline(fail="prepare p1:10")
    batches = per_partition_loop(pipeline)
    batches._step(consumer)
    batches._step(consumer)
    assert pipeline.log == ["prepare p0:10", "send p0:10", "prepare p1:10", "finish p0:10",
                            "revoke", "assign"]  # partition 2 was never started
    assert consumer.commits == [{("events", 0): 15}]  # partition 0 landed
    assert consumer.seeks == [("events", 1, 5), ("events", 2, 5)]  # 1 and 2 replay
    assert batches._pending is None and not batches._waiting


def test_per_partition_a_revoked_partition_drops_what_waits_for_it():
    from confluent_kafka import TopicPartition

    consumer = ScriptedConsumer(partitions(0, 1, 2))
    pipeline = PerPartitionPipeline()
    batches = per_partition_loop(pipeline)
    consumer.unassign = lambda: None
    batches._step(consumer)  # partition 0 staged; 1 and 2 wait
    batches._on_revoke(consumer, [TopicPartition("events", 2)])
    assert set(batches._waiting) == {PartitionId("events", 1)}  # 1 is still ours
    batches._step(consumer)
    batches._step(consumer)
    assert [line for line in pipeline.log if line.startswith("prepare")] == [
        "prepare p0:10", "prepare p1:10"]


def test_per_partition_a_failed_commit_replays_it_the_batch_after_it_and_what_waits():
    consumer = ScriptedConsumer(partitions(2, 0, 1))
    pipeline = PerPartitionPipeline(fail="finish p0:10")
    batches = per_partition_loop(pipeline)
    batches._step(consumer)
    batches._step(consumer)
    assert pipeline.log == ["prepare p0:10", "send p0:10", "prepare p1:10", "finish p0:10",
                            "revoke", "assign"]
    assert consumer.commits == []
    assert consumer.seeks == [("events", 0, 5), ("events", 1, 5), ("events", 2, 5)]
    assert batches._pending is None and not batches._waiting
