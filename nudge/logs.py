"""Logging set-up with redaction: phone numbers, tokens and secrets never reach a log.

Redaction is by field first: wherever an event (or any JSON from outside) is
shown, `redact_event` masks the values of the fields the contract marks
sensitive, whatever they look like. The log filter's pattern pass (`redact`)
is the safety net for free text.

>>> redact_event({"type": "profile_update", "phone": "+1234567", "push_token": "abc"})
{'type': 'profile_update', 'phone': '+1******', 'push_token': '***'}
>>> redact("sms to +447911123456, {'push_token': 'abcdef'}")
"sms to +44*******456, {'push_token': '***'}"
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "SENSITIVE_FIELDS",
    "RedactingFilter",
    "display_url",
    "mask_phone",
    "redact",
    "redact_event",
    "redact_line",
    "setup_logging",
]

# Field names whose values are personal data or credentials, in events and settings alike.
SENSITIVE_FIELDS = frozenset(
    {"phone", "push_token", "to", "token", "api_key", "apikey", "password", "secret", "authorization", "email"}
)
_MASK = "***"

# A phone number as the contract allows it (E.164: + and 7 to 15 digits), possibly
# spaced or dashed in free text; digits glued to letters or more digits are not one.
_PHONE = re.compile(r"(?<![\w+])\+\d(?:[ \-.]?\d){6,14}(?![\w])")
_SECRET = re.compile(
    # also prefixed names: a client library's `sasl_plain_password`, `ssl_password`, `webhook_secret`
    r"(?i)(?P<name>\b(?:\w+_)?(?:push_token|token|api[_-]?key|password|secret|authorization|phone|email)\b)"
    r"(?P<sep>[\"']?\s*[:=]\s*)(?P<quote>[\"']?)(?P<value>(?:Bearer\s+|Basic\s+)?[^\s\"',}]+)"
)
# Credentials inside a URL (redis://user:password@host): the user and password both go.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]*@")


# Country calling codes of 1 and 2 digits (the rest have 3), to keep a masked number's country.
_CC1 = frozenset({"1", "7"})
_CC2 = frozenset(
    str(code)
    for code in (20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
                 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98)
)  # fmt: skip


def mask_phone(phone: str) -> str:
    """Keep the country code and the last 3 digits (none of a short number); anything not E.164 is fully masked.

    >>> mask_phone("+447911123456")
    '+44*******456'
    >>> mask_phone("+3536399812")
    '+353****812'
    >>> mask_phone("+1234567")
    '+1******'
    >>> mask_phone("0791 112 3456")
    '***'
    """
    if not phone:
        return ""
    digits = "".join(c for c in phone if c.isdigit())
    if not phone.startswith("+") or not 7 <= len(digits) <= 15 or digits[0] == "0":
        return _MASK
    cc_len = 1 if digits[:1] in _CC1 else 2 if digits[:2] in _CC2 else 3
    tail = digits[-3:] if len(digits) >= 10 else ""
    return f"+{digits[:cc_len]}{'*' * (len(digits) - cc_len - len(tail))}{tail}"


def _mask(name: str, value: Any) -> Any:
    if name == "phone" and isinstance(value, str):
        return mask_phone(value)
    return _MASK if value not in (None, "") else value


def redact_event(obj: Any) -> Any:
    """A copy of a decoded JSON value with every sensitive field's value masked, at any depth."""
    if isinstance(obj, dict):
        return {
            k: _mask(k.lower(), v) if isinstance(k, str) and k.lower() in SENSITIVE_FIELDS else redact_event(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact_event(v) for v in obj]
    return obj


def redact_line(raw: bytes | str, limit: int = 200) -> str:
    """A raw input line (an event, usually) fit for a message: fields masked, then cut to `limit` characters.

    A line that is not JSON gets the pattern pass; undecodable bytes show as \\x.. escapes.
    """
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    try:
        shown = orjson.dumps(redact_event(orjson.loads(text))).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        shown = text
    shown = redact(shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def redact(text: str) -> str:
    """Mask phone numbers, `name=value` / `"name": "value"` secrets and URL credentials in free text."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{_MASK}@", text)
    text = _SECRET.sub(lambda m: f"{m['name']}{m['sep']}{m['quote']}{_MASK}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def display_url(url: str) -> str:
    """The URL without its credentials, fit for messages and logs.

    >>> display_url("redis://:s3cret@cache:6379/0")
    'redis://***@cache:6379/0'
    >>> display_url("kafka1:9092,kafka2:9092")
    'kafka1:9092,kafka2:9092'
    """
    try:
        parts = urlsplit(url)
        secret = parts.password is not None or parts.username is not None
    except ValueError:  # e.g. a bad port: show no more than the scheme
        return url.split("://", 1)[0] + "://***" if "@" in url else url
    if not secret:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class RedactingFilter(logging.Filter):
    """Rewrites every record's message (and exception text) through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
