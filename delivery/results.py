"""What a provider answered, as one value every adapter returns.

An adapter never raises for a provider's answer or a network failure: it maps
both (at its boundary) to a `SendResult`, and `plan.after_send` decides what
follows. The outcomes:

| outcome         | meaning                                                        | next |
|-----------------|----------------------------------------------------------------|------|
| ok              | the provider accepted the message (`message_id` is its id)     | mark sent |
| retry           | not accepted, safe to send again (5xx, 429, refused connection) | back off, `retry_after_s` if given |
| ambiguous       | the request may have reached the provider (time-out, reset)    | retry with an idempotency key; else unknown |
| invalid_address | the token or number will never work (FCM UNREGISTERED, Twilio 21211) | dead letter (+ token feedback) |
| permanent       | the provider refuses this message for good (other 4xx)         | dead letter |
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import aiohttp

__all__ = ["Outcome", "SendResult", "from_exception", "short_reason"]


class Outcome(enum.StrEnum):
    OK = "ok"
    RETRY = "retry"
    AMBIGUOUS = "ambiguous"
    INVALID_ADDRESS = "invalid_address"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    """One provider answer. `reason` is short and machine-readable (a metric label, a DLQ header)."""

    outcome: Outcome
    reason: str
    status: int | None = None
    message_id: str = ""
    retry_after_s: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def short_reason(text: str) -> str:
    """A provider's error code as a label: lower case, [a-z0-9_], at most 40 characters.

    >>> short_reason("UNREGISTERED"), short_reason("QUOTA-EXCEEDED!")
    ('unregistered', 'quota_exceeded')
    """
    out = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return (out or "unspecified")[:40]


def from_exception(exc: BaseException) -> SendResult:
    """A network failure mapped at the boundary: was the request possibly seen by the provider?

    A connection that never opened cannot have delivered anything: `retry`.
    A time-out or a connection lost mid-request may have: `ambiguous`.

    >>> from_exception(asyncio.TimeoutError()).outcome
    <Outcome.AMBIGUOUS: 'ambiguous'>
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SendResult(Outcome.RETRY, "connect_failed", detail=type(exc).__name__)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return SendResult(Outcome.AMBIGUOUS, "timeout", detail=type(exc).__name__)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return SendResult(Outcome.AMBIGUOUS, "connection_lost", detail=type(exc).__name__)
    raise exc
