"""A Redis outage in the middle of a stream loses nothing.

The issue's promise: "Redis down: processing pauses and retries with backoff;
no offset is committed for events whose state was not written; nothing is
lost when Redis comes back." This test runs the worker against a Redis of its
own (never the shared one on 6379, which other tests use), SIGKILLs that
Redis mid-stream, and checks each part of the promise:

- the worker stays alive, stops making progress and keeps retrying, visibly
  (`nudge_redis_write_errors_total` grows, `nudge_dependency_up{dependency="redis"}` is 0);
- the consumer group's committed offsets do not move while Redis is down, and
  every committed event is already in the state Redis had acknowledged (read
  from the AOF by a second, private redis-server on the same directory);
- after Redis restarts on the same port and directory, every user's hash
  equals the batch reference and every offset gets committed.

AOF with `appendfsync always` means whatever Redis acknowledged before the
kill survives it, so the frozen state is exactly what the worker was told was
written.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from nudge.settings import Settings
from nudge.topics import admin_client
from producers.simulator import generate
from streams.process import WorkerProcess
from tests.integration.test_worker import free_port, produce, reference_of, wait_for_parity

REDIS_SERVER = "/usr/bin/redis-server"
USERS, DAYS, SEED = 1500, 1.0, 23  # about 22k events of 1.1k users
REDIS_UP = 'nudge_dependency_up{dependency="redis"}'
COMMIT_INTERVAL_S = 2.8  # Faust's default broker_commit_interval (PITFALLS.md)

Log = dict[TopicPartition, list[str]]  # user id of each message, in offset order


class PrivateRedis:
    """One redis-server child process on `port`, AOF fsync'ed on every write."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.workdir / f"redis-{self.port}.log")]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"redis-server on port {self.port} exited with {self.proc.returncode}; see {self.workdir}"
                    )
                try:
                    # INFO answers while the AOF is still loading; wait for the data.
                    if client.info("persistence").get("loading") == 0:
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} not ready after {timeout:.0f}s")
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (the AOF is already complete), SIGKILL if that fails."""
        if self.proc is None or self.proc.poll() is not None:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path


@pytest.fixture
def private_redis(redis_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(redis_dir, free_port())
    try:
        yield server.start()
    finally:
        server.kill()


def read_log(settings: Settings, timeout: float = 30.0) -> Log:
    """Every input message's user id by topic-partition, as Kafka stored it."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in settings.input_topics for p in range(settings.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        log: Log = {tp: [] for tp in tps}
        deadline = time.monotonic() + timeout
        while any(len(log[tp]) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, (
                f"read back {sum(map(len, log.values()))} of {sum(ends.values())} messages"
            )
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    assert record.offset == len(log[tp]), f"gap in {tp} at offset {record.offset}"
                    assert record.key is not None
                    log[tp].append(record.key.decode())
        return log
    finally:
        consumer.close()


def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """The worker's committed offsets on the input topics (0 where none yet)."""
    admin = admin_client(settings)
    try:
        offsets = admin.list_group_offsets(settings.app_id)[settings.app_id]
    finally:
        admin.close()
    out = {TopicPartition(t, p): 0 for t in settings.input_topics for p in range(settings.partitions)}
    for tp, meta in offsets.items():
        if tp in out and meta.offset >= 0:
            out[TopicPartition(tp.topic, tp.partition)] = meta.offset
    return out


def stored_seqs(url: str, prefix: str, users: list[str]) -> dict[str, int]:
    """Each user's `seq` (events folded into the written state; 0 if no hash)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.hget(prefix + user, "seq")
        return {user: int(seq or 0) for user, seq in zip(users, pipe.execute(), strict=True)}
    finally:
        client.close()


def wait_stalled(worker: WorkerProcess, quiet: float = 2.0, timeout: float = 20.0) -> float:
    """Wait until the worker's event counter stops moving for `quiet` seconds; return it."""
    deadline = time.monotonic() + timeout
    last = worker.total("nudge_stream_events_total")
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"the worker kept processing without Redis ({last:.0f} events)"
        time.sleep(0.2)
        worker.check_alive()
        now = worker.total("nudge_stream_events_total")
        if now != last:
            last, since = now, time.monotonic()
    return last


def wait_committed(settings: Settings, log: Log, timeout: float) -> dict[TopicPartition, int]:
    """Wait until the group has committed every input message."""
    deadline = time.monotonic() + timeout
    while True:
        offsets = committed_offsets(settings)
        if all(offsets[tp] == len(users) for tp, users in log.items()):
            return offsets
        assert time.monotonic() < deadline, f"committed {sum(offsets.values())} of {sum(map(len, log.values()))}"
        time.sleep(0.5)


def test_redis_killed_mid_stream_loses_nothing_and_commits_nothing_unwritten(
    unique_topics: Settings, private_redis: PrivateRedis, redis_dir: Path, tmp_path: Path
) -> None:
    settings = dataclasses.replace(unique_topics, redis_url=private_redis.url)
    events: list[dict[str, Any]] = list(generate(USERS, DAYS, SEED))
    reference = reference_of(events)
    users = list(reference)
    per_user = collections.Counter(e["user_id"] for e in events)
    assert len(events) >= 20_000 and len(users) >= 1_000

    produce(settings, events)
    log = read_log(settings)
    assert sum(map(len, log.values())) == len(events)

    worker_log = tmp_path / "worker.log"
    with WorkerProcess(settings, web_port=free_port(), log_path=worker_log) as worker:
        # 1. Redis dies (SIGKILL) a quarter of the way in.
        worker.wait_processed(len(events) // 4, timeout=60, poll=0.02)
        private_redis.kill()
        outage_started = time.monotonic()
        at_kill = worker.total("nudge_stream_events_total")

        # 2. The worker pauses, alive, retrying: nothing counts as processed.
        stalled_at = wait_stalled(worker)
        # At most one batch per agent (3 inputs + re-keyed) was in flight at the kill.
        in_flight = 4 * settings.batch_max
        assert stalled_at - at_kill <= in_flight, f"{stalled_at - at_kill:.0f} events processed after Redis died"
        assert stalled_at < len(events), "Redis died after the worker had finished: nothing was tested"
        # Ops see the outage on /metrics: errors counted, Redis marked down.
        early = worker.metrics()
        assert early.get(REDIS_UP) == 0, "nudge_dependency_up still says Redis is up with Redis dead"
        assert worker.total("nudge_redis_write_errors_total", early) > 0, "no failed Redis write was counted"

        # 3. Commits already owed for batches written before the kill land
        # within one commit interval; after that the offsets must stand still.
        time.sleep(COMMIT_INTERVAL_S + 0.5)
        frozen = committed_offsets(settings)
        time.sleep(2 * COMMIT_INTERVAL_S + 0.5)
        worker.check_alive()
        during = worker.metrics()
        assert worker.total("nudge_stream_events_total", during) == stalled_at, "events processed without Redis"
        # Still retrying (with backoff), not given up after the first failure.
        assert worker.total("nudge_redis_write_errors_total", during) > worker.total(
            "nudge_redis_write_errors_total", early
        ), "the worker stopped retrying"
        assert during.get(REDIS_UP) == 0
        later = committed_offsets(settings)
        moved = {f"{tp.topic}[{tp.partition}]": (frozen[tp], later[tp]) for tp in frozen if later[tp] != frozen[tp]}
        assert not moved, f"offsets committed while Redis was down: {moved}"

        # 4. Every committed event is in what Redis acknowledged: read the
        # AOF with a second server on another port while the worker waits.
        inspector = PrivateRedis(redis_dir, free_port()).start()
        try:
            acknowledged = stored_seqs(inspector.url, settings.user_key_prefix, users)
        finally:
            inspector.stop()
        owed: collections.Counter[str] = collections.Counter()
        for tp, offset in later.items():
            owed.update(log[tp][:offset])
        unwritten = {u: (n, acknowledged[u]) for u, n in owed.items() if acknowledged[u] < n}
        assert not unwritten, (
            f"{len(unwritten)} users have committed events missing from Redis (committed, written): "
            f"{dict(list(unwritten.items())[:5])}"
        )
        assert sum(later.values()) < len(events), "every offset was committed before the outage: nothing was tested"
        behind = [u for u in users if acknowledged[u] < per_user[u]]
        assert behind, "Redis already held the final state of every user when it died: nothing was tested"

        # 5. Redis comes back on the same port and directory: the worker
        # resumes by itself and converges on the batch reference.
        outage_s = time.monotonic() - outage_started
        private_redis.start()
        restarted = time.monotonic()
        wait_for_parity(settings, reference, [worker], timeout=45)
        recovered_s = time.monotonic() - restarted
        wait_committed(settings, log, timeout=15)
        after = worker.metrics()

    assert worker.total("nudge_stream_events_total", after) == len(events), "an event was counted twice or not at all"
    # The per-partition log read above is where each event was folded only if none was re-keyed.
    assert (
        sum(v for k, v in after.items() if k.startswith("nudge_stream_events_total{") and 'outcome="rekeyed"' in k) == 0
    )
    assert worker.total("nudge_stream_dlq_total", after) == 0
    print(
        f"outage {outage_s:.1f}s; {at_kill:.0f} events processed at the kill, {stalled_at:.0f}/{len(events)} when "
        f"stalled; parity {recovered_s:.1f}s after restart"
    )
    assert after.get(REDIS_UP) == 1
