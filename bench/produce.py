"""How fast events get into Kafka (`nudge bench produce`).

One run on one machine with one message set, measured three ways:

(a) raw ceiling   kafka-python `KafkaProducer` with EventProducer's settings
                  (acks=all, idempotent, same linger and batch size) sending
                  pre-encoded (key, value) bytes as fast as it can, then flush;
(b) simulator     `producers.simulator.generate` -> orjson -> EventProducer,
                  generation included (what `nudge simulate` does);
(c) replay        `producers.replay.replay` of a recorded log written
                  beforehand, `--speed max` (file reading and parsing included);
plus two phases that locate a gap: EventProducer sending the pre-encoded
bytes (the wrapper's own cost: delivery callbacks), and replay of the same
events as plain JSONL (the dataset-import format).

Every phase sends the same N messages (same keys, same bytes) into its own
fresh topics, with a producer that is already connected and has the topics'
metadata (one warm-up message per topic), timed from the first send to the
end of the final flush. Phases are interleaved over `--repeat` rounds and the
median is reported, with the order rotated each round, so a slow moment of a
shared machine does not hit one phase only. Besides wall-clock events/s, the
process CPU time per event (all threads, so kafka-python's sender thread too)
is reported: it is far less sensitive to other processes on the machine.
Target: replay >= 80 % of the raw ceiling. Topics are deleted at the end.

Writes OUT_DIR/produce.json and OUT_DIR/produce.png (bars = median events/s,
whiskers = min..max over rounds, dashed line = raw ceiling).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from tqdm import tqdm

from nudge.args import integer, output_dir, output_problem
from nudge.args import seed as seed_arg
from nudge.errors import ConfigError, DeliveryError
from nudge.events import TOPIC_OF_TYPE
from nudge.kafka_security import client_config
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics, topic_for_kind
from producers.kafka import EventProducer
from producers.logfile import LogWriter, encode_event, encode_record
from producers.replay import replay

__all__ = ["PHASES", "TARGET_REPLAY_RATIO", "configure", "run", "run_benchmark"]

log = logging.getLogger(__name__)

TARGET_REPLAY_RATIO = 0.8
KINDS = ("clicks", "purchases", "app-events")
# What "same batching" means: EventProducer's defaults (producers/kafka.py).
RAW_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "retries": 2_147_483_647,
    "delivery_timeout_ms": 120_000,
}
COMPARED_KEYS = (
    "acks",
    "enable_idempotence",
    "linger_ms",
    "batch_size",
    "compression_type",
    "max_in_flight_requests_per_connection",
)

Event = dict[str, Any]


# --- the message set ------------------------------------------------------------------


def _simulated(n: int, seed: int) -> Callable[[], Iterator[Event]] | None:
    try:
        from producers.simulator import generate
    except ImportError:
        return None
    # ~13 events per user per day: enough users that the first n events span two weeks.
    users = max(10, n // 120 + 1)

    def events() -> Iterator[Event]:
        return itertools.islice(generate(users=users, days=14, seed=seed, start=datetime(2026, 1, 5, tzinfo=UTC)), n)

    return events


def _synthetic(n: int, seed: int) -> Callable[[], Iterator[Event]]:
    """Stand-in with the simulator's shape, for when producers/simulator.py is absent."""

    def events() -> Iterator[Event]:
        rng = random.Random(seed)
        ts = 1_767_600_000_000
        for i in range(n):
            ts += rng.randrange(0, 2_000)
            user = f"u{rng.randrange(max(10, n // 100)):06d}"
            base = {"event_id": f"b{seed}-{i}", "user_id": user, "ts": ts, "schema_version": 1}
            roll = rng.random()
            if roll < 0.80:
                kind = rng.choice(("page_view", "product_view", "add_to_cart", "search"))
                yield base | {
                    "type": kind,
                    "item_id": f"i{rng.randrange(500)}",
                    "category": rng.choice(("shoes", "books", "toys", "garden")),
                    "price": round(rng.uniform(1, 200), 2),
                    "session_id": f"s{user}-{ts // 1_800_000}",
                }
            elif roll < 0.85:
                items = [
                    {"item_id": f"i{rng.randrange(500)}", "category": "books", "price": 9.99, "quantity": 1}
                    for _ in range(rng.randrange(1, 4))
                ]
                yield base | {
                    "type": "purchase",
                    "order_id": f"o{i}",
                    "items": items,
                    "total": round(9.99 * len(items), 2),
                    "currency": "EUR",
                }
            else:
                yield base | {"type": rng.choice(("app_open", "app_close", "push_received"))}

    return events


