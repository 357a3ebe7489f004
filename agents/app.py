"""The Faust applications of the feature worker and the monitor, built by a factory.

No module-global app: ``create_app(settings, pipeline, service)`` wires a Faust app whose
lifecycle owns a :class:`BatchReader` over the service's topics, plus its HTTP pages
(``/health``, ``/metrics``; for a pipeline with a ``status`` method, the monitor's, also the
status page ``/status`` and its data ``/status.json``). Faust keeps what it is good at — worker
lifecycle, signals, web, timers — while the high-volume topics are read in batches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Service:
    """What differs between the batch-reading Faust services: group, topics, HTTP address."""

    group: str
    topics: tuple[str, ...]
    host: str
    port: int
    linger_ms: int | None = None  # after a batch's first message; None: DRIFTLINE_BATCH_LINGER_MS
    per_partition: bool = False  # stage and commit each partition's share on its own

    @classmethod
    def worker(cls, settings: Settings) -> Service:
        # Per partition: an event waits for its own partition's computation and commit, not
        # for every partition's (bench/README.md measures it).
        return cls(settings.group_features, (settings.topic_events,), settings.worker_host,
                   settings.worker_port, per_partition=True)

    @classmethod
    def monitor(cls, settings: Settings) -> Service:
        # The monitor fills its batches (up to the batch timeout) instead of taking what has
        # arrived: its detectors read predictions in arrival order, and a backlog fetched one
        # partition at a time in small batches reaches them partition by partition, which can
        # make one change look like several (README, Known limits). Freshness matters less here.
        return cls(settings.group_monitor, (settings.topic_predictions, settings.topic_labels),
                   settings.monitor_host, settings.monitor_port,
                   linger_ms=settings.batch_timeout_ms)


def create_app(settings: Settings, pipeline: BatchPipeline, service: Service
               ) -> tuple[faust.App, BatchLoop]:
    datadir = settings.data_dir / "faust" / service.group
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        f"{service.group}-app",  # Faust's own group, apart from other deployments
        store="memory://",
        datadir=str(datadir),
        web_enabled=True,
        web_host=service.host,
        web_bind=service.host,
        web_port=service.port,
        autodiscover=False,
        **faust_broker_settings(settings),
    )
    batches = BatchLoop(
        lambda: kafka.make_consumer(settings, service.group),
        topics=list(service.topics),
        pipeline=pipeline,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
        batch_linger_s=(settings.batch_linger_ms if service.linger_ms is None
                        else service.linger_ms) / 1000,
        per_partition=service.per_partition,
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

    if callable(getattr(pipeline, "status", None)):
        _add_status_pages(app, settings, pipeline, batches)
    return app, batches


def _add_status_pages(app: faust.App, settings: Settings, pipeline, batches: BatchLoop) -> None:
    """``/status`` (HTML with inline SVG, agents/status.py) and ``/status.json``. The registry
    and controller files are read in a thread, off the event loop."""
    from driftline.agents.status import complete
    from driftline.core.status_page import render_status, status_json

    def gather():
        data = pipeline.status()
        return complete(data, settings.data_dir, batches.health().get("lag", {}))

    @app.page("/status")
    async def status_page(web, request):
        data = await asyncio.get_running_loop().run_in_executor(None, gather)
        return web.html(render_status(data))

    @app.page("/status.json")
    async def status_data(web, request):
        data = await asyncio.get_running_loop().run_in_executor(None, gather)
        return web.json(status_json(data))


def run_service(settings: Settings, pipeline: BatchPipeline, service: Service) -> int:
    """Run `pipeline` as `service` in a Faust worker until a signal stops it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app, _reader = create_app(settings, pipeline, service)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                          override_logging=False)
    worker.execute_from_commandline()  # returns via SystemExit when stopped by a signal
    return 0
