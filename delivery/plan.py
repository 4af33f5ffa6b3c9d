"""The delivery rules as pure functions: what to do with a message, and after each provider answer.

The worker (delivery/worker.py) performs what these return; nothing here
does I/O or reads a clock (the time is a parameter), so every rule is a
unit test away.

Dead-letter reasons (the `nudge.reason` header, `nudge_delivery_dead_letters_total{reason}`):

| reason                 | when |
|------------------------|------|
| malformed              | not a valid `Notification` (the detail names the field, never its value) |
| channel_not_configured | no provider set up for the message's channel on this worker |
| expired                | past `expires_at` before it could be sent, or before its next retry |
| invalid_token          | FCM: the push token is unregistered or invalid (the user's token is cleared) |
| invalid_number         | Twilio: the phone number cannot receive SMS |
| gone                   | the webhook answered 410 |
| rejected               | any other permanent refusal (the detail has the provider's code) |
| retries_exhausted      | `NUDGE_DELIVERY_MAX_ATTEMPTS` sends, none accepted |
| processing_error       | a bug in nudge while handling it (logged with its traceback) |
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection
from dataclasses import dataclass, field

from pydantic import ValidationError

from delivery.policy import retry_delay_s
from delivery.results import Outcome, SendResult
from nudge.events import AppEvent, ProfileUpdateEvent
from nudge.logs import redact
from nudge.notifications import Notification

__all__ = [
    "DEAD_LETTER_REASONS",
    "DeadLetter",
    "MarkSent",
    "MarkUnknown",
    "OffsetTracker",
    "Retry",
    "RetryPolicy",
    "Wait",
    "after_send",
    "before_send",
    "parse_notification",
    "sent_event",
    "token_cleared_event",
]

DEAD_LETTER_REASONS = (
    "malformed",
    "channel_not_configured",
    "expired",
    "invalid_token",
    "invalid_number",
    "gone",
    "rejected",
    "retries_exhausted",
    "processing_error",
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    clear_push_token: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Retry:
    seconds: float


@dataclass(frozen=True, slots=True)
class MarkSent:
    message_id: str


@dataclass(frozen=True, slots=True)
class MarkUnknown:
    why: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_s: float
    backoff_max_s: float


def parse_notification(raw: bytes | None) -> Notification | DeadLetter:
    """The outbox message, or a `malformed` dead letter whose detail never echoes a value.

    >>> parse_notification(b"{").reason
    'malformed'
    >>> parse_notification(b'{"channel": "fax"}').detail
    'idempotency_key: Field required (+11 more)'
    """
    if not raw:
        return DeadLetter("malformed", "empty message")
    try:
        return Notification.from_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"]) or "message"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return DeadLetter("malformed", f"{where}: {first['msg']}{more}")


def before_send(n: Notification, *, now_ms: int, channels: Collection[str]) -> DeadLetter | Wait | None:
    """Dead letter (expired, no provider), wait until `send_at`, or None: send now."""
    if n.channel not in channels:
        return DeadLetter("channel_not_configured", f"no provider configured for channel {n.channel!r}")
    if now_ms >= n.expires_at:
        return DeadLetter("expired", f"expired {now_ms - n.expires_at} ms before it could be sent")
    if n.send_at > now_ms:
        return Wait((n.send_at - now_ms) / 1000.0)
    return None


def after_send(
    result: SendResult,
    *,
    attempt: int,
    idempotent: bool,
    policy: RetryPolicy,
    now_ms: int,
    expires_at: int,
    rng: random.Random,
) -> MarkSent | MarkUnknown | Retry | DeadLetter:
    """What follows attempt number `attempt` (1-based) answered by `result`.

    An ambiguous failure (the request may have arrived) is retried only when
    the provider deduplicates by our key; without one it is `unknown`, never
    sent twice.
    """
    outcome = result.outcome
    if outcome is Outcome.OK:
        return MarkSent(result.message_id)
    detail = _detail(result)
    if outcome is Outcome.INVALID_ADDRESS:
        reason = {"unregistered": "invalid_token", "invalid_token": "invalid_token", "gone": "gone"}.get(
            result.reason, "invalid_number"
        )
        return DeadLetter(reason, detail, clear_push_token=reason == "invalid_token")
    if outcome is Outcome.PERMANENT:
        return DeadLetter("rejected", detail)
    if outcome is Outcome.AMBIGUOUS and not idempotent:
        return MarkUnknown(result.reason)
    if attempt >= policy.max_attempts:
        return DeadLetter("retries_exhausted", f"{attempt} attempts; last: {detail}")
    delay = retry_delay_s(attempt, result.retry_after_s, policy.backoff_s, policy.backoff_max_s, rng)
    if now_ms + delay * 1000.0 >= expires_at:
        return DeadLetter("expired", f"would expire before the next attempt in {delay:.1f} s; last: {detail}")
    return Retry(delay)


def _detail(result: SendResult) -> str:
    status = f"HTTP {result.status} " if result.status is not None else ""
    # A provider's message may quote the address ("The 'To' number +1... is not valid").
    text = f": {redact(result.detail)}" if result.detail else ""
    return f"{status}{result.reason}{text}"


def token_cleared_event(n: Notification) -> tuple[bytes, bytes]:
    """(key, value) of the `profile_update` that clears the user's push token.

    Its event_id derives from the idempotency key, so a retried feedback is a
    duplicate the stream worker drops. Its time is the decision's: a token the
    app registered after the decision is newer and wins (the fold keeps the
    latest value per field by event time), so only the token we used is cleared.
    """
    digest = hashlib.sha256(f"push_token_invalid:{n.idempotency_key}".encode()).hexdigest()[:32]
    event = ProfileUpdateEvent(
        event_id=f"delivery-{digest}",
        type="profile_update",
        user_id=n.user_id,
        ts=n.decided_at,
        schema_version=1,
        push_token="",
    )
    return n.user_id.encode(), event.model_dump_json(exclude_none=True).encode()


def sent_event(n: Notification) -> tuple[bytes, bytes]:
    """(key, value) of the `message_sent` app-event: the send flows back to the stream.

    One per idempotency key (its event_id derives from it), at the decision's
    time; the stream worker never folds it into the user's activity, and opens
    the offer's exposure from it for an SMS or a webhook (a push's comes with
    the device's `push_received`).

    >>> n = Notification(idempotency_key="k" * 16, decision_id="d", user_id="u1", rule="win_back", variant="a",
    ...     channel="sms", to="+447911123456", body="Hi", campaign_id="sitewide10", decided_at=5, send_at=9,
    ...     expires_at=99)
    >>> from nudge.events import parse_event
    >>> e = parse_event(sent_event(n)[1])
    >>> e.type, e.user_id, e.ts, e.campaign_id, e.channel
    ('message_sent', 'u1', 5, 'sitewide10', 'sms')
    """
    digest = hashlib.sha256(f"message_sent:{n.idempotency_key}".encode()).hexdigest()[:32]
    event = AppEvent(
        event_id=f"delivery-{digest}",
        type="message_sent",
        user_id=n.user_id,
        ts=n.decided_at,
        schema_version=1,
        campaign_id=n.campaign_id,
        channel=n.channel,
    )
    return n.user_id.encode(), event.model_dump_json(exclude_none=True).encode()


@dataclass(slots=True)
class OffsetTracker:
    """One partition's offsets in flight: the commit point is the lowest offset not yet done.

    Messages finish out of order (one waits for its `send_at` while later ones
    are sent); Kafka's committed offset must never pass an unfinished one.

    >>> t = OffsetTracker()
    >>> for o in (5, 6, 7):
    ...     t.add(o)
    >>> t.done(6), t.done(5), t.done(7)
    (None, 7, 8)
    """

    pending: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    committable: int | None = None

    def add(self, offset: int) -> None:
        self.pending.add(offset)

    def done(self, offset: int) -> int | None:
        """Mark `offset` done; the new commit point (next offset to read) if it moved, else None."""
        if offset not in self.pending:
            return None
        self.pending.discard(offset)
        self.finished.add(offset)
        low = min(self.pending) if self.pending else None
        ready = [o for o in self.finished if low is None or o < low]
        if not ready:
            return None
        point = max(ready) + 1
        self.finished.difference_update(ready)
        self.committable = point
        return point

    def __len__(self) -> int:
        return len(self.pending)
