"""Redis clients from ``DRIFTLINE_REDIS_URL``: one Redis, or a Redis Cluster.

The URL's scheme chooses:

- ``redis://host:port/0`` (or ``rediss://``, ``unix://``): one Redis, ``redis.Redis``;
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (or ``rediss+cluster://`` for
  TLS): a Redis Cluster, ``redis.cluster.RedisCluster``, started from any of the listed nodes
  (it discovers the others).

A URL rather than a separate switch, so one variable says both where Redis is and what it is,
and every process (worker, monitor, scorer, CLI) that gets the URL gets the same answer. The key
layout is the same for both (``redis_layout.py``); what differs is how a commit is split
(``redis_state.py``).

Synchronous cluster clients retry nothing themselves. redis-py's cluster transaction retries a
``MULTI``/``EXEC`` after a connection error on a new connection, without the ``WATCH`` that
fences it, and possibly after the first attempt did land; the callers here (the batch loop)
already retry from the committed state, which is safe. Redirections (``MOVED``/``ASK``) are still
followed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    """Whether `client` talks to a Redis Cluster (a ``MULTI`` then covers one slot only)."""
    return isinstance(client, (redis.cluster.RedisCluster, aiocluster.RedisCluster))


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes of a ``redis+cluster://`` URL and the connection options it sets."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if CLUSTER_SCHEMES[parts.scheme]:
        options["ssl"] = True
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"{url!r}: a Redis Cluster has only database 0")
    nodes = []
    for node in hosts.split(","):
        host, sep, port = node.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{url!r}: expected host:port[,host:port...], got {node!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, options


def connect(url: str, **options: Any) -> SyncClient:
    """A synchronous client for `url`; `options` go to the client (e.g. ``socket_timeout``)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    nodes, from_url = cluster_nodes(url)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in nodes],
        retry=Retry(NoBackoff(), 0), **from_url, **options)


def connect_async(url: str, **options: Any) -> AsyncClient:
    """An asyncio client for `url` (the scorer's online reads); `options` as for :func:`connect`."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **options)
    nodes, from_url = cluster_nodes(url)
    return aiocluster.RedisCluster(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in nodes],
        **from_url, **options)
