"""Redis clients built from settings: one server, or a Redis Cluster.

`NUDGE_REDIS_URL` names the server, or any node of the cluster when
`NUDGE_REDIS_CLUSTER` is on: then redis-py's cluster client discovers the
other nodes and routes each key to its slot's master. Keyword arguments
(timeouts, `decode_responses`, ...) pass through to redis-py unchanged.

A cluster's client connects at creation (it reads the slot map) and raises
redis' `RedisClusterException` or `ConnectionError` when no node answers; the
single-server client connects on its first command.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from nudge.settings import Settings

__all__ = ["AsyncClient", "SyncClient", "async_client", "sync_client"]

SyncClient: TypeAlias = "redis.Redis | RedisCluster"
AsyncClient: TypeAlias = "redis.asyncio.Redis | AsyncRedisCluster"


def sync_client(settings: Settings, **kw: Any) -> SyncClient:
    """redis.Redis, or redis.cluster.RedisCluster when settings.redis_cluster."""
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **kw)
    return redis.Redis.from_url(settings.redis_url, **kw)


def async_client(settings: Settings, **kw: Any) -> AsyncClient:
    """redis.asyncio.Redis, or redis.asyncio.cluster.RedisCluster when settings.redis_cluster."""
    if settings.redis_cluster:
        return AsyncRedisCluster.from_url(settings.redis_url, **kw)
    return redis.asyncio.Redis.from_url(settings.redis_url, **kw)
