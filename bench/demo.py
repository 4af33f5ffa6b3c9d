"""`make demo`: the pipeline end to end on the running local stack, in under a minute.

`python -m bench.demo` (the Makefile runs it after `nudge stack up`):

1. starts a stream worker as a child process (`nudge worker`, metrics on
   NUDGE_WORKER_METRICS_PORT, or the next free port when that one is taken),
2. streams simulated traffic into Kafka at `--rate` events/s for about
   `--seconds`, with a progress bar: `--users` users over as many days of
   activity as fit in that budget, ending now,
3. every few seconds prints what the worker did: events/s it consumed (its
   /metrics, `nudge_stream_events_total`), demo users written to Redis, DLQ,
4. shows `nudge state` for three interesting users picked from Redis (an open
   cart, the biggest buyer, the newest user), stops the worker cleanly and
   says what happened and what to try next.

Each run namespaces its users and event ids with a run tag (`d193512-u00042`):
the worker keeps per-user state in a changelog-backed table and Redis refuses
writes older than what it holds, so reusing the simulator's plain ids would
make a second run's events duplicates or late arrivals of the first's.
Everything else uses the settings as they are (NUDGE_* env vars), so the
users can be read afterwards with a plain `nudge state <id>`.

The worker runs through `streams.process.WorkerProcess` and the users' state is
printed with `streams.state_cli` (bench/ sits above streams/ and producers/ in
the import-linter layers).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from nudge.args import integer, number
from nudge.args import seed as seed_arg
from nudge.errors import DependencyUnavailable, NudgeError
from nudge.logs import display_url
from nudge.settings import Settings
from producers.simulator import EventDict, TokenBucket, generate, ground_truth, retag, send_events
from streams.process import WorkerProcess
from streams.state_cli import format_state, read_state

__all__ = ["DemoOptions", "main", "run_demo"]

# The simulator's users produce 13.6-14.6 events a day (measured for 100 to
# 2000 users over 1 to 8 days); used to size the window to the budget.
EVENTS_PER_USER_DAY: Final = 14.0
TICK_S: Final = 3.0
READY_TIMEOUT_S: Final = 40.0
DRAIN_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 20.0
_PORT_TRIES: Final = 20
_LE: Final = re.compile(r'\ble="([^"]*)"')


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The command-line options: how long, how fast, how many users, which seed."""

    seconds: float = 15.0
    rate: float = 2000.0
    users: int = 250
    seed: int = 42

    @property
    def days(self) -> float:
        """Days of simulated activity that fit `rate * seconds` events."""
        return min(60.0, max(0.02, self.rate * self.seconds / (self.users * EVENTS_PER_USER_DAY)))


# --------------------------------------------------------------------------
# The worker child process
# --------------------------------------------------------------------------


def _start_worker(settings: Settings, *, port: int, log_path: Path) -> WorkerProcess:
    """`nudge worker` as a child process, with a fresh log (readiness is read from it)."""
    log_path.unlink(missing_ok=True)
    return WorkerProcess(settings, web_port=port, log_path=log_path, loglevel="info").start()


def _wait_ready(worker: WorkerProcess, timeout: float) -> float:
    """Seconds until the worker logged it is ready and serves /metrics."""
    began = time.monotonic()
    worker.wait_ready(timeout)
    while True:
        worker.check_alive()
        with contextlib.suppress(OSError):
            worker.metrics()
            return time.monotonic() - began
        if time.monotonic() - began >= timeout:
            raise NudgeError(f"starting the worker: not ready after {timeout:.0f} s; see {worker.log_path}")
        time.sleep(0.1)


def _stop_worker(worker: WorkerProcess, timeout: float = STOP_TIMEOUT_S) -> tuple[int | None, float]:
    """SIGTERM, then SIGKILL past `timeout`; (exit status, seconds taken)."""
    began = time.monotonic()
    status = worker.stop(timeout)
    return status, time.monotonic() - began


