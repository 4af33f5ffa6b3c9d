"""The log format: exact round trip of any bytes, bad lines with their numbers,
plain-JSONL flavour detection and topic derivation."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson
import pytest

from nudge.errors import InputError
from nudge.settings import Settings
from producers.logfile import BadLine, LogRecord, LogWriter, encode_event, encode_record, event_time_ms, read_log

SETTINGS = Settings.from_env({})


def _write(path: Path, lines: list[bytes]) -> Path:
    with LogWriter(path) as writer:
        for line in lines:
            writer.write(line)
    return path


def _read(path: Path, settings: Settings = SETTINGS) -> list[LogRecord | BadLine]:
    return list(read_log(path, settings))


AWKWARD_BYTES = [
    None,
    b"",
    b"\xff\xfe\x00garbage",  # not UTF-8
    b"\xc3\x28",  # invalid 2-byte sequence
    b"\xed\xa0\x80",  # an encoded surrogate: not valid UTF-8
    b"\x00\x01\x02\n\r\t",  # control characters and a newline
    '{"type": "page_view", "note": "caf\u00e9 \U0001f600"}'.encode(),
    b'"just a json string"',
    b"{not json",
    b"key_b64",
]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl"])
def test_round_trip_of_awkward_bytes_keys_and_headers(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(20240501)
    written = []
    for i in range(300):
        key = AWKWARD_BYTES[i % len(AWKWARD_BYTES)] if i < 50 else rng.randbytes(rng.randrange(0, 40))
        value = AWKWARD_BYTES[(i * 7) % len(AWKWARD_BYTES)] if i < 50 else rng.randbytes(rng.randrange(0, 300))
        headers = [("h-text", b"plain"), ("h-bin", rng.randbytes(5)), ("h-null", None)] if i % 3 == 0 else []
        ts = None if i % 11 == 0 else 1_700_000_000_000 + i
        written.append(("t-" + str(i % 4), i % 6, 1000 + i, ts, key, value, headers))
    path = _write(tmp_path / f"log{suffix}", [encode_record(*w) for w in written])

    read = _read(path)

    assert all(isinstance(r, LogRecord) for r in read)
    got = [(r.topic, r.partition, r.offset, r.time_ms, r.key, r.value, list(r.headers)) for r in read]  # type: ignore[union-attr]
    assert got == written
    assert [r.line for r in read] == list(range(1, 301))
    assert {r.flavour for r in read} == {"record"}  # type: ignore[union-attr]


def test_non_utf8_uses_b64_fields_and_utf8_stays_readable(tmp_path: Path) -> None:
    line = encode_record("clicks", 0, 5, 1, b"u1", b"\xff\x00", [("x", b"\xfe")])
    obj = orjson.loads(line)
    assert obj["key"] == "u1" and "key_b64" not in obj
    assert obj["value_b64"] == "/wA=" and "value" not in obj
    assert obj["headers"] == [["x", {"b64": "/g=="}]]
    null_key = orjson.loads(encode_record("clicks", 0, 6, None, None, b"{}"))
    assert null_key["key"] is None and null_key["timestamp"] is None and null_key["value"] == "{}"


def test_gzip_is_detected_by_content_not_by_name(tmp_path: Path) -> None:
    path = tmp_path / "misnamed.jsonl"
    path.write_bytes(gzip.compress(encode_record("a", 0, 0, 5, b"k", b"v")))
    [rec] = _read(path)
    assert isinstance(rec, LogRecord) and rec.value == b"v"


def test_malformed_lines_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    good = encode_record("clicks", 1, 10, 5, b"u1", b"v1")
    lines = [
        good,  # 1
        b"{this is not json\n",  # 2
        b'{"topic": "clicks", "partition": 0, "timestamp": 1, "key": "k", "value": "v"}\n',  # 3: no offset
        b'{"topic": "clicks", "partition": 0, "offset": 1, "timestamp": 1, "key": "k", "key_b64": "aw==", "value": "v"}\n',  # 4
        b'{"topic": "clicks", "partition": 0, "offset": 1, "timestamp": 1, "key": "k", "value_b64": "***"}\n',  # 5
        b"[1, 2, 3]\n",  # 6
        b"\n",  # 7: blank, ignored
        b'{"topic": "clicks", "partition": -1, "offset": 1, "timestamp": 1, "key": null, "value": "v"}\n',  # 8
        b'{"topic": "clicks", "partition": 0, "offset": 1, "timestamp": 1, "value": "v"}\n',  # 9: no key
        b'{"topic": "clicks", "partition": 0, "offset": 1, "timestamp": 1, "key": null, "value": "v", "headers": [["h"]]}\n',  # 10
        b'{"topic": "", "partition": 0, "offset": 1, "timestamp": 1, "key": null, "value": "v"}\n',  # 11
        good,  # 12
    ]
    path = _write(tmp_path / "bad.jsonl.gz", lines)

    read = _read(path)

    assert [r.line for r in read if isinstance(r, LogRecord)] == [1, 12]
    bad = {r.line: r.reason for r in read if isinstance(r, BadLine)}
    assert sorted(bad) == [2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert "not valid JSON" in bad[2]
    assert "'offset'" in bad[3]
    assert "both 'key' and 'key_b64'" in bad[4]
    assert "base64" in bad[5]
    assert "expected a JSON object" in bad[6]
    assert "'partition'" in bad[8]
    assert "missing field 'key'" in bad[9]
    assert "headers[0]" in bad[10]
    assert "'topic'" in bad[11]
    assert str(read[1]).startswith("line 2: ")


def test_a_truncated_gzip_ends_with_one_bad_line_instead_of_crashing(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "cut.jsonl.gz",
        [encode_record("t", 0, i, i, b"k", b"v" * 50 + bytes([i % 256])) for i in range(2000)],
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    read = _read(path)

    assert isinstance(read[-1], BadLine) and "truncated" in read[-1].reason
    records = [r for r in read if isinstance(r, LogRecord)]
    assert [r.offset for r in records] == list(range(len(records)))
    # Every complete line before the cut is delivered: only the partial last one is lost.
    assert len(records) == len(read) - 1
    assert 900 < len(records) < 2000
    assert read[-1].line == len(records) + 1


def test_concatenated_gzip_members_are_read_whole(tmp_path: Path) -> None:
    a = gzip.compress(b"".join(encode_record("t", 0, i, 1, b"k", b"a") for i in range(3)))
    b = gzip.compress(b"".join(encode_record("t", 0, i, 1, b"k", b"b") for i in range(3, 5)))
    path = tmp_path / "cat.jsonl.gz"
    path.write_bytes(a + b + b"\x00" * 8)  # as `cat a.gz b.gz`, with trailing padding
    read = _read(path)
    assert [(r.offset, r.value) for r in read] == [(0, b"a"), (1, b"a"), (2, b"a"), (3, b"b"), (4, b"b")]  # type: ignore[union-attr]


def test_corrupt_gzip_is_one_bad_line(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(encode_record("t", 0, 0, 1, b"k", b"v")))
    data[-8] ^= 0xFF  # break the CRC in the trailer
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data))
    [bad] = _read(path)
    assert isinstance(bad, BadLine) and "corrupt" in bad.reason


def test_a_missing_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.jsonl\.gz"):
        _read(tmp_path / "nope.jsonl.gz")


def test_plain_events_take_topic_from_type_key_from_user_id(tmp_path: Path) -> None:
    settings = Settings.from_env({}, topic_clicks="c-x", topic_purchases="p-x", topic_app_events="a-x")
    click = {"event_id": "e1", "type": "add_to_cart", "user_id": "u1", "ts": "2024-05-01T10:00:00.250+02:00"}
    purchase = {"event_id": "e2", "type": "purchase", "user_id": "u2", "ts": 1714550400000, "items": []}
    app = {"event_id": "e3", "type": "opt_out", "user_id": "u3", "ts": "yesterday", "channel": "sms"}
    record = encode_record("raw-topic", 2, 7, 99, b"k", b"v")
    path = tmp_path / "events.jsonl"
    # Pretty (non-compact) JSON on purpose: the value is re-serialised compactly.
    path.write_bytes(
        b"\n".join(orjson.dumps(e, option=orjson.OPT_INDENT_2).replace(b"\n", b" ") for e in (click, purchase, app))
        + b"\n"
        + record
    )

    c, p, a, r = _read(path, settings)

    assert isinstance(c, LogRecord) and isinstance(p, LogRecord) and isinstance(a, LogRecord)
    assert (c.flavour, c.topic, c.key, c.partition, c.offset) == ("event", "c-x", b"u1", None, None)
    assert c.value == orjson.dumps(click)
    assert c.time_ms == 1714550400250
    assert (p.topic, p.key, p.time_ms) == ("p-x", b"u2", 1714550400000)
    assert (a.topic, a.time_ms) == ("a-x", None)  # an unparseable ts is the worker's business
    assert isinstance(r, LogRecord) and (r.flavour, r.topic, r.partition) == ("record", "raw-topic", 2)


def test_plain_events_with_unknown_type_or_no_user_id_are_bad_lines(tmp_path: Path) -> None:
    lines = [
        encode_event({"event_id": "e1", "type": "teleport", "user_id": "u1"}),
        encode_event({"event_id": "e2", "type": "page_view"}),
        encode_event({"event_id": "e3", "type": "page_view", "user_id": 42}),
        encode_event({"event_id": "e4", "user_id": "u1"}),
        encode_event({"event_id": "e5", "type": "page_view", "user_id": "u5", "ts": 1}),
        # A record-looking object without value is a plain event (and has no type):
        b'{"topic": "clicks", "key": "k"}\n',
    ]
    read = _read(_write(tmp_path / "x.jsonl.gz", lines))
    bad = {r.line: r.reason for r in read if isinstance(r, BadLine)}
    assert bad.keys() == {1, 2, 3, 4, 6}
    assert "unknown type 'teleport'" in bad[1]
    assert "user_id" in bad[2] and "user_id" in bad[3]
    assert "type" in bad[4]
    assert [r.line for r in read if isinstance(r, LogRecord)] == [5]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1714550400123, 1714550400123),
        ("2024-05-01T10:00:00.123+02:00", 1714550400123),
        ("2024-05-01T08:00:00.123Z", 1714550400123),
        ("2024-05-01T08:00:00.123456+00:00", 1714550400123),  # truncated to the ms, never rounded up
        ("2024-05-01T08:00:00", None),  # no offset
        (True, None),
        (-1, None),
        (1.5, None),
        ("soon", None),
    ],
)
def test_event_time_ms(ts: object, expected: int | None) -> None:
    assert event_time_ms(ts) == expected


# --- hostile files: a verdict per line, never a traceback ---------------------------


def _raw(path: Path, data: bytes) -> list[LogRecord | BadLine]:
    path.write_bytes(data)
    return _read(path)


def _bad(items: list[LogRecord | BadLine]) -> list[tuple[int, str]]:
    return [(b.line, b.kind) for b in items if isinstance(b, BadLine)]


def _event_line(i: int, **extra: object) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "type": "page_view", "user_id": f"u{i}", "ts": 1, **extra})


def test_invalid_utf8_is_named_by_its_byte_not_by_orjsons_surrogate_message(tmp_path: Path) -> None:
    items = _raw(tmp_path / "u.jsonl", _event_line(1) + b"\n" + b'{"type": "caf\xc3\x28"}\n')
    bad = [b for b in items if isinstance(b, BadLine)]
    assert [str(b) for b in bad] == ["line 2: not valid UTF-8 at byte 14"]
    assert bad[0].kind == "not_utf8"


def test_a_utf16_file_says_so(tmp_path: Path) -> None:
    items = _raw(tmp_path / "w.jsonl", '{"type": "page_view"}\n'.encode("utf-16"))
    assert "looks UTF-16" in str(items[0])


def test_a_utf8_bom_at_the_start_is_skipped(tmp_path: Path) -> None:
    items = _raw(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + _event_line(1) + b"\r\n" + _event_line(2) + b"\r\n")
    assert [r.key for r in items if isinstance(r, LogRecord)] == [b"u1", b"u2"]


def test_nul_bytes_binary_junk_and_json_that_is_not_an_object(tmp_path: Path) -> None:
    data = b'{"type": "page\x00view"}\n' + b"\x89PNG\x1a\x00\xff\xd8\x00" + b"\n[1, 2]\n42\n" + _event_line(5) + b"\n"
    items = _raw(tmp_path / "j.jsonl", data)
    assert _bad(items) == [(1, "not_json"), (2, "not_utf8"), (3, "not_object"), (4, "not_object")]
    assert "NUL byte at byte 15" in str(items[0])
    assert isinstance(items[-1], LogRecord)


def test_deep_nesting_is_a_bad_line_whether_orjson_refuses_to_read_or_to_write_it(tmp_path: Path) -> None:
    deep_read = b'{"type": "page_view", "user_id": "u", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    deep_write = b'{"type": "page_view", "user_id": "u", "x": ' + b"[" * 300 + b"]" * 300 + b"}"
    items = _raw(tmp_path / "d.jsonl", deep_read + b"\n" + deep_write + b"\n" + _event_line(3) + b"\n")
    assert _bad(items) == [(1, "too_deep"), (2, "too_deep")]
    assert isinstance(items[2], LogRecord)


def test_a_line_too_long_for_any_message_is_skipped_unread(tmp_path: Path) -> None:
    small = Settings.from_env({"NUDGE_MAX_MESSAGE_BYTES": "100000"})  # lines up to 6 x 100 kB + 64 KiB
    huge = b'{"type": "page_view", "pad": "' + b"x" * 2_000_000 + b'"}'
    for data, expected in (
        (_event_line(1) + b"\n" + huge + b"\n" + _event_line(3) + b"\n", [(2, "too_long")]),
        (_event_line(1) + b"\n" + huge, [(2, "too_long")]),  # no final newline
    ):
        for name in ("h.jsonl", "h.jsonl.gz"):
            path = tmp_path / name
            path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
            items = _read(path, small)
            assert _bad(items) == expected, name
            assert "longer than" in str(items[1]) and "NUDGE_MAX_MESSAGE_BYTES" in str(items[1])
            assert [r.line for r in items if isinstance(r, LogRecord)] == [1, 3][: len(items) - 1]


def test_gzip_output_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    from producers import logfile

    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n" * 50_000_000))  # 50 MB from about 50 kB
    with open(path, "rb") as raw:
        sizes = [len(piece) for piece in logfile._chunks(raw)]
    assert max(sizes) <= logfile._PIECE and sum(sizes) == 50_000_000


def test_empty_file_and_directory(tmp_path: Path) -> None:
    assert _raw(tmp_path / "empty.jsonl", b"") == []
    with pytest.raises(InputError, match="is a directory"):
        _read(tmp_path)
