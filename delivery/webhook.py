"""The generic webhook: one signed JSON POST per notification (channel `webhook`).

Headers: `X-Nudge-Timestamp` (epoch seconds), `X-Nudge-Signature:
sha256=<hex>` and `Idempotency-Key` (the notification's key: a receiver that
keeps the keys it has seen makes our re-sends harmless, so `idempotent = True`).

The signature is HMAC-SHA256 with `NUDGE_WEBHOOK_SECRET` over
`<timestamp>.<body>` (the Stripe scheme): signing the timestamp with the body
lets a receiver refuse a replayed request older than a few minutes (`verify`).

Answers: 2xx ok; 408, 429 (Retry-After) and 5xx retry; 410 Gone -> invalid
address; other 4xx permanent.

>>> sign("s3cret", 1700000000, b'{}')
'sha256=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Final

import aiohttp

from delivery.http import post
from delivery.policy import parse_retry_after
from delivery.results import Outcome, SendResult
from nudge.notifications import Channel, Notification

__all__ = ["MAX_SKEW_S", "WebhookNotifier", "classify", "payload", "sign", "signed_headers", "verify"]

MAX_SKEW_S: Final = 300


def payload(n: Notification) -> bytes:
    """The JSON body: what the receiver needs to deliver, without the contract's internals."""
    doc: dict[str, Any] = {
        "idempotency_key": n.idempotency_key,
        "decision_id": n.decision_id,
        "user_id": n.user_id,
        "to": n.to,
        "rule": n.rule,
        "variant": n.variant,
        "campaign_id": n.campaign_id,
        "offer_id": n.offer_id,
        "title": n.title,
        "body": n.body,
        "data": dict(n.data),
        "transactional": n.transactional,
        "decided_at": n.decided_at,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now_s: float, max_skew_s: int = MAX_SKEW_S
) -> str | None:
    """What a receiver checks: None when genuine and recent, else why not.

    >>> body = b'{"a":1}'
    >>> verify("k", "100", body, sign("k", 100, body), now_s=150) is None
    True
    >>> verify("k", "100", body + b" ", sign("k", 100, body), now_s=150)
    'bad signature'
    >>> verify("k", "100", body, sign("k", 100, body), now_s=1000)
    'timestamp too old or in the future'
    """
    try:
        ts = int(timestamp)
    except ValueError:
        return "timestamp is not an integer"
    if abs(now_s - ts) > max_skew_s:
        return "timestamp too old or in the future"
    if not hmac.compare_digest(sign(secret, ts, body), signature):
        return "bad signature"
    return None


def signed_headers(secret: str, n: Notification, body: bytes, now_s: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Nudge-Timestamp": str(now_s),
        "X-Nudge-Signature": sign(secret, now_s, body),
        "Idempotency-Key": n.idempotency_key,
    }


def classify(status: int, body: bytes, retry_after: str | None = None) -> SendResult:
    if 200 <= status < 300:
        try:
            doc = json.loads(body) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = {}
        message_id = str(doc.get("id", "")) if isinstance(doc, dict) else ""
        return SendResult(Outcome.OK, "ok", status, message_id=message_id)
    reason = f"http_{status}"
    if status in (408, 429):
        return SendResult(Outcome.RETRY, reason, status, retry_after_s=parse_retry_after(retry_after))
    if status >= 500:
        return SendResult(Outcome.RETRY, reason, status, retry_after_s=parse_retry_after(retry_after))
    if status == 410:
        return SendResult(Outcome.INVALID_ADDRESS, "gone", status)
    return SendResult(Outcome.PERMANENT, reason, status)


class WebhookNotifier:
    """Signed JSON POSTs to one URL (channel `webhook`)."""

    channel: Channel = "webhook"
    provider = "webhook"
    idempotent = True

    def __init__(self, session: aiohttp.ClientSession, *, url: str, secret: str) -> None:
        self._session = session
        self._url = url
        self._secret = secret

    async def send(self, notification: Notification) -> SendResult:
        body = payload(notification)
        headers = signed_headers(self._secret, notification, body, int(time.time()))
        answer = await post(self._session, self._url, data=body, headers=headers)
        if isinstance(answer, SendResult):
            return answer
        return classify(answer.status, answer.body, answer.headers.get("retry-after"))

    async def close(self) -> None:
        await self._session.close()
