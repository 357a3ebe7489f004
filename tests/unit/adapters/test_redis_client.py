"""Which client a ``DRIFTLINE_REDIS_URL`` gives: one Redis, or a Redis Cluster's startup nodes
and options (no server needed)."""

from __future__ import annotations

import pytest
import redis

from driftline.adapters.redis_client import cluster_nodes, connect, is_cluster, is_cluster_url


def test_the_scheme_chooses_a_cluster():
    assert is_cluster_url("redis+cluster://10.0.0.1:7000")
    assert is_cluster_url("rediss+cluster://10.0.0.1:7000")
    assert not is_cluster_url("redis://localhost:6379/0")
    assert not is_cluster_url("unix:///tmp/redis.sock")


def test_a_cluster_url_lists_its_startup_nodes_and_options():
    nodes, options = cluster_nodes("rediss+cluster://app:s%3Acret@r1:7000,r2:7001, [::1]:7002/0")
    assert nodes == [("r1", 7000), ("r2", 7001), ("::1", 7002)]
    assert options == {"username": "app", "password": "s:cret", "ssl": True}
    assert cluster_nodes("redis+cluster://:pw@r1:7000") == ([("r1", 7000)], {"password": "pw"})


@pytest.mark.parametrize("url, message", [
    ("redis+cluster://r1:7000/2", "only database 0"),
    ("redis+cluster://r1", "expected host:port"),
    ("redis+cluster://r1:7000,:7001", "expected host:port"),
    ("redis://r1:7000", "not a Redis Cluster URL"),
])
def test_a_bad_cluster_url_is_refused_with_the_reason(url, message):
    with pytest.raises(ValueError, match=message):
        cluster_nodes(url)


def test_a_plain_url_gives_one_redis_without_connecting():
    client = connect("redis://127.0.0.1:1/0", socket_timeout=0.1)
    assert isinstance(client, redis.Redis) and not is_cluster(client)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.1
