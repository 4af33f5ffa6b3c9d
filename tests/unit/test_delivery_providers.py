"""Provider adapters without a network: request building, answer classification, the OAuth2 flow.

The adapters get a fake aiohttp session (a scripted transport, like
httpx.MockTransport) that records each request and plays back answers.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from delivery import fcm, twilio, webhook
from delivery.credentials import public_key_pem, write_service_account
from delivery.results import Outcome, from_exception
from nudge.errors import ConfigError
from nudge.notifications import Notification


def note(channel: str = "push", to: str = "tok-abc", **kw: Any) -> Notification:
    fields: dict[str, Any] = dict(
        idempotency_key="k" * 32,
        decision_id="d1",
        user_id="u1",
        rule="welcome",
        variant="a",
        channel=channel,
        to=to,
        title="Hi",
        body="Welcome!",
        campaign_id="welcome",
        decided_at=1,
        send_at=1,
        expires_at=2,
    )
    fields.update(kw)
    return Notification(**fields)


class _Resp:
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self._body = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def read(self) -> bytes:
        return self._body

    async def __aenter__(self) -> _Resp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """Plays back scripted answers (or raises scripted exceptions) and records every request."""

    def __init__(self, *answers: _Resp | BaseException) -> None:
        self.answers = deque(answers)
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def post(self, url: str, **kw: Any) -> _Resp:
        self.requests.append((url, kw))
        answer = self.answers.popleft()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def close(self) -> None:
        return None


# --- FCM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sa") / "sa.json"
    write_service_account(path, token_uri="http://mock/token", project_id="nudge-local")
    return path


def test_service_account_file_is_private_and_loads(account_file: Path) -> None:
    assert account_file.stat().st_mode & 0o077 == 0
    account = fcm.load_service_account(account_file)
    assert account.token_uri == "http://mock/token" and account.client_email.endswith(".iam.gserviceaccount.com")


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "no such file"), ("[1]", "expected a JSON object"), ('{"client_email": "a"}', "missing private_key, token_uri"),
     ("{", "not a readable service-account JSON")],
)  # fmt: skip
def test_bad_service_account_files(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=says):
        fcm.load_service_account(path)


def test_assertion_is_rs256_signed_for_the_token_endpoint(account_file: Path) -> None:
    account = fcm.load_service_account(account_file)
    now = int(time.time())
    token = fcm.sign_assertion(account, now)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, public_key_pem(account.private_key), algorithms=["RS256"], audience="http://mock/token")
    assert claims["iss"] == account.client_email
    assert claims["scope"] == fcm.FCM_SCOPE
    assert claims["exp"] - claims["iat"] == 3600


def test_message_body_carries_the_keys_the_app_reports_back() -> None:
    body = fcm.message_body(note(data={"deeplink": "app://x", "campaign_id": "spoofed"}, offer_id="o9"))
    message = body["message"]
    assert message["token"] == "tok-abc"
    assert message["notification"] == {"title": "Hi", "body": "Welcome!"}
    assert message["data"] == {
        "deeplink": "app://x",
        "campaign_id": "welcome",  # ours win over a data key of the same name
        "idempotency_key": "k" * 32,
        "decision_id": "d1",
        "offer_id": "o9",
    }
    assert all(isinstance(v, str) for v in message["data"].values())
    assert "title" not in fcm.message_body(note(title=""))["message"]["notification"]


def _google(code: int, status: str, error_code: str = "", message: str = "", field: str = "") -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
    if field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": field}]})
    return {"error": {"code": code, "status": status, "message": message, "details": details}}


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "outcome", "reason", "wait"),
    [
        (200, {"name": "projects/p/messages/1"}, None, Outcome.OK, "ok", None),
        (404, _google(404, "NOT_FOUND", "UNREGISTERED"), None, Outcome.INVALID_ADDRESS, "unregistered", None),
        (400, _google(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="message.token"), None,
         Outcome.INVALID_ADDRESS, "invalid_token", None),
        (400, _google(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
         None, Outcome.INVALID_ADDRESS, "invalid_token", None),
        (400, _google(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid data payload key: from", "message.data"),
         None, Outcome.PERMANENT, "invalid_argument", None),
        (429, _google(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "12", Outcome.RETRY, "quota_exceeded", 12.0),
        (503, _google(503, "UNAVAILABLE", "UNAVAILABLE"), "3", Outcome.RETRY, "unavailable", 3.0),
        (500, _google(500, "INTERNAL", "INTERNAL"), None, Outcome.RETRY, "internal", None),
        (502, b"<html>bad gateway</html>", None, Outcome.RETRY, "http_502", None),
        (403, _google(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), None, Outcome.PERMANENT, "sender_id_mismatch", None),
    ],
)  # fmt: skip
def test_fcm_answers(
    status: int, body: Any, retry_after: str | None, outcome: Outcome, reason: str, wait: float | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = fcm.classify(status, raw, retry_after)
    assert (result.outcome, result.reason, result.retry_after_s) == (outcome, reason, wait)
    if outcome is Outcome.OK:
        assert result.message_id == "projects/p/messages/1"


def _token_answer(value: str = "ya29.one", expires_in: int = 3600) -> _Resp:
    return _Resp(200, {"access_token": value, "expires_in": expires_in, "token_type": "Bearer"})


async def test_fcm_fetches_a_token_once_and_caches_it(account_file: Path) -> None:
    session = FakeSession(_token_answer(), _Resp(200, {"name": "m1"}), _Resp(200, {"name": "m2"}))
    notifier = fcm.FcmNotifier(session, fcm.load_service_account(account_file), project_id="p1", base_url="http://fcm/")  # type: ignore[arg-type]
    assert (await notifier.send(note())).message_id == "m1"
    assert (await notifier.send(note())).message_id == "m2"
    urls = [url for url, _ in session.requests]
    assert urls == [
        "http://mock/token",
        "http://fcm/v1/projects/p1/messages:send",
        "http://fcm/v1/projects/p1/messages:send",
    ]
    form = session.requests[0][1]["data"]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert session.requests[1][1]["headers"]["Authorization"] == "Bearer ya29.one"
    assert json.loads(session.requests[1][1]["data"])["message"]["token"] == "tok-abc"


async def test_fcm_refreshes_a_token_close_to_expiry(account_file: Path) -> None:
    session = FakeSession(_token_answer("a", expires_in=30), _Resp(200, {}), _token_answer("b"), _Resp(200, {}))
    notifier = fcm.FcmNotifier(session, fcm.load_service_account(account_file), project_id="p", base_url="http://fcm")  # type: ignore[arg-type]
    await notifier.send(note())
    await notifier.send(note())  # 30 s left is inside the refresh margin
    assert [r[1]["headers"]["Authorization"] for r in session.requests if "headers" in r[1]] == ["Bearer a", "Bearer b"]


async def test_fcm_401_refreshes_the_token_once(account_file: Path) -> None:
    unauth = _Resp(401, _google(401, "UNAUTHENTICATED"))
    session = FakeSession(_token_answer("old"), unauth, _token_answer("new"), _Resp(200, {"name": "m"}))
    notifier = fcm.FcmNotifier(session, fcm.load_service_account(account_file), project_id="p", base_url="http://fcm")  # type: ignore[arg-type]
    assert (await notifier.send(note())).ok
    session = FakeSession(_token_answer("old"), unauth, _token_answer("new"), unauth)
    notifier = fcm.FcmNotifier(session, fcm.load_service_account(account_file), project_id="p", base_url="http://fcm")  # type: ignore[arg-type]
    result = await notifier.send(note())
    assert result.outcome is Outcome.PERMANENT and result.status == 401 and len(session.requests) == 4


async def test_fcm_token_endpoint_failures_never_reach_fcm(account_file: Path) -> None:
    account = fcm.load_service_account(account_file)
    refused = FakeSession(_Resp(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}))
    result = await fcm.FcmNotifier(refused, account, project_id="p", base_url="http://fcm").send(note())  # type: ignore[arg-type]
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, "token_invalid_grant")
    down = FakeSession(TimeoutError())
    result = await fcm.FcmNotifier(down, account, project_id="p", base_url="http://fcm").send(note())  # type: ignore[arg-type]
    # A time-out on the token request is not ambiguous: no push was sent yet.
    assert (result.outcome, result.reason) == (Outcome.RETRY, "token_timeout")
    assert len(refused.requests) == len(down.requests) == 1


def test_network_failures_are_told_apart() -> None:
    refused = aiohttp.ClientConnectorError(connection_key=None, os_error=OSError(111, "refused"))  # type: ignore[arg-type]
    assert from_exception(refused).outcome is Outcome.RETRY
    assert from_exception(TimeoutError()).outcome is Outcome.AMBIGUOUS
    assert from_exception(aiohttp.ServerDisconnectedError()).outcome is Outcome.AMBIGUOUS
    with pytest.raises(KeyError):
        from_exception(KeyError("a bug is not a network failure"))


# --- Twilio ------------------------------------------------------------------------------------


def test_twilio_form_from_number_or_messaging_service() -> None:
    n = note("sms", "+447911123456")
    assert twilio.message_form(n, "+15005550006") == {"To": "+447911123456", "Body": "Welcome!", "From": "+15005550006"}
    assert twilio.message_form(n, "MGabc")["MessagingServiceSid"] == "MGabc"
    assert (
        twilio.messages_url("https://api.twilio.com/", "AC1")
        == "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
    )


def _tw(code: int, status: int) -> bytes:
    return json.dumps({"code": code, "message": "m", "more_info": "", "status": status}).encode()


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "outcome", "reason"),
    [
        (201, json.dumps({"sid": "SM1", "status": "queued"}).encode(), None, Outcome.OK, "ok"),
        (400, _tw(21211, 400), None, Outcome.INVALID_ADDRESS, "invalid_number"),
        (400, _tw(21614, 400), None, Outcome.INVALID_ADDRESS, "invalid_number"),
        (400, _tw(21602, 400), None, Outcome.PERMANENT, "twilio_21602"),
        (401, _tw(20003, 401), None, Outcome.PERMANENT, "twilio_20003"),
        (429, _tw(20429, 429), "2", Outcome.RETRY, "twilio_20429"),
        (500, _tw(20500, 500), None, Outcome.RETRY, "twilio_20500"),
        (503, b"", None, Outcome.RETRY, "http_503"),
    ],
)
def test_twilio_answers(status: int, body: bytes, retry_after: str | None, outcome: Outcome, reason: str) -> None:
    result = twilio.classify(status, body, retry_after)
    assert (result.outcome, result.reason) == (outcome, reason)
    assert result.retry_after_s == (2.0 if retry_after else None)


async def test_twilio_request_has_basic_auth_and_the_idempotency_token() -> None:
    session = FakeSession(_Resp(201, {"sid": "SM9"}))
    notifier = twilio.TwilioNotifier(
        session, base_url="http://tw", account_sid="AC1", auth_token="t0k", sender="+15005550006"
    )  # type: ignore[arg-type]
    result = await notifier.send(note("sms", "+447911123456"))
    assert result.ok and result.message_id == "SM9" and notifier.idempotent
    _url, kw = session.requests[0]
    assert kw["headers"]["I-Twilio-Idempotency-Token"] == "k" * 32
    assert base64.b64decode(kw["headers"]["Authorization"].removeprefix("Basic ")).decode() == "AC1:t0k"
    assert kw["data"]["To"] == "+447911123456"


# --- webhook -----------------------------------------------------------------------------------


def test_webhook_signature_covers_timestamp_and_body() -> None:
    n = note("webhook", "u1")
    body = webhook.payload(n)
    headers = webhook.signed_headers("s3cret", n, body, 1_700_000_000)
    assert headers["Idempotency-Key"] == "k" * 32
    assert (
        webhook.verify("s3cret", headers["X-Nudge-Timestamp"], body, headers["X-Nudge-Signature"], now_s=1_700_000_010)
        is None
    )
    assert (
        webhook.verify("other", headers["X-Nudge-Timestamp"], body, headers["X-Nudge-Signature"], now_s=1_700_000_010)
        == "bad signature"
    )
    # The same signature under another timestamp is refused: it cannot be replayed later.
    assert (
        webhook.verify("s3cret", "1700000300", body, headers["X-Nudge-Signature"], now_s=1_700_000_300)
        == "bad signature"
    )
    assert webhook.verify("s3cret", "x", body, headers["X-Nudge-Signature"], now_s=0) == "timestamp is not an integer"
    doc = json.loads(body)
    assert doc["idempotency_key"] == "k" * 32 and doc["body"] == "Welcome!" and doc["user_id"] == "u1"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.OK), (204, Outcome.OK), (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY),
     (410, Outcome.INVALID_ADDRESS), (400, Outcome.PERMANENT), (401, Outcome.PERMANENT)],
)  # fmt: skip
def test_webhook_answers(status: int, outcome: Outcome) -> None:
    assert webhook.classify(status, b"").outcome is outcome


async def test_webhook_request_is_signed() -> None:
    session = FakeSession(_Resp(200, {"id": "wh_1"}))
    notifier = webhook.WebhookNotifier(session, url="http://hook/in", secret="s3cret")  # type: ignore[arg-type]
    assert (await notifier.send(note("webhook", "u1"))).message_id == "wh_1"
    _url, kw = session.requests[0]
    h = kw["headers"]
    assert (
        webhook.verify("s3cret", h["X-Nudge-Timestamp"], kw["data"], h["X-Nudge-Signature"], now_s=time.time()) is None
    )
