"""Replay a recorded log or a JSONL export of events into Kafka (`nudge replay`).

The log format is described in `producers.logfile`. Messages are sent through
`producers.kafka.EventProducer` (acks=all, idempotent) in file order.

Ordering and partitions. Per-key order is what the stream relies on: messages
with the same key go to the same partition, are sent in file order, and the
idempotent producer keeps the order within a partition. By default the key
decides the partition with kafka-python's default partitioner, murmur2 as in
the Java client, so a log recorded from a Java/kafka-python producer lands on
the same partitions when the target topic has the same partition count, and a
target with a different count still gets a correct per-key layout. Two cases
keep the recorded partition instead:

- a message with a null key (no key to decide; the partitioner would pick a
  random partition): it goes to its recorded partition, modulo the target's
  partition count, so a replay is deterministic;
- `--keep-partitions`: every recorded message goes to its recorded partition.
  Use it to reproduce a log exactly when the original producer did not use
  murmur2 (librdkafka's default partitioner hashes with CRC32) or chose
  partitions explicitly. The target must have at least as many partitions.

Record timestamps are not copied: the producer stamps messages with the send
time. Old CreateTime timestamps would make the broker's time-based retention
delete a replayed log's segments almost at once, and nudge reads event time
from the event's `ts`, not from Kafka.

Pacing follows the original timing (the record timestamp, or the event's `ts`
for plain JSONL) divided by `--speed`: a message is due at start + (t - t0) /
speed, and the replayer sleeps only when it is more than a few ms ahead. A
message whose time is earlier than one already sent (interleaved partitions)
goes out at once: file order wins over the clock, because per-key order matters
more than timing. `--speed max` does not pace at all.

`--shift-to-now` moves every valid event's `ts` by one constant so that the
first valid event's `ts` is the replay's start time, written as epoch ms.
Values that are not valid events are sent unchanged, so deliberately broken
messages reach the dead-letter queue byte for byte.

Failing fast. Kafka must answer within a few seconds (`nudge.kafka_clients`),
`--topic-map` targets must exist before the first line is read, and every
other topic the first time a line names it: a missing topic ends the replay
with one line saying how to create it, instead of a client waiting a minute
for metadata that never comes.

Bad lines. A line that cannot be parsed (`producers.logfile`) is counted and
listed by number, and the good lines around it are sent; without `--skip-bad`
the exit status is 1. A line Kafka refuses (larger than the limit, an illegal
topic name, a record the broker rejects; the broker's answer comes back later
and is tied to its line) is also a bad line: with `--skip-bad` it is counted
and the replay goes on; without it the replay stops there, after everything
queued before it is delivered. Every ending, a stop included, prints the
summary: messages sent per topic, bad lines per kind and the first line numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError
from tqdm import tqdm

from nudge.args import input_file
from nudge.errors import ConfigError, InputError, NudgeError
from nudge.events import Rejection, parse_event_obj
from nudge.kafka_clients import connect
from nudge.logs import redact
from nudge.settings import Settings
from nudge.topics import topic_name_problem
from producers.kafka import EventProducer, MessageRefused, Refusal, message_size
from producers.logfile import BadLine, Header, LogRecord, event_time_ms, read_log

__all__ = [
    "MAX_LISTED_BAD_LINES",
    "MessageSink",
    "Pacer",
    "ReplayStats",
    "TimeShifter",
    "configure",
    "parse_speed",
    "parse_topic_map",
    "replay",
    "run",
]

log = logging.getLogger(__name__)

MAX_LISTED_BAD_LINES = 20
PACING_SLACK_S = 0.005
MIN_SPEED = 0.001
# A record batch's header (61 bytes) and one record's varint framing, with room to spare.
_BATCH_FRAMING_BYTES = 512
MAX_SPEED = 1e6


class MessageSink(Protocol):
    """What replay sends through; `producers.kafka.EventProducer` is one."""

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
        """Queue a message; raise `MessageRefused` if Kafka will never take it."""

    def take_refused(self) -> list[Refusal]:
        """Messages the broker refused since the last call, with the tag they were sent with."""

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until every message is delivered (refusals not taken count as losses)."""


