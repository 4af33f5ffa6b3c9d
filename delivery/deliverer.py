"""One outbox message from bytes to a recorded outcome: the rules of plan.py, performed.

`Deliverer.handle` parses the message, waits for its `send_at`, takes a rate
token, claims the idempotency key in the send ledger, calls the provider,
records the answer in the ledger, retries with back-off, and finally either
marks it sent, marks it unknown, counts it a duplicate, or dead-letters it
(with token feedback for an invalid push token). Kafka is not here: the dead
letters and app events go to a `Sink`, and the caller commits the offset
once `handle` returns. Every dependency is injected (clock, sleep, random,
ledger, providers), so the unit tests drive it with fakes.

The claim -> send -> record step runs shielded from cancellation: a worker
that loses its partitions or is stopped lets a started send finish and be
recorded (`wait_critical`), so "claimed but never recorded" is left only by
a crash.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from delivery.http import Notifier
from delivery.ledger import Claim, Ledger, Verdict
from delivery.metrics import DeliveryMetrics
from delivery.plan import (
    DeadLetter,
    MarkSent,
    MarkUnknown,
    Retry,
    RetryPolicy,
    Wait,
    after_send,
    before_send,
    parse_notification,
    sent_event,
    token_cleared_event,
)
from delivery.policy import TokenBucket
from nudge.logs import mask_phone
from nudge.notifications import Notification

__all__ = ["Deliverer", "Sink", "Source", "dead_letter_headers"]

log = logging.getLogger(__name__)

_MAX_DETAIL = 500


class Sink(Protocol):
    """Where dead letters and token feedback go (Kafka in the worker); each returns once acknowledged."""

    async def dead_letter(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None: ...

    async def app_event(self, key: bytes, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def dead_letter_headers(
    reason: str, detail: str, source: Source, *, failed_at_ms: int, attempts: int
) -> list[tuple[str, bytes]]:
    """The input dead letters' header convention (docs/contracts.md "Dead letters"), plus `nudge.attempts`."""
    return [
        ("nudge.reason", reason.encode()),
        ("nudge.detail", detail[:_MAX_DETAIL].encode("utf-8", "replace")),
        ("nudge.source.topic", source.topic.encode()),
        ("nudge.source.partition", str(source.partition).encode()),
        ("nudge.source.offset", str(source.offset).encode()),
        ("nudge.source.timestamp", str(source.timestamp_ms if source.timestamp_ms is not None else "").encode()),
        ("nudge.failed_at", str(failed_at_ms).encode()),
        ("nudge.attempts", str(attempts).encode()),
    ]


def shown_to(n: Notification) -> str:
    """The address fit for a log line: a phone keeps country and last digits, a token nothing."""
    return mask_phone(n.to) if n.channel == "sms" else "***"


