"""Entry point of `driftline worker`: wire the pipeline, build the Faust app, run the worker."""

from __future__ import annotations

from driftline.adapters import kafka
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.offline_store import OfflineStore, PendingParquet
from driftline.adapters.redis_client import SyncClient, connect
from driftline.adapters.redis_layout import OnlineKeys
from driftline.adapters.redis_online import RedisOnlineStore
from driftline.adapters.redis_state import RedisStateBackend
from driftline.agents.app import Service, run_service
from driftline.agents.features import FeatureStage
from driftline.agents.ingest import IngestPipeline
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.event_time import EventTimeGuard
from driftline.core.features import FeatureView
from driftline.core.state import PartitionState
from driftline.core.views import views_for
from driftline.settings import Settings


def feature_state(settings: Settings, views: list[FeatureView], offline: OfflineStore,
                  client: SyncClient) -> PartitionState:
    """The feature stage's partition state: on Redis (one or a cluster), one store per view,
    online values in the same transaction (keyed so readers find them from the entity id),
    Parquet files under the events and features folders as pending output."""
    topic = settings.topic_events
    online = RedisOnlineStore(client, settings.redis_ttl_s, OnlineKeys.for_settings(settings))
    backend = RedisStateBackend(client, settings.group_features, topic, online=online)
    bases = [offline.events_dir(topic), *(offline.features_dir(v.name) for v in views)]
    return PartitionState(backend, topics=[topic], stores=[v.name for v in views],
                          files=PendingParquet(offline, topic, bases))


def build_pipeline(settings: Settings) -> IngestPipeline:
    schemas = SchemaSet.load()
    producer = kafka.make_producer(settings)
    dead_letters = DeadLetterSink(producer, settings.topic_dlq, schemas)
    views = list(views_for(settings).values())
    offline = OfflineStore(settings.data_dir / "offline")
    state = feature_state(settings, views, offline, connect(settings.redis_url_or_fail))
    stage = FeatureStage(
        views, topic=settings.topic_events, state=state, offline=offline,
        producer=producer, features_topic=settings.topic_features,
        dead_letters=dead_letters, schemas=schemas)
    decoder = Decoder.for_settings(settings, views[0].source.schema, schemas)
    guard = EventTimeGuard.strictest(v.source for v in views)
    return IngestPipeline(decoder, dead_letters, producer, stage, guard=guard)


def run_worker(settings: Settings) -> int:
    return run_service(settings, build_pipeline(settings), Service.worker(settings))
