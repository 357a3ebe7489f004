"""The Faust application of the feature worker, built by a factory from Settings.

No module-global app: ``create_app(settings, pipeline)`` wires a Faust app whose lifecycle owns a
:class:`BatchReader` over the raw events topic, plus the worker's HTTP pages (``/health``,
``/metrics``). Faust keeps what it is good at — worker lifecycle, signals, web, timers — while the
high-volume topic is read in batches.
"""

from __future__ import annotations

import faust

from driftline.adapters import kafka
from driftline.adapters.batch_loop import BatchLoop, BatchPipeline
from driftline.adapters.metrics import exposition
from driftline.agents.batch_reader import BatchReader
from driftline.settings import Settings


def faust_broker_settings(settings: Settings) -> dict:
    """Faust's group timings, from the same profile as the confluent-kafka clients."""
    return {
        "broker": f"kafka://{settings.kafka_bootstrap_or_fail}",
        "broker_session_timeout": settings.session_timeout_ms / 1000,
        "broker_heartbeat_interval": settings.heartbeat_interval_ms / 1000,
        "broker_rebalance_timeout": settings.rebalance_timeout_ms / 1000,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
    }


def create_app(settings: Settings, pipeline: BatchPipeline) -> tuple[faust.App, BatchLoop]:
    app = faust.App(
        f"{settings.group_features}-app",  # Faust's own group, apart from other deployments
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=True,
        web_host=settings.worker_host,
        web_bind=settings.worker_host,
        web_port=settings.worker_port,
        autodiscover=False,
        **faust_broker_settings(settings),
    )
    batches = BatchLoop(
        lambda: kafka.make_consumer(settings, settings.group_features),
        topics=[settings.topic_events],
        pipeline=pipeline,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
    )
    reader = BatchReader(batches, loop=app.loop)

    @app.task
    async def start_batch_reader() -> None:
        await app.add_runtime_dependency(reader)

    @app.page("/health")
    async def health(web, request):
        body = batches.health()
        return web.json(body, status=200 if body["status"] == "ok" else 503)

    @app.page("/metrics")
    async def metrics(web, request):
        payload, content_type = exposition()
        # aiohttp refuses a charset inside content_type; the exposition is ASCII anyway.
        return web.bytes(payload, content_type=content_type.split(";")[0])

    return app, batches
