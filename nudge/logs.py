"""Logging set-up with redaction: phone numbers and tokens never reach a log.

>>> redact("sms to +447911123456 token=abcdef0123456789abcdef")
'sms to +44*******456 token=***'
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RedactingFilter", "display_url", "redact", "setup_logging"]

_PHONE = re.compile(r"\+(\d{2})\d{4,10}(\d{3})\b")
_SECRET = re.compile(
    r"(?i)\b(token|api[_-]?key|push_token|password|secret|authorization)(\"?\s*[:=]\s*\"?)([^\s\"',}]+)"
)


def redact(text: str) -> str:
    """Mask phone numbers (keep country code and last 3 digits) and secrets."""
    text = _PHONE.sub(lambda m: f"+{m.group(1)}*******{m.group(2)}", text)
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def display_url(url: str) -> str:
    """The URL without its credentials, fit for messages and logs.

    >>> display_url("redis://:s3cret@cache:6379/0")
    'redis://***@cache:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class RedactingFilter(logging.Filter):
    """Rewrites every record's message through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
