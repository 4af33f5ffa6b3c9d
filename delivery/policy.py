"""Timing rules, as pure arithmetic: retry back-off, Retry-After, the per-provider rate limit.

Back-off is exponential with *full jitter* (a uniform draw in [0, cap]): workers
that failed together do not retry together.

>>> import random
>>> rng = random.Random(1)
>>> all(0 <= backoff_s(a, 0.5, 30.0, rng) <= min(30.0, 0.5 * 2 ** (a - 1)) for a in range(1, 20))
True
>>> parse_retry_after("7"), parse_retry_after("garbage"), parse_retry_after("-3")
(7.0, None, 0.0)
>>> bucket = TokenBucket(rate_per_s=2.0, burst=1.0, tokens=1.0, updated=0.0)
>>> bucket.reserve(0.0), bucket.reserve(0.0), bucket.reserve(0.0)
(0.0, 0.5, 1.0)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "TokenBucket", "backoff_s", "parse_retry_after", "retry_delay_s"]

# A provider asking for more than an hour is treated as an hour: the message's own
# expiry decides whether it is still worth waiting for (see plan.after_send).
MAX_RETRY_AFTER_S = 3_600.0


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay after failed attempt number `attempt` (1-based): uniform in [0, min(max_s, base_s * 2**(attempt-1))]."""
    exponent = min(attempt - 1, 60)  # 2**60 * any base is past every cap; keeps the float finite
    cap = min(max_s, base_s * 2.0**exponent)
    return rng.uniform(0.0, cap)


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), bounded to [0, MAX_RETRY_AFTER_S]."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        now = datetime.now(UTC).timestamp() if now_s is None else now_s
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_delay_s(attempt: int, retry_after_s: float | None, base_s: float, max_s: float, rng: random.Random) -> float:
    """The provider's Retry-After when it gave one (honoured as given), else the jittered back-off."""
    if retry_after_s is not None:
        return retry_after_s
    return backoff_s(attempt, base_s, max_s, rng)


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_s` sends per second on average, bursts up to `burst`.

    `reserve(now)` takes a token and returns how long the caller must wait
    before using it. Tokens may go negative: callers that reserve while the
    bucket is empty queue up behind each other, each told its own turn, so
    concurrent senders need no lock (there is no await between read and write).
    """

    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def starting(cls, rate_per_s: float, now: float) -> TokenBucket:
        # A burst of a tenth of a second's worth (at least one): smooth, yet not one-by-one at high rates.
        burst = max(1.0, rate_per_s / 10.0)
        return cls(rate_per_s=rate_per_s, burst=burst, tokens=burst, updated=now)

    def reserve(self, now: float) -> float:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now
        self.tokens -= 1.0
        if self.tokens >= 0.0:
            return 0.0
        return -self.tokens / self.rate_per_s
