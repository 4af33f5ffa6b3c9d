"""The trigger service's Redis: the atomic guard, the shared schedule, the per-user decision log.

Keys (prefix `NUDGE_TRIGGERS_KEY_PREFIX`, default `nudge:`). A user's keys
share the hash tag `{<user_id>}`, so one script call touches one slot and
runs unchanged on Redis Cluster:

| key | type | what |
|---|---|---|
| `nudge:{u}:decided` | hash | idempotency key -> the decision (JSON) that sent or delayed that episode |
| `nudge:{u}:cooldown` | hash | rule -> epoch ms until which the rule may not send again (-1: never) |
| `nudge:{u}:cap:<channel or all>:<d or w>:<period>` | string | messages counted in that day / ISO week |
| `nudge:{u}:noted` | hash | idempotency key and reason -> when a suppression was first recorded |
| `nudge:{u}:decisions` | list | the user's last N decision records (JSON), newest first (`nudge why`) |
| `nudge:schedule:{i}` | sorted set | due time -> work: a wait-for rule to evaluate again, a delayed message to send |

The guard (`GUARD`) checks, in the order of the guardrails, that the episode
was not decided yet (else "replay": the same decision is published again,
which the send ledger makes harmless), that the rule is out of its cool-down
("dedupe"), and that no cap is reached ("cap:<counter>"); if all pass it
records the episode, the cool-down and the counts in the same step. Two
trigger processes racing on one user therefore cannot both pass it.

The schedule is shared by every trigger process (one sorted set per changes
shard; a user's work always in the same shard). A process claims due work
by moving its score a lease ahead (`CLAIM`); it removes the work when done,
only if its score is still the leased one (`DONE`): a newer add_to_cart
that pushed the wait further is kept. Work claimed by a process that died
comes due again when its lease ends.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Final

import orjson

from nudge.redis_client import SyncClient
from triggers.decide import Decision, Proposal

__all__ = ["CAP_TTL_S", "GuardResult", "TriggerStore"]

CAP_TTL_S: Final = 9 * 86_400  # longer than a week: an ISO week's counter outlives its week
EPISODE_TTL_S: Final = 400 * 86_400  # decided episodes and cool-downs: a "forever" rule is "for 400 days of silence"
NOTED_TTL_S: Final = 30 * 86_400

# KEYS: decided, cooldown, cap counters...
# ARGV: idempotency key, rule, cooldown_until, commit (1/0), record JSON, cap TTL, episode TTL, now,
#       then the cap limits in the order of the counter keys.
_GUARD = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then return {'replay', prev} end
local now = tonumber(ARGV[8])
local until_ms = redis.call('HGET', KEYS[2], ARGV[2])
if until_ms then
  local u = tonumber(until_ms)
  if u == -1 or u > now then return {'dedupe', until_ms} end
end
local ncaps = #KEYS - 2
for i = 1, ncaps do
  local limit = tonumber(ARGV[8 + i])
  local count = tonumber(redis.call('GET', KEYS[2 + i]) or '0')
  if count >= limit then return {'cap', tostring(i)} end
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  for i = 1, ncaps do
    redis.call('INCR', KEYS[2 + i])
    redis.call('EXPIRE', KEYS[2 + i], ARGV[6])
  end
end
return {'ok', ''}
"""

# KEYS: schedule; ARGV: now, lease_ms, limit -> [member, leased score, ...]
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local leased = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], leased, member)
  table.insert(out, member)
