"""The online feature store: where each user's latest state is written.

Redis layout (key names in `nudge.layout`; the README has the full table):

- `<user_key_prefix><user_id>` (default `user:u123`): a hash of every field
  the step's `UserWrite` carries, plus `seq` (the number of events folded, a
  per-user version) and `updated_at` (wall-clock epoch ms of the write). It
  expires `state_ttl_s` after its last write.
- `<changes_stream>:{i}` (default `nudge:changes:{0}` ...): the changes
  streams, one entry `{user_id, as_of, seq}` per written user per batch, each
  user always in the same shard, capped near `changes_maxlen` per shard.

A write is two pipelined rounds:

1. the hashes, by a Lua script that writes a hash only if its `seq` is at
   least the stored one, so a stale writer (a worker that just lost its
   partition, a retried batch) never overwrites newer state. It sends only
   the fields that changed since this store last wrote the user, applied only
   if the hash still holds exactly that base `seq` (else the whole hash is
   sent in a second pass). One script call per chunk of users whose keys
   share a hash slot: chunks of 250 on a single Redis; on Redis Cluster
   (`NUDGE_REDIS_CLUSTER=1`) users grouped by slot, since Cluster refuses a
   script whose keys span slots (redis-py's cluster pipeline routes each
   call to its slot's master; it blocks its `evalsha` method for fear of
   cross-slot keys, so the calls go through `execute_command`);
2. then the changes entries of the users actually written, one script call
   per shard. After round 1, so a reader who sees an entry finds the hash at
   least that new.

While Redis is unreachable `write` retries with capped exponential backoff
and does not return, so the worker does not acknowledge (and Kafka does not
commit) events whose state is not in Redis yet. A write is idempotent: a
retry rewrites the same `seq` and appends the entries again (readers of the
changes streams must be idempotent anyway).

Drivers are chosen by URL: `redis://…`/`rediss://…`/`unix://…` or `memory://` (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from nudge.layout import changes_shard, changes_streams, user_key
from nudge.redis_client import async_client
from nudge.settings import Settings
from streams.step import UserWrite

__all__ = ["FeatureStore", "InMemoryFeatureStore", "RedisFeatureStore", "open_store"]

# KEYS = the users' hashes (one hash slot on Cluster).
# ARGV = ttl, updated_at, then a JSON list with one [seq, base seq ('' = full
# write), [field, value, ...]] per key, every item a string.
# Returns per user: 1 written, 0 stale (the hash holds a newer seq), -1 the
# base is gone (send all fields).
_WRITE_USERS = """
local writes = cjson.decode(ARGV[3])
local results = {}
for i, w in ipairs(writes) do
  local key = KEYS[i]
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
    redis.call('HSET', key, 'seq', w[1], 'updated_at', ARGV[2], unpack(w[3]))
    redis.call('EXPIRE', key, ARGV[1])
  end
  results[i] = result
