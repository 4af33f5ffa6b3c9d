"""`nudge bench triggers`: decisions/s of one trigger process, and event -> provider latency.

One run, on its own topics, consumer groups and Redis keys, measures:

(a) raw ceiling: XREADGROUP (COUNT 200) + XACK of a backlog of N changes
    entries with redis-py's sync client, nothing else: the most one reader
    of the changes streams can do on this machine;
(b) one in-process `TriggerService` draining the same backlog (the users'
    hashes written as the stream worker writes them, docs/contracts.md): per
    second, entries read, users evaluated, decisions recorded and messages
    sent, with Kafka (acks=all) and the guard's Lua scripts on the path;
(c) latency at a paced event rate: `nudge worker`, `nudge triggers`, `nudge
    deliver` and `nudge mock-providers` as processes; users get a push token
    and consent, and some seconds later their first `app_open`, which the
    bench rule `bench_welcome` answers with a push. Each such event's
    produce time (wall clock) is joined with the mock provider's
    `received_at` for the user's token in its deliveries.jsonl.

Prints the figures, writes <out>/triggers.json and <out>/triggers.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from bench.scope import drop_run
from bench.scope import scoped as scoped_settings
from nudge.args import integer, number, output_dir
from nudge.errors import NudgeError
from nudge.kafka_security import client_config
from nudge.layout import changes_stream_of, changes_streams, user_key
from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import ensure_topics, topic_for_event_type

__all__ = ["configure", "join_deliveries", "percentile", "run", "schedule_events"]

# The backlog's hashes and entries are written before the drain and read back by it.
MAX_CHANGES = 1_000_000
MAX_USERS = 1_000_000
TARGET_P99_MS = 1_000
READ_COUNT = 200  # the trigger service's own XREADGROUP COUNT (triggers/service.py)
# Share of the paced events that are a new user's first app_open (each preceded by
# a profile_update and an opt_in LEAD_S earlier): the messages the latency is measured on.
TRIGGER_SHARE = 0.1
LEAD_S = 2.0

# The bench campaigns. bench_cart and bench_win_back fire on the backlog's hashes
# (about 22 % and 15 % of users qualify, before holdout and caps: the service reads a
# user's latest hash, so a user's later changes find the episode decided); bench_welcome
# fires once per user on the first app_open of the latency run, with no holdout.
BENCH_RULES = """\
version: 1
guardrails:
  holdout: 0.10
  quiet_hours: {start: "00:00", end: "00:00"}
  caps:
    push: {day: 3, week: 10}
    all: {day: 3, week: 10}
rules:
  - id: bench_cart
    priority: 90
    when:
      - cart_open: {eq: 1}
      - cart_value: {gte: 50}
    once_per: [seq]
    cooldown: 1ms
    channels: [push]
    quiet_hours: delay
    message: {title: "Still thinking it over?", body: "{cart_size} item(s) saved, {cart_value} in all."}
  - id: bench_win_back
    priority: 80
    when:
      - churn_score: {gte: 0.7}
      - lifecycle: {in: [at_risk, dormant]}
    once_per: [last_event_ts]
    cooldown: 7d
    channels: [push]
    quiet_hours: delay
    message: {title: "We miss you", body: "Come back and have a look."}
  - id: bench_welcome
    priority: 40
    when:
      - app_opens_7d: {gte: 1}
    once_per: [first_seen]
    cooldown: forever
    holdout: 0.0
    channels: [push]
    quiet_hours: delay
    message: {title: "Welcome!", body: "Glad you are here."}
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The trigger service's throughput and the whole live path's latency, beside the raw\n"
        "Redis stream read rate measured in the same run:\n\n"
        "  (a) raw ceiling: XREADGROUP (COUNT 200) + XACK of a backlog of --changes entries\n"
        "  (b) one in-process trigger service draining the same backlog for --users users:\n"
        "      changes read, users evaluated, decisions recorded and sends per second\n"
        "  (c) events at --rate for --seconds through nudge worker -> nudge triggers ->\n"
        "      nudge deliver -> nudge mock-providers: latency from an event's produce time\n"
        "      to the mock FCM receiving the push it caused, p50/p95/p99/max (target p99 < 1 s)\n\n"
        "Needs the local stack (`nudge stack up`). Everything runs on its own topics, groups\n"
        "and keys, deleted afterwards; logs of the child processes go to --out."
    )
    parser.epilog = (
        "examples:\n"
        "  nudge bench triggers                              # the defaults, a minute or two\n"
        "  nudge bench triggers --changes 5000 --seconds 10  # a quick look\n\n"
        "writes: <out>/triggers.json, <out>/triggers.png, <out>/triggers-*.log"
    )
    parser.add_argument(
        "--changes",
        type=integer(1000, MAX_CHANGES, why="the backlog is written to Redis first"),
        default=50_000,
        metavar="N",
        help=f"changes entries in the backlog of (a) and (b), 1000..{MAX_CHANGES} [%(default)s]",
    )
    parser.add_argument(
        "--users",
        type=integer(1, MAX_USERS, why="one Redis hash each"),
        default=25_000,
        metavar="U",
        help=f"users the backlog's changes are about (and background users of (c)), 1..{MAX_USERS} [%(default)s]",
    )
    parser.add_argument(
        "--rate",
        type=number(10, 20_000, unit=" events/s"),
        default=1000.0,
        metavar="R",
        help="events per second produced in (c), 10..20000 [%(default)s]",
    )
    parser.add_argument(
        "--seconds",
        type=number(5, 600, unit=" s"),
        default=30.0,
        metavar="S",
        help="length of the latency run (c), 5..600 [%(default)s]",
    )
    parser.add_argument(
        "--out",
        type=output_dir,
        default="bench-results",
        metavar="DIR",
        help="where JSON, PNG and logs go [%(default)s]",
    )
    parser.set_defaults(func=run)


