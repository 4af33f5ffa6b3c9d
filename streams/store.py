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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nudge.logs import display_url
from nudge.settings import Settings

__all__ = ["FeatureStore", "InMemoryFeatureStore", "RedisFeatureStore", "UserWrite", "open_store"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UserWrite:
    """One user's new state for the store.

    `base_seq`/`base_fields` are what this process last wrote for the user
    (None: unknown). With a base, only the fields that changed are sent, and
    Redis applies them only if the hash still holds exactly that base;
    otherwise the full state is written. `stored` is set by `write`.
    """

    user_id: str
    seq: int
    fields: dict[str, str]
    base_seq: int | None = None
    base_fields: dict[str, str] | None = None
    stored: bool = False


# KEYS[1] = the user's hash; ARGV = seq, ttl, base seq ('' = full write), field/value pairs.
# Returns 1 written, 0 stale (the hash holds a newer seq), -1 the base is gone (send all fields).
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'seq')
if ARGV[3] ~= '' then
  if current ~= ARGV[3] then
    return -1
  end
elseif current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], unpack(ARGV, 4))
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

    def __init__(self, settings: Settings, *, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.settings = settings
        self.on_error = on_error
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
                if self.on_error is not None:
                    self.on_error(exc)
                log.warning(
                    "Redis write of %d users to %s failed (attempt %d): %s; retrying in %.1fs",
                    len(users),
                    display_url(self.settings.redis_url),
                    attempt,
                    exc,
                    delay,
                )
                # Connections from before an outage are dead: do not reuse them.
                await self.client.connection_pool.disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _write_once(self, users: Sequence[UserWrite]) -> int:
        s = self.settings
        now = str(int(time.time() * 1000))
        ttl = str(s.state_ttl_s)
        todo = list(users)
        written = 0
        for full in (False, True):
            async with self.client.pipeline(transaction=False) as pipe:
                for w in todo:
                    base = w.base_fields if not full else None
                    args: list[str | int] = [w.seq, ttl, "" if base is None else str(w.base_seq), "updated_at", now]
                    for name, value in w.fields.items():
                        if base is None or base.get(name) != value:
                            args.append(name)
                            args.append(value)
                    await self._script(keys=[s.user_key_prefix + w.user_id], args=args, client=pipe)
                if not full:
                    for w in todo:
                        pipe.xadd(
                            s.changes_stream,
                            {"user_id": w.user_id, "as_of": w.fields.get("as_of", "")},
                            maxlen=s.changes_maxlen,
                            approximate=True,
                        )
                results = await pipe.execute()
            retry = []
            for w, result in zip(todo, results, strict=False):
                if result == -1:
                    retry.append(w)
                else:
                    w.stored = result == 1
                    written += w.stored
            self.stale += sum(1 for r in results[: len(todo)] if r == 0)
            if not retry:
                break
            todo = retry
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
        for w in users:
            current = self.hashes.get(w.user_id)
            if current is not None and int(current["seq"]) > w.seq:
                continue
            self.hashes[w.user_id] = {**(current or {}), **w.fields, "seq": str(w.seq)}
            w.stored = True
            written += 1
        self.changes.extend((w.user_id, w.fields.get("as_of", "")) for w in users)
        return written

    async def close(self) -> None:
        return None


def open_store(settings: Settings, on_error: Callable[[BaseException], None] | None = None) -> FeatureStore:
    """The store named by `settings.redis_url`'s scheme."""
    scheme = settings.redis_url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisFeatureStore(settings, on_error=on_error)
    if scheme == "memory":
        return InMemoryFeatureStore()
    from nudge.errors import ConfigError

    raise ConfigError(f"NUDGE_REDIS_URL: unknown scheme {scheme!r} (redis://, rediss://, unix://, memory://)")
