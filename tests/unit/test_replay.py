"""Replay without a broker: a fake sink, a fake clock, real log files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import producers.replay as replay_mod
from nudge.cli import main
from nudge.errors import ConfigError, InputError
from nudge.settings import Settings
from producers.kafka import MessageRefused, Refusal
from producers.logfile import LogWriter, encode_event, encode_record
from producers.replay import Pacer, ReplayStats, TimeShifter, parse_speed, parse_topic_map, replay

SETTINGS = Settings.from_env({})


def SIX(_topic: str) -> int:
    """Partition count of every topic (stands in for the cluster metadata lookup)."""
    return 6


class FakeSink:
    """Collects what would be produced."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.sent: list[dict[str, Any]] = []
        self.flushed = 0
        self.closed = False

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        tag: Any = None,
    ) -> None:
        self.sent.append(
            {"topic": topic, "value": value, "key": key, "partition": partition, "headers": headers, "ts": timestamp_ms}
        )

    def take_refused(self) -> list[Any]:
        return []

    def flush(self, timeout: float | None = 60.0) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = 30.0) -> None:
        self.closed = True


class RefusingSink(FakeSink):
    """Refuses values longer than `max_bytes` at once, and values holding b"LATE"
    later, the way the broker's answer comes back after `send` returned."""

    def __init__(self, max_bytes: int = 1000) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.late: list[Refusal] = []

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, **kw: Any) -> None:
        if value is not None and len(value) > self.max_bytes:
            raise MessageRefused(f"message is {len(value):,} bytes, over the limit", kw.get("tag"))
        super().send(topic, value, key, **kw)
        if value is not None and b"LATE" in value:
            self.late.append(Refusal(kw.get("tag"), "Kafka refused the message (MessageSizeTooLargeError)"))

    def take_refused(self) -> list[Any]:
        late, self.late = self.late, []
        return late


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _log(path: Path, lines: list[bytes]) -> Path:
    with LogWriter(path) as writer:
        for line in lines:
            writer.write(line)
    return path


def _event(i: int, ts: object, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "type": "page_view", "user_id": f"u{i % 3}", "ts": ts, "schema_version": 1, **extra}


# --- argument parsing --------------------------------------------------------------


def test_parse_topic_map() -> None:
    assert parse_topic_map("") == {}
    assert parse_topic_map("clicks=c2, purchases = p2,") == {"clicks": "c2", "purchases": "p2"}
    assert parse_topic_map("a=b,a=b") == {"a": "b"}


@pytest.mark.parametrize(
    "text", ["clicks", "=b", "a=", "a=b,a=c", "a=b,,c", "a=b=c", "clicks=my clicks", "clicks=..", "c=" + "x" * 250]
)
def test_parse_topic_map_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--topic-map"):
        parse_topic_map(text)


def test_parse_speed() -> None:
    assert parse_speed("max") is None
    assert parse_speed("MAX") is None
    assert parse_speed("10") == 10.0
    assert parse_speed("0.5") == 0.5
    assert parse_speed("0.001") == 0.001
    assert parse_speed("1e6") == 1e6
    for bad in ("0", "-1", "fast", "nan", "inf", "1e-300", "0.0009", "1e7"):
        with pytest.raises(ConfigError, match="--speed"):
            parse_speed(bad)


def test_cli_rejects_an_absurd_speed_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log.jsonl").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["replay", str(tmp_path / "log.jsonl"), "--speed", "1e-300"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--speed" in err and "0.001" in err


def test_cli_rejects_a_bad_topic_map_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log.jsonl").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["replay", str(tmp_path / "log.jsonl"), "--topic-map", "clicks"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--topic-map" in err and "FROM=TO" in err


# --- pacing ------------------------------------------------------------------------


def test_pacer_follows_original_gaps_divided_by_speed() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep, slack_s=0.005)
    slept = [pacer.wait(t) for t in (5_000, 6_000, 6_500, 6_501, 6_540, 16_000)]
    # Exact expectations: due at start + (t - t0)/speed; sleeps only when > 5 ms ahead.
    assert slept[0] == 0.0
    assert slept[1] == pytest.approx(0.1)
    assert slept[2] == pytest.approx(0.05)
    assert slept[3] == 0.0  # 0.1 ms ahead: within the slack, no sleep
    assert slept[4] == 0.0  # 3.9 ms ahead: still within the slack
    assert slept[5] == pytest.approx(1.1 - 0.15)  # due at 1.1 s; the clock is at 0.15 s
    assert clock.now - 1000.0 == pytest.approx(1.1)


