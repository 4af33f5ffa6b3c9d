"""Record Kafka topics into a log file (`nudge record`).

A kafka-python consumer without a consumer group is assigned every partition
of the chosen topics explicitly and starts at their beginning
(`--from-beginning`) or at their current end; it commits nothing, so
recording never disturbs the stream workers' offsets. Every message is
written in the format of `producers.logfile`, byte for byte (any key, value
and headers).

Within a partition the log keeps the offset order. Messages from one poll are
merged across partitions by timestamp, which keeps the log roughly in time
order (better pacing on replay) without ever reordering a partition.

Recording stops after `--until-idle` seconds without a new message, after
`--max-messages`, with `--until-end` once every partition has reached the
end offset it had when recording started, or on Ctrl-C / SIGTERM. In every
case the file is closed cleanly (a complete gzip stream) and a summary per
topic is printed.
"""

from __future__ import annotations

import argparse
import heapq
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from nudge.args import integer, number, output_file
from nudge.errors import ConfigError
from nudge.kafka_clients import connect
from nudge.settings import Settings
from nudge.stopping import stop_on_signals
from nudge.text import printable, quoted
from nudge.topics import topic_name_problem
from producers.logfile import LogWriter, encode_record

__all__ = ["RecordStats", "TopicStats", "configure", "record", "run"]

POLL_TIMEOUT_MS = 200


@dataclass
class TopicStats:
    """Messages recorded from one topic."""

    messages: int = 0
    bytes: int = 0
    partitions: set[int] = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None


@dataclass
class RecordStats:
    """What a recording did; `stopped_by` says why it ended."""

    path: Path
    messages: int = 0
    topics: dict[str, TopicStats] = field(default_factory=dict)
    stopped_by: str = ""
    elapsed_s: float = 0.0


def _consumer(settings: Settings) -> KafkaConsumer:
    return connect(
        KafkaConsumer,
        settings,
        client_id="nudge-record",
        group_id=None,
        enable_auto_commit=False,
        # Never record data of aborted transactions; identical for plain producers.
        isolation_level="read_committed",
        max_poll_records=5000,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )


def _assign(consumer: KafkaConsumer, settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    missing = []
    for topic in topics:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            missing.append(topic)
        partitions.extend(TopicPartition(topic, p) for p in sorted(ids or ()))
    if missing:
        raise ConfigError(f"topic(s) {', '.join(missing)} do not exist on {settings.kafka_bootstrap}")
    consumer.assign(partitions)
    return partitions


def _time_of(message: Any) -> int:
    return int(message.timestamp) if message.timestamp is not None and message.timestamp >= 0 else -1


def record(
    settings: Settings,
    out: Path,
    *,
    topics: Sequence[str] | None = None,
    from_beginning: bool = False,
    until_idle: float | None = None,
    until_end: bool = False,
    max_messages: int | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    progress: bool = False,
) -> RecordStats:
    """Record `topics` (default: the three input topics) into `out`.

    `on_ready` is called once every partition's start position is fixed:
    anything produced after it is recorded. `stop` ends the recording from
    another thread or a signal handler.
    """
    topics = list(topics or settings.input_topics)
    stats = RecordStats(out, topics={t: TopicStats() for t in topics})
    consumer = _consumer(settings)
    try:
        partitions = _assign(consumer, settings, topics)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        # seek_to_* is lazy: resolve positions now so "recording from here" is true.
        positions = {tp: consumer.position(tp) for tp in partitions}
        end_offsets: dict[TopicPartition, int] = consumer.end_offsets(partitions) if until_end else {}
        if on_ready is not None:
            on_ready()
        started = last_message = time.monotonic()
        bar = tqdm(unit="msg", desc="record", disable=not progress, file=sys.stderr, mininterval=0.5)
        try:
            with LogWriter(out) as writer:
                stats.stopped_by = _loop(
                    consumer, writer, stats, positions, end_offsets, until_idle, max_messages, stop, bar, last_message
                )
        finally:
            bar.close()
        stats.elapsed_s = time.monotonic() - started
        return stats
    finally:
        consumer.close()


def _loop(
    consumer: KafkaConsumer,
    writer: LogWriter,
    stats: RecordStats,
    positions: dict[TopicPartition, int],
    end_offsets: dict[TopicPartition, int],
    until_idle: float | None,
    max_messages: int | None,
    stop: threading.Event | None,
    bar: tqdm[Any],
    last_message: float,
) -> str:
    def caught_up() -> bool:
        return all(positions[tp] >= end for tp, end in end_offsets.items())

    try:
        while True:
            if max_messages is not None and stats.messages >= max_messages:
                return f"--max-messages {max_messages}"
            if end_offsets and caught_up():
                return "--until-end: reached the end offsets"
            if stop is not None and stop.is_set():
                return "stop requested"
            budget = None if max_messages is None else max_messages - stats.messages
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=budget)
            if not batches:
                if until_idle is not None and time.monotonic() - last_message >= until_idle:
                    return f"--until-idle: no message for {until_idle:g} s"
                continue
            last_message = time.monotonic()
            # heapq.merge keeps each partition's own order whatever the timestamps.
            merged = heapq.merge(*batches.values(), key=_time_of)
            for m in merged:
                ts = _time_of(m)
                headers = [(h[0], h[1]) for h in (m.headers or ())]
                writer.write(
                    encode_record(m.topic, m.partition, m.offset, ts if ts >= 0 else None, m.key, m.value, headers)
                )
                t = stats.topics[m.topic]
                t.messages += 1
                t.bytes += len(m.key or b"") + len(m.value or b"")
                t.partitions.add(m.partition)
                if ts >= 0:
                    t.first_ts = ts if t.first_ts is None else min(t.first_ts, ts)
                    t.last_ts = ts if t.last_ts is None else max(t.last_ts, ts)
                stats.messages += 1  # per message: a Ctrl-C mid-batch still counts exactly
            bar.update(stats.messages - bar.n)
            for tp in batches:
                positions[tp] = consumer.position(tp)
    except KeyboardInterrupt:
        return "Ctrl-C"


