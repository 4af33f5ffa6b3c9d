"""`nudge mock-providers`: FCM, Google OAuth2, Twilio and a webhook receiver on one local port.

It speaks the real wire formats and checks requests the way the real APIs
do, answering with their error shapes, so the delivery adapters are tested
against the protocol, not against themselves:

| endpoint                                          | checks |
|---------------------------------------------------|--------|
| `POST /token`                                     | the RS256 JWT assertion's signature (the service account's public key), `aud`, `exp`, `iat`, `scope`, the grant type |
| `POST /v1/projects/{p}/messages:send`             | a Bearer token this server issued and not expired; the project; the message's JSON shape (one target, string data values, reserved data keys) |
| `POST /2010-04-01/Accounts/{sid}/Messages.json`   | basic auth; form fields `To` (E.164), `Body`, `From` or `MessagingServiceSid`; `I-Twilio-Idempotency-Token`: a repeated token gets the first answer and sends nothing |
| `POST /webhook`                                   | `X-Nudge-Signature` (HMAC-SHA256 of `<timestamp>.<body>`), `X-Nudge-Timestamp` within 5 minutes, `Idempotency-Key`: a repeated key is not delivered twice |

Every message delivered is appended as one JSON line to
`<NUDGE_DATA_DIR>/mock-provider/deliveries.jsonl` (flushed per line):
`provider`, `to`, `idempotency_key`, `title`, `body`, `data`, `received_at` (ms).

Failing on demand: `POST /_mock/faults` with
`{"provider": "fcm"|"twilio"|"webhook", "mode": "5xx"|"429"|"timeout"|"unregistered", "count": N, "retry_after": S}`
queues N failures for the provider's next requests (`GET` lists them,
`DELETE` clears them); `--fail-rate` fails a fraction of all sends with a
5xx, drawn from `--seed` so a run repeats. Fixed test addresses fail too:
FCM tokens starting `unregistered-` (404 UNREGISTERED) or `invalid-` (400
INVALID_ARGUMENT), Twilio's magic numbers +15005550001 (21211, invalid) and
+15005550009 (21614, not a mobile number).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import jwt
from aiohttp import web

from delivery.credentials import public_key_pem, write_service_account
from delivery.fcm import FCM_SCOPE, GRANT_TYPE
from delivery.twilio import IDEMPOTENCY_HEADER
from delivery.webhook import verify
from nudge.args import input_file, number, output_file, port, seed
from nudge.errors import ConfigError, UsageError
from nudge.settings import Settings
from nudge.text import quoted

__all__ = [
    "FAULT_MODES",
    "PROVIDERS",
    "Fault",
    "MockConfig",
    "MockProviders",
    "configure",
    "create_app",
    "parse_fault",
    "run",
    "validate_fcm_message",
    "validate_twilio_form",
]

PROVIDERS: Final = ("fcm", "twilio", "webhook")
FAULT_MODES: Final = ("5xx", "429", "timeout", "unregistered")
TOKEN_LIFETIME_S: Final = 3_600
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_RESERVED_DATA = ("from", "notification", "message_type")
_MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition"}
)
_TWILIO_INVALID = "+15005550001"
_TWILIO_NOT_MOBILE = "+15005550009"


@dataclass(slots=True)
class Fault:
    provider: str
    mode: str
    count: int
    retry_after: float = 1.0


def parse_fault(doc: Any) -> Fault | str:
    """A fault request from the control endpoint, or what is wrong with it.

    >>> parse_fault({"provider": "fcm", "mode": "429", "count": 2, "retry_after": 1.5})
    Fault(provider='fcm', mode='429', count=2, retry_after=1.5)
    >>> parse_fault({"provider": "sns", "mode": "5xx"})
    "provider must be one of fcm, twilio, webhook, got 'sns'"
    """
    if not isinstance(doc, dict):
        return "expected a JSON object"
    provider, mode = doc.get("provider"), doc.get("mode")
    if provider not in PROVIDERS:
        return f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}"
    if mode not in FAULT_MODES:
        return f"mode must be one of {', '.join(FAULT_MODES)}, got {mode!r}"
    count = doc.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1_000_000:
        return f"count must be an integer 1..1000000, got {count!r}"
    retry_after = doc.get("retry_after", 1.0)
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or not 0 <= retry_after <= 3600:
        return f"retry_after must be a number of seconds 0..3600, got {retry_after!r}"
    return Fault(str(provider), str(mode), count, float(retry_after))


def _google_error(code: int, status: str, message: str, error_code: str = "", **extra: Any) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
    if extra.get("field"):
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": extra["field"], "description": message}],
            }
        )
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return {"error": body}


def validate_fcm_message(doc: Any) -> tuple[int, dict[str, Any]] | None:
    """None when the messages:send body is one FCM accepts, else (status, Google error body).

    >>> validate_fcm_message({"message": {"token": "t", "data": {"n": 1}}})[0]
    400
    >>> validate_fcm_message({"message": {"token": "t", "notification": {"title": "a", "body": "b"}}}) is None
    True
    """

    def bad(message: str, field: str = "") -> tuple[int, dict[str, Any]]:
        return 400, _google_error(400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT", field=field)

    if not isinstance(doc, dict) or not isinstance(doc.get("message"), dict):
        return bad("Invalid JSON payload received. 'message' is required.")
    if set(doc) - {"message", "validate_only"}:
        return bad(
            f'Invalid JSON payload received. Unknown name "{sorted(set(doc) - {"message", "validate_only"})[0]}"'
        )
    message = doc["message"]
    unknown = set(message) - _MESSAGE_FIELDS
    if unknown:
        return bad(f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'message'")
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        return bad("Exactly one of token, topic or condition must be specified", "message")
    token = message.get("token")
    if "token" in message and (not isinstance(token, str) or not token):
        return bad("The registration token is not a valid FCM registration token", "message.token")
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or any(
        k not in ("title", "body", "image") or not isinstance(v, str) for k, v in notification.items()
    ):
        return bad("Invalid value at 'message.notification'", "message.notification")
    data = message.get("data", {})
    if not isinstance(data, dict):
        return bad("Invalid value at 'message.data'", "message.data")
    for key, value in data.items():
        if not isinstance(value, str):
            return bad(f"Invalid value at 'message.data[{key}].value' (TYPE_STRING)", f"message.data[{key}].value")
        if key in _RESERVED_DATA or key.startswith(("google", "gcm")):
            return bad(f"Invalid data payload key: {key}", "message.data")
    if isinstance(token, str) and token.startswith("invalid-"):
        return bad("The registration token is not a valid FCM registration token", "message.token")
    if isinstance(token, str) and token.startswith("unregistered-"):
        return 404, _google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
    return None


def _twilio_error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def validate_twilio_form(form: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
    """None when Twilio would take the Messages.json form, else (status, Twilio error body).

    >>> validate_twilio_form({"To": "+447911123456", "From": "+15005550006", "Body": "hi"}) is None
    True
    >>> validate_twilio_form({"To": "07911 123456", "From": "+15005550006", "Body": "hi"})[1]["code"]
    21211
    """
    to = form.get("To", "")
    if not to:
        return _twilio_error(400, 21604, "A 'To' phone number is required.")
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return _twilio_error(400, 21603, "A 'From' phone number is required.")
    service = form.get("MessagingServiceSid", "")
    if service and not re.fullmatch(r"MG[0-9a-fA-F]{2,32}", service):
        return _twilio_error(400, 21701, "The Messaging Service Sid is invalid.")
    body = form.get("Body", "")
    if not body:
        return _twilio_error(400, 21602, "Message body is required.")
    if len(body) > 1600:
        return _twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
    if not _E164.fullmatch(to) or to == _TWILIO_INVALID:
        return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if to == _TWILIO_NOT_MOBILE:
        return _twilio_error(400, 21614, f"'To' number {to} is not a valid mobile number")
    return None


@dataclass(slots=True)
class MockConfig:
    deliveries: Path
    public_key: bytes | None = None
    token_uri: str = ""  # the expected `aud`; empty: any URL ending in /token
    fcm_project: str = ""  # empty: any project
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    webhook_secret: str = ""
    fail_rate: float = 0.0
    seed: int = 0
    fault_timeout_s: float = 30.0


@dataclass
class MockProviders:
    """The server's state: issued tokens, queued faults, idempotency memories, the deliveries file."""

    config: MockConfig
    tokens: dict[str, float] = field(default_factory=dict)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: {p: deque() for p in PROVIDERS})
    twilio_answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    webhook_answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    delivered: int = 0
    deduplicated: int = 0  # repeated idempotency keys answered without a second delivery
    _rng: random.Random = field(init=False)
    _out: IO[str] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)

    def open(self) -> None:
        self.config.deliveries.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.config.deliveries.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def record(self, provider: str, *, to: str, key: str, title: str, body: str, data: dict[str, Any]) -> None:
        line = {
            "provider": provider,
            "to": to,
            "idempotency_key": key,
            "title": title,
            "body": body,
            "data": data,
            "received_at": int(time.time() * 1000),
        }
        if self._out is None:
            self.open()
        assert self._out is not None
        self._out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._out.flush()
        self.delivered += 1

    def take_fault(self, provider: str) -> Fault | None:
        queue = self.faults[provider]
        if queue:
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.popleft()
            return Fault(provider, fault.mode, 1, fault.retry_after)
        if self.config.fail_rate > 0 and self._rng.random() < self.config.fail_rate:
            return Fault(provider, "5xx", 1)
        return None


