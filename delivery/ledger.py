"""The send ledger: at most one delivery per idempotency key, across workers and crashes.

Layout (Redis): one hash per user, `nudge:{<user_id>}:ledger`, field = the
notification's idempotency key, value = the key's state as JSON:

| state     | JSON                                                     | written when |
|-----------|----------------------------------------------------------|--------------|
| claimed   | `{"state": "claimed", "by": worker, "at": ms}`           | just before a provider call |
| sent      | `{"state": "sent", "at": ms, "channel": c, "message_id": id}` | after the provider's 2xx |
| unknown   | `{"state": "unknown", "at": ms, "channel": c, "why": w}` | a push whose fate cannot be known |

The user id is the hash tag, so every key of one user sits in one Redis
Cluster slot (the trigger service's `nudge:{<user_id>}:caps` does the same).
The hash expires `LEDGER_TTL_S` after its last write, longer than the outbox
topic keeps a message, so a redelivered message always finds its entry.

`decide` is the rule, a pure function; `CLAIM_SCRIPT` is the same rule in Lua
so that Redis applies it atomically (a test runs both over the same table).
A claim whose worker is gone (older than the lease) is *stale*: the worker
may have died between the provider's answer and its "sent" mark. With an
idempotency key the provider deduplicates, so the message is sent again with
the same key; without one (FCM) sending again could show the push twice, so
it is not sent and the key is marked `unknown`: at most once.

Unlike the user state, the ledger is not derived from Kafka: it is the only
record of what was sent. Losing it (a flushed instance, a failover that
dropped the last writes) can let a redelivered message out twice.

>>> decide(None, worker="w1", now_ms=1000, lease_ms=500, resend_stale=False).verdict
<Verdict.CLAIMED: 'claimed'>
>>> stale = {"state": "claimed", "by": "w0", "at": 0}
>>> decide(stale, worker="w1", now_ms=1000, lease_ms=500, resend_stale=False).verdict
<Verdict.STALE_UNKNOWN: 'stale_unknown'>
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Protocol

from nudge.redis_client import AsyncClient

__all__ = [
    "CLAIM_SCRIPT",
    "LEDGER_TTL_S",
    "Claim",
    "InMemoryLedger",
    "Ledger",
    "RedisLedger",
    "Verdict",
    "decide",
    "ledger_key",
]

# 8 days: past the outbox topic's retention (Kafka's default 7 days).
LEDGER_TTL_S = 8 * 86_400
# Past this many entries a claim also drops entries older than the TTL, so one
# busy user's hash stays bounded even when it never goes quiet for 8 days.
_PRUNE_ABOVE = 256


class Verdict(enum.StrEnum):
    CLAIMED = "claimed"  # free (or our own claim): send
    TAKEN_OVER = "taken_over"  # a stale claim, the provider deduplicates: send again with the same key
    SENT = "sent"  # already delivered: a duplicate prevented
    UNKNOWN = "unknown"  # already marked unknown: do not send
    BUSY = "busy"  # another live worker holds the claim: wait and ask again
    STALE_UNKNOWN = "stale_unknown"  # a stale claim and no provider dedup: marked unknown now, do not send


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    previous: dict[str, Any] | None = None
    write: dict[str, Any] | None = None  # what the rule writes (None: nothing)

    @property
    def may_send(self) -> bool:
        return self.verdict in (Verdict.CLAIMED, Verdict.TAKEN_OVER)


def ledger_key(user_id: str) -> str:
    """The user's ledger hash; the user id is the Redis Cluster hash tag."""
    return f"nudge:{{{user_id}}}:ledger"


def decide(
    entry: dict[str, Any] | None,
    *,
    worker: str,
    now_ms: int,
    lease_ms: int,
    resend_stale: bool,
    channel: str = "push",
) -> Claim:
    """The claim rule (CLAIM_SCRIPT is its Lua twin): what to do given the key's current entry."""
    claimed = {"state": "claimed", "by": worker, "at": now_ms}
    if entry is None:
        return Claim(Verdict.CLAIMED, None, claimed)
    state = entry.get("state")
    if state == "sent":
        return Claim(Verdict.SENT, entry)
    if state == "unknown":
        return Claim(Verdict.UNKNOWN, entry)
    if entry.get("by") == worker:
        return Claim(Verdict.CLAIMED, entry, claimed)
    if now_ms - int(entry.get("at", 0)) < lease_ms:
        return Claim(Verdict.BUSY, entry)
    if resend_stale:
        return Claim(Verdict.TAKEN_OVER, entry, claimed)
    unknown = {"state": "unknown", "at": now_ms, "channel": channel, "why": "stale_claim", "by": entry.get("by")}
    return Claim(Verdict.STALE_UNKNOWN, entry, unknown)