# --- phases -----------------------------------------------------------------------------


@dataclass
class _Inputs:
    """The one message set every phase sends, in the forms the phases need."""

    n: int
    messages: list[tuple[str, bytes, bytes]]  # (kind, key, value)
    make_events: Callable[[], Iterator[Event]]
    recorded_log: Path
    plain_log: Path


@dataclass
class _Sample:
    wall_s: float
    cpu_s: float  # this process, all threads (the producer's sender thread included)


class _Stopwatch:
    def __enter__(self) -> _Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sample = _Sample(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def _warm(send: Callable[[str], object], flush: Callable[[], object], topics: dict[str, str]) -> None:
    # Connect and fetch every topic's metadata before the clock starts.
    for topic in topics.values():
        send(topic)
    flush()


def _raw(settings: Settings, topics: dict[str, str], inputs: _Inputs) -> _Sample:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="nudge-bench-raw",
        max_request_size=settings.max_message_bytes,
        **RAW_PRODUCER_CONFIG,
        **client_config(settings),
    )
    try:
        _warm(lambda t: producer.send(t, value=b"warm-up", key=b"warm-up"), producer.flush, topics)
        routed = [(topics[kind], key, value) for kind, key, value in inputs.messages]
        with _Stopwatch() as watch:
            for topic, key, value in routed:
                producer.send(topic, value=value, key=key)
            producer.flush()
        return watch.sample
    finally:
        producer.close()


def _event_producer(settings: Settings, topics: dict[str, str], inputs: _Inputs) -> _Sample:
    routed = [(topics[kind], key, value) for kind, key, value in inputs.messages]
    with EventProducer(settings, client_id="nudge-bench-event-producer") as producer:
        _warm(lambda t: producer.send(t, b"warm-up", b"warm-up"), producer.flush, topics)
        before = producer.sent
        with _Stopwatch() as watch:
            for topic, key, value in routed:
                producer.send(topic, value, key)
            producer.flush()
        _check_count("event_producer", producer.sent - before, inputs.n)
    return watch.sample


def _simulator(settings: Settings, topics: dict[str, str], inputs: _Inputs) -> _Sample:
    routes = {t: topics[kind] for t, kind in TOPIC_OF_TYPE.items()}
    with EventProducer(settings, client_id="nudge-bench-simulator") as producer:
        _warm(lambda t: producer.send(t, b"warm-up", b"warm-up"), producer.flush, topics)
        before = producer.sent
        with _Stopwatch() as watch:
            for event in inputs.make_events():  # generation is part of what is measured
                producer.send(routes[event["type"]], orjson.dumps(event), key=event["user_id"].encode())
            producer.flush()
        _check_count("simulator", producer.sent - before, inputs.n)
    return watch.sample


def _replay_file(settings: Settings, topics: dict[str, str], path: Path, n: int, phase: str) -> _Sample:
    # Recorded logs name the kind ("clicks"); plain events get the settings' topic by type.
    topic_map = dict(topics) | {topic_for_kind(settings, kind): topic for kind, topic in topics.items()}
    with EventProducer(settings, client_id="nudge-bench-replay") as producer:
        _warm(lambda t: producer.send(t, b"warm-up", b"warm-up"), producer.flush, topics)
        with _Stopwatch() as watch:
            stats = replay(
                path, settings, speed=None, topic_map=topic_map, producer=producer, partition_count=lambda t: None
            )
    _check_count(phase, stats.sent, n)
    if stats.bad_count:
        raise DeliveryError(f"bench produce: {stats.bad_count} bad lines in the generated log {path}")
    return watch.sample