class Deliverer:
    """Delivers outbox messages through `notifiers` (by channel) under the send ledger."""

    def __init__(
        self,
        *,
        notifiers: Mapping[str, Notifier],
        ledger: Ledger,
        sink: Sink,
        metrics: DeliveryMetrics,
        policy: RetryPolicy,
        rates_per_s: Mapping[str, float],
        worker_id: str,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = asyncio.sleep,
        rng: random.Random | None = None,
        after_provider_ok: Callable[[str], None] | None = None,
    ) -> None:
        self._notifiers = dict(notifiers)
        self._ledger = ledger
        self._sink = sink
        self._metrics = metrics
        self._policy = policy
        self._worker_id = worker_id
        self._lease_s = lease_s
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._after_provider_ok = after_provider_ok
        now = monotonic()
        self._buckets = {ch: TokenBucket.starting(rate, now) for ch, rate in rates_per_s.items()}
        self._critical: set[asyncio.Task[object]] = set()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _pause(self, seconds: float) -> None:
        await self._sleep(seconds)  # type: ignore[misc]

    async def wait_critical(self, timeout_s: float) -> None:
        """Let every started claim -> send -> record step finish (bounded by `timeout_s`)."""
        if self._critical:
            await asyncio.wait(set(self._critical), timeout=timeout_s)

    async def handle(self, key: bytes | None, value: bytes | None, source: Source) -> str:
        """Deliver one message; returns its final outcome (sent, duplicate, unknown, dead_letter)."""
        parsed = parse_notification(value)
        if isinstance(parsed, DeadLetter):
            log.warning("%s: malformed outbox message: %s", source, parsed.detail)
            await self._dead_letter(key, value, source, parsed, channel="unknown", attempts=0)
            return "dead_letter"
        n = parsed
        while True:
            step = before_send(n, now_ms=self._now_ms(), channels=self._notifiers)
            if step is None:
                break
            if isinstance(step, Wait):
                await self._pause(step.seconds)
                continue
            await self._dead_letter(key, value, source, step, channel=n.channel, attempts=0)
            return "dead_letter"
        return await self._deliver(n, key, value, source)

    async def _deliver(self, n: Notification, key: bytes | None, value: bytes | None, source: Source) -> str:
        notifier = self._notifiers[n.channel]
        # One owner id per handling: a second copy of the same message, even in this
        # process, sees the first one's claim as another owner's and waits for it.
        owner = f"{self._worker_id}/{uuid.uuid4().hex[:8]}"
        attempt = 0
        while True:
            # The rate limit is waited for before the claim, so a claim is held only for the send itself.
            wait = self._buckets[n.channel].reserve(self._monotonic()) if n.channel in self._buckets else 0.0
            if wait > 0:
                await self._pause(wait)
            task = asyncio.ensure_future(self._attempt(notifier, n, owner, attempt + 1))
            self._critical.add(task)
            task.add_done_callback(self._critical.discard)
            step = await asyncio.shield(task)
            if isinstance(step, Claim):
                if step.verdict is Verdict.BUSY:
                    # Another live worker is sending it: ask again until it is recorded or its claim goes stale.
                    await self._pause(min(1.0, self._lease_s / 4))
                    continue
                return await self._not_sent(n, step, source)
            attempt += 1
            if isinstance(step, MarkSent):
                self._metrics.messages.labels(n.channel, "sent").inc()
                log.info("%s: %s %s sent to %s (attempt %d)", source, n.channel, n.decision_id, shown_to(n), attempt)
                await self._sink.app_event(*sent_event(n))
                return "sent"
            if isinstance(step, MarkUnknown):
                self._metrics.unknown.labels(n.channel, step.why).inc()
                self._metrics.messages.labels(n.channel, "unknown").inc()
                log.warning(
                    "%s: %s %s: outcome unknown (%s), not sent again", source, n.channel, n.decision_id, step.why
                )
                return "unknown"
            if isinstance(step, Retry):
                self._metrics.retries.labels(n.channel).inc()
                await self._pause(step.seconds)
                continue
            if step.clear_push_token:
                await self._sink.app_event(*token_cleared_event(n))
                self._metrics.token_feedback.inc()
            await self._dead_letter(key, value, source, step, channel=n.channel, attempts=attempt)
            return "dead_letter"

    async def _not_sent(self, n: Notification, claim: Claim, source: Source) -> str:
        if claim.verdict is Verdict.STALE_UNKNOWN:
            # A worker died between its claim and its record; without provider dedup we do not send again.
            self._metrics.unknown.labels(n.channel, "stale_claim").inc()
            self._metrics.messages.labels(n.channel, "unknown").inc()
            log.warning(
                "%s: %s %s: a dead worker's claim, outcome unknown, not sent again", source, n.channel, n.decision_id
            )
            return "unknown"
        if claim.verdict is Verdict.SENT:
            # Sent before: its `message_sent` may not have reached Kafka then. A second one is harmless:
            # the stream never folds it, and the same time and offer open no second exposure.
            await self._sink.app_event(*sent_event(n))
        self._metrics.duplicates_prevented.labels(n.channel).inc()
        self._metrics.messages.labels(n.channel, "duplicate").inc()
        log.info("%s: %s %s already %s: not sent again", source, n.channel, n.decision_id, claim.verdict)
        return "duplicate"

    async def _attempt(
        self, notifier: Notifier, n: Notification, owner: str, attempt: int
    ) -> Claim | MarkSent | MarkUnknown | Retry | DeadLetter:
        """Claim, send, record: the step that must not be cut in the middle."""
        claim = await self._ledger.claim(
            n.user_id,
            n.idempotency_key,
            worker=owner,
            now_ms=self._now_ms(),
            resend_stale=notifier.idempotent,
            channel=n.channel,
        )
        if not claim.may_send:
            return claim
        if claim.verdict is Verdict.TAKEN_OVER:
            self._metrics.resent_after_crash.labels(n.channel).inc()
        started = self._monotonic()
        result = await notifier.send(n)
        self._metrics.provider_seconds.labels(n.channel).observe(max(0.0, self._monotonic() - started))
        self._metrics.sends.labels(n.channel, result.outcome.value).inc()
        if result.ok and self._after_provider_ok is not None:
            self._after_provider_ok(n.channel)
        now_ms = self._now_ms()
        step = after_send(
            result,
            attempt=attempt,
            idempotent=notifier.idempotent,
            policy=self._policy,
            now_ms=now_ms,
            expires_at=n.expires_at,
            rng=self._rng,
        )
        if isinstance(step, MarkSent):
            await self._ledger.mark_sent(
                n.user_id, n.idempotency_key, now_ms=now_ms, channel=n.channel, message_id=step.message_id
            )
        elif isinstance(step, MarkUnknown):
            await self._ledger.mark_unknown(
                n.user_id, n.idempotency_key, now_ms=now_ms, channel=n.channel, why=step.why
            )
        else:
            # Nothing was delivered (or the provider deduplicates): free the key for the retry or a re-drive.
            await self._ledger.release(n.user_id, n.idempotency_key, worker=owner)
        return step

    async def _dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        source: Source,
        dead: DeadLetter,
        *,
        channel: str,
        attempts: int,
    ) -> None:
        headers = dead_letter_headers(dead.reason, dead.detail, source, failed_at_ms=self._now_ms(), attempts=attempts)
        await self._sink.dead_letter(key, value, headers)
        self._metrics.dead_letters.labels(dead.reason).inc()
        self._metrics.messages.labels(channel, "dead_letter").inc()
        log.warning("%s: %s message dead-lettered: %s (%s)", source, channel, dead.reason, dead.detail)