end
return {tostring(leased), out}
"""

# KEYS: schedule; ARGV: member, the leased score -> 1 removed, 0 rescheduled meanwhile
_DONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: the user's decision list; ARGV: kept, record JSON...
_LOG = """
for i = 2, #ARGV do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], 34560000)
return 1
"""


class GuardResult:
    """What the guard said: "ok", "replay" (with the stored decision), "dedupe" or "cap" (with the counter)."""

    __slots__ = ("detail", "verdict")

    def __init__(self, verdict: str, detail: str) -> None:
        self.verdict = verdict
        self.detail = detail

    def __repr__(self) -> str:
        return f"GuardResult({self.verdict!r}, {self.detail!r})"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TriggerStore:
    """The trigger service's Redis keys and scripts (see the module docstring)."""

    def __init__(self, client: SyncClient | Any, *, prefix: str = "nudge:", shards: int = 1, kept: int = 50) -> None:
        self.client: Any = client  # redis-py's sync and cluster clients type their replies loosely
        self.prefix = prefix
        self.shards = shards
        self.kept = kept
        self._guard = client.register_script(_GUARD)
        self._claim = client.register_script(_CLAIM)
        self._done = client.register_script(_DONE)
        self._log = client.register_script(_LOG)

    # --- keys ---------------------------------------------------------------------
    def key(self, user_id: str, what: str) -> str:
        return f"{self.prefix}{{{user_id}}}:{what}"

    def schedule_key(self, user_id: str) -> str:
        return self.schedule_keys()[zlib.crc32(user_id.encode()) % self.shards]

    def schedule_keys(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}schedule:{{{i}}}" for i in range(self.shards))

    # --- the guard ----------------------------------------------------------------
    def guard(self, proposal: Proposal, now_ms: int, stored: bytes) -> GuardResult:
        """Check and (unless the message is dropped for quiet hours) record the proposal atomically."""
        d = proposal.decision
        keys = [self.key(d.user_id, "decided"), self.key(d.user_id, "cooldown")]
        keys += [self.key(d.user_id, name) for name, _ in proposal.caps]
        commit = "0" if proposal.quiet == "drop" else "1"
        args: list[str | bytes] = [
            d.idempotency_key,
            d.rule,
            str(proposal.cooldown_until),
            commit,
            stored,
            str(CAP_TTL_S),
            str(EPISODE_TTL_S),
            str(now_ms),
            *(str(limit) for _, limit in proposal.caps),
        ]
        verdict, detail = self._guard(keys=keys, args=args)
        verdict, detail = _s(verdict), _s(detail)
        if verdict == "cap":
            detail = proposal.caps[int(detail) - 1][0]
        return GuardResult(verdict, detail)

    def note(self, decision: Decision, now_ms: int) -> bool:
        """Whether this suppression (episode, reason) is new: it is then recorded, and audited once."""
        key = self.key(decision.user_id, "noted")
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(key, f"{decision.idempotency_key}:{decision.reason}", str(now_ms))
        pipe.expire(key, NOTED_TTL_S)
        new, _ = pipe.execute()
        return bool(new)

    def log(self, user_id: str, records: Sequence[bytes]) -> None:
        """Append decision records to the user's list (newest first), keeping the last `kept`."""
        if records:
            self._log(keys=[self.key(user_id, "decisions")], args=[self.kept, *records])

    def decisions(self, user_id: str) -> list[dict[str, Any]]:
        """The user's last decisions, newest first."""
        raw = self.client.lrange(self.key(user_id, "decisions"), 0, -1)
        return [orjson.loads(r) for r in raw]

    # --- the schedule -------------------------------------------------------------
    def schedule(self, pipe: Any, user_id: str, member: str, due_ms: int) -> None:
        """Add (or move) `member` in the user's schedule shard to `due_ms`, on pipeline `pipe`."""
        pipe.zadd(self.schedule_key(user_id), {member: due_ms})

    def claim(self, shard_key: str, now_ms: int, lease_ms: int, limit: int = 100) -> tuple[int, list[str]]:
        """Due work of one shard, leased for `lease_ms`: (the leased score, members)."""
        leased, members = self._claim(keys=[shard_key], args=[now_ms, lease_ms, limit])
        return int(_s(leased)), [_s(m) for m in members]

    def done(self, shard_key: str, member: str, leased: int) -> bool:
        return bool(self._done(keys=[shard_key], args=[member, leased]))

    def pending(self) -> int:
        """Work in the schedule, due or not."""
        return sum(int(self.client.zcard(k)) for k in self.schedule_keys())