# KEYS[1] the user's ledger; ARGV: idempotency key, worker, now ms, lease ms, resend stale (1/0), TTL s, channel.
# Returns {verdict, previous entry JSON or ''}. Mirrors `decide`; keep them in step.
CLAIM_SCRIPT = (
    """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
local verdict = 'claimed'
local write
if raw then
  local e = cjson.decode(raw)
  if e.state == 'sent' then return {'sent', raw} end
  if e.state == 'unknown' then return {'unknown', raw} end
  if e.by == ARGV[2] then
    verdict = 'claimed'
  elseif now - tonumber(e.at or 0) < tonumber(ARGV[4]) then
    return {'busy', raw}
  elseif ARGV[5] == '1' then
    verdict = 'taken_over'
  else
    verdict = 'stale_unknown'
    write = cjson.encode({state='unknown', at=now, channel=ARGV[7], why='stale_claim', by=e.by})
  end
end
if not write then
  write = cjson.encode({state='claimed', by=ARGV[2], at=now})
end
redis.call('HSET', KEYS[1], ARGV[1], write)
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('HLEN', KEYS[1]) > """
    + str(_PRUNE_ABOVE)
    + """ then
  local all = redis.call('HGETALL', KEYS[1])
  local oldest = now - tonumber(ARGV[6]) * 1000
  for i = 1, #all, 2 do
    local ok, e = pcall(cjson.decode, all[i + 1])
    if ok and type(e) == 'table' and tonumber(e.at or 0) < oldest then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return {verdict, raw or ''}
"""
)

# Drop our own claim after a definite failure (nothing was delivered), so a re-drive may try again.
# KEYS[1] the ledger; ARGV: idempotency key, worker. Returns 1 when dropped.
RELEASE_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local e = cjson.decode(raw)
if e.state == 'claimed' and e.by == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class Ledger(Protocol):
    """What the worker needs from a ledger (Redis in production, in memory in unit tests)."""

    async def claim(
        self, user_id: str, key: str, *, worker: str, now_ms: int, resend_stale: bool, channel: str
    ) -> Claim: ...

    async def mark_sent(self, user_id: str, key: str, *, now_ms: int, channel: str, message_id: str) -> None: ...

    async def mark_unknown(self, user_id: str, key: str, *, now_ms: int, channel: str, why: str) -> None: ...

    async def release(self, user_id: str, key: str, *, worker: str) -> None: ...


def _sent(now_ms: int, channel: str, message_id: str) -> dict[str, Any]:
    return {"state": "sent", "at": now_ms, "channel": channel, "message_id": message_id}


def _unknown(now_ms: int, channel: str, why: str) -> dict[str, Any]:
    return {"state": "unknown", "at": now_ms, "channel": channel, "why": why}


class RedisLedger:
    """The ledger in Redis (one server or a Cluster): claims by CLAIM_SCRIPT, one round trip each."""

    def __init__(self, client: AsyncClient, *, lease_ms: int, ttl_s: int = LEDGER_TTL_S) -> None:
        self._client = client
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self.lease_ms = lease_ms
        self.ttl_s = ttl_s

    async def claim(
        self, user_id: str, key: str, *, worker: str, now_ms: int, resend_stale: bool, channel: str
    ) -> Claim:
        args: list[str | int] = [key, worker, now_ms, self.lease_ms, 1 if resend_stale else 0, self.ttl_s, channel]
        verdict, raw = await self._claim(keys=[ledger_key(user_id)], args=args)
        previous = json.loads(raw) if raw else None
        return Claim(Verdict(_text(verdict)), previous)

    async def _write(self, user_id: str, key: str, entry: dict[str, Any]) -> None:
        name = ledger_key(user_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(name, key, json.dumps(entry))
            pipe.expire(name, self.ttl_s)
            await pipe.execute()

    async def mark_sent(self, user_id: str, key: str, *, now_ms: int, channel: str, message_id: str) -> None:
        await self._write(user_id, key, _sent(now_ms, channel, message_id))

    async def mark_unknown(self, user_id: str, key: str, *, now_ms: int, channel: str, why: str) -> None:
        await self._write(user_id, key, _unknown(now_ms, channel, why))

    async def release(self, user_id: str, key: str, *, worker: str) -> None:
        await self._release(keys=[ledger_key(user_id)], args=[key, worker])

    async def entries(self, user_id: str) -> dict[str, dict[str, Any]]:
        """The user's ledger, decoded (for `nudge` tools and tests)."""
        raw = await self._client.hgetall(ledger_key(user_id))
        return {_text(k): json.loads(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class InMemoryLedger:
    """The same rule (`decide`) over a dict: for unit tests and single-process runs."""

    def __init__(self, *, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self.hashes: dict[str, dict[str, dict[str, Any]]] = {}

    async def claim(
        self, user_id: str, key: str, *, worker: str, now_ms: int, resend_stale: bool, channel: str
    ) -> Claim:
        book = self.hashes.setdefault(ledger_key(user_id), {})
        claim = decide(
            book.get(key),
            worker=worker,
            now_ms=now_ms,
            lease_ms=self.lease_ms,
            resend_stale=resend_stale,
            channel=channel,
        )
        if claim.write is not None:
            book[key] = claim.write
        return claim

    async def mark_sent(self, user_id: str, key: str, *, now_ms: int, channel: str, message_id: str) -> None:
        self.hashes.setdefault(ledger_key(user_id), {})[key] = _sent(now_ms, channel, message_id)

    async def mark_unknown(self, user_id: str, key: str, *, now_ms: int, channel: str, why: str) -> None:
        self.hashes.setdefault(ledger_key(user_id), {})[key] = _unknown(now_ms, channel, why)

    async def release(self, user_id: str, key: str, *, worker: str) -> None:
        book = self.hashes.get(ledger_key(user_id), {})
        entry = book.get(key)
        if entry is not None and entry.get("state") == "claimed" and entry.get("by") == worker:
            del book[key]
