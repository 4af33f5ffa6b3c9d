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
pipeline per batch, one script call per chunk of users (the script names
all its keys; on Redis Cluster they would have to share a hash slot). While Redis is unreachable `write` retries with capped
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

import orjson
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


# One call writes a chunk of users (one round trip packs a few arguments
# instead of ~40 per user: redis-py packs every argument in Python).
# KEYS[1] = the changes stream, KEYS[2..] = the users' hashes.
# ARGV = ttl, updated_at, changes maxlen ('' = no changes entries), then a
# JSON list with one [seq, base seq ('' = full write), as_of, user_id,
# [field, value, ...]] per hash, every item a string.
# Returns per user: 1 written, 0 stale (the hash holds a newer seq), -1 the
# base is gone (send all fields).
_WRITE_IF_NEWER = """
local writes = cjson.decode(ARGV[4])
local results = {}
for i, w in ipairs(writes) do
  local key = KEYS[i + 1]
  local current = redis.call('HGET', key, 'seq')
  local result = 1
  if w[2] ~= '' then
    if current ~= w[2] then
      result = -1
    end
  elseif current and tonumber(current) > tonumber(w[1]) then
    result = 0
  end
  if result == 1 then
    redis.call('HSET', key, 'seq', w[1], 'updated_at', ARGV[2], unpack(w[5]))
    redis.call('EXPIRE', key, ARGV[1])
  end
  if ARGV[3] ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'user_id', w[4], 'as_of', w[3])
  end
  results[i] = result
end
return results
"""
_CHUNK = 250

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
            # The first round also appends each user to the changes stream.
            maxlen = "" if full else str(s.changes_maxlen)
            async with self.client.pipeline(transaction=False) as pipe:
                for i in range(0, len(todo), _CHUNK):
                    chunk = todo[i : i + _CHUNK]
                    entries = []
                    for w in chunk:
                        base = None if full else w.base_fields
                        if base is None:
                            pairs = [x for item in w.fields.items() for x in item]
                        else:
                            pairs = [
                                x for name, value in w.fields.items() if base.get(name) != value for x in (name, value)
                            ]
                        entries.append(
                            (
                                str(w.seq),
                                "" if base is None else str(w.base_seq),
                                w.fields.get("as_of", ""),
                                w.user_id,
                                pairs,
                            )
                        )
                    keys = [s.changes_stream, *(s.user_key_prefix + w.user_id for w in chunk)]
                    await self._script(keys=keys, args=[ttl, now, maxlen, orjson.dumps(entries)], client=pipe)
                chunks = await pipe.execute()
            results = [result for chunk_results in chunks for result in chunk_results]
            retry = []
            for w, result in zip(todo, results, strict=True):
                if result == -1:
                    retry.append(w)
                else:
                    w.stored = result == 1
                    written += w.stored
            self.stale += sum(1 for r in results if r == 0)
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
