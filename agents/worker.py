"""Entry point of `driftline worker`: wire the pipeline, build the Faust app, run the worker."""

from __future__ import annotations

import faust
import redis

from driftline import kafka
from driftline.agents.app import create_app
from driftline.agents.features import FeatureStage
from driftline.agents.ingest import IngestPipeline
from driftline.codec.decoder import Decoder
from driftline.codec.schema_set import SchemaSet
from driftline.dlq import DeadLetterSink
from driftline.offline_store import OfflineStore
from driftline.online_store import RedisOnlineStore
from driftline.settings import Settings
from driftline.views import views_for


def build_pipeline(settings: Settings) -> IngestPipeline:
    schemas = SchemaSet.load()
    producer = kafka.make_producer(settings)
    dead_letters = DeadLetterSink(producer, settings.topic_dlq, schemas)
    views = list(views_for(settings).values())
    client = redis.Redis.from_url(settings.redis_url_or_fail)
    stage = FeatureStage(
        views, topic=settings.topic_events, group=settings.group_features, client=client,
        online=RedisOnlineStore(client, settings.redis_ttl_s),
        offline=OfflineStore(settings.data_dir / "offline"),
        producer=producer, features_topic=settings.topic_features,
        dead_letters=dead_letters, schemas=schemas)
    decoder = Decoder.for_settings(settings, views[0].source.schema, schemas)
    return IngestPipeline(decoder, dead_letters, producer, stage)


def run_worker(settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app, _reader = create_app(settings, build_pipeline(settings))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                          override_logging=False)
    worker.execute_from_commandline()  # returns via SystemExit when stopped by a signal
    return 0
