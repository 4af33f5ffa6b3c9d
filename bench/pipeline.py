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
import gc
import itertools
import json
import secrets
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, cast

import orjson

from bench.scope import drop_run
from bench.scope import scoped as scoped_settings
from nudge.args import integer, number, output_dir
from nudge.kafka_security import client_config
from nudge.layout import changes_streams
from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import ensure_topics, topic_for_event_type
from producers.simulator import MAX_USERS

__all__ = ["configure", "run"]


# Every message is generated and held in memory before the runs (about 1 KB each).
MAX_EVENTS = 2_000_000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=integer(1000, MAX_EVENTS, why="every message is held in memory"),
        default=200_000,
        help=f"messages for the throughput runs, 1000..{MAX_EVENTS} [%(default)s]",
    )
    parser.add_argument(
        "--users",
        type=integer(1, MAX_USERS, why="every simulated user is held in memory"),
        default=20_000,
        help=f"simulated users, 1..{MAX_USERS} [%(default)s]",
    )
    parser.add_argument(
        "--freshness-seconds",
        type=number(1, 3600),
        default=20.0,
        help="length of the latency run, 1..3600 [%(default)s]",
    )
    parser.add_argument(
        "--out-dir", type=output_dir, default="bench-results", help="where JSON and PNG go [%(default)s]"
    )
    parser.add_argument(
        "--web-port",
        type=integer(1024, 65533, why="it and the next two ports are used"),
        default=6199,
        help="worker port used by the benchmark; it and the next two are used, 1024..65533 [%(default)s]",
    )
    parser.add_argument("--skip-recovery", action="store_true", help="skip the table recovery measurement")
    parser.add_argument(
        "--no-models",
        action="store_true",
        help="run the worker without models (by default it scores every user with a trained snapshot, "
        "resolves labels and offer rewards, as in production)",
    )
    parser.set_defaults(func=run)


def _messages(settings: Settings, events: int, users: int) -> list[tuple[str, bytes, bytes]]:
    """The simulator's first `events`, moved in event time to end now.

    The latency run that follows stamps its events with the wall clock: were
    the first ones left in the simulator's past, event time would jump weeks
    between the runs, and the models would resolve every label and rescore
    every user at once (a worker back after weeks down, not the steady state
    the latency run measures).
    """
    from producers.simulator import generate

    head = list(itertools.islice(generate(users, 60, seed=42), events))
    shift = int(time.time() * 1000) - head[-1]["ts"] if head else 0
    out = []
    for ev in head:
        ev["ts"] += shift
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
            bootstrap_servers=settings.kafka_bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 << 20,
            **client_config(settings),
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


async def _send_paced(
    settings: Settings, routed: list[tuple[str, dict[str, Any]]], rate: float, sent: list[tuple[str, int]]
) -> float:
    """Send each event at its due time, stamped with the time it is sent
    (acks=all, idempotent, as every nudge producer); return the rate achieved."""
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
        began = time.perf_counter()
        pending = []
        for i, (topic, event) in enumerate(routed):
            delay = began + i * interval - time.perf_counter()
            if delay > 0.002:
                await asyncio.sleep(delay)
            ts = int(time.time() * 1000)
            event["ts"] = ts
            user = event["user_id"]
            pending.append(await producer.send(topic, orjson.dumps(event), key=user.encode()))
            sent.append((user, ts))
        achieved = len(routed) / (time.perf_counter() - began)
        await asyncio.gather(*pending)
        return achieved
    finally:
        await producer.stop()


