"""A real broker and a real Redis for the whole session, and a local Redis Cluster for the tests
that run on both.

``DRIFTLINE_KAFKA_BOOTSTRAP`` / ``DRIFTLINE_REDIS_URL`` point the tests at servers of your choice
(any Kafka works); otherwise the embedded broker and a local redis-server are started. A server
that cannot start raises, so the run fails instead of skipping. Each test gets its own topic
names and consumer groups, so tests never see each other's messages.

A test marked ``@on_redis_and_cluster`` runs twice: on that Redis, and on a three-node Redis
Cluster (``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``,
started once per session when first needed, with the same fail-loudly rule).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from driftline.adapters import kafka
from driftline.adapters.redis_client import connect
from driftline.commands import local_servers
from driftline.settings import Settings

_counter = itertools.count()
_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """Mark every test under tests/integration `integration` (a conftest `pytestmark` is ignored).

    The hook sees the whole session's items, so it marks only those collected from this directory.
    """
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("servers")
    started = []
    bootstrap = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("DRIFTLINE_REDIS_URL")
    try:
        if not bootstrap:
            started.append(local_servers.start_broker(log_dir))
            bootstrap = started[-1].address
        if not redis_url:
            started.append(local_servers.start_redis(log_dir))
            redis_url = started[-1].address
        yield {"kafka": bootstrap, "redis": redis_url, "log_dir": log_dir}
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A local three-node Redis Cluster (masters only, data in a temporary folder)."""
    cluster = local_servers.start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


# Runs a test on one Redis and on the local Redis Cluster: `settings` takes the parameter.
on_redis_and_cluster = pytest.mark.parametrize("settings", ["redis", "redis-cluster"],
                                               indirect=True)


@pytest.fixture
def settings(servers, tmp_path, request) -> Settings:
    """Dev-profile settings on the session's servers, with topics and groups of this test only;
    on the Redis Cluster when the test is parametrised so (``on_redis_and_cluster``)."""
    run = f"t{os.getpid()}x{next(_counter)}"
    topics = {f"topic_{role}": f"{run}.{role}" for role in Settings().topics}
    redis_url = servers["redis"]
    if getattr(request, "param", "redis") == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster").address
    s = Settings(profile="dev", kafka_bootstrap=servers["kafka"], redis_url=redis_url,
                 data_dir=tmp_path / "data", partitions=3, group_features=f"{run}-features",
                 group_monitor=f"{run}-monitor", group_controller=f"{run}-controller",
                 worker_port=local_servers.free_port(), monitor_port=local_servers.free_port(),
                 controller_port=local_servers.free_port(), **topics)
    kafka.create_topics(s)
    return s


@pytest.fixture
def redis_client(settings):
    client = connect(settings.redis_url_or_fail)
    yield client
    client.close()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def start_worker_process(settings: Settings, log_dir: Path, name: str = "worker"):
    """`driftline worker` as a child process, returned once it has partitions assigned."""
    from driftline.commands.dev_stack import start_service

    return start_service(settings, "worker", log_dir, name=name)


@pytest.fixture
def worker(settings, tmp_path):
    proc = start_worker_process(settings, tmp_path / "logs")
    yield proc
    proc.stop()


def start_scorer_process(settings: Settings, log_dir: Path, name: str = "scorer"):
    """`driftline serve` as a child process, returned once its stream loop has partitions."""
    from driftline.commands.dev_stack import start_service

    return start_service(settings, "scorer", log_dir, name=name)


def start_monitor_process(settings: Settings, log_dir: Path, name: str = "monitor"):
    """`driftline monitor` as a child process, returned once its batch loop has partitions."""
    from driftline.commands.dev_stack import start_service

    return start_service(settings, "monitor", log_dir, name=name)


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory):
    """A registry with fraud v1 (Production) and v2 (registered, another seed), trained once."""
    from driftline.commands.training import train_initial
    from driftline.core.features import load_definitions
    from driftline.core.registry import ModelRegistry
    from driftline.feature_defs import DEFINITIONS_DIR

    root = tmp_path_factory.mktemp("registry") / "registry"
    view = load_definitions(DEFINITIONS_DIR).view("transactions_v1")
    registry = ModelRegistry(root)
    train_initial(registry, view, n_events=6000, seed=1, created_at_ms=1)
    v2, _ = train_initial(registry, view, n_events=6000, seed=2, created_at_ms=2)
    # train_initial promotes; put v1 back in Production so tests start from it.
    registry.rollback("fraud", at_ms=3, reason="test setup", current_views={view.name: view})
    assert registry.production("fraud").version == 1 and v2.version == 2
    return root