def _replay(settings: Settings, topics: dict[str, str], inputs: _Inputs) -> _Sample:
    return _replay_file(settings, topics, inputs.recorded_log, inputs.n, "replay")


def _replay_jsonl(settings: Settings, topics: dict[str, str], inputs: _Inputs) -> _Sample:
    return _replay_file(settings, topics, inputs.plain_log, inputs.n, "replay_jsonl")


def _check_count(phase: str, sent: int, n: int) -> None:
    if sent != n:
        raise DeliveryError(f"bench produce: phase {phase} sent {sent} messages, expected {n}")


Phase = Callable[[Settings, dict[str, str], _Inputs], _Sample]
# phase -> (chart label, how to run it); (a), (b), (c) are the brief's three measurements.
PHASES: dict[str, tuple[str, Phase]] = {
    "raw": ("(a) raw kafka-python\nceiling", _raw),
    "event_producer": ("EventProducer,\npre-encoded bytes", _event_producer),
    "simulator": ("(b) simulator\n-> EventProducer", _simulator),
    "replay": ("(c) replay recorded\nlog (--speed max)", _replay),
    "replay_jsonl": ("replay plain JSONL\n(--speed max)", _replay_jsonl),
}


# --- the run ----------------------------------------------------------------------------


def _producer_config_drift(settings: Settings) -> dict[str, Any]:
    """Keys where EventProducer's effective kafka-python config differs from the raw phase's."""
    producer = EventProducer(settings, client_id="nudge-bench-config")
    try:
        # kafka-python's `config` is public; EventProducer keeps its client private.
        effective: dict[str, Any] = getattr(getattr(producer, "_producer", None), "config", {}) or {}
    finally:
        producer.close()
    raw = KafkaProducer.DEFAULT_CONFIG | RAW_PRODUCER_CONFIG
    return {
        k: {"raw": raw.get(k), "event_producer": effective.get(k)}
        for k in COMPARED_KEYS
        if _normal(raw.get(k)) != _normal(effective.get(k))
    }


def _normal(value: Any) -> Any:
    return -1 if value == "all" else value  # kafka-python stores acks="all" as -1


