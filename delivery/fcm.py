"""Push through Firebase Cloud Messaging's HTTP v1 API, authorised by a Google service account.

The OAuth2 service-account flow (RFC 7523): sign a JWT assertion (RS256,
the account's private key) naming the account (`iss`), the scope and the
token endpoint (`aud`); POST it to the account's `token_uri` with
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`; use the access
token it returns (cached until a minute before it expires) as a Bearer token
on `POST {fcm_url}/v1/projects/{project}/messages:send`.

**FCM has no idempotency key.** A push whose request may have reached FCM
(a time-out, a connection lost mid-request, a worker killed before it marked
the send) is never sent again: the worker marks it `unknown` instead. The
idempotency key travels in the message's `data` so the app can drop a
duplicate it might still see.

Answers (`classify`): 200 ok (`name` is the message id); 404 UNREGISTERED and
400 INVALID_ARGUMENT about the token -> invalid_address (the worker clears the
user's token); 429 and 503 -> retry, honouring Retry-After; other 5xx ->
retry; 401 -> the token is fetched again once, then permanent; other 4xx ->
permanent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt

from delivery.http import post
from delivery.policy import parse_retry_after
from delivery.results import Outcome, SendResult, short_reason
from nudge.errors import ConfigError
from nudge.notifications import Channel, Notification

__all__ = [
    "FCM_SCOPE",
    "GRANT_TYPE",
    "AccessToken",
    "FcmNotifier",
    "ServiceAccount",
    "assertion_claims",
    "classify",
    "load_service_account",
    "message_body",
    "parse_token_answer",
    "send_url",
    "sign_assertion",
]

FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S: Final = 3_600  # Google's upper bound
# Refresh this long before the token's expiry: a request signed at 59:59 may arrive at 60:01.
REFRESH_MARGIN_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    private_key: str
    token_uri: str
    private_key_id: str = ""
    project_id: str = ""


def load_service_account(path: Path) -> ServiceAccount:
    """Read a Google service-account JSON file; ConfigError says what is missing."""
    where = f"NUDGE_FCM_CREDENTIALS_PATH={path}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not a readable service-account JSON file ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    missing = [f for f in ("client_email", "private_key", "token_uri") if not isinstance(raw.get(f), str) or not raw[f]]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return ServiceAccount(
        client_email=raw["client_email"],
        private_key=raw["private_key"],
        token_uri=raw["token_uri"],
        private_key_id=str(raw.get("private_key_id") or ""),
        project_id=str(raw.get("project_id") or ""),
    )


def assertion_claims(account: ServiceAccount, now_s: int) -> dict[str, Any]:
    """The JWT claims Google's token endpoint expects from a service account.

    >>> sa = ServiceAccount("a@p.iam.gserviceaccount.com", "k", "https://oauth2.googleapis.com/token")
    >>> assertion_claims(sa, 100)["aud"], assertion_claims(sa, 100)["exp"]
    ('https://oauth2.googleapis.com/token', 3700)
    """
    return {
        "iss": account.client_email,
        "sub": account.client_email,
        "scope": FCM_SCOPE,
        "aud": account.token_uri,
        "iat": now_s,
        "exp": now_s + ASSERTION_LIFETIME_S,
    }


def sign_assertion(account: ServiceAccount, now_s: int) -> str:
    """The RS256-signed assertion (ConfigError when the private key is not a usable RSA key)."""
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    try:
        return jwt.encode(assertion_claims(account, now_s), account.private_key, algorithm="RS256", headers=headers)
    except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
        raise ConfigError(f"the service account's private_key is not a usable RSA key ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float  # monotonic seconds

    def fresh(self, now: float) -> bool:
        return now < self.expires_at - REFRESH_MARGIN_S


def parse_token_answer(status: int, body: bytes) -> tuple[str, float] | str:
    """(access_token, expires_in seconds) from the token endpoint, or why not (its OAuth2 `error`).

    >>> parse_token_answer(200, b'{"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"}')
    ('ya29.x', 3599.0)
    >>> parse_token_answer(400, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}')
    'invalid_grant'
    """
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return f"http_{status}"
    if status == 200 and isinstance(doc.get("access_token"), str) and doc["access_token"]:
        expires_in = doc.get("expires_in", 3600)
        return doc["access_token"], float(expires_in) if isinstance(expires_in, int | float) else 3600.0
    error = doc.get("error")
    return short_reason(error) if isinstance(error, str) else f"http_{status}"


def send_url(base_url: str, project_id: str) -> str:
    return f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"


def message_body(n: Notification) -> dict[str, Any]:
    """The messages:send body. `data` values must be strings (FCM's rule); ours go last and win."""
    data = dict(n.data)
    data.update(idempotency_key=n.idempotency_key, campaign_id=n.campaign_id, decision_id=n.decision_id)
    if n.offer_id is not None:
        data["offer_id"] = n.offer_id
    notification = {"body": n.body}
    if n.title:
        notification["title"] = n.title
    return {"message": {"token": n.to, "notification": notification, "data": data}}


def _error(body: bytes) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(status, errorCode, message, details) of a Google API error body; blanks when absent."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "", "", "", []
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return "", "", "", []
    details = [d for d in err.get("details") or [] if isinstance(d, dict)]
    code = next((str(d["errorCode"]) for d in details if "errorCode" in d), "")
    return str(err.get("status") or ""), code, str(err.get("message") or ""), details


def _about_token(message: str, details: list[dict[str, Any]]) -> bool:
    for d in details:
        for violation in d.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return "registration token" in message.lower()


def classify(status: int, body: bytes, retry_after: str | None = None) -> SendResult:
    """Map one messages:send answer to a SendResult (see the module docstring)."""
    if status == 200:
        try:
            name = json.loads(body).get("name", "")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            name = ""
        return SendResult(Outcome.OK, "ok", status, message_id=str(name))
    api_status, code, message, details = _error(body)
    reason = short_reason(code or api_status or f"http_{status}")
    detail = message[:200]
    if status == 404 or code == "UNREGISTERED":
        return SendResult(Outcome.INVALID_ADDRESS, "unregistered", status, detail=detail)
    if status == 400 and _about_token(message, details):
        return SendResult(Outcome.INVALID_ADDRESS, "invalid_token", status, detail=detail)
    if status in (429, 503):
        return SendResult(Outcome.RETRY, reason, status, retry_after_s=parse_retry_after(retry_after), detail=detail)
    if status >= 500:
        return SendResult(Outcome.RETRY, reason, status, detail=detail)
    return SendResult(Outcome.PERMANENT, reason, status, detail=detail)


class FcmNotifier:
    """Push notifications through FCM HTTP v1 (channel `push`)."""

    channel: Channel = "push"
    provider = "fcm"
    idempotent = False

    def __init__(
        self, session: aiohttp.ClientSession, account: ServiceAccount, *, project_id: str, base_url: str
    ) -> None:
        self._session = session
        self._account = account
        self._url = send_url(base_url, project_id)
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def _access_token(self, *, renew: bool = False) -> str | SendResult:
        async with self._lock:
            now = time.monotonic()
            if self._token is not None and self._token.fresh(now) and not renew:
                return self._token.value
            form = {"grant_type": GRANT_TYPE, "assertion": sign_assertion(self._account, int(time.time()))}
            answer = await post(self._session, self._account.token_uri, data=form)
            if isinstance(answer, SendResult):
                # Nothing reached FCM yet: whatever happened to the token request, a retry is safe.
                return SendResult(Outcome.RETRY, "token_" + answer.reason, detail=answer.detail)
            parsed = parse_token_answer(answer.status, answer.body)
            if isinstance(parsed, str):
                outcome = Outcome.RETRY if answer.status >= 500 or answer.status == 429 else Outcome.PERMANENT
                return SendResult(outcome, f"token_{parsed}", answer.status)
            value, expires_in = parsed
            self._token = AccessToken(value, now + expires_in)
            return value

    async def send(self, notification: Notification) -> SendResult:
        body = json.dumps(message_body(notification)).encode()
        result = await self._send_once(body, renew=False)
        if result.status == 401:
            # The token may have been revoked early: fetch a new one, once.
            result = await self._send_once(body, renew=True)
        return result

    async def _send_once(self, body: bytes, *, renew: bool) -> SendResult:
        token = await self._access_token(renew=renew)
        if isinstance(token, SendResult):
            return token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; UTF-8"}
        answer = await post(self._session, self._url, data=body, headers=headers)
        if isinstance(answer, SendResult):
            return answer
        return classify(answer.status, answer.body, answer.headers.get("retry-after"))

    async def close(self) -> None:
        await self._session.close()