def test_pacer_does_not_sleep_when_behind_or_when_time_goes_backwards() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, clock=clock, sleep=clock.sleep)
    pacer.wait(10_000)
    clock.now += 5.0  # slow consumer: 5 s behind the 1x schedule
    assert pacer.wait(12_000) == 0.0
    assert pacer.wait(3_000) == 0.0  # earlier than the first message: due already
    assert pacer.wait(None) == 0.0
    assert pacer.wait(16_000) == pytest.approx(1.0)  # due at +6 s, clock at +5 s
    assert clock.sleeps == [pytest.approx(1.0)]


def test_pacer_at_max_speed_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock=clock, sleep=clock.sleep)
    assert [pacer.wait(t) for t in (0, 10**9, 2 * 10**9)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []


def test_replay_paces_the_whole_file(tmp_path: Path) -> None:
    # 101 events 100 ms apart = 10 s of original time; at 4x it takes 2.5 s.
    path = _log(tmp_path / "p.jsonl", [encode_event(_event(i, 1_700_000_000_000 + 100 * i)) for i in range(101)])
    clock = FakeClock()
    stats = replay(path, SETTINGS, speed=4.0, producer=FakeSink(), clock=clock, sleep=clock.sleep, partition_count=SIX)
    assert stats.sent == 101
    assert clock.now - 1000.0 == pytest.approx(2.5)
    assert stats.elapsed_s == pytest.approx(2.5)
    assert all(s > 0.005 for s in clock.sleeps)  # never a pointless tiny sleep
    assert len(clock.sleeps) == 100  # 25 ms apart at 4x: one sleep per message here


# --- shift to now ------------------------------------------------------------------


def test_shift_to_now_moves_the_first_valid_event_to_now_and_keeps_gaps() -> None:
    now = 1_750_000_000_000
    shifter = TimeShifter(SETTINGS, lambda: now)
    values = [
        b"\xff not even utf-8",
        orjson.dumps({"event_id": "x", "type": "page_view", "ts": 1}),  # invalid event: no user_id
        orjson.dumps(_event(1, "2024-05-01T10:00:00.250+02:00", extra_field=[1, 2])),
        orjson.dumps(_event(2, 1714550400250 + 90_000)),
        orjson.dumps(_event(3, "2024-05-01T07:59:00.250Z")),  # one minute before the first
        None,
    ]
    out = [shifter.shift(v) for v in values]
    assert out[0] == values[0]
    assert out[1] == values[1]
    assert out[5] is None
    first, second, third = (orjson.loads(v) for v in out[2:5])  # type: ignore[arg-type]
    assert first["ts"] == now
    assert second["ts"] == now + 90_000
    assert third["ts"] == now - 60_000
    assert first["extra_field"] == [1, 2] and list(first)[:4] == ["event_id", "type", "user_id", "ts"]
    assert (shifter.shifted, shifter.unchanged, shifter.delta_ms) == (3, 3, now - 1714550400250)


def test_shift_counts_events_pushed_beyond_the_future_limit() -> None:
    settings = Settings.from_env({}, max_future_ms=60_000)
    shifter = TimeShifter(settings, lambda: 1_750_000_000_000)
    shifter.shift(orjson.dumps(_event(1, 1_000_000)))
    shifter.shift(orjson.dumps(_event(2, 1_000_000 + 59_000)))
    shifter.shift(orjson.dumps(_event(3, 1_000_000 + 61_000)))
    assert shifter.beyond_future_limit == 1


# --- replay end to end with a fake sink ---------------------------------------------


def test_replay_sends_good_lines_in_order_and_reports_bad_ones(tmp_path: Path) -> None:
    lines = [
        encode_record("clicks", 2, 0, 10, b"u1", b"v0", [("h", b"x")]),  # 1
        b"garbage\n",  # 2
        encode_event(_event(7, 20)),  # 3 -> clicks via type
        encode_record("purchases", 0, 1, 30, b"u2", b"\xff\xfe"),  # 4: a bad event in a good record
        encode_event({"type": "teleport", "user_id": "u"}),  # 5
        encode_record("other", 1, 2, 40, b"u1", None),  # 6: tombstone
    ]
    path = _log(tmp_path / "mix.jsonl.gz", lines)
    sink = FakeSink()

    stats = replay(path, SETTINGS, topic_map={"clicks": "clicks-test"}, producer=sink, partition_count=lambda t: 6)

    assert [(m["topic"], m["key"], m["value"]) for m in sink.sent] == [
        ("clicks-test", b"u1", b"v0"),
        ("clicks-test", b"u1", orjson.dumps(_event(7, 20))),  # user u{7 % 3}
        ("purchases", b"u2", b"\xff\xfe"),
        ("other", b"u1", None),
    ]
    assert sink.sent[0]["headers"] == [("h", b"x")]
    assert all(m["partition"] is None for m in sink.sent)  # keyed: murmur2 decides
    assert all(m["ts"] is None for m in sink.sent)  # the producer stamps the send time
    assert sink.flushed == 1 and not sink.closed  # an injected producer is left open
    assert stats.sent == 4
    assert stats.by_topic == {"clicks-test": 2, "purchases": 1, "other": 1}
    assert (stats.bad_count, [b.line for b in stats.bad_lines]) == (2, [2, 5])


def test_only_the_first_bad_lines_are_listed_but_all_are_counted(tmp_path: Path) -> None:
    path = _log(tmp_path / "bad.jsonl", [b"nope\n"] * 25 + [encode_event(_event(1, 1))])
    stats = replay(path, SETTINGS, producer=FakeSink(), partition_count=SIX)
    assert stats.sent == 1
    assert stats.bad_count == 25
    assert [b.line for b in stats.bad_lines] == list(range(1, 21))


def test_null_keys_keep_their_recorded_partition_modulo_the_target_count(tmp_path: Path) -> None:
    lines = [encode_record("t", p, 0, 1, None, b"v") for p in (0, 3, 5)] + [encode_record("t", 5, 1, 1, b"k", b"v")]
    sink = FakeSink()
    replay(_log(tmp_path / "n.jsonl", lines), SETTINGS, producer=sink, partition_count=lambda t: 4)
    assert [m["partition"] for m in sink.sent] == [0, 3, 1, None]


def test_keep_partitions_uses_recorded_partitions_and_refuses_missing_ones(tmp_path: Path) -> None:
    lines = [encode_record("t", p, 0, 1, b"k", b"v") for p in (2, 0, 5)]
    path = _log(tmp_path / "k.jsonl", lines)
    sink = FakeSink()
    replay(path, SETTINGS, producer=sink, keep_partitions=True, partition_count=lambda t: 6)
    assert [m["partition"] for m in sink.sent] == [2, 0, 5]
    with pytest.raises(InputError, match=r"line 3: recorded partition 5 .*\(3 partitions\)"):
        replay(path, SETTINGS, producer=FakeSink(), keep_partitions=True, partition_count=lambda t: 3)


def test_limit_stops_after_n_messages(tmp_path: Path) -> None:
    path = _log(tmp_path / "l.jsonl", [encode_event(_event(i, i)) for i in range(10)])
    sink = FakeSink()
    stats = replay(path, SETTINGS, producer=sink, limit=3, partition_count=SIX)
    assert (stats.sent, stats.limit_reached, len(sink.sent)) == (3, True, 3)
    assert replay(path, SETTINGS, producer=FakeSink(), limit=0, partition_count=SIX).sent == 0


def test_null_header_values_are_sent_empty_and_counted(tmp_path: Path) -> None:
    path = _log(tmp_path / "h.jsonl", [encode_record("t", 0, 0, 1, b"k", b"v", [("a", None), ("b", b"1")])])
    sink = FakeSink()
    stats = replay(path, SETTINGS, producer=sink, partition_count=SIX)
    assert sink.sent[0]["headers"] == [("a", b""), ("b", b"1")]
    assert stats.null_headers_sent_empty == 1


def test_cli_exit_code_depends_on_bad_lines_and_skip_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sinks: list[FakeSink] = []

    def fake_producer(*args: Any, **kwargs: Any) -> FakeSink:
        sinks.append(FakeSink())
        return sinks[-1]

    monkeypatch.setattr(replay_mod, "EventProducer", fake_producer)
    monkeypatch.setattr(replay_mod, "_TopicMetadata", FakeMetadata)
    path = _log(tmp_path / "c.jsonl", [encode_event(_event(1, 1)), b"{broken\n", encode_event(_event(2, 2))])

    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "replayed 2 messages" in out
    assert "line 2: not valid JSON" in err and "1 bad line(s)" in err
    assert "the other 2 messages were sent" in err
    assert len(sinks[-1].sent) == 2 and sinks[-1].closed

    assert main(["replay", str(path), "--skip-bad"]) == 0
    assert len(sinks[-1].sent) == 2


class FakeMetadata:
    """Stands in for the cluster metadata lookup: every topic exists but `missing`."""

    missing: frozenset[str] = frozenset()

    def __init__(self, _settings: Settings) -> None:
        self.max_bytes: dict[str, int] = {}

    def __call__(self, topic: str) -> int:
        return 6

    def require(self, topics: Any, why: str = "") -> None:
        absent = [t for t in topics if t in self.missing]
        if absent:
            raise ConfigError(f"topic {absent[0]!r} does not exist{why}; create it first (`nudge topics` ...)")

    def close(self) -> None:
        pass


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> list[FakeSink]:
    """`nudge replay` in-process against a RefusingSink and FakeMetadata."""
    sinks: list[FakeSink] = []

    def fake_producer(*args: Any, **kwargs: Any) -> FakeSink:
        sinks.append(RefusingSink())
        return sinks[-1]

    monkeypatch.setattr(replay_mod, "EventProducer", fake_producer)
    monkeypatch.setattr(replay_mod, "_TopicMetadata", FakeMetadata)
    return sinks


def test_a_junk_file_does_not_claim_good_lines_were_sent(
    tmp_path: Path, fake_kafka: list[FakeSink], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"hello\n\xff\xfe junk\nnot json +447911123456\n[1, 2]\n")

    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "good lines were sent" not in err and "other" not in err
    assert "nothing was sent" in err
    assert "bad lines: 4 (not_json 2, not_utf8 1, not_object 1) at lines 1, 2, 3, 4" in out
    assert "line 2: not valid UTF-8 at byte 1" in err
    assert "surrogates" not in err and "Traceback" not in err


def test_a_line_over_the_size_limit_is_a_bad_line_with_skip_bad(tmp_path: Path) -> None:
    lines = [encode_event(_event(1, 1)), encode_event(_event(2, 2, pad="x" * 5000)), encode_event(_event(3, 3))]
    sink = RefusingSink(max_bytes=1000)
    stats = replay(_log(tmp_path / "big.jsonl", lines), SETTINGS, producer=sink, partition_count=SIX)
    assert [orjson.loads(m["value"])["event_id"] for m in sink.sent] == ["e1", "e3"]
    assert (stats.sent, stats.bad_count, dict(stats.bad_by_kind)) == (2, 1, {"refused": 1})
    assert stats.bad_lines[0].line == 2 and "5," in stats.bad_lines[0].reason


def test_without_skip_bad_a_refused_line_stops_the_replay_after_delivering_the_lines_before(tmp_path: Path) -> None:
    lines = [encode_event(_event(1, 1)), encode_event(_event(2, 2, pad="x" * 5000)), encode_event(_event(3, 3))]
    sink = RefusingSink(max_bytes=1000)
    stats = ReplayStats(tmp_path / "big.jsonl")
    with pytest.raises(InputError, match=r"^line 2: message is .* bytes.*stopped.*--skip-bad"):
        replay(_log(stats.path, lines), SETTINGS, producer=sink, partition_count=SIX, skip_bad=False, stats=stats)
    assert len(sink.sent) == 1 and sink.flushed == 1
    assert (stats.sent, stats.bad_count) == (1, 1)


def test_a_refusal_that_comes_back_later_is_tied_to_its_line_and_ends_the_replay(tmp_path: Path) -> None:
    # kafka-python's idempotent producer fails what was queued after a refused message:
    # --skip-bad cannot skip it, the replay stops and names the line.
    lines = [encode_event(_event(i, i, note="LATE" if i == 3 else "")) for i in range(1, 6)]
    for skip_bad in (True, False):
        sink = RefusingSink()
        stats = ReplayStats(tmp_path / f"late-{skip_bad}.jsonl")
        with pytest.raises(InputError, match=r"^line 3: Kafka refused .* after it was sent.*the replay stops"):
            replay(
                _log(stats.path, lines), SETTINGS, producer=sink, partition_count=SIX, skip_bad=skip_bad, stats=stats
            )
        assert (stats.sent, sum(stats.by_topic.values()), stats.bad_count) == (2, 2, 1)
        assert stats.bad_lines[0].line == 3 and stats.bad_lines[0].kind == "refused"
        assert sink.flushed == 1


def test_a_line_over_the_target_topics_own_limit_is_refused_before_sending(
    tmp_path: Path, fake_kafka: list[FakeSink], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeMetadata, "require", lambda self, topics, why="": self.max_bytes.update(clicks=300))
    lines = [encode_event(_event(1, 1)), encode_event(_event(2, 2, pad="x" * 400)), encode_event(_event(3, 3))]
    assert main(["replay", str(_log(tmp_path / "t.jsonl", lines)), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "replayed 2 messages" in out and "over the 300-byte limit of topic clicks" in err


def test_cli_oversized_line_stops_with_a_summary_and_one_line(
    tmp_path: Path, fake_kafka: list[FakeSink], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [encode_event(_event(1, 1)), encode_event(_event(2, 2, pad="x" * 5000)), encode_event(_event(3, 3))]
    path = _log(tmp_path / "big.jsonl", lines)

    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "replayed 1 messages" in out and "(stopped)" in out and "refused 1" in out
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert err.startswith("nudge replay: error: line 2: message is")

    assert main(["replay", str(path), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "replayed 2 messages" in out and "line 2: message is" in err
    assert len(fake_kafka[-1].sent) == 2


def test_an_illegal_topic_name_in_a_record_is_a_bad_line(tmp_path: Path) -> None:
    lines = [encode_record("my clicks", 0, 0, 1, b"k", b"v"), encode_record("clicks", 0, 1, 1, b"k", b"v")]
    sink = FakeSink()
    stats = replay(_log(tmp_path / "t.jsonl", lines), SETTINGS, producer=sink, partition_count=SIX)
    assert [m["topic"] for m in sink.sent] == ["clicks"]
    assert stats.bad_lines[0].line == 1 and stats.bad_lines[0].kind == "bad_topic"


def test_a_missing_topic_map_target_fails_before_anything_is_read(
    tmp_path: Path, fake_kafka: list[FakeSink], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeMetadata, "missing", frozenset({"no-such-topic"}))
    path = _log(tmp_path / "m.jsonl", [encode_event(_event(1, 1))])
    assert main(["replay", str(path), "--topic-map", "clicks=no-such-topic"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "'no-such-topic' does not exist" in err and "nudge topics" in err
    assert fake_kafka == []  # no producer was even built


class FakeConsumer:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.topics.get(topic, 0)))

    def close(self) -> None:
        pass


def test_topic_metadata_names_every_missing_topic_and_how_to_create_it() -> None:
    metadata = replay_mod._TopicMetadata(SETTINGS)
    metadata._consumer = FakeConsumer({"clicks": 6})  # type: ignore[assignment]
    metadata.max_bytes["clicks"] = 1_000_000  # known already: no admin client (and no Kafka) needed
    assert metadata("clicks") == 6
    with pytest.raises(ConfigError) as exc:
        metadata.require(["clicks", "nope", "gone"], " (a --topic-map target)")
    message = str(exc.value)
    assert "'nope', 'gone' does not exist on" in message and "(a --topic-map target)" in message
    assert "`nudge topics`" in message and "--topic-map" in message


def test_bad_line_reasons_never_repeat_a_phone_number(tmp_path: Path) -> None:
    phone = "+447911123456"
    lines = [
        orjson.dumps({"topic": "clicks", "partition": phone, "offset": 0, "timestamp": 1, "key": "k", "value": "v"}),
        orjson.dumps({"type": phone, "user_id": "u1", "phone": phone}),
        orjson.dumps({"topic": phone, "partition": 0, "offset": 0, "timestamp": 1, "key": "k", "value": "v"}),
    ]
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = replay(path, SETTINGS, producer=FakeSink(), partition_count=SIX)
    assert stats.bad_count == 3
    for bad in stats.bad_lines:
        assert "7911123" not in str(bad), bad


@pytest.mark.parametrize("name", ["missing.jsonl", "."])
def test_cli_an_unreadable_file_is_a_bad_argument_before_kafka_is_asked(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(replay_mod, "_TopicMetadata", None)  # any use of Kafka would fail loudly
    with pytest.raises(SystemExit) as exc:
        main(["replay", str(tmp_path / name), "--topic-map", "clicks=c2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("does not exist" in err or "is a directory" in err)