def run_benchmark(
    settings: Settings,
    *,
    events: int = 50_000,
    repeat: int = 3,
    out_dir: Path = Path("bench-results"),
    seed: int = 7,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every phase `repeat` times; write produce.json and produce.png; return the results."""
    if events < 1 or repeat < 1:
        raise ConfigError(f"bench produce: --events and --repeat must be >= 1, got {events} and {repeat}")
    problem = output_problem(out_dir, directory=True)
    if problem:  # before minutes of work, not after
        raise ConfigError(f"bench produce: cannot write into {out_dir}: {problem}")
    source = "producers.simulator.generate"
    make_events = _simulated(events, seed)
    if make_events is None:
        source = "synthetic (producers/simulator.py not found)"
        make_events = _synthetic(events, seed)
    t0 = time.perf_counter()
    all_events = list(make_events())
    generate_s = time.perf_counter() - t0
    n = len(all_events)
    messages = [(TOPIC_OF_TYPE[e["type"]], e["user_id"].encode(), orjson.dumps(e)) for e in all_events]
    payload_bytes = sum(len(k) + len(v) for _, k, v in messages)

    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    phase_topics = {phase: {kind: f"bench-produce-{run_id}-{phase}-{kind}" for kind in KINDS} for phase in PHASES}
    names = tuple(t for topics in phase_topics.values() for t in topics.values())
    drift = _producer_config_drift(settings)
    if drift:
        log.warning("raw phase config differs from EventProducer's: %s", drift)

    samples: dict[str, list[_Sample]] = {phase: [] for phase in PHASES}
    with tempfile.TemporaryDirectory(prefix="nudge-bench-") as tmp:
        inputs = _Inputs(n, messages, make_events, Path(tmp) / "bench.jsonl.gz", Path(tmp) / "bench-events.jsonl")
        with LogWriter(inputs.recorded_log) as writer:
            for offset, ((kind, key, value), event) in enumerate(zip(messages, all_events, strict=True)):
                writer.write(encode_record(kind, offset % settings.partitions, offset, event["ts"], key, value))
        with LogWriter(inputs.plain_log) as writer:
            for event in all_events:
                writer.write(encode_event(event))
        del all_events
        log_bytes = inputs.recorded_log.stat().st_size
        ensure_topics(settings, names)
        # The set-up's objects (N messages) live on through every phase; keep the
        # collector from re-scanning them, as a real `nudge replay` process has none.
        gc.collect()
        gc.freeze()
        try:
            order = list(PHASES)
            for round_no in tqdm(
                range(repeat), desc="bench produce", unit="round", disable=not progress, file=sys.stderr
            ):
                # Rotate the order each round so no phase always runs first (or right after another).
                for phase in order[round_no % len(order) :] + order[: round_no % len(order)]:
                    sample = PHASES[phase][1](settings, phase_topics[phase], inputs)
                    samples[phase].append(sample)
                    log.info("%s: %d events in %.3f s (cpu %.3f s)", phase, n, sample.wall_s, sample.cpu_s)
        finally:
            gc.unfreeze()
            _delete_topics(settings, names)

    rates = {phase: [n / x.wall_s for x in runs] for phase, runs in samples.items()}
    median = {phase: statistics.median(r) for phase, r in rates.items()}
    cpu_us = {phase: statistics.median(x.cpu_s for x in runs) / n * 1e6 for phase, runs in samples.items()}
    ratios = {phase: median[phase] / median["raw"] for phase in PHASES if phase != "raw"}
    cpu_ratios = {phase: cpu_us["raw"] / cpu_us[phase] for phase in PHASES if phase != "raw"}
    result: dict[str, Any] = {
        "benchmark": "produce",
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": n,
        "repeat": repeat,
        "seed": seed,
        "event_source": source,
        "event_source_generate_s": round(generate_s, 3),
        "payload_bytes": payload_bytes,
        "recorded_log_bytes_gz": log_bytes,
        "broker": settings.kafka_bootstrap,
        "partitions": settings.partitions,
        "producer_config": RAW_PRODUCER_CONFIG | {"max_request_size": settings.max_message_bytes},
        "producer_config_drift": drift,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "kafka_python": _version("kafka-python"),
        },
        "phases": {
            phase: {
                "label": PHASES[phase][0].replace("\n", " "),
                "events_per_s": round(median[phase], 1),
                "events_per_s_min": round(min(rates[phase]), 1),
                "events_per_s_max": round(max(rates[phase]), 1),
                "cpu_us_per_event": round(cpu_us[phase], 2),
                "wall_s": [round(x.wall_s, 4) for x in samples[phase]],
                "cpu_s": [round(x.cpu_s, 4) for x in samples[phase]],
            }
            for phase in PHASES
        },
        "ratios_to_raw": {phase: round(r, 4) for phase, r in ratios.items()},
        "cpu_ratios_to_raw": {phase: round(r, 4) for phase, r in cpu_ratios.items()},
        "target": {"replay_to_raw_at_least": TARGET_REPLAY_RATIO, "met": ratios["replay"] >= TARGET_REPLAY_RATIO},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "produce.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    _chart(result, rates, out_dir / "produce.png")
    return result


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _delete_topics(settings: Settings, names: tuple[str, ...]) -> None:
    admin = admin_client(settings)
    try:
        admin.delete_topics(list(names))
    except Exception as exc:
        log.warning("could not delete bench topics %s: %s", ", ".join(names), exc)
    finally:
        admin.close()


def _chart(result: dict[str, Any], rates: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(PHASES)
    labels = [PHASES[p][0] for p in phases]
    medians = [result["phases"][p]["events_per_s"] for p in phases]
    lows = [m - min(rates[p]) for m, p in zip(medians, phases, strict=True)]
    highs = [max(rates[p]) - m for m, p in zip(medians, phases, strict=True)]
    raw = medians[0]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    colors = ["#7f7f7f", "#c7c7c7", "#1f77b4", "#2ca02c", "#98df8a"]
    bars = ax.bar(labels, medians, yerr=[lows, highs], capsize=4, color=colors[: len(phases)])
    ax.axhline(raw, linestyle="--", color="#444444", linewidth=1, label=f"raw ceiling {raw:,.0f} events/s")
    ax.axhline(
        raw * TARGET_REPLAY_RATIO, linestyle=":", color="#d62728", linewidth=1, label="replay target: 80 % of raw"
    )
    text_colors = ["white", "black", "white", "white", "black"]
    for bar, value, text_color in zip(bars, medians, text_colors, strict=False):
        # Inside the bar, clear of the whiskers at its top.
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() * 0.45,
            f"{value:,.0f}/s\n{value / raw:.0%} of raw",
            ha="center",
            va="center",
            fontsize=9,
            color=text_color,
            fontweight="bold",
        )
    ax.set_ylabel("events/s (median over rounds; whiskers min..max)")
    ax.set_title(
        f"nudge bench produce: {result['events']:,} events x {result['repeat']} rounds, "
        f"{result['partitions']} partitions, acks=all",
        fontsize=10,
    )
    ax.set_ylim(0, max(max(r) for r in rates.values()) * 1.25)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- CLI --------------------------------------------------------------------------------


# Every event and message of a phase is generated and held in memory first (about 1.5 KB each).
MAX_EVENTS = 1_000_000


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Events/s into Kafka, same machine and messages: (a) raw kafka-python ceiling, (b) simulator -> "
        "EventProducer, (c) replay of a recorded log at --speed max (plus plain JSONL). Target: replay >= 80% of raw."
    )
    parser.add_argument(
        "--events",
        type=integer(1, MAX_EVENTS, why="every message is held in memory"),
        default=50_000,
        metavar="N",
        help=f"messages per phase, 1..{MAX_EVENTS} [default: 50000]",
    )
    parser.add_argument(
        "--repeat",
        type=integer(1, 100),
        default=3,
        metavar="R",
        help="rounds, 1..100; the median is reported [default: 3]",
    )
    parser.add_argument("--seed", type=seed_arg, default=7, help="simulator seed [default: 7]")
    parser.add_argument(
        "--out-dir",
        type=output_dir,
        default="bench-results",
        help="where produce.json and produce.png go [default: bench-results]",
    )
    parser.epilog = settings_epilog("kafka_bootstrap", "partitions", "replication", "max_message_bytes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    result = run_benchmark(
        settings,
        events=args.events,
        repeat=args.repeat,
        out_dir=args.out_dir,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    raw = result["phases"]["raw"]["events_per_s"]
    print(
        f"bench produce: {result['events']:,} events x {result['repeat']} rounds into {result['broker']} "
        f"({result['partitions']} partitions), events from {result['event_source']}"
    )
    raw_cpu = result["phases"]["raw"]["cpu_us_per_event"]
    print(f"  {'phase':38} {'events/s':>10} {'min..max':>17} {'vs raw':>7} {'cpu us/ev':>10} {'vs raw':>7}")
    for data in result["phases"].values():
        ratio = data["events_per_s"] / raw
        spread = f"{data['events_per_s_min']:,.0f}..{data['events_per_s_max']:,.0f}"
        cpu = data["cpu_us_per_event"]
        print(
            f"  {data['label']:38} {data['events_per_s']:>10,.0f} {spread:>17} {ratio:>7.0%} "
            f"{cpu:>10.1f} {raw_cpu / cpu:>7.0%}"
        )
    target = result["target"]
    verdict = "met" if target["met"] else "NOT met"
    print(f"  replay / raw = {result['ratios_to_raw']['replay']:.0%} (target >= {TARGET_REPLAY_RATIO:.0%}: {verdict})")
    if result["producer_config_drift"]:
        print(f"  warning: raw and EventProducer configs differ: {result['producer_config_drift']}")
    print(f"wrote {args.out_dir / 'produce.json'} and {args.out_dir / 'produce.png'}")
    return 0
