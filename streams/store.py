"""The online feature store: where each user's latest state is written.

Redis layout (DESIGN.md "Features"; the README has the full table):

- `<user_key_prefix><user_id>` (default `user:u123`): a hash of every field
  `features.state.UserState.features()` returns, plus `seq` (the number of
  events folded, a per-user version) and `updated_at` (wall-clock epoch ms of
  the write). It expires `state_ttl_s` after its last write.
- `<changes_stream>` (default `nudge:changes`): a stream with one entry
  `{user_id, as_of}` per user per written batch, capped near `changes_maxlen`.

Writes are idempotent and never go backwards: a Lua script writes a hash only
if its `seq` is at least the stored one, so a stale writer (a worker that just
lost its partition, a retried batch) cannot overwrite newer state. One
pipeline per batch. While Redis is unreachable `write` retries with capped
exponential backoff and does not return, so the worker does not acknowledge
(and Kafka does not commit) events whose state is not in Redis yet.

Drivers are chosen by URL: `redis://…`/`rediss://…` or `memory://` (tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nudge.settings import Settings

__all__ = ["FeatureStore", "InMemoryFeatureStore", "RedisFeatureStore", "UserWrite", "open_store"]

log = logging.getLogger(__name__)

# A user's fields, as strings, plus its seq.
UserWrite = tuple[str, int, dict[str, str]]

_WRITE_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if current > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0


class FeatureStore(Protocol):
    """Where user state goes. `write` returns once every user is stored."""

    async def write(self, users: Sequence[UserWrite]) -> int: ...

    async def close(self) -> None: ...


class RedisFeatureStore:
    """Redis hashes + a changes stream, written in one pipeline per batch."""

    def __init__(self, settings: Settings, *, on_error: object = None) -> None:
        self.settings = settings
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10
        )
        self._script = self.client.register_script(_WRITE_IF_NEWER)
        self.errors = 0
        self.stale = 0

    async def write(self, users: Sequence[UserWrite]) -> int:
        """Write every user (seq-guarded) and append them to the changes stream.

        Retries until Redis takes the whole pipeline; returns how many hashes
        were actually written (stale ones are skipped by the script).
        """
        if not users:
            return 0
        delay = _BACKOFF_START_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._write_once(users)
            except (RedisError, OSError) as exc:
                self.errors += 1
                log.warning(
                    "Redis write of %d users to %s failed (attempt %d): %s; retrying in %.1fs",
                    len(users),
                    _safe_url(self.settings.redis_url),
                    attempt,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _write_once(self, users: Sequence[UserWrite]) -> int:
        s = self.settings
        now = str(int(time.time() * 1000))
        ttl = str(s.state_ttl_s)
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, seq, fields in users:
                args: list[str | int] = [seq, ttl, "updated_at", now]
                for name, value in fields.items():
                    args.append(name)
                    args.append(value)
                await self._script(keys=[s.user_key_prefix + user_id], args=args, client=pipe)
            for user_id, _seq, fields in users:
                pipe.xadd(
                    s.changes_stream,
                    {"user_id": user_id, "as_of": fields.get("as_of", "")},
                    maxlen=s.changes_maxlen,
                    approximate=True,
                )
            results = await pipe.execute()
        written = sum(1 for r in results[: len(users)] if r == 1)
        self.stale += len(users) - written
        return written

    async def close(self) -> None:
        await self.client.aclose()


class InMemoryFeatureStore:
    """A dict-backed store with the same seq guard, for unit tests."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.changes: list[tuple[str, str]] = []
        self.fail_next = 0

    async def write(self, users: Sequence[UserWrite]) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("injected failure")
        written = 0
        for user_id, seq, fields in users:
            current = self.hashes.get(user_id)
            if current is not None and int(current["seq"]) > seq:
                continue
            self.hashes[user_id] = {**(current or {}), **fields, "seq": str(seq)}
            written += 1
        self.changes.extend((u, f.get("as_of", "")) for u, _, f in users)
        return written

    async def close(self) -> None:
        return None


def open_store(settings: Settings) -> FeatureStore:
    """The store named by `settings.redis_url`'s scheme."""
    scheme = settings.redis_url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisFeatureStore(settings)
    if scheme == "memory":
        return InMemoryFeatureStore()
    from nudge.errors import ConfigError

    raise ConfigError(f"NUDGE_REDIS_URL: unknown scheme {scheme!r} (redis://, rediss://, unix://, memory://)")


def _safe_url(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