def _freshness(settings: Settings, rate: float, seconds: float, users: int, skip: int) -> dict[str, Any]:
    """Produce the simulator's next events at `rate`, each stamped ts = now,
    then match each to the first changes-stream entry of its user whose
    as_of covers it. Same traffic mix as the throughput run."""
    from producers.simulator import generate

    client = sync_client(settings, decode_responses=True)
    start_id = f"{int(time.time() * 1000)}-0"
    sent: list[tuple[str, int]] = []
    total = int(rate * seconds)
    upcoming = list(itertools.islice(generate(users, 60, seed=42), skip, skip + total))
    routed = []
    for event in upcoming:
        topic = topic_for_event_type(settings, event["type"])
        assert topic is not None
        routed.append((topic, event))
    # The load generator must cost the machine as little as it can (it shares
    # the cores with the worker it measures): aiokafka's producer builds
    # record batches in C, and the generator never pauses for its own
    # garbage collection (a pause with stamped events in the producer's
    # buffer would count as the worker's latency).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        achieved = asyncio.run(_send_paced(settings, routed, rate, sent))
    finally:
        gc.enable()
        gc.unfreeze()
    total = len(upcoming)
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


def _inputs(settings: Settings, messages: list[tuple[str, bytes, bytes]]) -> list[Any]:
    from streams.step import Message, expected_partition

    parts = settings.partitions
    return [Message(t, expected_partition(k, parts), i, k, v) for i, (t, k, v) in enumerate(messages)]


def _trained_bundle(settings: Settings, messages: list[tuple[str, bytes, bytes]]) -> Any:
    """Models trained on these messages, as the trainer would have them: what the worker scores with.

    The examples and rewards the step resolves are learned in-process; the
    cost of scoring depends on the models' shape (cut points, learned arms),
    not on how good they are.
    """
    from models.bundle import learn_example, learn_reward, new_bundle, next_version
    from streams.model_stage import model_stage_for
    from streams.step import StepConfig, step

    stage = model_stage_for(settings)
    bundle = new_bundle([oid for oid in stage.catalog])
    config = StepConfig.from_settings(settings)
    states: dict[str, Any] = {}
    inputs = _inputs(settings, messages)
    for i in range(0, len(inputs), 5000):
        result = step(states, inputs[i : i + 5000], config, _NOW_MS, models=stage)
        states.update(result.states)
        for example in result.examples:
            learn_example(bundle, example)
        for reward in result.rewards:
            learn_reward(bundle, reward)
    next_version(bundle)
    return bundle


# The simulator's future days are not "future" to the step.
_NOW_MS = int(time.time() * 1000) + 365 * 86_400_000


def _step_cost(
    settings: Settings, messages: list[tuple[str, bytes, bytes]], batch: int, bundle: Any = None
) -> dict[str, Any]:
    """The pure step alone (no Kafka, no Redis), in microseconds per event,
    beside `orjson.loads` of the same messages (the floor: any step decodes
    its input). States carry over from batch to batch, as in the worker.
    With `bundle`, the model stage runs too and scores with it."""
    from streams.model_stage import model_stage_for
    from streams.step import StepConfig, step

    inputs = _inputs(settings, messages)
    config = StepConfig.from_settings(settings)
    started = time.perf_counter()
    for message in inputs:
        orjson.loads(message.value)
    floor = time.perf_counter() - started
    stage = None
    if bundle is not None:
        stage = model_stage_for(settings)
        stage.use(bundle)
    states: dict[str, Any] = {}
    started = time.perf_counter()
    for i in range(0, len(inputs), batch):
        states.update(step(states, inputs[i : i + batch], config, _NOW_MS, models=stage).states)
    elapsed = time.perf_counter() - started
    n = len(inputs)
    return {
        "batch": batch,
        "models": bundle is not None,
        "step_us_per_event": elapsed / n * 1e6,
        "orjson_loads_us_per_event": floor / n * 1e6,
    }


def _publish_snapshot(settings: Settings, bundle: Any) -> int:
    """Seal `bundle` with the run's key into the run's snapshot topic; its size in bytes."""
    from kafka import KafkaProducer

    from models.snapshot import seal
    from nudge.kafka_clients import connect
    from streams.trainer import SNAPSHOT_KEY

    blob = seal(bundle, key=settings.model_key.encode(), version=bundle.version, meta={"created_at": 0})
    producer = connect(KafkaProducer, settings, client_id="nudge-bench", max_request_size=settings.max_message_bytes)
    try:
        producer.send(settings.topic_model_snapshots, key=SNAPSHOT_KEY, value=blob).get(timeout=60)
    finally:
        producer.close()
    return len(blob)


