"""How fast the HTTP collector takes events in (`nudge bench collect`).

One run, one message set (simulated events), measured against the ceiling of
the same machine at the same moment:

(a) raw producer  kafka-python with the collector's own producer settings
                  (acks=all, idempotent, its linger) sending the same events,
                  pre-encoded, keyed by user, then flush: what Kafka takes
                  with no HTTP, no JSON parsing and no validation;
(b) collector     a real `nudge collect` process on a free port, fed by C
                  concurrent HTTP clients (keep-alive connections) posting
                  batches of B events as fast as they are answered (closed
                  loop), for each B in --batch-sizes and C in --concurrency;
                  events/s counts only events answered "accepted", which means
                  acknowledged by Kafka;
(c) half load     batches of --paced-batch events sent on a fixed schedule at
                  --paced-fraction of the best rate (b) reached with that batch
                  size (open loop): latency is measured from each request's
                  scheduled time, so a stall shows in the percentiles instead
                  of slowing the sender down (no coordinated omission).

Targets (issue 8): (b) with 50-event batches at least 50 % of (a); (c) at half
that load p99 under 100 ms. The load generator runs in this process and
shares the machine's cores with the collector and the broker, as a real
client fleet would not: the figures are a floor.

Writes OUT_DIR/collect.json and OUT_DIR/collect.png (events/s per batch size
and concurrency beside the raw ceiling; latency percentiles).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kafka import KafkaProducer
from tqdm import tqdm

from nudge.args import integer, number, output_dir, seed
from nudge.errors import ConfigError, DependencyUnavailable
from nudge.events import TOPIC_OF_TYPE
from nudge.kafka_security import client_config
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics, topic_for_kind
from producers.collector import producer_config
from producers.simulator import generate

__all__ = ["TARGET_P99_MS", "TARGET_RATIO", "configure", "run", "run_benchmark"]

TARGET_RATIO = 0.5
TARGET_P99_MS = 100.0
TARGET_BATCH = 50


@dataclass(frozen=True, slots=True)
class _Phase:
    name: str
    batch: int
    concurrency: int
    events: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[str, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "phase": self.name,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "requests": len(lat),
            "latency_ms": {f"p{q}": round(_pct(lat, q), 2) for q in (50, 90, 99)} | {"max": round(lat[-1], 2)}
            if lat
            else {},
            "statuses": self.statuses,
        }


def _pct(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# --- inputs ---------------------------------------------------------------------------------------------------------


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    """n simulated events, re-stamped to now so none is refused as too old or too far ahead."""
    out: list[dict[str, Any]] = []
    users = max(50, n // 40)
    for event in generate(users=users, days=30, seed=seed):
        out.append(event)
        if len(out) == n:
            break
    if len(out) < n:
        raise ConfigError(f"the simulator gave only {len(out)} events for {users} users; ask for fewer")
    shift = int(time.time() * 1000) - max(int(e["ts"]) for e in out)
    for event in out:
        event["ts"] = int(event["ts"]) + shift
    return out


def _bodies(events: Sequence[dict[str, Any]], batch: int) -> list[tuple[int, bytes]]:
    return [
        (len(events[i : i + batch]), orjson.dumps(list(events[i : i + batch]))) for i in range(0, len(events), batch)
    ]


# --- (a) raw producer -----------------------------------------------------------------------------------------------


def _raw(settings: Settings, events: Sequence[dict[str, Any]]) -> _Phase:
    messages = [
        (topic_for_kind(settings, TOPIC_OF_TYPE[e["type"]]), e["user_id"].encode(), orjson.dumps(e)) for e in events
    ]
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        **producer_config(settings),
        **client_config(settings),
    )
    try:
        for topic in settings.input_topics:  # connected, metadata known: as the collector after warm-up
            producer.send(topic, b"{}", key=b"warm-up")
        producer.flush()
        started = time.perf_counter()
        for topic, key, value in messages:
            producer.send(topic, value, key=key)
        producer.flush()
        seconds = time.perf_counter() - started
    finally:
        producer.close()
    return _Phase("raw producer", 1, 1, len(messages), seconds, [], {})


# --- (b), (c) the collector -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _collector(settings: Settings, port: int, log_path: Path) -> Iterator[str]:
    env = os.environ | settings.to_env() | {"NUDGE_COLLECTOR_PORT": str(port), "NUDGE_COLLECTOR_HOST": "127.0.0.1"}
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nudge", "collect"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise DependencyUnavailable(
                        f"nudge collect exited with {proc.returncode}; its output is in {log_path}"
                    )
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    raise DependencyUnavailable(f"nudge collect did not listen on {port} within 60 s; see {log_path}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, int]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        payload = await response.read()
        accepted = orjson.loads(payload).get("accepted", 0) if response.status in (200, 207) else 0
        return response.status, accepted


async def _closed_loop(
    url: str, bodies: Sequence[tuple[int, bytes]], concurrency: int
) -> tuple[int, float, list[float], dict[str, int]]:
    queue = iter(bodies)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    accepted = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        for _count, body in queue:
            sent = time.perf_counter()
            status, ok = await _post(session, url, body)
            latencies.append((time.perf_counter() - sent) * 1000)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            accepted += ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return accepted, seconds, latencies, statuses


async def _open_loop(
    url: str, bodies: Sequence[tuple[int, bytes]], per_second: float
) -> tuple[int, float, list[float], dict[str, int]]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    accepted = 0
    interval = 1.0 / per_second

    async def one(session: aiohttp.ClientSession, due: float, body: bytes) -> None:
        nonlocal accepted
        status, ok = await _post(session, url, body)
        latencies.append((time.perf_counter() - due) * 1000)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        accepted += ok

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        tasks = []
        for i, (_count, body) in enumerate(bodies):
            due = started + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, due, body)))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
    return accepted, seconds, latencies, statuses


# --- the run --------------------------------------------------------------------------------------------------------


def _scoped(settings: Settings) -> Settings:
    tag = f"bench-collect-{uuid.uuid4().hex[:8]}"
    return dataclasses.replace(
        settings,
        topic_clicks=f"{tag}-clicks",
        topic_purchases=f"{tag}-purchases",
        topic_app_events=f"{tag}-app-events",
    )


def run_benchmark(
    settings: Settings,
    *,
    events: int,
    batch_sizes: Sequence[int],
    concurrency: Sequence[int],
    paced_batch: int,
    paced_fraction: float,
    paced_seconds: float,
    seed: int,
    out_dir: Path,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    scoped = _scoped(settings)
    ensure_topics(scoped, scoped.input_topics)
    data = _events(events, seed)
    phases: list[_Phase] = []
    log_path = out_dir / "collect-server.log"
    try:
        steps = tqdm(total=1 + len(batch_sizes) * len(concurrency) + 1, desc="bench collect", unit="phase")
        raw = _raw(scoped, data)
        phases.append(raw)
        steps.update()
        with _collector(scoped, _free_port(), log_path) as base:
            url = f"{base}/v1/events"
            asyncio.run(_closed_loop(url, _bodies(data[:200], 50), 4))  # warm-up: connections, metadata, caches
            for batch in batch_sizes:
                bodies = _bodies(data, batch)
                for clients in concurrency:
                    accepted, seconds, lat, statuses = asyncio.run(_closed_loop(url, bodies, clients))
                    phases.append(_Phase("collector", batch, clients, accepted, seconds, lat, statuses))
                    steps.update()
            best = max((p.rate for p in phases if p.name == "collector" and p.batch == paced_batch), default=0.0)
            if best <= 0:
                best = max(p.rate for p in phases if p.name == "collector")
            target_rate = best * paced_fraction
            per_second = target_rate / paced_batch
            count = max(20, int(per_second * paced_seconds))
            bodies = _bodies(data, paced_batch)
            bodies = (bodies * (count // len(bodies) + 1))[:count]
            accepted, seconds, lat, statuses = asyncio.run(_open_loop(url, bodies, per_second))
            phases.append(
                _Phase(f"paced at {paced_fraction:.0%} of best", paced_batch, 0, accepted, seconds, lat, statuses)
            )
            steps.update()
        steps.close()
    finally:
        with contextlib.suppress(Exception):
            admin = admin_client(scoped)
            admin.delete_topics(list(scoped.input_topics))
            admin.close()

    at_target = [p for p in phases if p.name == "collector" and p.batch == TARGET_BATCH]
    best_at_target = max(at_target, key=lambda p: p.rate) if at_target else None
    paced = phases[-1]
    paced_p99 = _pct(sorted(paced.latencies_ms), 99)
    ratio = best_at_target.rate / raw.rate if best_at_target and raw.rate else math.nan
    result: dict[str, Any] = {
        "benchmark": "collect",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "events": events,
        "raw_events_per_s": round(raw.rate, 1),
        "phases": [p.summary() for p in phases],
        "targets": {
            "ratio_at_50": {"value": round(ratio, 3), "target": TARGET_RATIO, "met": bool(ratio >= TARGET_RATIO)},
            "paced_p99_ms": {
                "value": round(paced_p99, 2),
                "target": TARGET_P99_MS,
                "events_per_s": round(paced.rate, 1),
                "met": bool(paced_p99 < TARGET_P99_MS),
            },
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "collect.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    _chart(result, out_dir / "collect.png")
    return result


def _chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [p for p in result["phases"] if p["phase"] == "collector"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"B={p['batch']}\nC={p['concurrency']}" for p in closed]
    left.bar(labels, [p["events_per_s"] for p in closed], color="#4c78a8")
    raw = result["raw_events_per_s"]
    left.axhline(raw, color="black", linestyle="--", label=f"raw producer {raw:,.0f}/s")
    left.axhline(raw * TARGET_RATIO, color="#e45756", linestyle=":", label=f"target {TARGET_RATIO:.0%} of raw")
    left.set_ylabel("events/s accepted (acknowledged by Kafka)")
    left.set_title("collector throughput by batch size B and clients C")
    left.legend(fontsize=8)
    shown = [*closed, result["phases"][-1]]
    x = range(len(shown))
    for q, color in (("p50", "#72b7b2"), ("p90", "#f58518"), ("p99", "#e45756")):
        right.plot(list(x), [p["latency_ms"].get(q, math.nan) for p in shown], marker="o", label=q, color=color)
    right.axhline(TARGET_P99_MS, color="black", linestyle=":", label=f"p99 target at half load ({TARGET_P99_MS:g} ms)")
    right.set_xticks(list(x), [*labels[: len(closed)], "paced\nhalf load"], fontsize=7)
    right.set_yscale("log")
    right.set_ylabel("request latency, ms")
    right.set_title("latency per request")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- CLI ------------------------------------------------------------------------------------------------------------


def _integers(low: int, high: int) -> Callable[[str], list[int]]:
    """argparse type: a comma-separated list of integers in low..high."""
    one = integer(low, high)

    def parse(text: str) -> list[int]:
        values = [one(part) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected at least one number, e.g. 5,50,200")
        return values

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n", 1)[0]
    parser.epilog = "\n\n".join((__doc__ or "").split("\n\n")[1:])
    parser.add_argument(
        "--events",
        type=integer(1_000, 5_000_000, why="every event is held in memory"),
        default=60_000,
        help="events per phase [60000]",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_integers(1, 500),
        default=[5, 50, 200],
        metavar="B,..",
        help="events per request [5,50,200]",
    )
    parser.add_argument(
        "--concurrency", type=_integers(1, 1000), default=[16, 200], metavar="C,..", help="concurrent clients [16,200]"
    )
    parser.add_argument(
        "--paced-batch",
        type=integer(1, 500),
        default=TARGET_BATCH,
        help=f"batch size of the paced phase [{TARGET_BATCH}]",
    )
    parser.add_argument(
        "--paced-fraction", type=number(0.01, 1.0), default=0.5, help="paced load as a fraction of the best rate [0.5]"
    )
    parser.add_argument(
        "--paced-seconds", type=number(1, 3600, unit=" s"), default=10.0, help="length of the paced phase [10]"
    )
    parser.add_argument("--seed", type=seed, default=7, help="simulator seed [7]")
    parser.add_argument(
        "--out-dir", type=output_dir, default=Path("bench-results"), help="where collect.json and collect.png go"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    out_dir: Path = args.out_dir
    result = run_benchmark(
        settings,
        events=args.events,
        batch_sizes=args.batch_sizes,
        concurrency=args.concurrency,
        paced_batch=args.paced_batch,
        paced_fraction=args.paced_fraction,
        paced_seconds=args.paced_seconds,
        seed=args.seed,
        out_dir=out_dir,
    )
    raw = result["raw_events_per_s"]
    print(f"raw producer (same events, no HTTP): {raw:>10,.0f} events/s")
    for p in result["phases"][1:]:
        lat = p["latency_ms"]
        clients = f"C={p['concurrency']:<4}" if p["concurrency"] else "open  "
        print(
            f"{p['phase']:<26} B={p['batch']:<4} {clients} {p['events_per_s']:>10,.0f} events/s "
            f"({p['events_per_s'] / raw:5.1%} of raw)  p50 {lat.get('p50', math.nan):7.1f}  "
            f"p99 {lat.get('p99', math.nan):7.1f} ms  {p['statuses']}"
        )
    t = result["targets"]
    print(
        f"targets: {TARGET_BATCH}-event batches at {t['ratio_at_50']['value']:.1%} of raw (>= {TARGET_RATIO:.0%}: "
        f"{'met' if t['ratio_at_50']['met'] else 'MISSED'}); p99 at {t['paced_p99_ms']['events_per_s']:,.0f} events/s "
        f"{t['paced_p99_ms']['value']:.1f} ms (< {TARGET_P99_MS:g}: {'met' if t['paced_p99_ms']['met'] else 'MISSED'})"
    )
    print(f"wrote {out_dir / 'collect.json'} and {out_dir / 'collect.png'}")
    return 0
