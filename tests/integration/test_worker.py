"""The stream worker against the real stack: its Redis state must equal the
batch reference on the same log, whatever happens on the way (a kill -9, a
second worker, a third one joining mid-stream, malformed input)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka.errors import KafkaError

from features import batch
from features.state import FoldConfig
from nudge.events import Event, Rejection, parse_event_obj
from nudge.layout import changes_stream_of, changes_streams
from nudge.redis_client import sync_client
from nudge.settings import Settings
from nudge.topics import topic_for_event_type
from producers.kafka import EventProducer
from producers.simulator import generate
from streams.process import WorkerProcess

USERS, DAYS, SEED = 7000, 1.3, 11  # about 124k events of 5.5k users


@pytest.fixture(scope="module")
def sim_log() -> list[dict[str, Any]]:
    events = list(generate(USERS, DAYS, SEED))
    assert len(events) >= 100_000
    assert len({e["user_id"] for e in events}) >= 5_000
    return events


def reference_of(events: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """What every user's hash must hold after `events`: the batch reference."""
    parsed: list[Event] = []
    for raw in events:
        ev = parse_event_obj(raw, now_ms=2**53)
        assert not isinstance(ev, Rejection), ev
        parsed.append(ev)
    return batch.compute(parsed, FoldConfig())