def _check_kafka(bootstrap: str) -> None:
    """Fail in 2 s, not after the client's 30 s bootstrap timeout, when no broker listens."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise DependencyUnavailable(f"Kafka is not reachable at {bootstrap} ({'; '.join(errors)}); run `nudge stack up`")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the worker's web server does: a port held only by TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_port(wanted: int) -> int:
    for port in range(wanted, min(wanted + _PORT_TRIES, 65536)):
        if _port_free(port):
            return port
    raise NudgeError(f"starting the worker: ports {wanted}..{wanted + _PORT_TRIES - 1} are all in use")


# --------------------------------------------------------------------------
# Watching: worker metrics + the demo users in Redis
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Watch:
    """What the periodic table shows, and what the end condition needs.

    `poll` reads the worker's counters and the demo users' hashes; `row`
    formats them, with the consumption rate since the previous row."""

    worker: WorkerProcess
    redis: Any
    keys: list[str]
    began: float
    metrics: dict[str, float] = field(default_factory=dict)
    consumed0: float = 0.0
    dlq0: float = 0.0
    consumed: float = 0.0
    dlq: float = 0.0
    users: int = 0
    folded: int = 0
    row_t: float = 0.0
    row_consumed: float = 0.0
    peak_rate: float = 0.0
    rows: int = 0

    def baseline(self) -> None:
        # The worker may have consumed other traffic before ours (a backlog, other producers).
        self.metrics = self.worker.metrics()
        self.consumed0 = self.worker.total("nudge_stream_events_total", self.metrics)
        self.dlq0 = self.worker.total("nudge_stream_dlq_total", self.metrics)
        self.row_t = time.monotonic()

    def poll(self) -> None:
        self.worker.check_alive()
        # Redis first: the worker counts a batch on /metrics just after its
        # Redis write, so read the other way round the counters could trail.
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.hget(key, "events_total")
        values = pipe.execute()
        self.users = sum(1 for v in values if v is not None)
        self.folded = sum(int(v) for v in values if v)
        with contextlib.suppress(OSError):  # URLError included: a slow scrape only delays a row
            self.metrics = self.worker.metrics()
        self.consumed = self.worker.total("nudge_stream_events_total", self.metrics) - self.consumed0
        self.dlq = self.worker.total("nudge_stream_dlq_total", self.metrics) - self.dlq0

    def done(self, expected: int) -> bool:
        """Every sent event is in a demo user's events_total, or was dead-lettered."""
        return self.folded + max(0.0, self.dlq) >= expected

    def row(self, sent: int) -> str:
        now = time.monotonic()
        rate = (self.consumed - self.row_consumed) / (now - self.row_t) if now > self.row_t else 0.0
        self.peak_rate = max(self.peak_rate, rate)
        self.row_t, self.row_consumed = now, self.consumed
        header = ""
        if self.rows == 0:
            header = f"{'time':>6} {'sent':>9} {'consumed':>9} {'events/s':>9} {'users in Redis':>15} {'DLQ':>5}\n"
        self.rows += 1
        users = f"{self.users}/{len(self.keys)}"
        return (
            f"{header}{now - self.began:5.1f}s {sent:9,} {self.consumed:9,.0f} "
            f"{rate:9,.0f} {users:>15} {self.dlq:5,.0f}"
        )


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def _percentile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Upper bucket bound holding the q-quantile of a histogram (None: no data).

    `metrics` is `WorkerProcess.metrics()`: {'name{labels}': value}; buckets
    are summed over the label sets other than `le`."""
    by_bound: dict[float, float] = {}
    for key, count in metrics.items():
        if key.startswith(f"{name}_bucket{{"):
            le = _LE.search(key)
            if le:
                bound = float(le[1])
                by_bound[bound] = by_bound.get(bound, 0.0) + count
    buckets = sorted(by_bound.items())
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= target)


def _bound(seconds: float) -> str:
    return f"≤ {seconds:g} s" if math.isfinite(seconds) else "beyond the largest bucket"


def _say(text: str = "") -> None:
    tqdm.write(text, file=sys.stdout)


def _pick_users(client: Any, keys: list[str], prefix: str) -> list[tuple[str, str]]:
    """(label, user id) for an open cart, the biggest buyer and the newest user."""
    fields = ("cart_open", "cart_value", "orders_total", "spend_total", "first_seen")
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, list(fields))
    rows = {
        key[len(prefix) :]: dict(zip(fields, values, strict=True))
        for key, values in zip(keys, pipe.execute(), strict=True)
    }
    rows = {uid: r for uid, r in rows.items() if r["first_seen"]}

    def num(value: str | None) -> float:
        try:
            return float(value or 0)
        except ValueError:
            return 0.0

    picked: list[tuple[str, str]] = []
    chosen: set[str] = set()
    Row = dict[str, str | None]
    candidates: list[tuple[str, Callable[[Row], bool], Callable[[Row], float]]] = [
        ("open cart", lambda r: r["cart_open"] == "1", lambda r: num(r["cart_value"])),
        ("biggest buyer", lambda r: num(r["orders_total"]) > 0, lambda r: num(r["spend_total"])),
        ("newest user", lambda r: True, lambda r: num(r["first_seen"])),
    ]
    for label, keep, score in candidates:
        pool = [(score(r), uid) for uid, r in rows.items() if uid not in chosen and keep(r)]
        if pool:
            uid = max(pool)[1]
            picked.append((label, uid))
            chosen.add(uid)
    return picked


def _send(events: list[EventDict], settings: Settings, options: DemoOptions, watch: Watch) -> tuple[int, float]:
    """Send at `options.rate` with a progress bar and a table row every TICK_S; (sent, seconds)."""
    sent = 0
    began = time.monotonic()
    # Generous, so a slow machine still sends everything; the bound is what matters.
    deadline = began + options.seconds * 1.5 + 5

    def paced() -> Iterator[EventDict]:
        nonlocal sent
        bucket = TokenBucket(options.rate)
        next_tick = time.monotonic() + TICK_S
        bar = tqdm(total=len(events), desc="sending", unit="ev", unit_scale=True, file=sys.stderr, disable=None)
        with bar:
            for event in events:
                bucket.take()
                yield event
                sent += 1
                if sent % 256:
                    continue
                bar.update(256)
                now = time.monotonic()
                if now >= next_tick:
                    watch.poll()
                    _say(watch.row(sent))
                    next_tick = now + TICK_S
                if now > deadline:
                    _say(f"stopping early: sending took longer than {deadline - began:.0f} s")
                    break
            bar.update(sent % 256)

    by_topic = send_events(paced(), settings, client_id="nudge-demo")
    return sum(by_topic.values()), time.monotonic() - began


def _drain(watch: Watch, expected: int) -> bool:
    """Wait (bounded) until the worker folded every sent event; True if it did."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    watch.poll()
    while not watch.done(expected) and time.monotonic() < deadline:
        time.sleep(0.3)
        watch.poll()
        if time.monotonic() - watch.row_t >= TICK_S:
            _say(watch.row(expected))
    # The last write may be in Redis a moment before the worker counts it.
    settle = time.monotonic() + 2.0
    while watch.consumed < expected and time.monotonic() < settle:
        time.sleep(0.1)
        watch.poll()
    _say(watch.row(expected))
    return watch.done(expected)