def _throughput(settings: Settings, count: int, workers: int, out_dir: Path, port: int) -> dict[str, float]:
    """Events/s of `workers` worker processes sharing the partitions, measured
    once every worker is busy (the initial rebalances are left out)."""
    from streams.process import WorkerProcess

    procs = [
        WorkerProcess(settings, web_port=port + i, log_path=out_dir / f"worker-bench-{workers}w-{i}.log").start()
        for i in range(workers)
    ]
    try:
        first: tuple[float, float] | None = None  # (time, events) when any worker got going
        busy: tuple[float, float] | None = None  # ... and when every worker had
        deadline = time.monotonic() + 900
        while True:
            assert time.monotonic() < deadline, f"{workers} workers did not process {count} events in 900 s"
            totals = []
            for proc in procs:
                proc.check_alive()
                try:
                    totals.append(proc.total("nudge_stream_events_total"))
                except OSError:
                    totals.append(0.0)
            now = time.monotonic()
            if first is None and any(totals):
                first = (now, sum(totals))
            if busy is None and all(totals):
                busy = (now, sum(totals))
            if sum(totals) >= count:
                break
            time.sleep(0.02)
        # A short run may end before the last worker got partitions: then
        # the rate counts from the first worker's start (said in the JSON).
        t0, at_t0 = busy or first or (now, 0.0)
        rate = (count - at_t0) / (now - t0) if now > t0 else float("nan")
        batches = sum(p.metrics().get("nudge_stream_batch_seconds_count", 0) for p in procs)
        return {
            "workers": workers,
            "events_per_s": rate,
            "measured_events": count - at_t0,
            "every_worker_busy": busy is not None,
            "batches": batches,
        }
    finally:
        for proc in procs:
            proc.stop()


def _scoring_cost(costs: list[dict[str, Any]]) -> float | None:
    """The step's cost with models minus without, at batches of 500 (None without a models run)."""
    by = {(c["models"], c["batch"]): c["step_us_per_event"] for c in costs}
    if (True, 500) not in by:
        return None
    return float(by[True, 500] - by[False, 500])


