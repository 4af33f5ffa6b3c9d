"""`nudge bench pipeline`: events -> worker -> Redis, against the raw ceiling.

One run, on fresh topics, measures:

(a) raw ceiling: aiokafka `getmany` reading the same pre-produced messages
    with no processing at all;
(b) the worker: a real `nudge worker` process folding the same messages into
    state and writing Redis, events/s from its first to its last batch;
(c) freshness at 50% of (b)'s rate: events stamped with their produce time,
    latency until the user's hash in Redis reflects them (read from the
    changes streams, whose entry ids are Redis server time), p50/p99;
(d) table recovery: time until a restarted worker is ready, with the memory
    store (replays the changelog) and with RocksDB (local state kept).

Prints the figures, writes bench-results/pipeline.json and pipeline.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
import redis

from nudge.layout import changes_streams
from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics, topic_for_event_type

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="messages for the throughput runs [%(default)s]")
    parser.add_argument("--users", type=int, default=20_000, help="simulated users [%(default)s]")
    parser.add_argument("--freshness-seconds", type=float, default=20.0, help="length of the latency run [%(default)s]")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("bench-results"), help="where JSON and PNG go [%(default)s]"
    )
    parser.add_argument("--web-port", type=int, default=6199, help="worker port used by the benchmark [%(default)s]")
    parser.add_argument("--skip-recovery", action="store_true", help="skip the table recovery measurement")
    parser.set_defaults(func=run)


def _scoped(settings: Settings, tag: str, **extra: Any) -> Settings:
    return dataclasses.replace(
        settings,
        topic_clicks=f"{tag}-clicks",
        topic_purchases=f"{tag}-purchases",
        topic_app_events=f"{tag}-app-events",
        topic_dlq=f"{tag}-dlq",
        topic_rekeyed=f"{tag}-rekeyed",
        app_id=tag,
        user_key_prefix=f"{tag}:user:",
        changes_stream=f"{tag}:changes",
        **extra,
    )


def _messages(settings: Settings, events: int, users: int) -> list[tuple[str, bytes, bytes]]:
    from producers.simulator import generate

    out = []
    for ev in itertools.islice(generate(users, 60, seed=42), events):
        topic = topic_for_event_type(settings, ev["type"])
        assert topic is not None
        out.append((topic, ev["user_id"].encode(), orjson.dumps(ev)))
    return out


def _produce(settings: Settings, messages: list[tuple[str, bytes, bytes]]) -> float:
    from producers.kafka import EventProducer

    started = time.perf_counter()
    with EventProducer(settings, client_id="nudge-bench") as producer:
        for topic, key, value in messages:
            producer.send(topic, value, key=key)
    return len(messages) / (time.perf_counter() - started)


def _raw_ceiling(settings: Settings, count: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def consume() -> float:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
        )
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in settings.input_topics for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen = 0
            started = time.perf_counter()
            while seen < count:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                seen += sum(len(records) for records in batch.values())
            return seen / (time.perf_counter() - started)
        finally:
            await consumer.stop()

    return asyncio.run(consume())


def _freshness(settings: Settings, rate: float, seconds: float, users: int, skip: int) -> dict[str, Any]:
    """Produce the simulator's next events at `rate`, each stamped ts = now,
    then match each to the first changes-stream entry of its user whose
    as_of covers it. Same traffic mix as the throughput run."""
    from producers.kafka import EventProducer
    from producers.simulator import generate

    client = sync_client(settings, decode_responses=True)
    start_id = f"{int(time.time() * 1000)}-0"
    sent: list[tuple[str, int]] = []
    total = int(rate * seconds)
    interval = 1.0 / rate
    upcoming = list(itertools.islice(generate(users, 60, seed=42), skip, skip + total))
    with EventProducer(settings, client_id="nudge-bench-fresh", linger_ms=1) as producer:
        began = time.perf_counter()
        for i, event in enumerate(upcoming):
            due = began + i * interval
            delay = due - time.perf_counter()
            if delay > 0.002:
                time.sleep(delay)
            ts = int(time.time() * 1000)
            event["ts"] = ts
            user = event["user_id"]
            topic = topic_for_event_type(settings, event["type"])
            assert topic is not None
            producer.send(topic, orjson.dumps(event), key=user.encode())
            sent.append((user, ts))
        total = len(upcoming)
        achieved = total / (time.perf_counter() - began)
    time.sleep(3.0)
    entries: dict[str, list[tuple[int, int]]] = {}
    stream: list[tuple[str, dict[str, str]]] = []
    for name in changes_streams(settings):
        stream += cast(list[tuple[str, dict[str, str]]], client.xrange(name, min=start_id))
    for entry_id, fields in stream:
        written_ms = int(entry_id.split("-")[0])
        entries.setdefault(fields["user_id"], []).append((int(fields["as_of"] or 0), written_ms))
    latencies = []
    timeline = []  # (ms since the first send, latency ms): when the slow ones were sent
    missing = 0
    first_ts = sent[0][1] if sent else 0
    for user, ts in sent:
        hit = next((written for as_of, written in entries.get(user, []) if as_of >= ts), None)
        if hit is None:
            missing += 1
        else:
            latencies.append(max(0, hit - ts))
            timeline.append((ts - first_ts, max(0, hit - ts)))
    latencies.sort()
    client.close()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "target_rate": rate,
        "achieved_rate": achieved,
        "events": total,
        "unmatched": missing,
        "p50_ms": q[49],
        "p90_ms": q[89],
        "p99_ms": q[98],
        "max_ms": latencies[-1] if latencies else None,
        "latencies_ms": latencies,
        "timeline_ms": timeline,
    }


def _recovery(settings: Settings, out_dir: Path, port: int, store: str) -> dict[str, float]:
    from streams.process import WorkerProcess

    scoped = dataclasses.replace(settings, store=store)
    log = out_dir / f"worker-recovery-{store.split(':')[0]}.log"
    first = WorkerProcess(scoped, web_port=port, log_path=log)
    first.start()
    cold = first.wait_ready(timeout=600)
    first.stop()
    second = WorkerProcess(scoped, web_port=port, log_path=log)
    second.start()
    warm = second.wait_ready(timeout=600)
    second.stop()
    return {"first_start_s": cold, "restart_s": warm}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.process import WorkerProcess

    if args.events < 1000 or args.users < 1:
        raise SystemExit("nudge bench pipeline: error: --events must be at least 1000 and --users at least 1")
    tag = f"bench{uuid.uuid4().hex[:8]}"
    scoped = _scoped(settings, tag, data_dir=settings.data_dir / "bench" / tag)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(scoped)
    print(f"generating {args.events:,} events for {args.users:,} users ...")
    messages = _messages(scoped, args.events, args.users)
    produce_rate = _produce(scoped, messages)
    print(f"produced  {len(messages):,} messages at {produce_rate:,.0f}/s")
    raw = _raw_ceiling(scoped, len(messages))
    print(f"(a) raw aiokafka getmany ceiling: {raw:,.0f} msgs/s")

    worker = WorkerProcess(scoped, web_port=args.web_port, log_path=out_dir / "worker-bench.log", loglevel="warn")
    worker.start()
    results: dict[str, Any] = {"events": len(messages), "users": args.users, "raw_consume_per_s": raw}
    try:
        first = None
        while first is None:
            worker._check_alive()
            try:
                if worker.total("nudge_stream_events_total") > 0:
                    first = time.monotonic()
            except OSError:
                pass
            time.sleep(0.05)
        done = worker.wait_processed(len(messages), timeout=900, poll=0.05)
        m = worker.metrics()
        rate = len(messages) / (done - first)
        results["worker_per_s"] = rate
        results["worker_vs_raw"] = rate / raw
        results["users_written"] = worker.total("nudge_redis_users_written_total", m)
        results["batches"] = m.get("nudge_stream_batch_seconds_count", 0)
        print(f"(b) worker, Kafka -> state -> Redis: {rate:,.0f} events/s = {rate / raw:.1%} of raw")
        fresh = _freshness(scoped, rate * 0.5, args.freshness_seconds, args.users, skip=len(messages))
        results["freshness"] = {k: v for k, v in fresh.items() if k != "latencies_ms"}
        print(
            f"(c) freshness at {fresh['achieved_rate']:,.0f} events/s: p50 {fresh['p50_ms']:.0f} ms, "
            f"p99 {fresh['p99_ms']:.0f} ms (unmatched {fresh['unmatched']})"
        )
    finally:
        worker.stop()
    if not args.skip_recovery:
        results["recovery"] = {}
        for store in ("memory://", "rocksdb://"):
            rec = _recovery(scoped, out_dir, args.web_port, store)
            results["recovery"][store] = rec
            print(f"(d) recovery {store:11} first start {rec['first_start_s']:.1f}s, restart {rec['restart_s']:.1f}s")
    results["targets"] = {"worker_per_s": 10_000, "worker_vs_raw": 0.30, "freshness_p99_ms": 250}
    (out_dir / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, fresh["latencies_ms"], out_dir / "pipeline.png")
    _cleanup(scoped)
    print(f"wrote {out_dir / 'pipeline.json'} and {out_dir / 'pipeline.png'}")
    return 0


def _plot(results: dict[str, Any], latencies: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    left.bar(
        ["raw getmany", "nudge worker"],
        [results["raw_consume_per_s"], results["worker_per_s"]],
        color=["grey", "tab:blue"],
    )
    left.axhline(10_000, color="tab:red", linestyle="--", label="target 10k/s")
    left.set_ylabel("messages/s")
    left.set_yscale("log")
    left.set_title("Throughput (same messages, same run)")
    left.legend()
    if latencies:
        mid.hist(latencies, bins=60, color="tab:blue")
        mid.axvline(250, color="tab:red", linestyle="--", label="p99 target 250 ms")
        mid.axvline(results["freshness"]["p99_ms"], color="black", linestyle=":", label="measured p99")
        mid.legend()
    mid.set_xlabel("produce -> Redis (ms)")
    mid.set_title(f"Freshness at {results['freshness']['achieved_rate']:,.0f} events/s")
    rec = results.get("recovery", {})
    if rec:
        names = list(rec)
        right.bar([f"{n}\nfirst" for n in names] + [f"{n}\nrestart" for n in names],
                  [rec[n]["first_start_s"] for n in names] + [rec[n]["restart_s"] for n in names])  # fmt: skip
        right.set_ylabel("seconds to ready")
        right.set_title("Worker start / restart (table recovery)")
    else:
        right.axis("off")
        right.text(0.5, 0.5, "recovery not measured\n(--skip-recovery)", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cleanup(settings: Settings) -> None:
    admin = admin_client(settings)
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(settings.app_id)]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{settings.app_id}:*", count=10_000):
        client.delete(key)
    client.close()
    shutil.rmtree(settings.data_dir, ignore_errors=True)
