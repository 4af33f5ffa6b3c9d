"""The event log format that `nudge record` writes and `nudge replay` reads.

A log is gzip'd JSON Lines (``.jsonl.gz``; an uncompressed ``.jsonl`` is read
the same way: gzip is detected from the file's first bytes, not its name).
Each line is one of two flavours, detected per line.

**Recorded message** — one Kafka message, written by `nudge record`::

    {"topic": "clicks", "partition": 3, "offset": 1042, "timestamp": 1733041560000,
     "key": "u123", "value": "{\\"event_id\\":\\"e1\\", ...}",
     "headers": [["source", "web"], ["trace", {"b64": "AAEC"}]]}

- ``topic`` (string), ``partition`` and ``offset`` (integers >= 0) say where the
  message was read; ``timestamp`` is the Kafka record timestamp in epoch ms
  (null if the broker gave none).
- ``key`` and ``value`` are JSON strings when the bytes are valid UTF-8; otherwise
  the line carries ``key_b64`` / ``value_b64`` (standard base64) instead, so any
  bytes round-trip exactly, including the malformed messages we test with. A
  null key or value (tombstone) is ``null``. Exactly one of ``key``/``key_b64``
  and one of ``value``/``value_b64`` must be present.
- ``headers`` (optional, default ``[]``) is a list of ``[name, value]`` pairs in
  their original order; a value is a JSON string when valid UTF-8, ``{"b64": ...}``
  otherwise, or null.

**Plain event** — one nudge event object per line with no envelope, as
`nudge import-dataset` writes and as other systems export::

    {"event_id": "e1", "type": "page_view", "user_id": "u123", "ts": "2024-05-01T10:00:00+02:00", ...}

Its topic is derived from ``type`` (`nudge.topics.topic_for_event_type`, so the
configured topic names apply), its key is ``user_id`` and its value is the
object re-serialised with orjson. A plain line whose type is unknown or that
has no string ``user_id`` is a bad line. The event itself is not validated
here: a bad *event* is still sent, and the stream worker dead-letters it.

A line is a recorded message when it is an object with ``topic`` and ``value``
or ``value_b64``; any other object is a plain event. Blank lines are ignored.

`read_log` never raises on a bad line: it yields a `BadLine` with the line
number (1-based), the reason and a short `kind` for counting, and carries on;
a file cut short (a recording killed mid-write) ends with one `BadLine` for
the truncation. What a reason quotes from the line goes through
`nudge.logs.redact_line` (a phone number in a wrong field stays masked).

Hostile files get a verdict per line, never a traceback: bytes that are not
UTF-8 are named by their position ("not valid UTF-8 at byte 7", 1-based), a
UTF-8 byte order mark at the start of the file is skipped (Windows tools
write one), nesting deeper than orjson re-encodes (254 levels) is a bad line,
and a line longer than `max_line_bytes(settings)` (it could not hold a message
Kafka takes) is skipped without being held in memory.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NamedTuple

import orjson

from nudge.errors import InputError
from nudge.logs import redact_line
from nudge.settings import Settings
from nudge.topics import topic_for_event_type

__all__ = [
    "BadLine",
    "Header",
    "LogRecord",
    "LogWriter",
    "encode_event",
    "encode_record",
    "event_time_ms",
    "max_line_bytes",
    "read_log",
]

Header = tuple[str, bytes | None]

_GZIP_MAGIC = b"\x1f\x8b"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_EPOCH_MS = 10**14  # the event contract's bound (year 5138)
_CHUNK = 256 * 1024
_PIECE = 4 * _CHUNK  # most bytes one inflate call returns
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib parses the gzip header and checks its CRC and length
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class LogRecord(NamedTuple):
    """One message read from a log, ready to send.

    `time_ms` paces a replay: the Kafka timestamp of a recorded message, the
    event's `ts` for a plain event (None when unknown or unparseable).
    `partition`/`offset` are where a recorded message was read (None for a
    plain event). A NamedTuple, not a frozen dataclass: one is built per
    message, and a frozen dataclass's __init__ costs several times more.
    """

    line: int
    flavour: Literal["record", "event"]
    topic: str
    key: bytes | None
    value: bytes | None
    time_ms: int | None
    partition: int | None = None
    offset: int | None = None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be replayed; `reason` names what is wrong with it, `kind`
    is the short name it is counted under (not_json, not_utf8, too_long, ...)."""

    line: int
    reason: str
    kind: str = "malformed"

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def event_time_ms(ts: Any) -> int | None:
    """Epoch ms of an event `ts` (integer epoch ms or RFC 3339 with offset), else None.

    Exact integer arithmetic, so shifting a timestamp never drifts by a
    millisecond through float rounding.

    >>> event_time_ms("2010-12-01T08:26:00+00:00"), event_time_ms(1291191960000)
    (1291191960000, 1291191960000)
    >>> event_time_ms("2024-01-01T00:00:00"), event_time_ms(True)
    (None, None)
    """
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int):
        return ts if 0 <= ts < _MAX_EPOCH_MS else None
    if not isinstance(ts, str):
        return None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return (parsed - _EPOCH) // _MS