_KEY: Final = web.AppKey("mock", MockProviders)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def _fault_response(state: MockProviders, fault: Fault) -> web.Response:
    """The provider's own answer for a fault (a time-out first sleeps past any sane client)."""
    p, mode = fault.provider, fault.mode
    retry = {"Retry-After": f"{fault.retry_after:g}"}
    if mode == "timeout":
        await asyncio.sleep(state.config.fault_timeout_s)
        return _json(504, {"error": "gateway timeout"})
    if p == "fcm":
        if mode == "5xx":
            return _json(500, _google_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL"))
        if mode == "429":
            return _json(429, _google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED"), retry)
        return _json(404, _google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"))
    if p == "twilio":
        if mode == "5xx":
            return _json(*_twilio_error(500, 20500, "Internal Server Error"))
        if mode == "429":
            return _json(*_twilio_error(429, 20429, "Too Many Requests"), retry)
        return _json(*_twilio_error(400, 21211, "The 'To' number is not a valid phone number."))
    if mode == "5xx":
        return _json(500, {"error": "internal"})
    if mode == "429":
        return _json(429, {"error": "slow down"}, retry)
    return _json(410, {"error": "gone"})


async def token(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    form = await request.post()

    def refuse(description: str, error: str = "invalid_grant") -> web.Response:
        return _json(400, {"error": error, "error_description": description})

    if form.get("grant_type") != GRANT_TYPE:
        return refuse("Invalid grant_type", "unsupported_grant_type")
    assertion = form.get("assertion")
    if not isinstance(assertion, str) or not assertion:
        return refuse("Missing required parameter: assertion", "invalid_request")
    if state.config.public_key is None:
        return refuse("the mock has no public key: start it with --credentials or --public-key")
    try:
        claims = jwt.decode(
            assertion,
            state.config.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "require": ["iss", "aud", "iat", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
    except jwt.InvalidTokenError:
        return refuse("Invalid JWT Signature.")
    aud = str(claims.get("aud"))
    if (state.config.token_uri and aud != state.config.token_uri) or not aud.endswith("/token"):
        return refuse("Invalid JWT: Failed audience check.")
    if int(claims["exp"]) - int(claims["iat"]) > TOKEN_LIFETIME_S or int(claims["iat"]) > time.time() + 300:
        return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
    if FCM_SCOPE not in str(claims.get("scope", "")).split():
        return refuse("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
    access = "ya29.mock-" + secrets.token_urlsafe(24)
    state.tokens[access] = time.time() + TOKEN_LIFETIME_S
    return _json(200, {"access_token": access, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer"})


async def fcm_send(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    project = request.match_info["project"]
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:] if auth.startswith("Bearer ") else ""
    if state.tokens.get(bearer, 0.0) <= time.time():
        return _json(
            401,
            _google_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", "THIRD_PARTY_AUTH_ERROR"
            ),
        )
    if state.config.fcm_project and project != state.config.fcm_project:
        return _json(403, _google_error(403, "PERMISSION_DENIED", f"Permission denied on project {project}."))
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json(400, _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
    problem = validate_fcm_message(doc)
    if problem is not None:
        return _json(*problem)
    fault = state.take_fault("fcm")
    if fault is not None:
        return await _fault_response(state, fault)
    message = doc["message"]
    data = message.get("data", {})
    notification = message.get("notification", {})
    state.record(
        "fcm",
        to=message.get("token") or message.get("topic") or message.get("condition"),
        key=data.get("idempotency_key", ""),
        title=notification.get("title", ""),
        body=notification.get("body", ""),
        data=data,
    )
    return _json(200, {"name": f"projects/{project}/messages/{uuid.uuid4().int % 10**19}"})


async def twilio_send(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    sid = request.match_info["sid"]
    try:
        user, password = _basic_auth(request.headers.get("Authorization", ""))
    except ValueError:
        return _json(*_twilio_error(401, 20003, "Authenticate"))
    expected_sid, expected_token = state.config.twilio_account_sid, state.config.twilio_auth_token
    if user != sid or (expected_sid and user != expected_sid) or (expected_token and password != expected_token):
        return _json(*_twilio_error(401, 20003, "Authenticate"))
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    problem = validate_twilio_form(form)
    if problem is not None:
        return _json(*problem)
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if key and key in state.twilio_answers:
        state.deduplicated += 1
        return _json(*state.twilio_answers[key])
    fault = state.take_fault("twilio")
    if fault is not None:
        return await _fault_response(state, fault)
    state.record("twilio", to=form["To"], key=key, title="", body=form["Body"], data={})
    message_sid = "SM" + uuid.uuid4().hex
    answer = (
        201,
        {
            "sid": message_sid,
            "account_sid": sid,
            "to": form["To"],
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form["Body"],
            "status": "queued",
            "num_segments": "1",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
        },
    )
    if key:
        state.twilio_answers[key] = answer
    return _json(*answer)


def _basic_auth(header: str) -> tuple[str, str]:
    import base64

    if not header.startswith("Basic "):
        raise ValueError("no basic auth")
    user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    if not sep or not user:
        raise ValueError("malformed basic auth")
    return user, password


async def webhook_receive(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    body = await request.read()
    if not state.config.webhook_secret:
        return _json(401, {"error": "the mock has no webhook secret: start it with --webhook-secret"})
    problem = verify(
        state.config.webhook_secret,
        request.headers.get("X-Nudge-Timestamp", ""),
        body,
        request.headers.get("X-Nudge-Signature", ""),
        now_s=time.time(),
    )
    if problem is not None:
        return _json(401, {"error": problem})
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return _json(400, {"error": "Idempotency-Key header is required"})
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json(400, {"error": "body is not JSON"})
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), str):
        return _json(400, {"error": "expected a JSON object with a string 'body'"})
    if key in state.webhook_answers:
        state.deduplicated += 1
        return _json(*state.webhook_answers[key])
    fault = state.take_fault("webhook")
    if fault is not None:
        return await _fault_response(state, fault)
    data = doc["data"] if isinstance(doc.get("data"), dict) else {}
    state.record(
        "webhook", to=str(doc.get("to", "")), key=key, title=str(doc.get("title", "")), body=doc["body"], data=data
    )
    answer = (200, {"id": "wh_" + uuid.uuid4().hex})
    state.webhook_answers[key] = answer
    return _json(*answer)


async def faults(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    if request.method == "DELETE":
        for queue in state.faults.values():
            queue.clear()
        return _json(200, {"faults": []})
    if request.method == "POST":
        try:
            doc = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(400, {"error": "body is not JSON"})
        fault = parse_fault(doc)
        if isinstance(fault, str):
            return _json(400, {"error": fault})
        state.faults[fault.provider].append(fault)
    listed = [
        {"provider": f.provider, "mode": f.mode, "count": f.count, "retry_after": f.retry_after}
        for queue in state.faults.values()
        for f in queue
    ]
    return _json(200, {"faults": listed})


async def health(request: web.Request) -> web.Response:
    state = request.app[_KEY]
    return _json(200, {"ok": True, "delivered": state.delivered, "deduplicated": state.deduplicated})


def create_app(state: MockProviders) -> web.Application:
    app = web.Application()
    app[_KEY] = state
    app.router.add_post("/token", token)
    app.router.add_post(r"/v1/projects/{project}/messages:send", fcm_send)
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", twilio_send)
    app.router.add_post("/webhook", webhook_receive)
    app.router.add_route("*", "/_mock/faults", faults)
    app.router.add_get("/_mock/health", health)
    return app


def deliveries_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "mock-provider" / "deliveries.jsonl"


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Local FCM (with Google's OAuth2 token endpoint), Twilio and webhook endpoints on one port,\n"
        "speaking the real wire formats, validating like the real APIs, failing on demand.\n"
        "Every delivered message is one JSON line in <NUDGE_DATA_DIR>/mock-provider/deliveries.jsonl."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address [default: 127.0.0.1]")
    parser.add_argument("--port", type=port, help="port [default: NUDGE_MOCK_PROVIDERS_PORT]")
    parser.add_argument(
        "--credentials",
        type=input_file,
        metavar="FILE",
        help="service-account JSON whose key verifies token requests [default: NUDGE_FCM_CREDENTIALS_PATH]",
    )
    parser.add_argument("--public-key", type=input_file, metavar="PEM", help="or: the public key itself (PEM)")
    parser.add_argument(
        "--fcm-project", help="the only FCM project accepted [default: NUDGE_FCM_PROJECT_ID; empty: any]"
    )
    parser.add_argument(
        "--fail-rate",
        type=number(0, 1),
        default=0.0,
        metavar="F",
        help="fail this fraction of sends with a 5xx, drawn from --seed [default: 0]",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the --fail-rate draws [default: 0]")
    parser.add_argument(
        "--fault-timeout-s",
        type=number(0, 3600),
        default=30.0,
        metavar="S",
        help="how long a 'timeout' fault holds the request before answering 504 [default: 30]",
    )
    parser.add_argument(
        "--make-credentials",
        type=output_file,
        metavar="FILE",
        help="write a throwaway service-account JSON (fresh RSA key, token_uri at this mock) and exit",
    )
    parser.add_argument(
        "--project",
        type=_project_id,
        default="nudge-local",
        help="project_id written by --make-credentials [default: nudge-local]",
    )
    parser.epilog = (
        "examples:\n"
        "  nudge mock-providers --make-credentials sa.json\n"
        "  nudge mock-providers --credentials sa.json --fcm-project nudge-local --fail-rate 0.1 --seed 7\n"
        "  curl -X POST localhost:8090/_mock/faults \\\n"
        '       -d \'{"provider": "twilio", "mode": "429", "count": 2, "retry_after": 3}\'\n'
        "  curl localhost:8090/_mock/faults        # queued faults;  curl -X DELETE ... clears them\n\n"
        "fault modes: 5xx (FCM 500 INTERNAL, Twilio 20500, webhook 500), 429 (with Retry-After),\n"
        "timeout (holds the request --fault-timeout-s, then 504), unregistered (FCM 404 UNREGISTERED,\n"
        "Twilio 21211, webhook 410). Fixed failing addresses: FCM tokens 'unregistered-...' and\n"
        "'invalid-...'; Twilio To +15005550001 (21211) and +15005550009 (21614).\n"
        "Twilio basic auth and the webhook secret are checked against the settings below\n"
        "(an empty Twilio SID or token accepts any).\n\n"
        + settings_epilog(
            "mock_providers_port",
            "fcm_credentials_path",
            "fcm_project_id",
            "twilio_account_sid",
            "twilio_auth_token",
            "webhook_secret",
            "data_dir",
        )
    )
    parser.set_defaults(func=run)


def _project_id(text: str) -> str:
    # Google's rule for project ids: 6-30 lower-case letters, digits and hyphens, a letter first.
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", text):
        raise argparse.ArgumentTypeError(f"expected a Google project id (6-30 of a-z, 0-9, -), got {quoted(text)}")
    return text


def _public_key(args: argparse.Namespace, settings: Settings) -> tuple[bytes | None, str]:
    """(public key PEM, expected token_uri) from --public-key, --credentials or the settings."""
    if args.public_key is not None:
        return Path(args.public_key).read_bytes(), ""
    path = args.credentials or (Path(settings.fcm_credentials_path) if settings.fcm_credentials_path else None)
    if path is None:
        return None, ""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return public_key_pem(doc["private_key"]), str(doc.get("token_uri", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"--credentials {path}: not a service-account JSON with a private_key ({type(exc).__name__})"
        ) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    listen_port: int = args.port or settings.mock_providers_port
    if args.make_credentials is not None:
        token_uri = f"http://127.0.0.1:{listen_port}/token"
        write_service_account(Path(args.make_credentials), token_uri=token_uri, project_id=args.project)
        print(f"nudge mock-providers: wrote {args.make_credentials} (project {args.project}, token_uri {token_uri})")
        return 0
    public_key, token_uri = _public_key(args, settings)
    config = MockConfig(
        deliveries=deliveries_path(settings),
        public_key=public_key,
        token_uri=token_uri,
        fcm_project=settings.fcm_project_id if args.fcm_project is None else args.fcm_project,
        twilio_account_sid=settings.twilio_account_sid,
        twilio_auth_token=settings.twilio_auth_token,
        webhook_secret=settings.webhook_secret,
        fail_rate=args.fail_rate,
        seed=args.seed,
        fault_timeout_s=args.fault_timeout_s,
    )
    state = MockProviders(config)
    state.open()

    def listening(_message: str) -> None:
        print(
            f"nudge mock-providers: listening on http://{args.host}:{listen_port} "
            f"(token /token, FCM /v1/projects/*/messages:send, Twilio /2010-04-01/Accounts/*/Messages.json, "
            f"webhook /webhook, faults /_mock/faults); deliveries -> {config.deliveries}",
            file=sys.stderr,
            flush=True,
        )

    try:
        web.run_app(create_app(state), host=args.host, port=listen_port, print=listening, access_log=None)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise ConfigError(f"cannot listen on {args.host}:{listen_port}: {exc.strerror or exc}") from None
    finally:
        state.close()
    return 0
