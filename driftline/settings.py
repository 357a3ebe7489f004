"""One settings object for every Driftline process, read from ``DRIFTLINE_*`` environment variables.

Each field documents its variable and default. Timing knobs that only make sense on the embedded
dev broker (short group-join timeouts, see FIELD-NOTES) live in a separate profile table, so a
production deployment never inherits them by accident: ``DRIFTLINE_PROFILE=prod`` is the default,
``driftline dev``, ``make demo`` and the tests set ``dev``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from driftline.core.partitioner import PARTITIONERS


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


# Group-membership timings. The embedded broker (Tansu) holds a group join for the full
# rebalance timeout, so dev uses seconds where production keeps the Kafka defaults.
PROFILES: dict[str, dict[str, int]] = {
    "dev": {
        "session_timeout_ms": 6000,
        "max_poll_interval_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "rebalance_timeout_ms": 3000,
    },
    "prod": {
        "session_timeout_ms": 45000,
        "max_poll_interval_ms": 300000,
        "heartbeat_interval_ms": 3000,
        "rebalance_timeout_ms": 60000,
    },
}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Settings:
    """Every knob of Driftline. Build with :meth:`from_env`; tests build it directly."""

    profile: str = _setting("DRIFTLINE_PROFILE", "prod", "dev or prod: selects group timings")
    kafka_bootstrap: str | None = _setting(
        "DRIFTLINE_KAFKA_BOOTSTRAP", None,
        "Kafka bootstrap servers; unset = `driftline dev` starts the embedded broker")
    redis_url: str | None = _setting(
        "DRIFTLINE_REDIS_URL", None,
        "Redis URL (online store and stream state): redis://host:port/0 for one Redis, "
        "redis+cluster://host:port[,host:port...] for a Redis Cluster; unset = `driftline dev` "
        "starts redis-server")
    schema_registry_url: str | None = _setting(
        "DRIFTLINE_SCHEMA_REGISTRY_URL", None,
        "Confluent schema registry; enables decoding of the Confluent wire format")
    data_dir: Path = _setting(
        "DRIFTLINE_DATA_DIR", Path("data"), "offline store, model registry and local state")
    feature_defs: Path | None = _setting(
        "DRIFTLINE_FEATURE_DEFS", None, "feature definitions folder; unset = the shipped demo")
    partitions: int = _setting(
        "DRIFTLINE_PARTITIONS", 6,
        "partitions of every topic created; also how readers find an entity's online values, "
        "so it must equal the events topic's partition count")
    partitioner: str = _setting(
        "DRIFTLINE_PARTITIONER", "consistent_random",
        "how producers place keys in partitions, and readers find them: consistent_random "
        "(CRC-32, librdkafka's default) or murmur2_random (the Java client's default); must "
        "match the producers of the events topic")
    replication_factor: int = _setting(
        "DRIFTLINE_REPLICATION_FACTOR", 1, "replication factor of every topic created")
    topic_events: str = _setting("DRIFTLINE_TOPIC_EVENTS", "driftline.events", "raw events")
    topic_features: str = _setting(
        "DRIFTLINE_TOPIC_FEATURES", "driftline.features", "one feature record per event")
    topic_predictions: str = _setting(
        "DRIFTLINE_TOPIC_PREDICTIONS", "driftline.predictions", "one prediction per feature record")
    topic_labels: str = _setting("DRIFTLINE_TOPIC_LABELS", "driftline.labels", "delayed labels")
    topic_drift: str = _setting("DRIFTLINE_TOPIC_DRIFT", "driftline.drift", "drift events")
    topic_models: str = _setting(
        "DRIFTLINE_TOPIC_MODELS", "driftline.models", "model stage transitions")
    topic_shadow: str = _setting(
        "DRIFTLINE_TOPIC_SHADOW", "driftline.shadow",
        "a shadow candidate's predictions (never on the predictions topic)")
    topic_dlq: str = _setting(
        "DRIFTLINE_TOPIC_DLQ", "driftline.dlq", "dead letters: original bytes and the reason")
    group_features: str = _setting(
        "DRIFTLINE_GROUP_FEATURES", "driftline-features", "consumer group of the feature workers")
    batch_size: int = _setting(
        "DRIFTLINE_BATCH_SIZE", 10000, "most messages taken from Kafka in one batch")
    batch_timeout_ms: int = _setting(
        "DRIFTLINE_BATCH_TIMEOUT_MS", 100, "longest wait for the first message of a batch")
    batch_linger_ms: int = _setting(
        "DRIFTLINE_BATCH_LINGER_MS", 0,
        "after a batch's first message, how long to wait for more; 0 = take what has arrived "
        "(batches still grow to DRIFTLINE_BATCH_SIZE under load)")
    redis_ttl_s: int = _setting(
        "DRIFTLINE_REDIS_TTL_S", 7 * 24 * 3600, "TTL of online feature keys; 0 = no expiry")
    worker_host: str = _setting("DRIFTLINE_WORKER_HOST", "127.0.0.1", "feature worker HTTP host")
    worker_port: int = _setting("DRIFTLINE_WORKER_PORT", 6066, "feature worker HTTP port")
    monitor_host: str = _setting("DRIFTLINE_MONITOR_HOST", "127.0.0.1", "monitor HTTP host")
    monitor_port: int = _setting("DRIFTLINE_MONITOR_PORT", 6067, "monitor HTTP port")
    group_monitor: str = _setting(
        "DRIFTLINE_GROUP_MONITOR", "driftline-monitor", "consumer group of the monitor")
    label_horizon_s: int = _setting(
        "DRIFTLINE_LABEL_HORIZON_S", 7 * 24 * 3600,
        "how long (event time) a prediction waits for its label, and a label for its prediction")
    controller_host: str = _setting(
        "DRIFTLINE_CONTROLLER_HOST", "127.0.0.1", "retrain controller HTTP host")
    controller_port: int = _setting(
        "DRIFTLINE_CONTROLLER_PORT", 6068, "retrain controller HTTP port")
    group_controller: str = _setting(
        "DRIFTLINE_GROUP_CONTROLLER", "driftline-retrain",
        "consumer group of the retrain controller")
    retraining_config: Path | None = _setting(
        "DRIFTLINE_RETRAINING_CONFIG", None,
        "YAML of per-model retraining and rollout policies; unset = the defaults")
    scorer_host: str = _setting("DRIFTLINE_SCORER_HOST", "127.0.0.1", "scorer HTTP host")
    scorer_port: int = _setting("DRIFTLINE_SCORER_PORT", 8000, "scorer HTTP port")
    group_scorer: str = _setting(
        "DRIFTLINE_GROUP_SCORER", "driftline-scorer", "consumer group of the stream scorers")
    model_name: str = _setting(
        "DRIFTLINE_MODEL_NAME", "fraud", "registered model the scorer serves in Production")
    decision_threshold: float = _setting(
        "DRIFTLINE_DECISION_THRESHOLD", 0.5, "score at or above which the decision is positive")
    redis_timeout_ms: int = _setting(
        "DRIFTLINE_REDIS_TIMEOUT_MS", 250, "socket timeout of online Redis reads (then 503)")
    log_level: str = _setting("DRIFTLINE_LOG_LEVEL", "info", "log level of every process")
    session_timeout_ms: int | None = _setting(
        "DRIFTLINE_SESSION_TIMEOUT_MS", None, "consumer session timeout; unset = profile value")
    max_poll_interval_ms: int | None = _setting(
        "DRIFTLINE_MAX_POLL_INTERVAL_MS", None, "consumer max poll interval; unset = profile")
    heartbeat_interval_ms: int | None = _setting(
        "DRIFTLINE_HEARTBEAT_INTERVAL_MS", None, "consumer heartbeat; unset = profile value")
    rebalance_timeout_ms: int | None = _setting(
        "DRIFTLINE_REBALANCE_TIMEOUT_MS", None, "Faust rebalance timeout; unset = profile value")
    dev_record: Path = _setting(
        "DRIFTLINE_DEV_RECORD", Path("~/.driftline/dev-stack.json"),
        "where `driftline dev` records its running stack; commands with neither Kafka nor "
        "Redis set use that stack while it is alive")
    # Not a setting: why a recorded dev stack was not used, for the "is not set" errors.
    stale_dev_record: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"DRIFTLINE_PROFILE={self.profile!r}: expected one of {', '.join(PROFILES)}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.partitions < 1:
            raise ValueError(f"DRIFTLINE_PARTITIONS must be >= 1, got {self.partitions}")
        if self.partitioner not in PARTITIONERS:
            raise ValueError(f"DRIFTLINE_PARTITIONER={self.partitioner!r}: expected one of "
                             f"{', '.join(PARTITIONERS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"DRIFTLINE_LOG_LEVEL={self.log_level!r}: expected one of "
                             f"{', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "dev_record", Path(self.dev_record).expanduser())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``DRIFTLINE_*`` variable; unknown ones are an error (typos are common)."""
        environ = os.environ if environ is None else environ
        known = {f.metadata["env"]: f for f in _env_fields()}
        unknown = sorted(k for k in environ if k.startswith("DRIFTLINE_") and k not in known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; see `driftline config`")
        values: dict[str, Any] = {}
        for env, f in known.items():
            raw = environ.get(env)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def discover(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """:meth:`from_env`, plus the stack a running `driftline dev` recorded.

        Only when neither ``DRIFTLINE_KAFKA_BOOTSTRAP`` nor ``DRIFTLINE_REDIS_URL`` is set, and
        only if the record at ``dev_record`` is live (its process exists and its broker and
        Redis ports accept a connection): then Kafka, Redis, the dev profile, the data dir, the
        feature definitions, the partition count and the partitioner come from the record,
        except where a variable sets them. A
        stale record is ignored and named in the later "is not set" errors.
        """
        environ = os.environ if environ is None else environ
        settings = cls.from_env(environ)
        if settings.kafka_bootstrap or settings.redis_url or not settings.dev_record.exists():
            return settings
        record, stale = read_dev_record(settings.dev_record)
        if record is None:
            return settings.replace(stale_dev_record=stale)
        adopted: dict[str, Any] = {"kafka_bootstrap": record["kafka_bootstrap"],
                                   "redis_url": record["redis_url"], "profile": "dev"}
        for name in ("data_dir", "feature_defs"):
            if record.get(name):
                adopted[name] = Path(record[name])
        for name in ("partitions", "partitioner"):  # readers find online values with them
            if record.get(name):
                adopted[name] = record[name]
        explicit = {f.name for f in _env_fields() if environ.get(f.metadata["env"])}
        return cls.from_env(environ, **{k: v for k, v in adopted.items() if k not in explicit})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process."""
        env = {}
        for f in _env_fields():
            value = getattr(self, f.name)
            if value is not None:
                env[f.metadata["env"]] = str(value)
        return env

    @property
    def topics(self) -> dict[str, str]:
        """Role -> topic name, for every topic Driftline owns."""
        return {
            f.name.removeprefix("topic_"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith("topic_")
        }

    def _not_set(self, env: str) -> RuntimeError:
        message = f"{env} is not set (run `driftline dev` or set it)"
        if self.stale_dev_record:
            message += f"; {self.stale_dev_record}"
        return RuntimeError(message)

    @property
    def redis_url_or_fail(self) -> str:
        if not self.redis_url:
            raise self._not_set("DRIFTLINE_REDIS_URL")
        return self.redis_url

    @property
    def kafka_bootstrap_or_fail(self) -> str:
        if not self.kafka_bootstrap:
            raise self._not_set("DRIFTLINE_KAFKA_BOOTSTRAP")
        return self.kafka_bootstrap


def _env_fields() -> list[dataclasses.Field]:
    """The fields that are settings (each has a ``DRIFTLINE_*`` variable)."""
    return [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_dev_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) if the `driftline dev` record at `path` is live, else (None, why not).

    The record (written by ``driftline.commands.dev_stack``) is JSON with ``pid``,
    ``kafka_bootstrap``, ``redis_url``, ``data_dir``, ``feature_defs``, ``partitions``,
    ``partitioner``, ``profile``, ``endpoints`` and ``started_at``. Live means: the process
    exists and the first broker and the Redis port (a cluster's first node) accept a TCP
    connection.
    """
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        if pid <= 0:  # os.kill would signal a process group
            raise ValueError(f"pid {pid}")
        broker = urlsplit("//" + record["kafka_bootstrap"].split(",")[0].strip())
        redis = urlsplit(record["redis_url"].split(",")[0])  # a cluster's first node
        ports = [("broker", broker.hostname, broker.port or 9092),
                 ("redis", redis.hostname, redis.port or 6379)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable `driftline dev` record at {path} ({exc})"
    stale = f"stale `driftline dev` record at {path}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, f"{stale} (pid {pid} gone)"
    except PermissionError:
        pass  # the process exists, it belongs to another user
    for what, host, port in ports:
        if not _port_open(host or "127.0.0.1", port):
            return None, f"{stale} ({what} port {port} closed)"
    return record, None


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"{f.metadata['env']}={raw!r}: expected a number") from exc
    return raw


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for `driftline config` and the README."""
    rows = []
    for f in _env_fields():
        default = "" if f.default is None else str(f.default)
        rows.append((f.metadata["env"], default, f.metadata["doc"]))
    return rows