def _stages(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean time of each stage and mean batch size between two scrapes (None:
    the stage did not run, e.g. no dead letters)."""
    out = {}
    for key, name in (
        ('nudge_stream_batch_stage_seconds_{}{{stage="step"}}', "step_ms"),
        ('nudge_stream_batch_stage_seconds_{}{{stage="kafka"}}', "kafka_ms"),
        ('nudge_stream_batch_stage_seconds_{}{{stage="changelog"}}', "changelog_flush_ms"),
        ('nudge_stream_batch_stage_seconds_{}{{stage="redis"}}', "redis_ms"),
        ("nudge_stream_batch_seconds_{}", "batch_ms"),
    ):
        count = after.get(key.format("count"), 0) - before.get(key.format("count"), 0)
        total = after.get(key.format("sum"), 0) - before.get(key.format("sum"), 0)
        out[name] = 1000 * total / count if count else None
    count = after.get("nudge_stream_batch_size_count", 0) - before.get("nudge_stream_batch_size_count", 0)
    total = after.get("nudge_stream_batch_size_sum", 0) - before.get("nudge_stream_batch_size_sum", 0)
    out["batch_events"] = total / count if count else None
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.process import WorkerProcess

    tag = f"bench{uuid.uuid4().hex[:8]}"
    # The run's own topics (its model topics included: nothing else's snapshots are loaded) and key.
    models: dict[str, Any] = {} if args.no_models else {"model_key": secrets.token_hex(32)}
    scoped = scoped_settings(settings, tag, data_dir=settings.data_dir / "bench" / tag, **models)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(scoped)
    print(f"generating {args.events:,} events for {args.users:,} users ...")
    messages = _messages(scoped, args.events, args.users)
    bundle = None if args.no_models else _trained_bundle(scoped, messages)
    step_costs = [_step_cost(scoped, messages, batch) for batch in (500, 5000)]
    if bundle is not None:
        step_costs += [_step_cost(scoped, messages, batch, bundle) for batch in (500, 5000)]
    for cost in step_costs:
        print(
            f"(e) the step alone{' with models' if cost['models'] else ''}, batches of {cost['batch']:,}: "
            f"{cost['step_us_per_event']:.1f} us/event "
            f"(orjson.loads of the same messages: {cost['orjson_loads_us_per_event']:.2f} us/event)"
        )
    scoring = _scoring_cost(step_costs)
    if scoring is not None:
        print(f"    the models' cost (labels, rewards, scores, sweeps): {scoring:.1f} us/event at batches of 500")
    produce_rate = _produce(scoped, messages)
    print(f"produced  {len(messages):,} messages at {produce_rate:,.0f}/s")
    raw = _raw_ceiling(scoped, len(messages))
    print(f"(a) raw aiokafka getmany ceiling: {raw:,.0f} msgs/s")
    results: dict[str, Any] = {
        "events": len(messages),
        "users": args.users,
        "raw_consume_per_s": raw,
        "step_cost": step_costs,
        "models": bundle is not None,
        "models_us_per_event": scoring,
    }
    if bundle is not None:
        results["snapshot_bytes"] = _publish_snapshot(scoped, bundle)

    worker = WorkerProcess(scoped, web_port=args.web_port, log_path=out_dir / "worker-bench.log", loglevel="warn")
    worker.start()
    try:
        first = None
        while first is None:
            worker.check_alive()
            try:
                if worker.total("nudge_stream_events_total") > 0:
                    first = time.monotonic()
            except OSError:
                pass
            time.sleep(0.02)
        done = worker.wait_processed(len(messages), timeout=900, poll=0.02)
        m = worker.metrics()
        rate = len(messages) / (done - first)
        results["worker_per_s"] = rate
        results["worker_vs_raw"] = rate / raw
        results["users_written"] = worker.total("nudge_redis_users_written_total", m)
        results["batches"] = m.get("nudge_stream_batch_seconds_count", 0)
        print(f"(b) worker, Kafka -> state -> Redis: {rate:,.0f} events/s = {rate / raw:.1%} of raw")
        fresh = _freshness(scoped, rate * 0.5, args.freshness_seconds, args.users, skip=len(messages))
        results["freshness"] = {k: v for k, v in fresh.items() if k not in ("latencies_ms", "timeline_ms")}
        results["freshness"]["stages"] = stages = _stages(m, worker.metrics())
        print(
            f"(c) freshness at {fresh['achieved_rate']:,.0f} events/s: p50 {fresh['p50_ms']:.0f} ms, "
            f"p99 {fresh['p99_ms']:.0f} ms (unmatched {fresh['unmatched']}); mean batch "
            f"{_ms(stages['batch_events'])} events: step {_ms(stages['step_ms'])} ms, Redis {_ms(stages['redis_ms'])} ms; "
            f"changelog flush {_ms(stages['changelog_flush_ms'])} ms every {scoped.changelog_flush_s:g} s"
        )
    finally:
        worker.stop()
    # The same messages again, read by fresh consumer groups of 1 and 2 workers.
    results["scaling"] = []
    for workers in (1, 2):
        name = f"{tag}-{workers}w"  # own consumer group, changelog and Redis keys; the same input topics
        group = dataclasses.replace(
            scoped, app_id=name, user_key_prefix=f"{name}:user:", changes_stream=f"{name}:changes"
        )
        row = _throughput(group, len(messages), workers, out_dir, args.web_port)
        results["scaling"].append(row)
        print(f"(f) {workers} worker process{'es' if workers > 1 else ''}: {row['events_per_s']:,.0f} events/s")
    if not args.skip_recovery:
        results["recovery"] = {}
        for store in ("memory://", "rocksdb://"):
            rec = _recovery(scoped, out_dir, args.web_port, store)
            results["recovery"][store] = rec
            print(f"(d) recovery {store:11} first start {rec['first_start_s']:.1f}s, restart {rec['restart_s']:.1f}s")
    results["targets"] = {"worker_per_s": 10_000, "freshness_p99_ms": 250, "step_us_per_event": 25}
    (out_dir / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, fresh["latencies_ms"], fresh["timeline_ms"], out_dir / "pipeline.png")
    drop_run(scoped, scoped.app_id, key_patterns=(f"{scoped.app_id}*",), data_dir=scoped.data_dir)
    print(f"wrote {out_dir / 'pipeline.json'} and {out_dir / 'pipeline.png'}")
    return 0


def _plot(results: dict[str, Any], latencies: list[int], timeline: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    (through, hist, over_time), (cost, stages, recovery) = axes
    scaling = {row["workers"]: row["events_per_s"] for row in results.get("scaling", [])}
    names = ["raw getmany", "worker (b)"] + [f"{n} worker{'s' if n > 1 else ''} (f)" for n in scaling]
    through.bar(
        names,
        [results["raw_consume_per_s"], results["worker_per_s"], *scaling.values()],
        color=["grey", "tab:blue"] + ["tab:cyan"] * len(scaling),
    )
    through.axhline(10_000, color="tab:red", linestyle="--", label="target 10k/s")
    through.set_ylabel("messages/s")
    through.set_yscale("log")
    through.set_title("Throughput (same messages, same run)")
    through.legend()
    fresh = results["freshness"]
    if latencies:
        hist.hist(latencies, bins=60, color="tab:blue")
        hist.axvline(250, color="tab:red", linestyle="--", label="p99 target 250 ms")
        hist.axvline(fresh["p99_ms"], color="black", linestyle=":", label=f"p99 {fresh['p99_ms']:.0f} ms")
        hist.legend()
    hist.set_xlabel("produce -> Redis (ms)")
    hist.set_title(f"Freshness at {fresh['achieved_rate']:,.0f} events/s (50 % of b)")
    if timeline:
        over_time.scatter([t / 1000 for t, _ in timeline], [lat for _, lat in timeline], s=1, alpha=0.3)
        over_time.axhline(250, color="tab:red", linestyle="--")
    over_time.set_xlabel("seconds into the freshness run (send time)")
    over_time.set_ylabel("produce -> Redis (ms)")
    over_time.set_title("When the slow ones were sent")
    costs = results.get("step_cost", [])
    cost.bar(
        [f"{'+ models' if c.get('models') else 'step'},\nbatch {c['batch']:,}" for c in costs] + ["orjson.loads"],
        [c["step_us_per_event"] for c in costs] + [costs[0]["orjson_loads_us_per_event"] if costs else 0],
        color=["tab:orange" if c.get("models") else "tab:blue" for c in costs] + ["grey"],
    )
    cost.axhline(25, color="tab:red", linestyle="--", label="aim 25 us")
    cost.set_ylabel("microseconds per event")
    cost.set_title("The pure step alone (no Kafka, no Redis)")
    cost.legend()
    st = fresh.get("stages", {})
    stages.bar(
        ["step", "Redis write", "step to Redis\n(whole batch)", "changelog flush\n(beside batches)"],
        [st.get(k) or 0 for k in ("step_ms", "redis_ms", "batch_ms", "changelog_flush_ms")],
    )
    stages.set_ylabel("mean ms")
    stages.set_title(f"Stages during (c), mean {st.get('batch_events') or 0:.0f} events/batch")
    rec = results.get("recovery", {})
    if rec:
        stores = list(rec)
        recovery.bar([f"{n}\nfirst" for n in stores] + [f"{n}\nrestart" for n in stores],
                     [rec[n]["first_start_s"] for n in stores] + [rec[n]["restart_s"] for n in stores])  # fmt: skip
        recovery.set_ylabel("seconds to ready")
        recovery.set_title("Worker start / restart (table recovery)")
    else:
        recovery.axis("off")
        recovery.text(0.5, 0.5, "recovery not measured\n(--skip-recovery)", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
