"""SMS through Twilio's Messages API.

`POST {twilio_url}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded
`To`, `Body` and `From` (or `MessagingServiceSid` when the sender is a
messaging service, `MG...`), HTTP basic auth (account SID, auth token), and
`I-Twilio-Idempotency-Token: <idempotency_key>`: Twilio answers a repeated
token with the first answer and sends nothing, so a retry or a re-send after
a crash is safe (`idempotent = True`).

Answers (`classify`): 201 ok (`sid`); 429 retry after Retry-After; 5xx retry;
400 with Twilio error 21211 (invalid `To`) or 21614 (not a mobile number) ->
invalid_address; 401/403 and other 4xx -> permanent.
"""

from __future__ import annotations

import json
from typing import Final

import aiohttp

from delivery.http import post
from delivery.policy import parse_retry_after
from delivery.results import Outcome, SendResult
from nudge.notifications import Channel, Notification

__all__ = ["IDEMPOTENCY_HEADER", "INVALID_NUMBER_CODES", "TwilioNotifier", "classify", "message_form", "messages_url"]

IDEMPOTENCY_HEADER: Final = "I-Twilio-Idempotency-Token"
# 21211: invalid 'To' phone number; 21614: 'To' is not a valid mobile number.
INVALID_NUMBER_CODES: Final = frozenset({21211, 21614})


def messages_url(base_url: str, account_sid: str) -> str:
    return f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"


def message_form(n: Notification, sender: str) -> dict[str, str]:
    """The form fields. A sender starting with MG is a messaging service, else a phone number.

    >>> from nudge.notifications import Notification
    >>> n = Notification(idempotency_key="k" * 16, decision_id="d", user_id="u", rule="r", variant="a",
    ...     channel="sms", to="+447911123456", body="Hi", campaign_id="c", decided_at=0, send_at=0, expires_at=1)
    >>> sorted(message_form(n, "MG0123"))
    ['Body', 'MessagingServiceSid', 'To']
    """
    form = {"To": n.to, "Body": n.body}
    if sender.startswith("MG"):
        form["MessagingServiceSid"] = sender
    else:
        form["From"] = sender
    return form


def classify(status: int, body: bytes, retry_after: str | None = None) -> SendResult:
    """Map one Messages.json answer to a SendResult (see the module docstring)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    if status in (200, 201):
        return SendResult(Outcome.OK, "ok", status, message_id=str(doc.get("sid", "")))
    code = doc.get("code")
    detail = str(doc.get("message", ""))[:200]
    reason = f"twilio_{code}" if isinstance(code, int) else f"http_{status}"
    if status == 429:
        return SendResult(Outcome.RETRY, reason, status, retry_after_s=parse_retry_after(retry_after), detail=detail)
    if status >= 500:
        return SendResult(Outcome.RETRY, reason, status, detail=detail)
    if code in INVALID_NUMBER_CODES:
        return SendResult(Outcome.INVALID_ADDRESS, "invalid_number", status, detail=detail)
    return SendResult(Outcome.PERMANENT, reason, status, detail=detail)


class TwilioNotifier:
    """SMS through Twilio (channel `sms`)."""

    channel: Channel = "sms"
    provider = "twilio"
    idempotent = True

    def __init__(
        self, session: aiohttp.ClientSession, *, base_url: str, account_sid: str, auth_token: str, sender: str
    ) -> None:
        self._session = session
        self._url = messages_url(base_url, account_sid)
        self._authorization = aiohttp.encode_basic_auth(account_sid, auth_token)
        self._sender = sender

    async def send(self, notification: Notification) -> SendResult:
        answer = await post(
            self._session,
            self._url,
            data=message_form(notification, self._sender),
            headers={"Authorization": self._authorization, IDEMPOTENCY_HEADER: notification.idempotency_key},
        )
        if isinstance(answer, SendResult):
            return answer
        return classify(answer.status, answer.body, answer.headers.get("retry-after"))

    async def close(self) -> None:
        await self._session.close()
