"""The worker on a 3-master Redis Cluster (NUDGE_REDIS_CLUSTER=1): parity with
the batch reference while one node is killed -9 mid-stream and restarted.

Every script call keeps its keys in one hash slot (streams/store.py); a
cluster with a master down refuses every command (CLUSTERDOWN), so the worker
pauses, retries, and resumes by itself; writes the killed node had
acknowledged but not yet put in its AOF are rewritten from the worker's own
state when Redis is back (`UserStateUpdater.resync`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nudge import stack
from nudge.layout import changes_stream_of, changes_streams
from nudge.redis_client import sync_client
from nudge.settings import Settings
from producers.simulator import generate
from streams.process import WorkerProcess
from tests.integration.conftest import unique_scope
from tests.integration.test_worker import free_port, produce, reference_of, wait_for_parity

USERS, DAYS, SEED = 3000, 1.0, 31  # about 45k events of 2.2k users
REDIS_UP = 'nudge_dependency_up{dependency="redis"}'


@pytest.fixture
def scoped(cluster_stack: Settings) -> Iterator[Settings]:
    with unique_scope(cluster_stack) as settings:
        yield settings


def test_parity_on_a_redis_cluster_with_a_node_killed_and_restarted(scoped: Settings, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = list(generate(USERS, DAYS, SEED))
    reference = reference_of(events)
    produce(scoped, events)

    log = tmp_path / "worker.log"
    victim = sorted(stack.redis_node_pids(scoped))[1]
    with WorkerProcess(scoped, web_port=free_port(), log_path=log) as worker:
        worker.wait_processed(len(events) // 3, timeout=120, poll=0.05)
        stack.stop_redis_node(scoped, victim, kill=True)
        try:
            # The worker notices, says so on /metrics, and stops making progress.
            deadline = time.monotonic() + 30
            while worker.metrics().get(REDIS_UP) != 0:
                assert time.monotonic() < deadline, "the worker never noticed a cluster node was gone"
                time.sleep(0.2)
            paused_at = worker.total("nudge_stream_events_total")
            time.sleep(3)
            assert worker.total("nudge_stream_events_total") - paused_at <= 2 * scoped.batch_max
            assert paused_at < len(events), "the stream ended before the node died: nothing was tested"
        finally:
            stack.start_redis_node(scoped, victim)
        wait_for_parity(scoped, reference, [worker], timeout=120)
        metrics = worker.metrics()
    assert metrics.get(REDIS_UP) == 1
    assert worker.total("nudge_stream_events_total", metrics) == len(events)
    text = log.read_text()
    assert "Traceback" not in text
    # One line when Redis went away, then at most one per 30 s, one when it came back.
    assert text.count("redis connections failing") == 1 and text.count("redis connections work again") == 1
    assert "rewrote" in text
    # Changes entries are spread over the shards, each user in its own shard only.
    client = sync_client(scoped, decode_responses=True)
    try:
        lengths = [client.xlen(name) for name in changes_streams(scoped)]
        assert sum(1 for n in lengths if n) > len(lengths) // 2
        user = next(iter(reference))
        entries = client.xrange(changes_stream_of(scoped, user))
        assert any(fields["user_id"] == user for _, fields in entries)
    finally:
        client.close()
