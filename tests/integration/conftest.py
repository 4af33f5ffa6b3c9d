"""Fixtures for tests against the real local stack (Kafka KRaft + Redis).

The stack is brought up once per session with `nudge stack up` (idempotent:
a developer's running stack is reused). A missing broker is a failure, not a
skip. Each test gets its own topics (and Redis key prefix) so tests never see
each other's data.

Two more stacks, started on first use and stopped at the end of the session,
each in its own data dir under pytest's tmp dir and on free ports (never the
shared stack's):

- `three_brokers`: Settings of 3 KRaft brokers (topics RF 3, min.insync.replicas 2),
  paired with the shared stack's Redis;
- `cluster_stack`: Settings of a 3-master Redis Cluster (`redis_cluster` on),
  paired with the shared stack's Kafka.

`unique_scope(settings)` gives any of them this test's own topics and prefixes.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.scope import scoped as scoped_settings
from nudge import stack
from nudge.settings import Settings
from nudge.topics import admin_client, ensure_topics


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    base = Settings.from_env()
    stack.up(base)
    yield base


@contextlib.contextmanager
def unique_scope(base: Settings) -> Iterator[Settings]:
    """`base` with topics, consumer group and Redis keys unique to one test; topics created.

    They are deleted afterwards unless NUDGE_KEEP_TEST_TOPICS=1 (to debug a
    failure from the changelog and the DLQ)."""
    tag = uuid.uuid4().hex[:10]
    scoped = scoped_settings(base, f"t{tag}")
    ensure_topics(scoped)
    yield scoped
    if os.environ.get("NUDGE_KEEP_TEST_TOPICS") == "1":
        return
    admin = admin_client(scoped)
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in existing if t.startswith(f"t{tag}")]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


@pytest.fixture
def unique_topics(settings: Settings) -> Iterator[Settings]:
    """Settings whose topics are unique to this test and already created (see unique_scope)."""
    with unique_scope(settings) as scoped:
        yield scoped


# --- extra stacks: 3 brokers, a Redis Cluster ---------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(count: int, low: int, high: int, *, also: int | None = None) -> int:
    """The first of `count` consecutive free ports in [low, high) (and the same
    block `also` ports higher, e.g. Redis Cluster's bus at +10000)."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        ports = [base + i for i in range(count)]
        if also is not None:
            ports += [port + also for port in ports]
        if all(_bindable(port) for port in ports):
            return base
    raise RuntimeError(f"no {count} free consecutive ports in {low}..{high}")


def _share_kafka_classpath(shared: Settings, data_dir: Path) -> None:
    # Reuse the shared stack's resolved jars (else `stack up` asks mvn again).
    cached = shared.data_dir / "kafka" / "classpath.txt"
    if cached.exists():
        (data_dir / "kafka").mkdir(parents=True, exist_ok=True)
        shutil.copy(cached, data_dir / "kafka" / "classpath.txt")


@contextlib.contextmanager
def _running(own: Settings, **parts: bool) -> Iterator[Settings]:
    """Start `own` (stack.up), yield it, and stop it whatever happens."""
    try:
        stack.up(own, **parts)
        yield own
    finally:
        stack.down(own)


@pytest.fixture(scope="session")
def three_brokers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A 3-node KRaft cluster of its own (RF 3, min.insync.replicas 2) beside the
    shared stack's Redis; the default topics are created. Tests that stop a
    broker must start it again (stack.start_kafka_node) before they end."""
    data_dir = tmp_path_factory.mktemp("three-brokers")
    _share_kafka_classpath(settings, data_dir)
    port = free_port_block(20, 20_000, 21_000)  # clients at port.., controllers at port+10..
    own = Settings(
        data_dir=data_dir,
        kafka_brokers=3,
        kafka_port=port,
        kafka_controller_port=port + 10,
        kafka_heap=settings.kafka_heap,
        redis_port=settings.redis_port,
        redis_url=settings.redis_url,
    )
    with _running(own, redis=False):
        yield own


@pytest.fixture(scope="session")
def cluster_stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A 3-master Redis Cluster of its own beside the shared stack's Kafka. Tests
    that stop a node must start it again (stack.start_redis_node) before they end."""
    data_dir = tmp_path_factory.mktemp("redis-cluster")
    port = free_port_block(3, 12_000, 13_000, also=10_000)
    own = Settings(
        data_dir=data_dir,
        redis_cluster=True,
        redis_port=port,
        kafka_port=settings.kafka_port,
        kafka_controller_port=settings.kafka_controller_port,
        kafka_bootstrap=settings.kafka_bootstrap,
    )
    with _running(own, kafka=False):
        yield own
