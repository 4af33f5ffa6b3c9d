"""Signed, versioned model snapshots: what the trainer publishes and scorers load.

A snapshot is a pickle (River models are plain Python objects and pickle is
how River itself round-trips them), and unpickling runs code chosen by whoever
wrote the bytes. So a blob is authenticated with HMAC-SHA256 under a shared
key *before* anything in it is parsed, let alone unpickled; a blob that fails
any check raises `SnapshotRefused(reason)` and is never unpickled.

Layout (all integers big-endian)::

    offset  size  field
    0       8     magic      b"NUDGESNP"
    8       2     format     FORMAT (1); another value is "unsupported_format"
    10      8     body_len   length of everything after the MAC
    18      32    mac        HMAC-SHA256(key, format || body_len || body)
    50      ...   body:      header_len (4) || header (UTF-8 JSON) || payload (pickle)

The MAC sits at a fixed place outside the header it signs, so verifying it
needs no parsing at all: the two integers before it only say how long the
blob should be (a shorter blob is "truncated", a longer one "corrupt"), and
they are covered by the MAC too. The JSON header, checked only once the MAC
matches, carries the snapshot `version`, the model `names`, the
`payload_length` and the caller's `meta`: `created_at` (required: the
trainer's event time or wall clock, read by the caller, never here) and
optionally `offsets`, the input positions the trainer had consumed when it
sealed the snapshot, so a restarted trainer resumes exactly there.

Refusal reasons, a fixed set (metric label values):

| reason               | meaning                                                |
|----------------------|--------------------------------------------------------|
| `truncated`          | shorter than its fixed prefix or its declared length   |
| `bad_magic`          | not a nudge snapshot at all                            |
| `unsupported_format` | a snapshot layout this code does not read              |
| `bad_signature`      | another key, or any byte changed                       |
| `corrupt`            | signed but unreadable: trailing bytes, bad header,     |
|                      | a pickle that does not load in this environment        |

>>> key = b"k" * 32
>>> blob = seal({"churn": [1, 2]}, key=key, version=3, meta={"created_at": 0})
>>> open_snapshot(blob, key=key).models
{'churn': [1, 2]}
>>> open_snapshot(blob, key=b"x" * 32)
Traceback (most recent call last):
...
models.snapshot.SnapshotRefused: snapshot refused: bad_signature
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from nudge.errors import NudgeError

__all__ = [
    "FORMAT",
    "MAGIC",
    "MIN_KEY_BYTES",
    "REFUSAL_REASONS",
    "RefusalReason",
    "Snapshot",
    "SnapshotRefused",
    "open_snapshot",
    "seal",
]

MAGIC: Final = b"NUDGESNP"
FORMAT: Final = 1
# HMAC-SHA256 gives no more security than its key: 32 bytes is SHA-256's size.
MIN_KEY_BYTES: Final = 32
_PREFIX = struct.Struct(">8sHQ32s")  # magic, format, body_len, mac
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER_BYTES = 1 << 20

RefusalReason = Literal["truncated", "bad_magic", "unsupported_format", "bad_signature", "corrupt"]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = get_args(RefusalReason)


class SnapshotRefused(NudgeError):
    """A snapshot blob failed a check and was not unpickled; `reason` says which."""

    def __init__(self, reason: RefusalReason, detail: str = "") -> None:
        self.reason: RefusalReason = reason
        self.detail = detail
        super().__init__(f"snapshot refused: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An opened snapshot: its version, the meta it was sealed with, the models."""

    version: int
    meta: Mapping[str, Any]
    models: object

    @property
    def created_at(self) -> Any:
        return self.meta["created_at"]

    @property
    def offsets(self) -> Mapping[str, int]:
        """Input positions the trainer had consumed when sealing ({} if none)."""
        offsets: Mapping[str, int] = self.meta.get("offsets", {})
        return offsets