end
return results
"""

# KEYS[1] = one changes stream; ARGV = maxlen, JSON [[user_id, as_of, seq], ...].
_APPEND_CHANGES = """
local entries = cjson.decode(ARGV[2])
for _, e in ipairs(entries) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'user_id', e[1], 'as_of', e[2], 'seq', e[3])
end
return #entries
"""
_CHUNK = 250

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0


class FeatureStore(Protocol):
    """Where user state goes. `write` returns once every user is stored."""

    async def write(self, users: Sequence[UserWrite]) -> int: ...

    async def close(self) -> None: ...


class _Script:
    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


_WRITE = _Script(_WRITE_USERS)
_APPEND = _Script(_APPEND_CHANGES)


class RedisFeatureStore:
    """Redis hashes + sharded changes streams, on one Redis or a Redis Cluster.

    `on_error(exc)` is called on every failed attempt and `on_ok()` after each
    successful write: the worker's dependency health (one log line per
    interval, the `nudge_dependency_up` gauge) hangs on them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        on_ok: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.on_error = on_error
        self.on_ok = on_ok
        self.client: Any = async_client(settings, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        self._streams = changes_streams(settings)
        # What this store last wrote per user, (seq, fields): only the fields
        # that changed since are sent.
        self._written: dict[str, tuple[int, dict[str, str]]] = {}
        self._scripts_loaded = False

    async def write(self, users: Sequence[UserWrite]) -> int:
        """Write every user (seq-guarded) and append them to the changes streams.

        Retries until Redis takes the whole write; returns how many hashes
        were actually written (stale ones are skipped by the script).
        """
        if not users:
            return 0
        delay = _BACKOFF_START_S
        reloaded = False
        while True:
            try:
                if not self._scripts_loaded:
                    await self._load_scripts()
                written = await self._write_once(users)
            except NoScriptError as exc:
                if not reloaded:
                    # A restarted node forgot the scripts: load them, go again.
                    self._scripts_loaded = False
                    reloaded = True
                    continue
                failure: BaseException = exc
            except (RedisError, RedisClusterException, OSError) as exc:
                failure = exc
            else:
                if self.on_ok is not None:
                    self.on_ok()
                return written
            if self.on_error is not None:
                self.on_error(failure)
            await self._reconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _load_scripts(self) -> None:
        # On a cluster, SCRIPT LOAD goes to every primary.
        for script in (_WRITE, _APPEND):
            await self.client.script_load(script.body)
        self._scripts_loaded = True

    async def _reconnect(self) -> None:
        """Drop connections from before a failure: they are dead. (The cluster
        client drops its own and refreshes its map of slots on such errors.)"""
        self._scripts_loaded = False
        if not self.settings.redis_cluster:
            with contextlib.suppress(RedisError, OSError):
                await self.client.connection_pool.disconnect()

    def _chunks(self, users: list[UserWrite]) -> list[list[UserWrite]]:
        if not self.settings.redis_cluster:
            return [users[i : i + _CHUNK] for i in range(0, len(users), _CHUNK)]
        by_slot: dict[int, list[UserWrite]] = defaultdict(list)
        prefix = self.settings.user_key_prefix.encode()
        for w in users:
            by_slot[key_slot(prefix + w.user_id.encode())].append(w)
        return list(by_slot.values())

    async def _write_once(self, users: Sequence[UserWrite]) -> int:
        s = self.settings
        now = str(int(time.time() * 1000))
        ttl = str(s.state_ttl_s)
        written_cache = self._written
        todo = list(users)
        written: list[UserWrite] = []
        for full in (False, True):
            chunks = self._chunks(todo)
            async with self.client.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    entries = []
                    for w in chunk:
                        base = None if full else written_cache.get(w.user_id)
                        if base is None:
                            entries.append((str(w.seq), "", [x for item in w.fields.items() for x in item]))
                        else:
                            old = base[1]
                            changed = [x for k, v in w.fields.items() if old.get(k) != v for x in (k, v)]
                            entries.append((str(w.seq), str(base[0]), changed))
                    keys = [user_key(s, w.user_id) for w in chunk]
                    pipe.execute_command("EVALSHA", _WRITE.sha, len(keys), *keys, ttl, now, orjson.dumps(entries))
                results = await pipe.execute()
            retry = []
            for chunk, chunk_results in zip(chunks, results, strict=True):
                for w, result in zip(chunk, chunk_results, strict=True):
                    if result == -1:
                        retry.append(w)
                    elif result == 1:
                        written.append(w)
                        written_cache[w.user_id] = (w.seq, w.fields)
            if not retry:
                break
            todo = retry
        await self._append_changes(written)
        return len(written)

    async def _append_changes(self, written: list[UserWrite]) -> None:
        if not written or self.settings.changes_maxlen <= 0:
            return
        by_shard: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
        shards = len(self._streams)
        for w in written:
            by_shard[changes_shard(w.user_id, shards)].append((w.user_id, w.fields.get("as_of", ""), str(w.seq)))
        maxlen = str(self.settings.changes_maxlen)
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, entries in by_shard.items():
                pipe.execute_command("EVALSHA", _APPEND.sha, 1, self._streams[shard], maxlen, orjson.dumps(entries))
            await pipe.execute()

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
            self.changes.append((w.user_id, w.fields.get("as_of", "")))
            written += 1
        return written

    async def close(self) -> None:
        return None


def open_store(
    settings: Settings,
    *,
    on_error: Callable[[BaseException], None] | None = None,
    on_ok: Callable[[], object] | None = None,
) -> FeatureStore:
    """The store named by `settings.redis_url`'s scheme."""
    scheme = settings.redis_url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisFeatureStore(settings, on_error=on_error, on_ok=on_ok)
    if scheme == "memory":
        return InMemoryFeatureStore()
    from nudge.errors import ConfigError

    raise ConfigError(f"NUDGE_REDIS_URL: unknown scheme {scheme!r} (redis://, rediss://, unix://, memory://)")
