"""Text from outside (argv, env vars, Redis values) made safe to show on a terminal.

A user id or a stored value may hold a terminal escape (ESC [ 2 J clears the
screen), a newline that forges an extra output line, a bidi override that
reorders what is shown, or an undecodable byte (which Python keeps as a lone
surrogate and cannot print). `printable` escapes exactly those characters,
Python-style, and leaves the rest, accents and emoji included, as they are.

>>> printable("u1\\x1b[2Jx")
'u1\\\\x1b[2Jx'
>>> printable("probe-\\udcff"), printable("line\\nbreak"), printable("café")
('probe-\\\\xff', 'line\\\\nbreak', 'café')
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["printable", "quoted"]

# C0 and C1 controls (DEL among them), bidi embeddings/overrides/isolates, lone surrogates.
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        # surrogateescape's way of keeping an undecodable byte: show the byte itself.
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control characters, bidi overrides and undecodable bytes escaped;
    cut to `limit` characters (an ellipsis marks the cut) when given.

    >>> printable("9" * 100, limit=12)
    '99999999999…'
    """
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _UNSAFE.sub(_escape, text)


def quoted(text: str) -> str:
    """A value from outside for a one-line message: escaped, at most 60 characters, in quotes.

    >>> quoted("probe-\\udcff")
    "'probe-\\\\xff'"
    """
    return f"'{printable(text, limit=60)}'"