def _show_users(client: Any, keys: list[str], settings: Settings, truth: dict[str, Any]) -> list[str]:
    """Print `nudge state` of the interesting users; return their ids."""
    picked = _pick_users(client, keys, settings.user_key_prefix)
    for label, uid in picked:
        cohort = truth.get(uid.split("-", 1)[1], {}).get("cohort", "?")
        _say()
        _say(f"── {label}: {uid} (simulated cohort: {cohort}; the pipeline is not told) " + "─" * 10)
        fields, ttl_ms = read_state(settings, uid)
        if not fields:
            where = f"Redis at {display_url(settings.redis_url)} (key {settings.user_key_prefix}{uid})"
            print(f"no state for user {uid} in {where}", file=sys.stderr)
            continue
        print(format_state(fields, key=settings.user_key_prefix + uid, now=datetime.now(UTC), ttl_ms=ttl_ms))
    return [uid for _, uid in picked]


def run_demo(options: DemoOptions, settings: Settings) -> int:
    from redis.exceptions import RedisError

    from nudge.redis_client import sync_client, unreachable
    from nudge.topics import ensure_topics

    began = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    tag = f"d{now:%H%M%S}"
    days = options.days
    start = now - timedelta(days=days)

    # Preflight, so a missing stack is one clear line and no child is left behind.
    _check_kafka(settings.kafka_bootstrap)
    client: Any = sync_client(settings, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            client.ping()
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"{unreachable(settings, exc)}; is the stack up (`nudge stack up`)?") from None
        ensure_topics(settings)

        events = list(retag(generate(options.users, days, options.seed, start), tag))
        users = sorted({e["user_id"] for e in events})
        truth = ground_truth(options.users, days, options.seed, start)["users"]
        keys = [settings.user_key_prefix + uid for uid in users]
        _say(
            f"nudge demo: {len(events):,} events of {len(users)} users ({days:.1f} days of activity ending now, "
            f"seed {options.seed}, ids {tag}-u…) at {options.rate:,.0f} events/s "
            f"into Kafka {settings.kafka_bootstrap}"
        )

        port = pick_port(settings.worker_metrics_port)
        if port != settings.worker_metrics_port:
            _say(f"port {settings.worker_metrics_port} is taken (another worker?): this one serves /metrics on {port}")
        worker = _start_worker(settings, port=port, log_path=settings.data_dir / "logs" / "demo-worker.log")
        try:
            ready_s = _wait_ready(worker, READY_TIMEOUT_S)
            _say(
                f"worker ready in {ready_s:.1f} s (group {settings.app_id}, "
                f"http://127.0.0.1:{port}/metrics, log {worker.log_path})"
            )
            watch = Watch(worker, client, keys, began)
            watch.baseline()
            sent, send_s = _send(events, settings, options, watch)
            caught_up = _drain(watch, sent)
            if watch.folded == 0:
                raise NudgeError(
                    f"the worker folded none of the {sent:,} events into Redis in {DRAIN_TIMEOUT_S:.0f} s; "
                    f"see {worker.log_path}"
                )
            if not caught_up:
                _say(f"the worker is behind: {watch.folded:,} of {sent:,} events folded; showing the state so far")
            shown = _show_users(client, keys, settings, truth)
        finally:
            status, stop_s = _stop_worker(worker)
    finally:
        client.close()

    fresh50 = _percentile(watch.metrics, "nudge_stream_freshness_seconds", 0.5)
    fresh99 = _percentile(watch.metrics, "nudge_stream_freshness_seconds", 0.99)
    freshness = ""
    if fresh50 is not None and fresh99 is not None:
        freshness = f"; Kafka-to-Redis freshness p50 {_bound(fresh50)}, p99 {_bound(fresh99)}"
    stopped = "stopped cleanly" if status == 0 else f"stopped with status {status}"
    example = shown[0] if shown else users[0]
    _say()
    _say(
        f"Summary: in {time.monotonic() - began:.0f} s the demo started a stream worker (ready in {ready_s:.1f} s), "
        f"sent {sent:,} simulated events of {len(users)} users to Kafka in {send_s:.1f} s "
        f"({sent / send_s if send_s else 0:,.0f} events/s), and the worker consumed them at up to "
        f"{watch.peak_rate:,.0f} events/s, wrote {watch.users} user hashes to Redis (keys "
        f"{settings.user_key_prefix}{tag}-u…) and dead-lettered {watch.dlq:,.0f}{freshness}; it {stopped} "
        f"in {stop_s:.1f} s. Try next: `nudge state {example}` (add --json; --raw shows personal data), "
        f"`nudge simulate --users 1000 --days 7 --start {(now - timedelta(days=7)):%Y-%m-%dT%H:%M:%SZ}` with "
        f"`nudge worker` running in another terminal, Prometheus + Grafana (`docker compose up`, then "
        f"http://127.0.0.1:3000), and `nudge stack down` when you are done."
    )
    problems = []
    if not caught_up:
        problems.append(
            f"the worker folded only {watch.folded:,} of {sent:,} events within {DRAIN_TIMEOUT_S:.0f} s "
            f"after sending; see {worker.log_path}"
        )
    if status != 0:
        problems.append(f"the worker did not stop cleanly (status {status}); see {worker.log_path}")
    for problem in problems:
        print(f"demo: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


# The demo generates all its events up front (about 1 KB each in memory).
MAX_DEMO_EVENTS = 2_000_000


def build_parser() -> argparse.ArgumentParser:
    from nudge.cli import OneLineParser, settings_epilog

    parser = OneLineParser(
        prog="python -m bench.demo",
        description=(
            "Show the pipeline end to end on the running local stack (`nudge stack up`): start a worker,\n"
            "stream simulated traffic into Kafka, watch it reach Redis, print three users' state."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=settings_epilog(
            "kafka_bootstrap", "redis_url", "app_id", "worker_metrics_port", "user_key_prefix", "data_dir"
        ),
    )
    parser.add_argument(
        "--seconds",
        type=number(0, 600, low_open=True),
        default=15.0,
        metavar="S",
        help="how long to send, up to 600 (default 15)",
    )
    parser.add_argument(
        "--rate",
        type=number(0, 100_000, low_open=True),
        default=2000.0,
        metavar="R",
        help=f"events per second, up to 100000; rate x seconds at most {MAX_DEMO_EVENTS} (default 2000)",
    )
    parser.add_argument(
        "--users",
        type=integer(1, 10_000),
        default=250,
        metavar="N",
        help="simulated users, 1..10000 (default 250)",
    )
    parser.add_argument("--seed", type=seed_arg, default=42, metavar="S", help="simulator seed (default 42)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nudge.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate * args.seconds > MAX_DEMO_EVENTS:
        parser.error(
            f"--rate x --seconds is {args.rate * args.seconds:.0f} events, more than {MAX_DEMO_EVENTS} (held in memory)"
        )
    setup_logging(0)
    options = DemoOptions(seconds=args.seconds, rate=args.rate, users=args.users, seed=args.seed)
    try:
        return run_demo(options, Settings.from_env())
    except NudgeError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted (the worker was stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
