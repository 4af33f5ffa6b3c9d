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
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from tqdm import tqdm

from nudge.errors import ConfigError, DependencyUnavailable, InputError
from nudge.events import Rejection, parse_event_obj
from nudge.settings import Settings
from producers.kafka import EventProducer
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
    ) -> None: ...

    def flush(self, timeout: float | None = 60.0) -> None: ...


def parse_speed(text: str) -> float | None:
    """`max` -> None (no pacing); otherwise a factor > 0 (1 = original timing)."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise ConfigError(f"--speed: expected a number > 0 or 'max', got {text!r}") from None
    if not speed > 0 or speed == float("inf"):
        raise ConfigError(f"--speed: expected a number > 0 or 'max', got {text!r}")
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
            raise ConfigError(f"--topic-map: expected FROM=TO, got {part!r}")
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
    """What a replay did. `bad_lines` lists the first MAX_LISTED_BAD_LINES."""

    path: Path
    sent: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    bad_count: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    shifted: int = 0
    not_shifted: int = 0
    shift_ms: int | None = None
    beyond_future_limit: int = 0
    null_headers_sent_empty: int = 0
    paced_sleep_s: float = 0.0
    elapsed_s: float = 0.0
    limit_reached: bool = False

    @property
    def rate(self) -> float:
        """Messages per second over the whole replay (flush included)."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _PartitionCounts:
    """Partition count per topic, from cluster metadata, looked up on first need."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: KafkaConsumer | None = None
        self._counts: dict[str, int | None] = {}

    def __call__(self, topic: str) -> int | None:
        if topic not in self._counts:
            if self._consumer is None:
                try:
                    self._consumer = KafkaConsumer(
                        bootstrap_servers=self._settings.kafka_bootstrap,
                        client_id="nudge-replay-metadata",
                        group_id=None,
                        enable_auto_commit=False,
                    )
                except KafkaError as exc:
                    raise DependencyUnavailable(
                        f"Kafka is not reachable at {self._settings.kafka_bootstrap} ({exc})"
                    ) from None
            partitions = self._consumer.partitions_for_topic(topic)
            self._counts[topic] = len(partitions) if partitions else None
        return self._counts[topic]

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
        # Unknown topic: the producer will create it (if the broker allows) and pick.
        return None
    if keep_partitions and rec.partition >= count:
        raise InputError(
            f"line {rec.line}: recorded partition {rec.partition} does not exist in {topic!r} "
            f"({count} partitions); drop --keep-partitions to let the key decide"
        )
    return rec.partition % count


def replay(
    path: Path,
    settings: Settings,
    *,
    speed: float | None = None,
    shift_to_now: bool = False,
    topic_map: Mapping[str, str] | None = None,
    limit: int | None = None,
    keep_partitions: bool = False,
    producer: MessageSink | None = None,
    partition_count: Callable[[str], int | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now_ms: Callable[[], int] | None = None,
    progress: bool = False,
) -> ReplayStats:
    """Send every good line of `path` to Kafka; bad lines are counted, not fatal.

    `producer` defaults to a new EventProducer (closed at the end); a given one
    is flushed but left open. `partition_count`, `clock`, `sleep` and `now_ms`
    exist for tests. Raises DeliveryError if Kafka lost a message.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    topic_map = dict(topic_map or {})
    wall_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
    stats = ReplayStats(path)
    pacer = Pacer(speed, clock=clock, sleep=sleep)
    shifter = TimeShifter(settings, wall_ms) if shift_to_now else None
    own_counts = partition_count is None
    counts: Callable[[str], int | None] = _PartitionCounts(settings) if partition_count is None else partition_count
    owned: EventProducer | None = None
    if producer is None:
        producer = owned = EventProducer(settings, client_id="nudge-replay")
    bar = tqdm(total=limit, unit="msg", desc="replay", disable=not progress, file=sys.stderr, mininterval=0.5)
    started = clock()
    pending_bar = 0
    by_topic = stats.by_topic
    try:
        if limit == 0:
            stats.limit_reached = True
        for item in read_log(path, settings) if limit != 0 else ():
            if isinstance(item, BadLine):
                stats.bad_count += 1
                if len(stats.bad_lines) < MAX_LISTED_BAD_LINES:
                    stats.bad_lines.append(item)
                continue
            topic = topic_map.get(item.topic, item.topic)
            if pacer.speed is not None:
                stats.paced_sleep_s += pacer.wait(item.time_ms)
            value = item.value if shifter is None else shifter.shift(item.value)
            partition = None
            if item.partition is not None and (item.key is None or keep_partitions):
                partition = _choose_partition(item, topic, keep_partitions, counts)
            headers = _sendable_headers(item.headers, stats) if item.headers else None
            producer.send(topic, value, item.key, partition=partition, headers=headers)
            stats.sent += 1
            by_topic[topic] += 1
            pending_bar += 1
            if pending_bar >= 1000:
                bar.update(pending_bar)
                pending_bar = 0
            if stats.sent == limit:
                stats.limit_reached = True
                break
        producer.flush()
    finally:
        bar.update(pending_bar)
        bar.close()
        if own_counts and isinstance(counts, _PartitionCounts):
            counts.close()
        if owned is not None:
            owned.close()
    stats.elapsed_s = clock() - started
    if shifter is not None:
        stats.shifted, stats.not_shifted, stats.shift_ms = shifter.shifted, shifter.unchanged, shifter.delta_ms
        stats.beyond_future_limit = shifter.beyond_future_limit
    return stats


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
    parser.add_argument("file", type=Path, help="log to replay: .jsonl.gz or .jsonl, recorded messages or plain events")
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
    parser.add_argument("--skip-bad", action="store_true", help="exit 0 even if some lines could not be replayed")
    parser.add_argument("--limit", type=_non_negative, default=None, metavar="N", help="send at most N messages")
    parser.epilog = settings_epilog(
        "kafka_bootstrap", "topic_clicks", "topic_purchases", "topic_app_events", "max_event_bytes", "max_future_ms"
    )
    parser.set_defaults(func=run)


def _print_summary(stats: ReplayStats, settings: Settings) -> None:
    out = sys.stdout
    how = " (limit reached)" if stats.limit_reached else ""
    print(
        f"replayed {stats.sent:,} messages from {stats.path} in {stats.elapsed_s:.2f} s ({stats.rate:,.0f} msg/s){how}",
        file=out,
    )
    for topic, count in sorted(stats.by_topic.items()):
        print(f"  {topic:30} {count:>10,}", file=out)
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
    print(f"bad lines: {stats.bad_count:,}", file=out)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stats = replay(
        args.file,
        settings,
        speed=args.speed,
        shift_to_now=args.shift_to_now,
        topic_map=args.topic_map,
        limit=args.limit,
        keep_partitions=args.keep_partitions,
        progress=sys.stderr.isatty(),
    )
    _print_summary(stats, settings)
    if stats.bad_count:
        listed = "\n".join(f"  {bad}" for bad in stats.bad_lines)
        more = stats.bad_count - len(stats.bad_lines)
        tail = f"\n  ... and {more:,} more" if more else ""
        print(f"nudge replay: {stats.bad_count:,} bad line(s) in {args.file}:\n{listed}{tail}", file=sys.stderr)
        if not args.skip_bad:
            print("nudge replay: good lines were sent; exiting 1 (use --skip-bad to accept bad lines)", file=sys.stderr)
            return 1
    return 0
