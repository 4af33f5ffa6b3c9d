"""`nudge replay` against the real broker with lines Kafka refuses, a missing
target topic, an unreachable cluster and a junk file: each ends in a verdict
per line or one line, within seconds, with the good lines in the topic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka.admin import NewTopic

from nudge.cli import main
from nudge.errors import InputError
from nudge.settings import Settings
from nudge.topics import admin_client
from producers.kafka import EventProducer
from producers.logfile import LogRecord, read_log
from producers.record import record
from producers.replay import ReplayStats, replay

ROOT = Path(__file__).resolve().parents[2]
NOW = int(time.time() * 1000)


def _line(i: int, pad: int = 0) -> bytes:
    event = {"event_id": f"big-{i}", "type": "page_view", "user_id": f"u{i}", "ts": NOW, "schema_version": 1}
    if pad:
        event["pad"] = "x" * pad
    return orjson.dumps(event) + b"\n"


def _ids_in(settings: Settings, topic: str, tmp_path: Path) -> list[str]:
    out = tmp_path / f"check-{uuid.uuid4().hex[:6]}.jsonl.gz"
    record(settings, out, topics=[topic], from_beginning=True, until_end=True, until_idle=30)
    return sorted(
        orjson.loads(r.value)["event_id"] for r in read_log(out, settings) if isinstance(r, LogRecord) and r.value
    )


def _use(monkeypatch: pytest.MonkeyPatch, s: Settings) -> None:
    for env, value in (
        ("NUDGE_KAFKA_BOOTSTRAP", s.kafka_bootstrap),
        ("NUDGE_TOPIC_CLICKS", s.topic_clicks),
        ("NUDGE_TOPIC_PURCHASES", s.topic_purchases),
        ("NUDGE_TOPIC_APP_EVENTS", s.topic_app_events),
    ):
        monkeypatch.setenv(env, value)


def test_an_oversized_line_is_skipped_with_skip_bad_and_stops_the_replay_without(
    unique_topics: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = unique_topics
    _use(monkeypatch, s)
    path = tmp_path / "big.jsonl"
    path.write_bytes(_line(1) + _line(2, pad=5_000_000) + _line(3) + _line(4))

    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "replayed 1 messages" in out and "(stopped)" in out and "refused 1" in out
    assert err.strip().splitlines()[-1].startswith("nudge replay: error: line 2: message is 5,000,")
    assert "Traceback" not in err and "MessageSizeTooLargeError" not in err
    assert _ids_in(s, s.topic_clicks, tmp_path) == ["big-1"]

    assert main(["replay", str(path), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "replayed 3 messages" in out and "bad lines: 1 (refused 1) at line 2" in out
    assert "line 2: message is" in err
    assert _ids_in(s, s.topic_clicks, tmp_path) == ["big-1", "big-1", "big-3", "big-4"]


def test_a_topic_with_a_smaller_limit_refuses_the_line_not_the_replay(
    unique_topics: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = unique_topics
    _use(monkeypatch, s)
    small = f"{s.topic_clicks}-small"
    admin = admin_client(s)
    try:
        admin.create_topics([NewTopic(small, 2, 1, topic_configs={"max.message.bytes": "20000"})])
    finally:
        admin.close()
    path = tmp_path / "mid.jsonl"
    path.write_bytes(_line(1) + _line(2) + _line(3, pad=100_000) + _line(4) + _line(5))

    # The topic's own limit is known before sending: one bad line among good ones.
    assert main(["replay", str(path), "--topic-map", f"{s.topic_clicks}={small}", "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "replayed 4 messages" in out and "at line 3" in out
    assert f"over the 19,488-byte limit of topic {small}" in err
    assert _ids_in(s, small, tmp_path) == ["big-1", "big-2", "big-4", "big-5"]

    # A refusal the broker sends back later is tied to its line too (no metadata lookup here).
    stats = ReplayStats(path)
    with EventProducer(s, client_id="test-late-refusal") as producer, pytest.raises(InputError) as exc:
        replay(
            path, s, topic_map={s.topic_clicks: small}, producer=producer, partition_count=lambda t: None, stats=stats
        )
    assert str(exc.value).startswith("line 3: Kafka refused the message (MessageSizeTooLargeError) after it was sent")
    assert [bad.line for bad in stats.bad_lines] == [3]


def _run(args: list[str], **env: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "nudge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def test_a_missing_target_topic_fails_within_seconds_in_one_line(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(_line(1))
    code, out, err, took = _run(
        ["replay", str(path), "--topic-map", "clicks=no-such-topic-x9"], NUDGE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap
    )
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1, err
    assert "'no-such-topic-x9' does not exist" in err and "nudge topics" in err
    assert took < 5, took


@pytest.mark.parametrize(
    "args",
    [["replay", "{file}"], ["topics"], ["record", "--out", "{tmp}/r.jsonl.gz", "--until-idle", "1"]],
    ids=["replay", "topics", "record"],
)
def test_an_unreachable_kafka_is_one_line_within_seconds_and_no_client_noise(args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(_line(1))
    argv = [a.replace("{file}", str(path)).replace("{tmp}", str(tmp_path)) for a in args]
    code, _out, err, took = _run(argv, NUDGE_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert "Kafka is not reachable at 127.0.0.1:1" in err and "nudge stack up" in err
    assert "kafka." not in err and "Traceback" not in err
    assert took < 8, took


def test_a_junk_file_says_nothing_was_sent(
    unique_topics: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, unique_topics)
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00junk\n[1]\n{"type": "page_view"}\n')
    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "replayed 0 messages" in out
    assert "bad lines: 5 (" in out and "at lines 1, 2, 3, 4, 5" in out
    assert "nothing was sent" in err and "good lines were sent" not in err
    assert "line 1: not valid UTF-8 at byte 1" in err
