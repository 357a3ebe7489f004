"""Entry point of `driftline monitor`: wire the monitor stage, build its Faust app, run it."""

from __future__ import annotations

from driftline.adapters import kafka
from driftline.adapters.dead_letters import DeadLetterSink
from driftline.adapters.offline_store import AllPending, OfflineStore, PendingParquet
from driftline.adapters.redis_client import connect
from driftline.adapters.redis_state import RedisStateBackend
from driftline.agents.app import Service, run_service
from driftline.agents.ingest import wall_clock_ms
from driftline.agents.monitor import DETECTORS, JOIN, MonitorStage, MonitorTopics
from driftline.core.codec.decoder import Decoder
from driftline.core.codec.schema_set import SchemaSet
from driftline.core.event_time import EventTimeGuard
from driftline.core.monitoring.profile import ReferenceProfile
from driftline.core.registry import PROFILE_FILE, ModelRegistry, RegistryError
from driftline.core.state import PartitionState
from driftline.core.views import views_for
from driftline.settings import Settings


class RegistryProfiles:
    """Reference profiles from the model registry, read once per model version and again when
    the file changes (``driftline reference rebase`` replaces it atomically)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.cache: dict[tuple[str, int], tuple[float | None, ReferenceProfile | None]] = {}

    def __call__(self, name: str, version: int) -> ReferenceProfile | None:
        key = (name, version)
        if key not in self.cache:
            stamp = self._stamp(key)
            try:
                raw = self.registry.reference_profile(name, version)
            except RegistryError:
                raw = None  # a version this registry does not know: nothing to compare with
            self.cache[key] = (stamp, None if raw is None else ReferenceProfile.from_json(raw))
        return self.cache[key][1]

    def changed(self) -> list[tuple[str, int]]:
        """The versions whose profile file changed since it was read; they are forgotten, so
        the next call reads the new one."""
        stale = [key for key, (stamp, _) in self.cache.items() if self._stamp(key) != stamp]
        for key in stale:
            del self.cache[key]
        return stale

    def _stamp(self, key: tuple[str, int]) -> float | None:
        path = self.registry.model_path(*key).parent / PROFILE_FILE
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None


def build_monitor(settings: Settings, clock_ms=wall_clock_ms) -> MonitorStage:
    schemas = SchemaSet.load()
    producer = kafka.make_producer(settings)
    view = next(iter(views_for(settings).values()))
    offline = OfflineStore(settings.data_dir / "offline")
    topics = MonitorTopics(settings.topic_predictions, settings.topic_labels,
                           settings.topic_drift)
    client = connect(settings.redis_url_or_fail)
    files = AllPending([PendingParquet(offline, t, [offline.outcomes_dir(t)])
                        for t in (topics.labels, topics.predictions)])
    # cross_partition: the detectors (in partition 0's store) see every partition's records,
    # so a transaction must land whole, also on a Redis Cluster (one slot for the stage).
    state = PartitionState(
        RedisStateBackend(client, settings.group_monitor, topics.predictions,
                          cross_partition=True),
        topics=[topics.predictions, topics.labels], stores=[JOIN, DETECTORS], files=files)
    return MonitorStage(
        topics, state, offline, producer, DeadLetterSink(producer, settings.topic_dlq, schemas),
        schemas, RegistryProfiles(ModelRegistry(settings.data_dir / "registry")),
        input_names=view.feature_names, slice_names=view.slices,
        horizon_ms=settings.label_horizon_s * 1000,
        label_guard=EventTimeGuard("label_time"), clock_ms=clock_ms,
        prediction_decoder=Decoder.for_settings(settings, "driftline.Prediction", schemas),
        label_decoder=Decoder.for_settings(settings, "driftline.Label", schemas))


def run_monitor(settings: Settings) -> int:
    return run_service(settings, build_monitor(settings), Service.monitor(settings))