def parse_speed(text: str) -> float | None:
    """`max` -> None (no pacing); otherwise a factor in MIN_SPEED..MAX_SPEED (1 = original timing).

    >>> parse_speed("max"), parse_speed("2.5")
    (None, 2.5)
    """
    if text.strip().lower() == "max":
        return None
    allowed = f"expected a number from {MIN_SPEED:g} to {MAX_SPEED:g}, or 'max'"
    try:
        speed = float(text)
    except ValueError:
        raise ConfigError(f"--speed: {allowed}, got {text[:40]!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:  # NaN fails too
        raise ConfigError(f"--speed: {allowed} (no pacing), got {text[:40]!r}")
    return speed


def parse_topic_map(text: str) -> dict[str, str]:
    """`a=b,c=d` -> {'a': 'b', 'c': 'd'}; an empty string maps nothing.

    >>> parse_topic_map("clicks=clicks-test, purchases=p2")
    {'clicks': 'clicks-test', 'purchases': 'p2'}
    """
    mapping: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        source, sep, target = (s.strip() for s in part.partition("="))
        if not sep or not source or not target:
            raise ConfigError(f"--topic-map: expected FROM=TO, got {part[:80]!r}")
        for name in (source, target):
            problem = topic_name_problem(name)
            if problem is not None:
                raise ConfigError(f"--topic-map: in {part[:80]!r}: {problem}")
        if source in mapping and mapping[source] != target:
            raise ConfigError(f"--topic-map: {source!r} is mapped twice ({mapping[source]!r} and {target!r})")
        mapping[source] = target
    return mapping


class Pacer:
    """Holds each message until it is due: start + (t - t0) / speed.

    Sleeps only when more than `slack_s` ahead, so a fast stream is sent in
    bursts between short sleeps, not with one sleep per message.
    """

    def __init__(
        self,
        speed: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        slack_s: float = PACING_SLACK_S,
    ) -> None:
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._slack_s = slack_s
        self._origin: tuple[float, int] | None = None
        self.slept_s = 0.0

    def wait(self, time_ms: int | None) -> float:
        """Block until a message with this original time is due; return the sleep."""
        if self.speed is None or time_ms is None:
            return 0.0
        if self._origin is None:
            self._origin = (self._clock(), time_ms)
            return 0.0
        wall0, t0 = self._origin
        ahead = wall0 + (time_ms - t0) / 1000.0 / self.speed - self._clock()
        if ahead <= self._slack_s:
            return 0.0
        self._sleep(ahead)
        self.slept_s += ahead
        return ahead


class TimeShifter:
    """Rewrites valid events' `ts` so the first valid event is at `now_ms`."""

    def __init__(self, settings: Settings, now_ms: Callable[[], int]) -> None:
        self._settings = settings
        self._now_ms = now_ms
        self.delta_ms: int | None = None
        self.shifted = 0
        self.unchanged = 0
        self.beyond_future_limit = 0

    def shift(self, value: bytes | None) -> bytes | None:
        if value is None or len(value) > self._settings.max_event_bytes:
            self.unchanged += 1
            return value
        try:
            obj: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            self.unchanged += 1
            return value
        if isinstance(parse_event_obj(obj, max_future_ms=self._settings.max_future_ms), Rejection):
            self.unchanged += 1
            return value
        ts = event_time_ms(obj["ts"])
        if ts is None:  # pragma: no cover - a valid event always has a parseable ts
            self.unchanged += 1
            return value
        if self.delta_ms is None:
            self.delta_ms = self._now_ms() - ts
        obj["ts"] = ts + self.delta_ms
        self.shifted += 1
        if obj["ts"] > self._now_ms() + self._settings.max_future_ms:
            # Gaps are kept while --speed compresses them: far-ahead events will be dead-lettered.
            self.beyond_future_limit += 1
        return orjson.dumps(obj)


@dataclass
class ReplayStats:
    """What a replay did. `sent` counts messages Kafka took (a refusal that comes
    back later is moved from `sent` to the bad lines); `bad_lines` lists the
    first MAX_LISTED_BAD_LINES, `bad_by_kind` counts them all."""

    path: Path
    lines: int = 0
    sent: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    bad_count: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    bad_by_kind: Counter[str] = field(default_factory=Counter)
    shifted: int = 0
    not_shifted: int = 0
    shift_ms: int | None = None
    beyond_future_limit: int = 0
    null_headers_sent_empty: int = 0
    paced_sleep_s: float = 0.0
    elapsed_s: float = 0.0
    limit_reached: bool = False
    started: bool = False
    not_delivered: str = ""  # what flushing reported when the replay was stopped by another error

    @property
    def rate(self) -> float:
        """Messages per second over the whole replay (flush included)."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add_bad(self, bad: BadLine) -> None:
        self.bad_count += 1
        self.bad_by_kind[bad.kind] += 1
        if len(self.bad_lines) < MAX_LISTED_BAD_LINES:
            self.bad_lines.append(bad)


class _TopicMetadata:
    """Partition count per topic from cluster metadata, looked up on a topic's first use.

    A topic that does not exist is a ConfigError naming it: kafka-python would
    otherwise block each send for a minute waiting for its metadata.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: KafkaConsumer | None = None
        self._counts: dict[str, int] = {}
        self.max_bytes: dict[str, int] = {}  # per topic: the largest message its brokers take

    def __call__(self, topic: str) -> int:
        count = self._counts.get(topic)
        if count is None:
            self.require([topic])
            count = self._counts[topic]
        return count

    def require(self, topics: Iterable[str], why: str = "") -> None:
        """Look the topics up; ConfigError naming every one that does not exist."""
        if self._consumer is None:
            self._consumer = connect(
                KafkaConsumer,
                self._settings,
                client_id="nudge-replay-metadata",
                group_id=None,
                enable_auto_commit=False,
            )
        missing = []
        for topic in dict.fromkeys(topics):
            if topic in self._counts:
                continue
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions:
                self._counts[topic] = len(partitions)
            else:
                missing.append(topic)
        self._fetch_limits([t for t in topics if t in self._counts and t not in self.max_bytes])
        if missing:
            names = ", ".join(repr(redact(t)) for t in missing)
            raise ConfigError(
                f"topic {names} does not exist on {self._settings.kafka_bootstrap}{why}; create it first "
                "(`nudge topics` creates the configured topics, named by NUDGE_TOPIC_*), "
                "or send it elsewhere with --topic-map"
            )

    def _fetch_limits(self, topics: list[str]) -> None:
        """The topics' max.message.bytes, less a batch's framing, capped by NUDGE_MAX_MESSAGE_BYTES.

        A message the broker refuses after it was sent puts kafka-python's
        idempotent producer in a fatal state (the messages queued after it fail
        too); refusing it here instead keeps it one bad line among good ones.
        """
        if not topics:
            return
        limit = self._settings.max_message_bytes
        found: dict[str, Any] = {}
        admin = connect(KafkaAdminClient, self._settings, client_id="nudge-replay-metadata")
        try:
            resources = [ConfigResource(ConfigResourceType.TOPIC, t, configs=["max.message.bytes"]) for t in topics]
            found = admin.describe_configs(resources).get("topic", {})
        except KafkaError as exc:
            log.warning("cannot read max.message.bytes of %s (%s); assuming %d", ", ".join(topics), exc, limit)
        finally:
            admin.close()
        for topic in topics:
            try:
                topic_limit = int(found[topic]["max.message.bytes"]["value"]) - _BATCH_FRAMING_BYTES
            except (KeyError, TypeError, ValueError):
                topic_limit = limit
            self.max_bytes[topic] = min(limit, topic_limit)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _sendable_headers(headers: tuple[Header, ...], stats: ReplayStats) -> list[tuple[str, bytes]]:
    # kafka-python's producer refuses null header values (Java's allows them).
    out: list[tuple[str, bytes]] = []
    for name, value in headers:
        if value is None:
            stats.null_headers_sent_empty += 1
            value = b""
        out.append((name, value))
    return out


def _choose_partition(
    rec: LogRecord, topic: str, keep_partitions: bool, partition_count: Callable[[str], int | None]
) -> int | None:
    if rec.partition is None or (rec.key is not None and not keep_partitions):
        return None  # the key decides (murmur2)
    count = partition_count(topic)
    if count is None:
        return None  # unknown to the caller's lookup: the producer picks
    if keep_partitions and rec.partition >= count:
        raise InputError(
            f"line {rec.line}: recorded partition {rec.partition} does not exist in {topic!r} "
            f"({count} partitions); drop --keep-partitions to let the key decide"
        )
    return rec.partition % count


class _Refusals:
    """Turns Kafka's refusals into bad lines: counted with --skip-bad, else the end of the replay."""

    def __init__(self, stats: ReplayStats, skip_bad: bool) -> None:
        self._stats = stats
        self._skip_bad = skip_bad
        self.stopping = False  # already ending: count, do not raise again

    def refused(self, line: int, topic: str | None, reason: str, *, was_sent: bool) -> None:
        stats = self._stats
        if was_sent and topic is not None:
            stats.sent -= 1
            stats.by_topic[topic] -= 1
        kind = "refused" if topic is not None else "bad_topic"
        stats.add_bad(BadLine(line, reason, kind))
        if not self._skip_bad and not self.stopping:
            raise InputError(f"line {line}: {reason}; replay stopped there (--skip-bad skips such lines and goes on)")

    def collect(self, sink: MessageSink) -> None:
        """Refusals the broker sent after `send` returned. They end the replay even
        with --skip-bad: kafka-python's idempotent producer then fails the messages
        queued after the refused one too, so nothing later can be trusted to land."""
        refused = sorted(sink.take_refused(), key=lambda r: r.tag)
        if not refused:
            return
        stats = self._stats
        for refusal in refused:
            line, topic = refusal.tag
            stats.sent -= 1
            stats.by_topic[topic] -= 1
        line, topic = refused[0].tag
        stats.add_bad(BadLine(line, refused[0].reason, "refused"))
        if self.stopping:
            return
        self.stopping = True
        later = f", and {len(refused) - 1:,} later message(s) failed with it" if len(refused) > 1 else ""
        raise InputError(
            f"line {line}: {refused[0].reason} after it was sent{later}; the producer cannot go on, "
            f"so the replay stops (make the message smaller, or raise max.message.bytes of topic {topic})"
        )


def replay(
    path: Path,
    settings: Settings,
    *,
    speed: float | None = None,
    shift_to_now: bool = False,
    topic_map: Mapping[str, str] | None = None,
    limit: int | None = None,
    keep_partitions: bool = False,
    skip_bad: bool = True,
    producer: MessageSink | None = None,
    partition_count: Callable[[str], int | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now_ms: Callable[[], int] | None = None,
    progress: bool = False,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Send every good line of `path` to Kafka; bad lines are counted, not fatal.

    A line Kafka refuses is a bad line too; with `skip_bad=False` it ends the
    replay with InputError (naming the line) once the lines before it are
    delivered. `stats`, when given, is filled in place, so a caller still has
    the counts when the replay stops with an error.

    `producer` defaults to a new EventProducer (closed at the end); a given one
    is flushed but left open. `partition_count` replaces the cluster metadata
    lookup (which also refuses topics that do not exist); it, `clock`, `sleep`
    and `now_ms` exist for tests and benchmarks. Raises DeliveryError if Kafka
    lost a message, ConfigError for a topic that does not exist.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    topic_map = dict(topic_map or {})
    wall_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
    stats = ReplayStats(path) if stats is None else stats
    pacer = Pacer(speed, clock=clock, sleep=sleep)
    shifter = TimeShifter(settings, wall_ms) if shift_to_now else None
    metadata: _TopicMetadata | None = None
    counts: Callable[[str], int | None]
    if partition_count is None:
        metadata = counts = _TopicMetadata(settings)
    else:
        counts = partition_count
    refusals = _Refusals(stats, skip_bad)
    items = read_log(path, settings) if limit != 0 else iter(())  # a file we cannot read fails before Kafka
    owned: EventProducer | None = None
    bar: tqdm[Any] | None = None
    failing = True
    try:
        if metadata is not None and topic_map:
            metadata.require(topic_map.values(), " (a --topic-map target)")
        if producer is None:
            producer = owned = EventProducer(settings, client_id="nudge-replay")
        bar = tqdm(total=limit, unit="msg", desc="replay", disable=not progress, file=sys.stderr, mininterval=0.5)
        started = clock()
        stats.started = True
        try:
            _send_all(
                items,
                producer,
                stats,
                bar,
                topic_map=topic_map,
                limit=limit,
                keep_partitions=keep_partitions,
                pacer=pacer,
                shifter=shifter,
                counts=counts,
                checked=metadata,
                refusals=refusals,
            )
        except BaseException:
            # Stopping: deliver what was queued first (nothing lost); its refusals are bad lines too.
            refusals.stopping = True
            try:
                _finish(producer, refusals)
            except NudgeError as exc:
                stats.not_delivered = str(exc)
            raise
        else:
            _finish(producer, refusals)
        finally:
            stats.elapsed_s = clock() - started
        failing = False
    finally:
        if bar is not None:
            bar.close()
        if metadata is not None:
            metadata.close()
        if owned is not None:
            try:
                owned.close()
            except NudgeError as exc:
                if failing:  # that error is the one to show
                    stats.not_delivered = stats.not_delivered or str(exc)
                else:
                    raise
    if shifter is not None:
        stats.shifted, stats.not_shifted, stats.shift_ms = shifter.shifted, shifter.unchanged, shifter.delta_ms
        stats.beyond_future_limit = shifter.beyond_future_limit
    return stats


def _finish(producer: MessageSink, refusals: _Refusals) -> None:
    """Flush; refusals that came back are bad lines, and the first one is the reason
    to report even when the flush failed too (a refusal makes kafka-python's flush fail)."""
    try:
        producer.flush()
    finally:
        refusals.collect(producer)


def _send_all(
    items: Iterator[LogRecord | BadLine],
    producer: MessageSink,
    stats: ReplayStats,
    bar: tqdm[Any],
    *,
    topic_map: dict[str, str],
    limit: int | None,
    keep_partitions: bool,
    pacer: Pacer,
    shifter: TimeShifter | None,
    counts: Callable[[str], int | None],
    checked: _TopicMetadata | None,
    refusals: _Refusals,
) -> None:
    """The replay loop: one send per good line, in file order."""
    if limit == 0:
        stats.limit_reached = True
    known_topics: set[str] = set()
    pending_bar = 0
    by_topic = stats.by_topic
    try:
        for item in items:
            stats.lines = item.line
            if isinstance(item, BadLine):
                stats.add_bad(item)
                continue
            topic = topic_map.get(item.topic, item.topic)
            if topic not in known_topics:
                problem = topic_name_problem(topic)
                if problem is not None:
                    refusals.refused(item.line, None, redact(problem), was_sent=False)
                    continue
                if checked is not None:
                    checked.require([topic], f" (line {item.line} goes to it)")
                known_topics.add(topic)
            if pacer.speed is not None:
                stats.paced_sleep_s += pacer.wait(item.time_ms)
            value = item.value if shifter is None else shifter.shift(item.value)
            partition = None
            if item.partition is not None and (item.key is None or keep_partitions):
                partition = _choose_partition(item, topic, keep_partitions, counts)
            headers = _sendable_headers(item.headers, stats) if item.headers else None
            if checked is not None:
                max_bytes = checked.max_bytes.get(topic)
                if max_bytes is not None and (len(value or b"") + len(item.key or b"") > max_bytes or headers):
                    size = message_size(item.key, value, headers)
                    if size > max_bytes:
                        reason = f"message is {size:,} bytes (key, value and headers), over the {max_bytes:,}-byte limit of topic {topic}"
                        refusals.refused(item.line, topic, reason, was_sent=False)
                        continue
            try:
                producer.send(topic, value, item.key, partition=partition, headers=headers, tag=(item.line, topic))
            except MessageRefused as exc:
                refusals.refused(item.line, topic, exc.reason, was_sent=False)
                continue
            stats.sent += 1
            by_topic[topic] += 1
            refusals.collect(producer)
            pending_bar += 1
            if pending_bar >= 1000:
                bar.update(pending_bar)
                pending_bar = 0
            if stats.sent == limit:
                stats.limit_reached = True
                break
    finally:
        bar.update(pending_bar)


# --- CLI -------------------------------------------------------------------------


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Replay a recorded log (nudge record) or a JSONL file of events into Kafka, keeping per-key order. "
        "Format: see producers/logfile.py."
    )
    parser.add_argument(
        "file", type=input_file, help="log to replay: .jsonl.gz or .jsonl, recorded messages or plain events"
    )
    parser.add_argument(
        "--speed",
        type=_arg(parse_speed),
        default=None,
        metavar="X|max",
        help="original timing divided by X (1 = real time, 10 = ten times faster); 'max' = no pacing [default: max]",
    )
    parser.add_argument(
        "--shift-to-now",
        action="store_true",
        help="move every valid event's ts so the first one is now (gaps kept; written as epoch ms)",
    )
    parser.add_argument(
        "--topic-map",
        type=_arg(parse_topic_map),
        default={},
        metavar="A=B,...",
        help="send messages of topic A to topic B (after plain events got their topic from their type)",
    )
    parser.add_argument(
        "--keep-partitions",
        action="store_true",
        help="send recorded messages to their recorded partition instead of letting the key decide",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="count lines that cannot be replayed (or that Kafka refuses) and go on, exit 0; "
        "without it such lines give exit 1, and a line Kafka refuses stops the replay",
    )
    parser.add_argument("--limit", type=_non_negative, default=None, metavar="N", help="send at most N messages")
    parser.epilog = settings_epilog(
        "kafka_bootstrap", "topic_clicks", "topic_purchases", "topic_app_events", "max_event_bytes", "max_future_ms"
    )
    parser.set_defaults(func=run)


def _print_summary(stats: ReplayStats, settings: Settings, *, stopped: bool = False) -> None:
    out = sys.stdout
    how = " (stopped)" if stopped else " (limit reached)" if stats.limit_reached else ""
    print(
        f"replayed {stats.sent:,} messages from {stats.path} in {stats.elapsed_s:.2f} s ({stats.rate:,.0f} msg/s){how}",
        file=out,
    )
    for topic, count in sorted(stats.by_topic.items()):
        print(f"  {topic:30} {count:>10,}", file=out)
    if not stats.lines and not stopped:
        print("  the file has no lines to replay (empty or blank)", file=out)
    if stats.paced_sleep_s:
        print(f"  paced: slept {stats.paced_sleep_s:.2f} s in total", file=out)
    if stats.shift_ms is not None or stats.not_shifted:
        shift = "n/a" if stats.shift_ms is None else f"{stats.shift_ms / 86_400_000:+.2f} days"
        print(f"  ts shifted by {shift}: {stats.shifted:,} events; {stats.not_shifted:,} values unchanged", file=out)
    if stats.beyond_future_limit:
        print(
            f"  warning: {stats.beyond_future_limit:,} shifted events are more than "
            f"{settings.max_future_ms / 86_400_000:g} days ahead of the wall clock; the worker will dead-letter "
            "them (replay slower, or a shorter log)",
            file=out,
        )
    if stats.null_headers_sent_empty:
        print(f"  note: {stats.null_headers_sent_empty:,} null header values sent as empty (kafka-python)", file=out)
    if stats.not_delivered:
        print(f"  warning: while stopping, {stats.not_delivered}", file=out)
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in stats.bad_by_kind.most_common())
    first = ", ".join(str(bad.line) for bad in stats.bad_lines[:10])
    at = "line" if stats.bad_count == 1 else "lines"
    detail = f" ({kinds}) at {at} {first}{', ...' if stats.bad_count > 10 else ''}" if stats.bad_count else ""
    print(f"bad lines: {stats.bad_count:,}{detail}", file=out)


def _print_bad_lines(stats: ReplayStats) -> None:
    listed = "\n".join(f"  {bad}" for bad in stats.bad_lines)
    more = stats.bad_count - len(stats.bad_lines)
    tail = f"\n  ... and {more:,} more" if more else ""
    print(f"nudge replay: {stats.bad_count:,} bad line(s) in {stats.path}:\n{listed}{tail}", file=sys.stderr)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stats = ReplayStats(args.file)
    try:
        replay(
            args.file,
            settings,
            speed=args.speed,
            shift_to_now=args.shift_to_now,
            topic_map=args.topic_map,
            limit=args.limit,
            keep_partitions=args.keep_partitions,
            skip_bad=args.skip_bad,
            progress=sys.stderr.isatty(),
            stats=stats,
        )
    except (NudgeError, KeyboardInterrupt):
        # The summary of what was done, then the CLI edge prints the one line saying why it stopped.
        if stats.started and (stats.sent or stats.bad_count):
            _print_summary(stats, settings, stopped=True)
            if stats.bad_count > 1:
                _print_bad_lines(stats)
        raise
    _print_summary(stats, settings)
    if stats.bad_count:
        _print_bad_lines(stats)
        if not args.skip_bad:
            if stats.sent:
                verdict = f"the other {stats.sent:,} messages were sent; exiting 1 because of the bad lines"
            else:
                verdict = "nothing was sent: no line could be replayed; exiting 1"
            print(f"nudge replay: {verdict} (--skip-bad accepts bad lines)", file=sys.stderr)
            return 1
    return 0