# --- CLI -------------------------------------------------------------------------


def _topic_list(text: str) -> list[str]:
    topics = [t.strip() for t in text.split(",") if t.strip()]
    if not topics:
        raise argparse.ArgumentTypeError(f"expected comma-separated topic names, got {quoted(text)}")
    for topic in topics:
        problem = topic_name_problem(topic)
        if problem:
            raise argparse.ArgumentTypeError(printable(problem))
    return list(dict.fromkeys(topics))


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Record Kafka topics into a gzip'd JSONL log that `nudge replay` reads (format: producers/logfile.py). "
        "Stops on Ctrl-C, --until-idle, --until-end or --max-messages; the file is always closed cleanly."
    )
    parser.add_argument(
        "--topics",
        type=_topic_list,
        default=None,
        metavar="T1,T2",
        help="topics to record [default: the three input topics from settings]",
    )
    parser.add_argument("--out", type=output_file, required=True, help="log to write, e.g. log.jsonl.gz (.gz = gzip'd)")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not at the end")
    parser.add_argument(
        "--until-idle",
        type=number(0, 86_400, low_open=True),
        default=None,
        metavar="S",
        help="stop after S seconds without a message (up to a day)",
    )
    parser.add_argument(
        "--until-end", action="store_true", help="stop once every partition reaches its end offset at start"
    )
    parser.add_argument(
        "--max-messages", type=integer(1, 10**12), default=None, metavar="N", help="stop after N messages"
    )
    parser.epilog = settings_epilog("kafka_bootstrap", "topic_clicks", "topic_purchases", "topic_app_events")
    parser.set_defaults(func=run)


def _iso(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # SIGTERM only: Ctrl-C is a KeyboardInterrupt, which `record` handles itself.
    with stop_on_signals(signal.SIGTERM) as stop:
        stats = record(
            settings,
            args.out,
            topics=args.topics,
            from_beginning=args.from_beginning,
            until_idle=args.until_idle,
            until_end=args.until_end,
            max_messages=args.max_messages,
            stop=stop,
            on_ready=lambda: print(f"recording {', '.join(args.topics or settings.input_topics)} ...", file=sys.stderr),
            progress=sys.stderr.isatty(),
        )
    print(f"recorded {stats.messages:,} messages into {stats.path} in {stats.elapsed_s:.1f} s ({stats.stopped_by})")
    print(f"  {'topic':30} {'messages':>10} {'bytes':>12} {'partitions':>10}  first .. last timestamp")
    for topic, t in stats.topics.items():
        print(
            f"  {topic:30} {t.messages:>10,} {t.bytes:>12,} {len(t.partitions):>10}  "
            f"{_iso(t.first_ts)} .. {_iso(t.last_ts)}"
        )
    return 0