@pytest.fixture(scope="module")
def reference(sim_log: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return reference_of(sim_log)


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    with EventProducer(settings, client_id="test-worker") as producer:
        for ev in events:
            topic = topic_for_event_type(settings, ev["type"])
            assert topic is not None
            producer.send(topic, orjson.dumps(ev), key=ev["user_id"].encode())


def redis_state(settings: Settings, users: Iterator[str] | list[str]) -> dict[str, dict[str, str]]:
    client = sync_client(settings, decode_responses=True)
    users = list(users)
    out: dict[str, dict[str, str]] = {}
    for i in range(0, len(users), 1000):
        pipe = client.pipeline(transaction=False)
        chunk = users[i : i + 1000]
        for user in chunk:
            pipe.hgetall(settings.user_key_prefix + user)
        for user, fields in zip(chunk, pipe.execute(), strict=True):
            out[user] = fields
    client.close()
    return out


def mismatches(settings: Settings, reference: dict[str, dict[str, str]]) -> list[str]:
    """Users whose Redis hash differs from the reference (on the reference's fields)."""
    state = redis_state(settings, list(reference))
    bad = []
    for user, expected in reference.items():
        got = state.get(user, {})
        if any(got.get(k) != v for k, v in expected.items()):
            bad.append(user)
    return bad


def wait_for_parity(
    settings: Settings, reference: dict[str, dict[str, str]], workers: list[WorkerProcess], timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    bad: list[str] = list(reference)
    while time.monotonic() < deadline:
        for w in workers:
            w.check_alive()
        bad = mismatches(settings, reference)
        if not bad:
            break
        time.sleep(2.0)
    else:
        sample = bad[0]
        got = redis_state(settings, [sample])[sample]
        diff = {k: (v, got.get(k)) for k, v in reference[sample].items() if got.get(k) != v}
        pytest.fail(
            f"{len(bad)} users differ from the batch reference after {timeout:.0f}s; e.g. {sample}: {diff}; "
            f"uncommitted: {uncommitted(settings)}"
        )
    # Everything processed must end up committed, or a restart redoes it.
    lag: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            lag = uncommitted(settings)
        except KafkaError:  # kafka-python's admin does not fail over to another broker by itself
            time.sleep(1.0)
            continue
        if not lag:
            return
        time.sleep(1.0)
    pytest.fail(f"state matches, but offsets were not committed to the end: {lag}")


def uncommitted(settings: Settings) -> dict[str, int]:
    """Per input partition, how far the worker group's committed offset is behind the log end."""
    from kafka import KafkaConsumer, TopicPartition

    from nudge.kafka_clients import connect
    from nudge.topics import admin_client

    tps = [TopicPartition(t, p) for t in settings.input_topics for p in range(settings.partitions)]
    admin = admin_client(settings)
    consumer = connect(KafkaConsumer, settings)  # with the security settings (tests/integration/test_secure_stack.py)
    try:
        committed = admin.list_group_offsets({settings.app_id: tps})[settings.app_id]
        ends = consumer.end_offsets(tps)
    finally:
        admin.close()
        consumer.close()
    lag = {}
    for tp in tps:
        meta = committed.get(tp)
        behind = ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        if behind:
            lag[f"{tp.topic}[{tp.partition}]"] = behind
    return lag


def log_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}.log"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parity_with_batch_reference(
    unique_topics: Settings, sim_log: list[dict[str, Any]], reference: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    produce(unique_topics, sim_log)
    with WorkerProcess(unique_topics, web_port=free_port(), log_path=log_path(tmp_path, "w1")) as worker:
        worker.wait_processed(len(sim_log), timeout=300)
        wait_for_parity(unique_topics, reference, [worker], timeout=60)
        metrics = worker.metrics()
        report = worker.offsets()
    # A SIGTERM stop is clean: exit status 0, no traceback in the log.
    assert worker.proc is not None and worker.proc.returncode == 0
    assert "Traceback" not in log_path(tmp_path, "w1").read_text()
    assert worker.total("nudge_stream_dlq_total", metrics) == 0
    # Liveness: the commit and batch clocks moved.
    assert metrics["nudge_stream_last_commit_timestamp_seconds"] > time.time() - 600
    assert metrics["nudge_stream_last_batch_timestamp_seconds"] > time.time() - 600
    # /offsets: every input partition, all of it processed and committed.
    produced: dict[str, int] = {}
    for ev in sim_log:
        topic = topic_for_event_type(unique_topics, ev["type"])
        produced[str(topic)] = produced.get(str(topic), 0) + 1
    assert len(report) == 4 * unique_topics.partitions  # the input topics and the re-keyed one
    assert all((row["committed"] or 0) == row["next_expected"] for row in report.values())
    assert all(row["acked_pending"] == 0 and row["fetching"] for row in report.values())
    for topic, count in produced.items():
        assert sum(row["next_expected"] for name, row in report.items() if name.startswith(topic + "[")) == count
    # Every user's hash carries the contract's bookkeeping fields.
    sample = redis_state(unique_topics, [next(iter(reference))])
    fields = next(iter(sample.values()))
    assert {"as_of", "updated_at", "seq", "lifecycle", "top_category", "cart_open"} <= set(fields)
    client = redis.Redis.from_url(unique_topics.redis_url)
    # Every written user has entries in its own changes shard, and only there.
    streams = changes_streams(unique_topics)
    assert sum(client.xlen(name) for name in streams) > 0
    user = next(iter(reference))
    mine = client.xrange(changes_stream_of(unique_topics, user))
    assert any(fields[b"user_id"] == user.encode() for _, fields in mine)
    ttl = client.ttl(unique_topics.user_key_prefix + next(iter(reference)))
    assert 0 < ttl <= unique_topics.state_ttl_s


def test_kill_9_mid_stream_loses_and_doubles_nothing(
    unique_topics: Settings, sim_log: list[dict[str, Any]], reference: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    produce(unique_topics, sim_log)
    port = free_port()
    first = WorkerProcess(unique_topics, web_port=port, log_path=log_path(tmp_path, "crash1")).start()
    try:
        first.wait_processed(len(sim_log) // 3, timeout=300, poll=0.05)
    finally:
        first.kill()
    assert first.proc is not None and first.proc.returncode == -9
    assert mismatches(unique_topics, reference), "the crash came too late to test anything"
    with WorkerProcess(unique_topics, web_port=port, log_path=log_path(tmp_path, "crash2")) as second:
        wait_for_parity(unique_topics, reference, [second], timeout=300)


def test_two_workers_then_a_third_joining_mid_stream(
    unique_topics: Settings, sim_log: list[dict[str, Any]], reference: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    produce(unique_topics, sim_log)
    workers = [
        WorkerProcess(unique_topics, web_port=free_port(), log_path=log_path(tmp_path, f"scale{i}")).start()
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        while sum(w.total("nudge_stream_events_total") for w in workers if _serving(w)) < len(sim_log) // 4:
            assert time.monotonic() < deadline, "two workers made no progress"
            time.sleep(0.2)
        third = WorkerProcess(unique_topics, web_port=free_port(), log_path=log_path(tmp_path, "scale2")).start()
        workers.append(third)
        wait_for_parity(unique_topics, reference, workers, timeout=300)
        # On a slow machine the first two can finish before the third serves /metrics (CI, stop 17).
        third.wait_ready(120)
        ready_by = time.monotonic() + 60
        while not _serving(third):
            assert time.monotonic() < ready_by, "the third worker never served /metrics"
            time.sleep(0.2)
        busy = [w for w in workers if w.total("nudge_stream_events_total") > 0]
        assert len(busy) >= 2, "the partitions were not shared"
    finally:
        for w in workers:
            w.stop()


def _serving(worker: WorkerProcess) -> bool:
    try:
        worker.metrics()
        return True
    except OSError:
        return False