# --- pure helpers ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (0 < q <= 100) of an ascending sequence; None when empty.

    >>> percentile([10, 20, 30, 40], 50), percentile([10, 20, 30, 40], 99), percentile([], 50)
    (20, 40, None)
    """
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


@dataclasses.dataclass(frozen=True)
class Joined:
    """Sends matched to the events that caused them."""

    latencies_ms: list[int]  # ascending
    timeline: list[tuple[int, int]]  # (ms since the first expected event, latency ms)
    missing: int  # expected, never received
    duplicates: int  # a second delivery to a token already received
    unexpected: int  # deliveries to a token no event expected


def join_deliveries(expected: dict[str, int], deliveries: Iterable[dict[str, Any]]) -> Joined:
    """Match `expected` (push token -> produce time, epoch ms) with the provider's delivery lines.

    The first delivery to a token counts; a later one is a duplicate. Negative
    gaps (clocks are one machine's, so only rounding) count as 0.

    >>> j = join_deliveries({"t1": 1000, "t2": 1010, "t3": 1020},
    ...                     [{"to": "t2", "received_at": 1400}, {"to": "t1", "received_at": 1100},
    ...                      {"to": "t1", "received_at": 1500}, {"to": "x", "received_at": 1}])
    >>> j.latencies_ms, j.missing, j.duplicates, j.unexpected
    ([100, 390], 1, 1, 1)
    """
    first = min(expected.values(), default=0)
    seen: set[str] = set()
    latencies: list[int] = []
    timeline: list[tuple[int, int]] = []
    duplicates = unexpected = 0
    for line in deliveries:
        to = str(line.get("to", ""))
        if to not in expected:
            unexpected += 1
            continue
        if to in seen:
            duplicates += 1
            continue
        seen.add(to)
        latency = max(0, int(line["received_at"]) - expected[to])
        latencies.append(latency)
        timeline.append((expected[to] - first, latency))
    latencies.sort()
    timeline.sort()
    return Joined(latencies, timeline, len(expected) - len(seen), duplicates, unexpected)


@dataclasses.dataclass(frozen=True)
class Planned:
    """One event of the paced run: its topic kind and body (ts is stamped when sent)."""

    user_id: str
    body: dict[str, Any]
    token: str = ""  # set on the app_open events that must cause a push: the user's token


def schedule_events(tag: str, total: int, rate: float, background_users: int, seed: int = 7) -> list[Planned]:
    """`total` events to send at `rate`, in order: in every block of 10, one slot
    onboards a new user (profile_update with a push token + opt_in push, in two
    adjacent slots) and one slot, LEAD_S later, is that user's first app_open;
    the rest are page views of `background_users` other users.

    >>> plan = schedule_events("t", 100, 10.0, 5)
    >>> [p.body["type"] for p in plan[:3]], sum(1 for p in plan if p.token)
    (['profile_update', 'opt_in', 'page_view'], 8)
    """
    rng = random.Random(seed)
    block = round(1 / TRIGGER_SHARE)
    lead = max(1, round(LEAD_S * rate / block))  # blocks between onboarding and app_open
    slots: list[Planned | None] = [None] * total
    blocks = total // block
    for j in range(blocks):
        uid = f"{tag}-new{j}"
        token = f"bench-{tag}-{j}"
        slots[j * block] = Planned(uid, {"type": "profile_update", "push_token": token, "timezone": "UTC"})
        slots[j * block + 1] = Planned(uid, {"type": "opt_in", "channel": "push"})
        if j + lead < blocks:
            slots[(j + lead) * block + block // 2] = Planned(uid, {"type": "app_open"}, token)
    out: list[Planned] = []
    for planned in slots:
        if planned is None:
            uid = f"{tag}-bg{rng.randrange(background_users)}"
            planned = Planned(uid, {"type": "page_view", "item_id": f"i{rng.randrange(500)}", "category": "books"})
        out.append(planned)
    return out


# --- the run -----------------------------------------------------------------------------


def _scoped(settings: Settings, tag: str) -> Settings:
    return scoped_settings(
        settings,
        tag,
        model_key="",  # the worker without models: the bench rules read no scores
        data_dir=settings.data_dir / "bench" / tag,
        rules_path=settings.data_dir / "bench" / tag / "rules.yaml",
    )


def _backlog(settings: Settings, changes: int, users: int, seed: int = 11) -> None:
    """Write `changes` user changes as the worker does: the hash (seq-guarded in the
    worker; here each change is newer), then a changes entry on the user's shard."""
    rng = random.Random(seed)
    client: Any = sync_client(settings)
    seqs = [0] * users
    now = int(time.time() * 1000)
    try:
        pipe = client.pipeline(transaction=False)
        for i in tqdm(range(changes), desc="(a,b) writing the backlog", unit="change", unit_scale=True):
            u = rng.randrange(users)
            seqs[u] += 1
            uid = f"{settings.app_id}-u{u}"
            cart = rng.random() < 0.3
            fields = {
                "user_id": uid,
                "seq": str(seqs[u]),
                "as_of": str(now - rng.randrange(86_400_000)),
                "updated_at": str(now),
                "first_seen": str(now - 40 * 86_400_000),
                # Half the users silent for 8-29 days: at risk or dormant as of now (features/lifecycle.py).
                "last_event_ts": str(now - (u % 2) * (8 + u % 22) * 86_400_000 - u),
                "push_opt_in": "1",
                "push_token": f"bench-{settings.app_id}-u{u}",
                "timezone": "UTC",
                "cart_open": "1" if cart else "0",
                "cart_size": str(rng.randrange(1, 6)) if cart else "0",
                "cart_value": f"{rng.uniform(0, 200):.2f}" if cart else "0",
                "churn_score": f"{rng.random():.3f}",
                "lifecycle": "at_risk" if u % 2 else "active",
            }
            pipe.hset(user_key(settings, uid), mapping=fields)
            pipe.xadd(
                changes_stream_of(settings, uid), {"user_id": uid, "as_of": fields["as_of"], "seq": fields["seq"]}
            )
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def _create_group(settings: Settings, group: str) -> None:
    client = sync_client(settings)
    try:
        for stream in changes_streams(settings):
            client.xgroup_create(stream, group, id="0", mkstream=True)
    finally:
        client.close()


def _raw_ceiling(settings: Settings, count: int) -> float:
    """XREADGROUP COUNT 200 + XACK over every shard until `count` entries are read: entries/s."""
    group = f"{settings.app_id}-raw"
    _create_group(settings, group)
    client: Any = sync_client(settings)
    streams = changes_streams(settings)
    read = 0
    try:
        with tqdm(total=count, desc="(a) raw XREADGROUP+XACK", unit="entry", unit_scale=True) as bar:
            started = time.perf_counter()
            while read < count:
                for stream in streams:
                    got = client.xreadgroup(group, "raw", {stream: ">"}, count=READ_COUNT)
                    for _, entries in got or []:
                        if entries:
                            client.xack(stream, group, *[e[0] for e in entries])
                            read += len(entries)
                            bar.update(len(entries))
            elapsed = time.perf_counter() - started
    finally:
        client.close()
    return read / elapsed


def _counter_total(counter: Any, **labels: str) -> float:
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _service_drain(settings: Settings, count: int) -> dict[str, Any]:
    """One in-process trigger service (as `nudge triggers` builds it) draining the backlog."""
    from triggers.service import Publisher, TriggerMetrics, TriggerService, load_context
    from triggers.store import TriggerStore

    # Its own outbox: the deliverer of (c) must not find these messages in its topic.
    settings = dataclasses.replace(
        settings,
        topic_decisions=f"{settings.app_id}-drain-decisions",
        topic_notifications=f"{settings.app_id}-drain-notifications",
    )
    ensure_topics(settings, (settings.topic_decisions, settings.topic_notifications))
    _create_group(settings, settings.triggers_group)  # from the backlog's start, not "$"
    rules, context = load_context(settings)
    client = sync_client(settings)
    store = TriggerStore(
        client, prefix=settings.triggers_key_prefix, shards=settings.changes_shards, kept=settings.decisions_kept
    )
    metrics = TriggerMetrics()
    publisher = Publisher(settings)
    service = TriggerService(settings, rules, context, store, publisher, metrics, consumer="bench")
    service.ensure_groups()
    read = 0
    try:
        with tqdm(total=count, desc="(b) trigger service", unit="change", unit_scale=True) as bar:
            started = time.perf_counter()
            while read < count:
                got = service.poll_changes()
                read += got
                bar.update(got)
            elapsed = time.perf_counter() - started
    finally:
        publisher.close()
        client.close()
    evaluated = _counter_total(metrics.changes, result="evaluated")
    decisions = _counter_total(metrics.decisions)
    sent = _counter_total(metrics.decisions, outcome="sent")
    by_outcome = {
        f"{rule}/{outcome}/{reason}": _counter_total(metrics.decisions, rule=rule, outcome=outcome, reason=reason)
        for rule, outcome, reason in sorted(
            {(s.labels["rule"], s.labels["outcome"], s.labels["reason"]) for m in metrics.decisions.collect()
             for s in m.samples if s.name.endswith("_total")}
        )
    }  # fmt: skip
    return {
        "seconds": elapsed,
        "changes_per_s": read / elapsed,
        "evaluations_per_s": evaluated / elapsed,
        "decisions_per_s": decisions / elapsed,
        "sends_per_s": sent / elapsed,
        "changes": read,
        "evaluations": evaluated,
        "decisions": decisions,
        "sends": sent,
        "stale": _counter_total(metrics.changes, result="stale"),
        "decisions_per_evaluation": decisions / evaluated if evaluated else 0.0,
        "decisions_by_rule_outcome_reason": by_outcome,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Any, timeout: float, what: str, procs: Sequence[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc, log in procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise NudgeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n" + "\n".join(tail))
        if check():
            return
        time.sleep(0.1)
    raise NudgeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _read_deliveries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def _send_paced(settings: Settings, plan: list[Planned], rate: float, expected: dict[str, int]) -> float:
    """Send each event at its due time stamped ts = now (acks=all, idempotent, like every
    nudge producer); record the send time of the events that must cause a push."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
        **client_config(settings),
    )
    await producer.start()
    try:
        interval = 1.0 / rate
        pending = []
        bar = tqdm(total=len(plan), desc=f"(c) events at {rate:,.0f}/s", unit="ev", unit_scale=True)
        began = time.perf_counter()
        for i, planned in enumerate(plan):
            delay = began + i * interval - time.perf_counter()
            if delay > 0.002:
                await asyncio.sleep(delay)
            ts = int(time.time() * 1000)
            body: dict[str, Any] = {
                "event_id": uuid.uuid4().hex,
                "user_id": planned.user_id,
                "ts": ts,
                "schema_version": 1,
            }
            body.update(planned.body)
            topic = topic_for_event_type(settings, body["type"])
            assert topic is not None
            pending.append(await producer.send(topic, orjson.dumps(body), key=planned.user_id.encode()))
            if planned.token:
                expected[planned.token] = ts
            if i % 1000 == 999:
                bar.update(1000)
        achieved = len(plan) / (time.perf_counter() - began)
        bar.update(len(plan) - bar.n)
        bar.close()
        await asyncio.gather(*pending)
        return achieved
    finally:
        await producer.stop()


def _child(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nudge", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _latency(settings: Settings, out_dir: Path, rate: float, seconds: float, users: int) -> dict[str, Any]:
    """The live path with real processes; see the module docstring (c)."""
    from delivery.credentials import write_service_account
    from streams.process import WorkerProcess

    mock_port, deliver_port, triggers_port, worker_port = (_free_port() for _ in range(4))
    mock_url = f"http://127.0.0.1:{mock_port}"
    credentials = settings.data_dir / "sa.json"
    write_service_account(credentials, token_uri=f"{mock_url}/token", project_id="nudge-bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    env.update(settings.to_env())
    env.update(
        NUDGE_FCM_PROJECT_ID="nudge-bench",
        NUDGE_FCM_CREDENTIALS_PATH=str(credentials),
        NUDGE_FCM_URL=mock_url,
        NUDGE_FCM_RATE_PER_S=str(max(500.0, rate)),
    )
    deliveries = settings.data_dir / "mock-provider" / "deliveries.jsonl"
    logs = {name: out_dir / f"triggers-{name}.log" for name in ("worker", "triggers", "deliver", "mock")}
    for log in logs.values():
        log.unlink(missing_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    worker = WorkerProcess(settings, web_port=worker_port, log_path=logs["worker"], loglevel="info")
    try:
        procs.append(
            ("mock-providers", _child(["mock-providers", "--port", str(mock_port)], env, logs["mock"]), logs["mock"])
        )
        _wait(lambda: _health(f"{mock_url}/_mock/health"), 30, "the mock provider", procs)
        worker.start()
        procs.append(("triggers", _child(["triggers", "--tick", "0.2", "--metrics-port", str(triggers_port)], env, logs["triggers"]), logs["triggers"]))  # fmt: skip
        procs.append(("deliver", _child(["deliver", "--metrics-port", str(deliver_port)], env, logs["deliver"]), logs["deliver"]))  # fmt: skip
        print("(c) starting nudge worker, triggers, deliver, mock-providers ...")
        worker.wait_ready(timeout=180)
        # One user through the whole path before the clock starts: every consumer has its partitions.
        warm_tag = f"{settings.app_id}w"
        warm = schedule_events(warm_tag, 40, 10.0, 1)  # 4 s: two users onboarded, one app_open each
        warm_expected: dict[str, int] = {}
        asyncio.run(_send_paced(settings, warm, 10.0, warm_expected))
        _wait(lambda: {d.get("to") for d in _read_deliveries(deliveries)} >= set(warm_expected), 120,
              "the warm-up pushes to arrive", procs)  # fmt: skip
        for _, proc, _ in procs:
            assert proc.poll() is None
        plan = schedule_events(settings.app_id, int(rate * seconds), rate, users)
        expected: dict[str, int] = {}
        # The generator shares the cores with what it measures: no collector pauses while stamping.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            achieved = asyncio.run(_send_paced(settings, plan, rate, expected))
        finally:
            gc.enable()
            gc.unfreeze()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {d.get("to") for d in _read_deliveries(deliveries)}
            if set(expected) <= got:
                break
            worker.check_alive()
            time.sleep(0.5)
        time.sleep(1.0)  # late duplicates, if any, are counted too
        lines = [d for d in _read_deliveries(deliveries) if d.get("to") not in warm_expected]
        joined = join_deliveries(expected, lines)
    finally:
        worker.stop()
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    lat = joined.latencies_ms
    p99 = percentile(lat, 99)
    return {
        "target_rate": rate,
        "achieved_rate": achieved,
        "events": len(plan),
        "seconds": seconds,
        "expected_messages": len(expected),
        "received": len(lat),
        "missing": joined.missing,
        "duplicates": joined.duplicates,
        "unexpected": joined.unexpected,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": p99,
        "max_ms": lat[-1] if lat else None,
        "target_p99_ms": TARGET_P99_MS,
        "met": p99 is not None and p99 < TARGET_P99_MS and joined.missing == 0,
        "_latencies": lat,
        "_timeline": joined.timeline,
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    tag = f"bencht{uuid.uuid4().hex[:8]}"
    scoped = _scoped(settings, tag)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    scoped.data_dir.mkdir(parents=True, exist_ok=True)
    scoped.rules_path.write_text(BENCH_RULES)
    results: dict[str, Any] = {"changes": args.changes, "users": args.users, "cores": os.cpu_count()}
    try:
        ensure_topics(scoped)
        ensure_topics(scoped, scoped.trigger_topics)
        _backlog(scoped, args.changes, args.users)
        raw = _raw_ceiling(scoped, args.changes)
        results["raw_read_per_s"] = raw
        print(f"(a) raw XREADGROUP (COUNT {READ_COUNT}) + XACK: {raw:,.0f} entries/s")
        drain = _service_drain(scoped, args.changes)
        drain["vs_raw"] = drain["changes_per_s"] / raw
        results["service"] = drain
        print(
            f"(b) one trigger process: {drain['changes_per_s']:,.0f} changes/s ({drain['vs_raw']:.1%} of raw), "
            f"{drain['evaluations_per_s']:,.0f} users evaluated/s, {drain['decisions_per_s']:,.0f} decisions/s, "
            f"{drain['sends_per_s']:,.0f} sends/s ({drain['decisions']:,.0f} decisions, {drain['sends']:,.0f} sends)"
        )
        lat = _latency(scoped, out_dir, args.rate, args.seconds, args.users)
        latencies, timeline = lat.pop("_latencies"), lat.pop("_timeline")
        results["latency"] = lat
        verdict = "met" if lat["met"] else "NOT met"
        print(
            f"(c) event -> provider at {lat['achieved_rate']:,.0f} events/s: {lat['received']:,} of "
            f"{lat['expected_messages']:,} pushes arrived (duplicates {lat['duplicates']}); "
            f"p50 {_ms(lat['p50_ms'])}, p95 {_ms(lat['p95_ms'])}, p99 {_ms(lat['p99_ms'])}, max {_ms(lat['max_ms'])}; "
            f"target p99 < {TARGET_P99_MS} ms: {verdict}"
        )
        (out_dir / "triggers.json").write_text(json.dumps(results, indent=2) + "\n")
        _plot(results, latencies, timeline, out_dir / "triggers.png")
        print(f"wrote {out_dir / 'triggers.json'} and {out_dir / 'triggers.png'}")
    finally:
        drop_run(
            scoped,
            scoped.app_id,
            key_patterns=(f"{scoped.app_id}*", f"nudge:{{{scoped.app_id}*"),
            data_dir=scoped.data_dir,
        )
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _plot(results: dict[str, Any], latencies: list[int], timeline: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, hist, over_time) = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [1.1, 1.2, 1]})
    s = results["service"]
    names = [
        "raw\nXREADGROUP\n+ XACK",
        "changes\nread",
        "users\nevaluated",
        "decisions\nrecorded",
        "sends",
    ]
    values = [
        results["raw_read_per_s"],
        s["changes_per_s"],
        s["evaluations_per_s"],
        s["decisions_per_s"],
        s["sends_per_s"],
    ]
    bars = rates.bar(names, values, color=["grey", "tab:blue", "tab:blue", "tab:orange", "tab:green"])
    rates.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    rates.set_yscale("log")
    rates.set_ylabel("per second")
    rates.set_title(f"One trigger process vs the raw read rate ({s['vs_raw']:.1%})")
    lat = results["latency"]
    if latencies:
        xs = sorted(latencies)
        hist.hist(xs, bins=60, color="tab:blue", alpha=0.6, label="messages")
        cdf = hist.twinx()
        cdf.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], color="black", linewidth=1)
        cdf.set_ylabel("cumulative share")
        cdf.set_ylim(0, 1.01)
        for q, style in (("p50_ms", "--"), ("p99_ms", ":")):
            hist.axvline(lat[q], color="tab:purple", linestyle=style, label=f"{q[:3]} {lat[q]:,} ms")
        hist.axvline(TARGET_P99_MS, color="tab:red", linestyle="--", label=f"p99 target {TARGET_P99_MS} ms")
        hist.legend(loc="center right")
    hist.set_xlabel("event produced -> push received by the provider (ms)")
    hist.set_title(
        f"Latency at {lat['achieved_rate']:,.0f} events/s: {lat['received']:,}/{lat['expected_messages']:,} arrived"
    )
    if timeline:
        over_time.scatter([t / 1000 for t, _ in timeline], [v for _, v in timeline], s=3, alpha=0.5)
        over_time.axhline(TARGET_P99_MS, color="tab:red", linestyle="--")
    over_time.set_xlabel("seconds into the run (event produced)")
    over_time.set_ylabel("latency (ms)")
    over_time.set_title("When the slow ones were produced")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
