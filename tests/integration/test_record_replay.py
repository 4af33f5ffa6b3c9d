"""Record and replay against the real broker: byte-exact, order-preserving."""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from nudge.cli import main
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics
from producers.kafka import EventProducer
from producers.logfile import LogRecord, LogWriter, encode_event, read_log
from producers.record import record
from producers.replay import replay

pytestmark = pytest.mark.integration

Key = bytes | None
Sequences = dict[tuple[str, int], list[tuple[Key, bytes | None, tuple[tuple[str, bytes | None], ...]]]]


def _event(i: int, event_type: str = "page_view", **extra: object) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{i}",
            "type": event_type,
            "user_id": f"u{i % 7}",
            "ts": 1_700_000_000_000 + i,
            "schema_version": 1,
        }
        | extra
    )


def _sequences(path: Path, settings: Settings) -> Sequences:
    """(topic, partition) -> [(key, value, headers)] in log order."""
    out: Sequences = defaultdict(list)
    for item in read_log(path, settings):
        assert isinstance(item, LogRecord), item
        assert item.partition is not None
        out[(item.topic, item.partition)].append((item.key, item.value, item.headers))
    return dict(out)


@pytest.fixture
def second_topics(unique_topics: Settings) -> Iterator[Settings]:
    """A second set of input topics (same partition count) to replay into."""
    s2 = dataclasses.replace(
        unique_topics,
        topic_clicks=unique_topics.topic_clicks + "-r",
        topic_purchases=unique_topics.topic_purchases + "-r",
        topic_app_events=unique_topics.topic_app_events + "-r",
    )
    ensure_topics(s2, s2.input_topics)
    yield s2
    admin = admin_client(s2)
    try:
        admin.delete_topics(list(s2.input_topics))
    finally:
        admin.close()


def test_record_replay_record_gives_identical_sequences_per_partition(
    unique_topics: Settings, second_topics: Settings, tmp_path: Path
) -> None:
    s1, s2 = unique_topics, second_topics
    produced = 0
    with EventProducer(s1) as producer:
        for i in range(300):
            producer.send(s1.topic_clicks, _event(i), key=f"u{i % 7}".encode())
            produced += 1
            if i % 10 == 0:
                producer.send(s1.topic_purchases, _event(i, "purchase"), key=f"u{i % 7}".encode())
                # Malformed bytes, a non-UTF-8 key and binary headers.
                producer.send(
                    s1.topic_app_events,
                    b"\xff\xfe not json \x00" + bytes([i % 256]),
                    key=b"\x80bin" + bytes([i % 256]),
                    headers=[("trace", b"\x00\x01" + bytes([i % 256])), ("src", b"test")],
                )
                produced += 2
            if i % 15 == 0:
                # No key: the partitioner picks a random partition; replay must keep it.
                producer.send(s1.topic_app_events, f"null-key {i}".encode(), key=None)
                producer.send(s1.topic_clicks, None, key=f"u{i % 7}".encode())  # tombstone
                produced += 2

    first, second = tmp_path / "first.jsonl.gz", tmp_path / "second.jsonl.gz"
    stats1 = record(s1, first, topics=s1.input_topics, from_beginning=True, until_end=True, until_idle=30)
    assert stats1.messages == produced, stats1.stopped_by

    topic_map = dict(zip(s1.input_topics, s2.input_topics, strict=True))
    replayed = replay(first, s1, topic_map=topic_map, speed=None)
    assert (replayed.sent, replayed.bad_count) == (produced, 0)

    stats2 = record(s2, second, topics=s2.input_topics, from_beginning=True, until_end=True, until_idle=30)
    assert stats2.messages == produced, stats2.stopped_by

    before, after = _sequences(first, s1), _sequences(second, s2)
    assert {(topic_map[t], p): seq for (t, p), seq in before.items()} == after
    # The data really was spread over several partitions (or the check proves little).
    assert len({p for t, p in before if t == s1.topic_clicks}) > 1
    assert len({p for t, p in before if t == s1.topic_app_events}) > 1


def test_record_from_the_end_sees_only_new_messages(unique_topics: Settings, tmp_path: Path) -> None:
    s = unique_topics
    with EventProducer(s) as producer:
        for i in range(5):
            producer.send(s.topic_clicks, _event(i), key=b"old")
    ready = threading.Event()
    result: list[object] = []
    out = tmp_path / "tail.jsonl.gz"

    def run() -> None:
        result.append(record(s, out, topics=[s.topic_clicks], max_messages=4, until_idle=30, on_ready=ready.set))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    with EventProducer(s) as producer:
        for i in range(4):
            producer.send(s.topic_clicks, _event(100 + i), key=b"new")
    thread.join(60)
    assert not thread.is_alive()
    keys = [item.key for item in read_log(out, s) if isinstance(item, LogRecord)]
    assert keys == [b"new"] * 4


def test_replay_with_a_malformed_line_sends_the_good_ones_and_exits_1(
    unique_topics: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = unique_topics
    for env, value in (
        ("NUDGE_KAFKA_BOOTSTRAP", s.kafka_bootstrap),
        ("NUDGE_TOPIC_CLICKS", s.topic_clicks),
        ("NUDGE_TOPIC_PURCHASES", s.topic_purchases),
        ("NUDGE_TOPIC_APP_EVENTS", s.topic_app_events),
        ("NUDGE_PARTITIONS", str(s.partitions)),
    ):
        monkeypatch.setenv(env, value)
    log = tmp_path / "events.jsonl"
    with LogWriter(log) as writer:
        writer.write(encode_event(orjson.loads(_event(1))))
        writer.write(b'{"event_id": "e2", "type": "page_view", "user_id": \n')  # line 2: cut short
        writer.write(encode_event(orjson.loads(_event(3, "purchase"))))
        writer.write(encode_event(orjson.loads(_event(4, "app_open"))))

    assert main(["replay", str(log)]) == 1
    out, err = capsys.readouterr()
    assert "replayed 3 messages" in out
    assert "line 2: not valid JSON" in err

    assert main(["replay", str(log), "--skip-bad"]) == 0
    capsys.readouterr()

    recorded = tmp_path / "check.jsonl.gz"
    topics = ",".join(s.input_topics)
    assert main(["record", "--topics", topics, "--out", str(recorded), "--from-beginning", "--until-end"]) == 0
    assert "recorded 6 messages" in capsys.readouterr().out
    by_topic: dict[str, list[bytes | None]] = defaultdict(list)
    for item in read_log(recorded, s):
        assert isinstance(item, LogRecord)
        by_topic[item.topic].append(item.value)
    assert {t: len(v) for t, v in by_topic.items()} == {s.topic_clicks: 2, s.topic_purchases: 2, s.topic_app_events: 2}
    assert by_topic[s.topic_clicks] == [_event(1), _event(1)]
