"""Redis clients built from settings: one server, or a Redis Cluster.

`NUDGE_REDIS_URL` names the server, or any node of the cluster when
`NUDGE_REDIS_CLUSTER` is on: then redis-py's cluster client discovers the
other nodes and routes each key to its slot's master. Keyword arguments
(timeouts, `decode_responses`, ...) pass through to redis-py unchanged.

Every client gets the security settings from `security_options` (an ACL user
and password, NUDGE_REDIS_SSL_CA_PATH for a rediss:// URL), never a copy.

A cluster's client connects at creation (it reads the slot map) and raises
redis' `RedisClusterException` or `ConnectionError` when no node answers; the
single-server client connects on its first command. `unreachable(settings,
exc)` is the one line for either: it names the address, and says so when the
cause is the configuration (a wrong password, a CA that did not sign the
server's certificate, TLS against a plain port) rather than a server down.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from nudge.errors import DependencyUnavailable
from nudge.logs import display_url
from nudge.settings import Settings

__all__ = [
    "AsyncClient",
    "SyncClient",
    "async_client",
    "check",
    "misconfigured",
    "security_options",
    "sync_client",
    "unreachable",
]

SyncClient: TypeAlias = "redis.Redis | RedisCluster"
AsyncClient: TypeAlias = "redis.asyncio.Redis | AsyncRedisCluster"

_AUTH = re.compile(r"WRONGPASS|NOAUTH|invalid username-password|invalid password|AUTH.*without any password", re.I)
_CERTIFICATE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|Hostname mismatch", re.I)
_NOT_TLS = re.compile(r"WRONG_VERSION_NUMBER|wrong version number|record layer failure|unknown protocol", re.I)


def security_options(settings: Settings) -> dict[str, Any]:
    """redis-py's keyword arguments for the ACL user, the password and a rediss:// URL's CA (never log them)."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_ssl_ca_path and urlsplit(settings.redis_url).scheme == "rediss":
        options["ssl_ca_certs"] = settings.redis_ssl_ca_path
    return options


def sync_client(settings: Settings, **kw: Any) -> SyncClient:
    """redis.Redis, or redis.cluster.RedisCluster when settings.redis_cluster."""
    kw = {**security_options(settings), **kw}
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **kw)
    return redis.Redis.from_url(settings.redis_url, **kw)


def async_client(settings: Settings, **kw: Any) -> AsyncClient:
    """redis.asyncio.Redis, or redis.asyncio.cluster.RedisCluster when settings.redis_cluster."""
    kw = {**security_options(settings), **kw}
    if settings.redis_cluster:
        return AsyncRedisCluster.from_url(settings.redis_url, **kw)
    return redis.asyncio.Redis.from_url(settings.redis_url, **kw)


def misconfigured(settings: Settings, exc: BaseException) -> str | None:
    """The one line for an error that says the security settings are wrong, or None."""
    text = f"{type(exc).__name__}: {exc}"
    where = f"Redis at {display_url(settings.redis_url)}"
    if isinstance(exc, redis.AuthenticationError) or _AUTH.search(text):
        user = f"user {settings.redis_username}" if settings.redis_username else "the default user"
        return f"{where}: authentication failed ({user}): check NUDGE_REDIS_USERNAME and NUDGE_REDIS_PASSWORD"
    if _CERTIFICATE.search(text):
        ca = settings.redis_ssl_ca_path or "the system's CAs"
        return (
            f"{where}: TLS certificate verify failed: the server's certificate is not signed by {ca} "
            "or does not name this host; check NUDGE_REDIS_SSL_CA_PATH and NUDGE_REDIS_URL"
        )
    if _NOT_TLS.search(text):
        return f"{where}: TLS handshake failed (the port does not speak TLS): check NUDGE_REDIS_URL (rediss:// or redis://)"
    return None


def unreachable(settings: Settings, exc: BaseException) -> str:
    """One line naming the address: what the security settings got wrong, or why Redis could not be reached."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return misconfigured(settings, exc) or f"cannot reach Redis at {display_url(settings.redis_url)}: {detail}"


def check(settings: Settings, *, only_misconfigured: bool = False) -> None:
    """PING once (a 2 s connect timeout), or `DependencyUnavailable` in one line.

    `only_misconfigured`: a server that does not answer passes (for processes
    that wait for Redis to come back); a wrong password or CA still fails."""
    from redis.exceptions import RedisClusterException, RedisError

    client: Any = None
    try:
        client = sync_client(settings, socket_connect_timeout=2, socket_timeout=5)
        client.ping()
    except (RedisError, RedisClusterException, OSError) as exc:
        if not only_misconfigured or misconfigured(settings, exc):
            raise DependencyUnavailable(unreachable(settings, exc)) from None
    finally:
        if client is not None:
            client.close()
