"""Redis servers for the state tests that run on Redis (marked ``integration``): one
redis-server, or ``DRIFTLINE_REDIS_URL`` if set, and a local three-node Redis Cluster. Each is
started once per module, only when a test asks for it, and fails loudly if it cannot start."""

from __future__ import annotations

import os

import pytest

from driftline.commands import local_servers


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    url = os.environ.get("DRIFTLINE_REDIS_URL")
    if url:
        yield url
        return
    server = local_servers.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster_url(tmp_path_factory):
    cluster = local_servers.start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.address
    finally:
        cluster.stop()
