"""`driftline serve`: the scorer process — stream scorer, model-event watcher and HTTP API.

Three parts share one :class:`ModelHolder`: the stream scorer (a :class:`BatchLoop` over the
features topic, its own consumer group), a watcher of ``driftline.models`` that reloads on every
event of the served model — a stage transition or a rollout step, which changes the registry's
serving plan (each scorer process watches with a group of its own, so every replica swaps) —
and the aiohttp API. A reload that changes nothing swaps nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid

from aiohttp import web

from driftline.adapters import kafka
from driftline.adapters.batch_loop import BatchLoop
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.metrics import MODEL_SWAPS
from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import AsyncRedisOnlineReader
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.errors import DecodeError
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.registry import ModelRegistry
from driftline.core.views import views_for
from driftline.serving.api import ScorerApi
from driftline.serving.models import ModelHolder, ModelUnavailable
from driftline.serving.stream import ScoringPipeline
from driftline.settings import Settings

log = logging.getLogger(__name__)


class ModelWatcher:
    """Reloads the holder on every ``driftline.ModelEvent`` of the served model: a new
    Production version or a new serving plan (rollout started, stepped, ended)."""

    def __init__(self, settings: Settings, holder: ModelHolder, schemas: SchemaSet) -> None:
        self.settings = settings
        self.holder = holder
        self.decoder = Decoder("driftline.ModelEvent", schemas)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _reload(self) -> None:
        before = self.holder.swaps
        try:
            self.holder.reload()
        except ModelUnavailable as exc:
            log.warning("model reload refused: %s", exc)
            return
        except Exception:  # noqa: BLE001 - e.g. an unreadable registry; keep watching
            log.exception("model reload failed; the current model keeps serving")
            return
        MODEL_SWAPS.inc(self.holder.swaps - before)

    def _run(self) -> None:
        consumer = kafka.make_consumer(
            self.settings, f"{self.settings.group_scorer}-models-{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "latest", "enable.auto.commit": True})
        # Anything promoted between start-up and the assignment is caught by a reload there.
        consumer.subscribe([self.settings.topic_models], on_assign=lambda c, p: self._reload())
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(100, 0.2):
                    if msg.error() is not None:
                        continue
                    try:
                        event = self.decoder.decode(msg.value() or b"")
                    except DecodeError as exc:
                        log.warning("ignoring undecodable model event: %s", exc)
                        continue
                    if event["model_name"] == self.holder.name:
                        self._reload()
        finally:
            consumer.close()


def run_scorer(settings: Settings) -> int:
    schemas = SchemaSet.load()
    views = views_for(settings)
    holder = ModelHolder(ModelRegistry(settings.data_dir / "registry"), settings.model_name,
                         settings.decision_threshold, views)
    try:
        holder.reload()
    except ModelUnavailable as exc:
        log.warning("starting without a model (%s); scoring waits for a promotion", exc)
    producer = kafka.make_producer(settings)
    pipeline = ScoringPipeline(
        holder, Decoder("driftline.FeatureRecord", schemas), producer,
        DeadLetterSink(producer, settings.topic_dlq, schemas), settings.topic_predictions,
        shadow_topic=settings.topic_shadow)
    loop = BatchLoop(lambda: kafka.make_consumer(settings, settings.group_scorer),
                     settings.topic_features, pipeline, settings.batch_size,
                     settings.batch_timeout_ms / 1000, max_backoff_s=5.0,
                     batch_linger_s=settings.batch_linger_ms / 1000)
    watcher = ModelWatcher(settings, holder, schemas)
    online = AsyncRedisOnlineReader.from_url(settings.redis_url_or_fail,
                                             settings.redis_timeout_ms / 1000,
                                             OnlineKeys.for_settings(settings))
    api = ScorerApi(holder, online, loop.health)
    app = api.app()

    async def on_startup(_app: web.Application) -> None:
        loop.start()
        watcher.start()

    async def on_cleanup(_app: web.Application) -> None:
        loop.stop()
        watcher.stop()
        await online.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host=settings.scorer_host, port=settings.scorer_port, print=None,
                access_log=None)
    return 0