# --- writing -------------------------------------------------------------------


def _bytes_fields(name: str, data: bytes | None, out: dict[str, Any]) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def _header_value(data: bytes | None) -> str | dict[str, str] | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def encode_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header] = (),
) -> bytes:
    """One recorded-message line (with its newline)."""
    obj: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp_ms}
    _bytes_fields("key", key, obj)
    _bytes_fields("value", value, obj)
    obj["headers"] = [[name, _header_value(data)] for name, data in headers]
    return orjson.dumps(obj) + b"\n"


def encode_event(event: dict[str, Any]) -> bytes:
    """One plain-event line (with its newline)."""
    return orjson.dumps(event) + b"\n"


class LogWriter:
    """Append lines to a log; gzip'd when the name ends in `.gz`.

    Always close it (or use it as a context manager): the gzip trailer is
    written on close, and a reader reports a file without it as truncated.
    """

    def __init__(self, path: Path, *, compresslevel: int = 6) -> None:
        self.path = path
        self.lines = 0
        try:
            raw: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InputError(f"cannot write log {path}: {exc.strerror}") from None
        self._raw = raw
        self._gzip: gzip.GzipFile | None = None
        if path.name.endswith(".gz"):
            self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0)
        # Python 3.11's GzipFile compresses on every write call: hand it big chunks.
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, line: bytes) -> None:
        """Write one encoded line (`encode_record` / `encode_event`)."""
        self._pending.append(line)
        self._pending_bytes += len(line)
        self.lines += 1
        if self._pending_bytes >= 1 << 20:
            self._drain()

    def _drain(self) -> None:
        if self._pending:
            (self._gzip or self._raw).write(b"".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0

    def close(self) -> None:
        if self._raw.closed:
            return
        try:
            self._drain()
            if self._gzip is not None:
                self._gzip.close()
        finally:
            self._raw.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- reading -------------------------------------------------------------------


class _Bad(Exception):
    """A line-level problem; becomes a BadLine, never leaves this module."""

    def __init__(self, reason: str, kind: str = "bad_record") -> None:
        super().__init__(reason)
        self.kind = kind


def _decode_bytes(obj: dict[str, Any], name: str) -> bytes | None:
    b64 = f"{name}_b64"
    has_text, has_b64 = name in obj, b64 in obj
    if has_text and has_b64:
        raise _Bad(f"both {name!r} and {b64!r} given")
    if has_b64:
        encoded = obj[b64]
        if not isinstance(encoded, str):
            raise _Bad(f"{b64!r} must be a base64 string, got {type(encoded).__name__}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _Bad(f"{b64!r} is not valid base64") from None
    if not has_text:
        raise _Bad(f"missing field {name!r} (or {b64!r})")
    text = obj[name]
    if text is None:
        return None
    if not isinstance(text, str):
        raise _Bad(f"{name!r} must be a string or null, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
        raise _Bad(f"{name!r} is not encodable as UTF-8") from None


def _int_field(obj: dict[str, Any], name: str, *, nullable: bool = False) -> int | None:
    if name not in obj:
        raise _Bad(f"missing field {name!r}")
    value = obj[name]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        got = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__
        raise _Bad(f"{name!r} must be an integer >= 0, got {got}"[:120])
    return value


def _headers(obj: dict[str, Any]) -> tuple[Header, ...]:
    raw = obj.get("headers", [])
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Bad(f"'headers' must be a list, got {type(raw).__name__}")
    out: list[Header] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise _Bad(f"headers[{i}] must be [name, value]")
        name, value = pair
        if value is None:
            out.append((name, None))
        elif isinstance(value, str):
            try:
                out.append((name, value.encode("utf-8")))
            except UnicodeEncodeError:
                raise _Bad(f"headers[{i}] is not encodable as UTF-8") from None
        elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                out.append((name, base64.b64decode(value["b64"], validate=True)))
            except (binascii.Error, ValueError):
                raise _Bad(f"headers[{i}] is not valid base64") from None
        else:
            raise _Bad(f"headers[{i}] value must be a string, null or {{'b64': ...}}")
    return tuple(out)


def _parse_record(obj: dict[str, Any], line: int) -> LogRecord:
    # Fast path for what `nudge record` writes most: UTF-8 key and value, no headers.
    # Replay speed is bounded by the client's per-message cost; this keeps ours small.
    try:
        topic, partition, offset = obj["topic"], obj["partition"], obj["offset"]
        timestamp, key, value = obj["timestamp"], obj["key"], obj["value"]
    except KeyError:
        return _parse_record_checked(obj, line)
    if (
        type(topic) is str
        and topic
        and type(partition) is int
        and type(offset) is int
        and partition >= 0
        and offset >= 0
        and (timestamp is None or (type(timestamp) is int and timestamp >= 0))
        and (key is None or type(key) is str)
        and (value is None or type(value) is str)
        and not obj.get("headers")
        and "key_b64" not in obj
        and "value_b64" not in obj
    ):
        try:
            key_bytes = None if key is None else key.encode()
            value_bytes = None if value is None else value.encode()
        except UnicodeEncodeError:
            return _parse_record_checked(obj, line)
        return LogRecord(line, "record", topic, key_bytes, value_bytes, timestamp, partition, offset)
    return _parse_record_checked(obj, line)


def _parse_record_checked(obj: dict[str, Any], line: int) -> LogRecord:
    topic = obj["topic"]
    if not isinstance(topic, str) or not topic:
        raise _Bad("'topic' must be a non-empty string")
    partition = _int_field(obj, "partition")
    offset = _int_field(obj, "offset")
    timestamp = _int_field(obj, "timestamp", nullable=True)
    key = _decode_bytes(obj, "key")
    value = _decode_bytes(obj, "value")
    return LogRecord(line, "record", topic, key, value, timestamp, partition, offset, _headers(obj))


def _parse_event(obj: dict[str, Any], line: int, settings: Settings) -> LogRecord:
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        raise _Bad("plain event without a string 'type'", "bad_event")
    topic = topic_for_event_type(settings, event_type)
    if topic is None:
        raise _Bad(f"plain event of unknown type {redact_line(event_type, 40)!r}", "bad_event")
    user_id = obj.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise _Bad("plain event without a 'user_id' string", "bad_event")
    try:
        key = user_id.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("'user_id' is not encodable as UTF-8", "bad_event") from None
    try:
        value = orjson.dumps(obj)
    except TypeError:  # orjson's JSONEncodeError: "Recursion limit reached" past 254 levels
        raise _Bad("nested deeper than 254 levels (orjson cannot re-encode it)", "too_deep") from None
    return LogRecord(line, "event", topic, key, value, event_time_ms(obj.get("ts")))


def _not_json(raw: bytes, line: int, exc: orjson.JSONDecodeError) -> _Bad:
    """What is wrong with a line orjson refused, in the reader's terms (error path only)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        hint = " (the file looks UTF-16: convert it to UTF-8)" if line == 1 and raw.startswith(_UTF16_BOMS) else ""
        return _Bad(f"not valid UTF-8 at byte {bad.start + 1}{hint}", "not_utf8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        return _Bad(f"NUL byte at byte {nul + 1} (a binary file?)", "not_json")
    detail = str(exc)
    if detail.startswith("depth limit exceeded"):
        return _Bad("nested deeper than 1024 levels (orjson's limit)", "too_deep")
    return _Bad(f"not valid JSON ({detail[:80]})", "not_json")


def _parse_line(raw: bytes, line: int, settings: Settings) -> LogRecord:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _not_json(raw, line, exc) from None
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}", "not_object")
    if "topic" in obj and ("value" in obj or "value_b64" in obj):
        return _parse_record(obj, line)
    return _parse_event(obj, line, settings)


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"log file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"log file {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read log file {path}: {exc.strerror}") from None


class _Broken(Exception):
    """The byte stream itself is bad (truncated or corrupt gzip)."""


def _chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """The file's content in big pieces, gunzipped if it starts with the gzip magic.

    zlib is driven directly, in big chunks, rather than through gzip.GzipFile:
    (1) every complete line before a truncation point is still delivered (a
    recording killed mid-write loses only its last, partial line), and (2) each
    call releases the GIL; with small reads the replayer then waits on the
    producer's sender thread hundreds of times per MB, which cost replay ~20 %
    of its throughput in `nudge bench produce`.
    """
    first = raw.read(_CHUNK)
    if not first.startswith(_GZIP_MAGIC):
        while first:
            yield first
            first = raw.read(_CHUNK)
        return
    inflater = zlib.decompressobj(_GZIP_WBITS)
    data = first
    while True:
        if not data:
            data = raw.read(_CHUNK)
            if not data:
                break
        if inflater.eof:
            if not data.strip(b"\x00"):  # zero padding after the last member
                data = b""
                continue
            inflater = zlib.decompressobj(_GZIP_WBITS)  # another member (concatenated .gz files)
        # Output bounded per call: a small compressed chunk can inflate to gigabytes.
        try:
            out = inflater.decompress(data, _PIECE)
            while True:
                if out:
                    yield out
                if inflater.eof or len(out) < _PIECE:
                    break
                out = inflater.decompress(inflater.unconsumed_tail, _PIECE)
        except zlib.error as exc:
            raise _Broken(f"corrupt gzip data ({exc})") from None
        data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    if not inflater.eof:
        raise _Broken("the gzip stream ends early (a writer was killed?)")


def max_line_bytes(settings: Settings) -> int:
    """The longest line worth reading: a message of NUDGE_MAX_MESSAGE_BYTES escaped
    as JSON (at most 6 bytes per byte, as in "\\u0001"), plus room for the envelope."""
    return 6 * settings.max_message_bytes + 64 * 1024


def _too_long(number: int, length: int, settings: Settings) -> BadLine:
    return BadLine(
        number,
        f"longer than {max_line_bytes(settings):,} bytes ({length:,}): it cannot hold a message within "
        f"NUDGE_MAX_MESSAGE_BYTES ({settings.max_message_bytes:,}); skipped unread",
        "too_long",
    )


def read_log(path: Path, settings: Settings) -> Iterator[LogRecord | BadLine]:
    """Yield every line of a log as a `LogRecord`, or a `BadLine` saying why not.

    `settings` names the topics plain events go to and bounds a line's length.
    The file is opened at once: InputError if it cannot be read, before any work.
    """
    return _read_lines(_open(path), settings)


def _read_lines(raw_file: IO[bytes], settings: Settings) -> Iterator[LogRecord | BadLine]:
    limit = max_line_bytes(settings)
    number = 0
    pending: list[bytes] = []  # the start of a line that goes on in the next chunk
    pending_bytes = 0
    skipping = 0  # > 0 while dropping a line over the limit: its length so far
    try:
        chunks = _chunks(raw_file)
        while True:
            try:
                chunk = next(chunks, None)
            except _Broken as exc:
                where = (
                    f"line {number + 1} is incomplete"
                    if pending or skipping
                    else f"after line {number}"
                    if number
                    else "at its start"
                )
                yield BadLine(number + 1, f"file is truncated or corrupt: {where}: {exc}", "broken_file")
                return
            if chunk is None:
                if skipping:
                    yield _too_long(number + 1, skipping, settings)
                lines = [b"".join(pending)] if pending and not skipping else []
            else:
                lines = chunk.split(b"\n")
                tail = lines.pop()
                if skipping:
                    skipping += len(lines[0]) if lines else len(tail)
                    if not lines:
                        continue
                    number += 1
                    yield _too_long(number, skipping, settings)
                    skipping = 0
                    del lines[0]
                elif pending:
                    if not lines:
                        pending.append(tail)
                        pending_bytes += len(tail)
                        if pending_bytes > limit:
                            skipping, pending, pending_bytes = pending_bytes, [], 0
                        continue
                    pending.append(lines[0])
                    lines[0] = b"".join(pending)
                    pending, pending_bytes = [], 0
                if len(tail) > limit:
                    skipping = len(tail)
                elif tail:
                    pending, pending_bytes = [tail], len(tail)
            for raw in lines:
                number += 1
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if number == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM) :]
                if not raw or raw.isspace():
                    continue
                try:
                    yield _parse_line(raw, number, settings)
                except _Bad as exc:
                    yield BadLine(number, str(exc), exc.kind)
            if chunk is None:
                return
    finally:
        raw_file.close()
