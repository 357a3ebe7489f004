"""Entry point of `driftline retrain-controller`: the drift-topic loop, the ticker and the HTTP
endpoints around a :class:`~driftline.agents.retrain_controller.RetrainController`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from driftline.adapters import kafka
from driftline.adapters.batch_loop import BatchLoop, MessageBatch, PartitionId
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.metrics import exposition
from driftline.adapters.model_events import ModelEventPublisher
from driftline.adapters.offline_store import OfflineStore
from driftline.agents.retrain_controller import JobRunner, RetrainController, SubprocessJobs
from driftline.commands import local_servers
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.registry import ModelRegistry
from driftline.core.retraining.config import RetrainingConfig
from driftline.core.views import views_for
from driftline.settings import Settings

log = logging.getLogger(__name__)


class DriftPipeline:
    """The batch-loop pipeline over ``driftline.drift``: decode, hand to the controller."""

    def __init__(self, controller: RetrainController, decoder: Decoder,
                 dead_letters: DeadLetterSink) -> None:
        self.controller = controller
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.events = 0

    def stats(self) -> dict[str, int]:
        return {"drift_events": self.events, "dead_letters": self.dead_letters.sent}

    def on_assign(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        return {}

    def on_revoke(self, partitions: Sequence[PartitionId]) -> None:
        pass

    def process(self, batches: Sequence[MessageBatch]) -> None:
        messages = [m for b in batches for m in b.messages]
        records, failures = self.decoder.decode_many([m.value() or b"" for m in messages])
        for i, error in failures:
            self.dead_letters.send(messages[i], error.reason, error.detail)
        if failures:  # delivered before the offsets past them are committed
            self.dead_letters.producer.flush_or_raise()
        self.controller.offer(records)
        self.events += len(records)


class Ticker:
    """Calls ``controller.tick()`` every `interval_s` on one long-lived thread (the job
    children die with the thread that started them, so it must outlive them)."""

    def __init__(self, controller: RetrainController, interval_s: float = 0.5) -> None:
        self.controller = controller
        self.interval_s = interval_s
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrain-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.controller.tick()
                self.failure = None
            except Exception as exc:  # noqa: BLE001 - reported in /health, retried next tick
                log.exception("retrain controller tick failed")
                self.failure = repr(exc)


def load_config(path: Path | None) -> RetrainingConfig:
    """The retraining config from YAML (`DRIFTLINE_RETRAINING_CONFIG`); the defaults if unset.
    Errors name the file."""
    if path is None:
        return RetrainingConfig()
    import yaml

    try:
        return RetrainingConfig.from_mapping(yaml.safe_load(Path(path).read_text()))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def build_controller(settings: Settings, runner: JobRunner | None = None) -> RetrainController:
    """The controller on `settings`: registry and offline store under the data dir, job
    processes with the same settings in their environment."""
    config = load_config(settings.retraining_config)
    env = local_servers.child_env(settings.to_env())
    return RetrainController(
        root=settings.data_dir / "retrain", config=config,
        registry=ModelRegistry(settings.data_dir / "registry"),
        offline=OfflineStore(settings.data_dir / "offline"),
        publisher=ModelEventPublisher(settings, warn=log.warning),
        runner=runner or SubprocessJobs(env), views=views_for(settings),
        threshold=settings.decision_threshold)


def run_controller(settings: Settings) -> int:
    """`driftline retrain-controller`: the drift loop, the ticker and ``/health`` ``/metrics``."""
    from aiohttp import web

    schemas = SchemaSet.load()
    controller = build_controller(settings)
    producer = kafka.make_producer(settings)
    pipeline = DriftPipeline(controller, Decoder("driftline.DriftEvent", schemas),
                             DeadLetterSink(producer, settings.topic_dlq, schemas))
    loop = BatchLoop(lambda: kafka.make_consumer(settings, settings.group_controller),
                     settings.topic_drift, pipeline, 1000, 0.2, max_backoff_s=5.0)
    ticker = Ticker(controller)

    async def health(_request: web.Request) -> web.Response:
        body = {"stream": loop.health(), **controller.status(),
                "ticker": "ok" if ticker.failure is None else ticker.failure}
        ok = loop.healthy and ticker.failure is None
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        payload, content_type = exposition()
        return web.Response(body=payload, content_type=content_type.split(";")[0])

    async def on_startup(_app: web.Application) -> None:
        loop.start()
        ticker.start()

    async def on_cleanup(_app: web.Application) -> None:
        loop.stop()
        ticker.stop()

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/metrics", metrics)])
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host=settings.controller_host, port=settings.controller_port, print=None,
                access_log=None)
    return 0