def seal(models: object, *, key: bytes, version: int, meta: Mapping[str, Any]) -> bytes:
    """Pickle `models` and sign them with `key` into one snapshot blob.

    `meta` must be JSON-serialisable and hold `created_at`; an `offsets`
    entry, if present, maps an input name (e.g. "training-examples:3") to an
    offset. Raises ValueError on a short key or bad meta, before any work.
    """
    _check_key(key)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"snapshot version must be a non-negative int, got {version!r}")
    if "created_at" not in meta:
        raise ValueError("snapshot meta needs 'created_at' (the caller's clock, not read here)")
    offsets = meta.get("offsets", {})
    if not isinstance(offsets, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in offsets.items()
    ):
        raise ValueError(f"snapshot meta 'offsets' must map names to int offsets, got {offsets!r}")
    payload = pickle.dumps(models, protocol=pickle.HIGHEST_PROTOCOL)
    names = sorted(map(str, models)) if isinstance(models, Mapping) else []
    header = {
        "version": version,
        "names": names,
        "payload_length": len(payload),
        "meta": dict(meta),
    }
    try:
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"snapshot meta is not JSON-serialisable: {exc}") from None
    body = _HEADER_LEN.pack(len(header_bytes)) + header_bytes + payload
    mac = _mac(key, FORMAT, len(body), body)
    return _PREFIX.pack(MAGIC, FORMAT, len(body), mac) + body


def open_snapshot(blob: bytes, *, key: bytes) -> Snapshot:
    """Verify `blob` with `key` and only then unpickle it.

    Raises SnapshotRefused (see the module's table) or ValueError for a short key.
    """
    _check_key(key)
    view = memoryview(blob)
    if len(view) < len(MAGIC):
        raise SnapshotRefused("truncated", f"{len(view)} bytes")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise SnapshotRefused("bad_magic")
    if len(view) < _PREFIX.size:
        raise SnapshotRefused("truncated", f"{len(view)} bytes, prefix is {_PREFIX.size}")
    _, fmt, body_len, mac = _PREFIX.unpack_from(view)
    if fmt != FORMAT:
        raise SnapshotRefused("unsupported_format", f"format {fmt}, this code reads {FORMAT}")
    body = view[_PREFIX.size :]
    if len(body) < body_len:
        raise SnapshotRefused("truncated", f"body {len(body)} of {body_len} bytes")
    if len(body) > body_len:
        raise SnapshotRefused("corrupt", f"{len(body) - body_len} trailing bytes")
    if not hmac.compare_digest(mac, _mac(key, fmt, body_len, body)):
        raise SnapshotRefused("bad_signature")
    # Signed by a key holder from here on: failures are bugs or version skew, not attacks.
    try:
        (header_len,) = _HEADER_LEN.unpack_from(body)
        if header_len > min(_MAX_HEADER_BYTES, body_len - _HEADER_LEN.size):
            raise ValueError(f"header length {header_len}")
        header_end = _HEADER_LEN.size + header_len
        header = json.loads(bytes(body[_HEADER_LEN.size : header_end]))
        payload = body[header_end:]
        if header["payload_length"] != len(payload):
            raise ValueError(f"payload is {len(payload)} bytes, header says {header['payload_length']}")
        version, meta = header["version"], header["meta"]
        if not isinstance(version, int) or not isinstance(meta, dict):
            raise ValueError("header version/meta have the wrong types")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise SnapshotRefused("corrupt", f"header: {exc}") from None
    try:
        models = pickle.loads(payload)
    except Exception as exc:  # unpickling can raise anything (missing class, bad opcode, ...)
        raise SnapshotRefused("corrupt", f"payload: {type(exc).__name__}: {exc}") from None
    return Snapshot(version=version, meta=meta, models=models)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"snapshot key must be at least {MIN_KEY_BYTES} bytes")


def _mac(key: bytes, fmt: int, body_len: int, body: bytes | memoryview) -> bytes:
    mac = hmac.new(key, struct.pack(">HQ", fmt, body_len), hashlib.sha256)
    mac.update(body)
    return mac.digest()
