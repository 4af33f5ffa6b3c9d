"""The local stack: a real broker answers, topics exist, Redis has AOF on; and a
Redis Cluster (NUDGE_REDIS_CLUSTER=1) that `nudge state` reads and whose nodes
survive a `kill -9`."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient
from redis.cluster import RedisCluster

from nudge import cli, stack
from nudge.redis_client import sync_client
from nudge.settings import Settings
from tests.integration.conftest import free_port_block


def test_up_is_idempotent_and_status_reports_both(settings: Settings) -> None:
    lines = stack.up(settings)
    names = [s.name for s in stack.status(settings)]
    for name in names:
        assert any(line.startswith(f"{name:6} already running") for line in lines), (name, lines)
    services = {s.name: s for s in stack.status(settings)}
    assert all(s.running and s.pid and s.since is not None for s in services.values()), services
    assert sum(name.startswith("kafka") for name in names) == settings.kafka_brokers


def test_topics_have_configured_partitions(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(settings.all_topics))}
    finally:
        admin.close()
    assert set(described) == set(settings.all_topics)
    assert all(len(t["partitions"]) == settings.partitions for t in described.values())


def test_redis_runs_with_aof(settings: Settings) -> None:
    # Every Redis of the stack: the single server, or each cluster node.
    for node in stack._Paths(settings).redis_nodes():
        client = redis.Redis(host="127.0.0.1", port=node.port)
        try:
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("dir")["dir"] == str(node.dir)
        finally:
            client.close()


# --- Redis Cluster -------------------------------------------------------------


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)


def _write_users(settings: Settings, count: int) -> dict[str, dict[str, str]]:
    """`count` users under a fresh prefix, spread over the cluster's slots; returns key -> hash."""
    prefix = f"t{uuid.uuid4().hex[:8]}:user:"
    client = sync_client(settings, decode_responses=True)
    try:
        users = {
            f"{prefix}u{i}": {"user_id": f"u{i}", "seq": str(i), "events_total": str(10 * i)} for i in range(count)
        }
        for key, fields in users.items():
            client.hset(key, mapping=fields)
            client.expire(key, 3600)
    finally:
        client.close()
    return users


def _wait_aof_written(port: int) -> None:
    """Until the node has handed its AOF buffer to the kernel: a kill -9 then loses nothing."""
    client = _node(port)
    try:
        deadline = time.monotonic() + 10
        while int(client.info("persistence")["aof_buffer_length"]) != 0:
            assert time.monotonic() < deadline, "AOF buffer never written"
            time.sleep(0.05)
    finally:
        client.close()


def test_redis_cluster_is_up(cluster_stack: Settings) -> None:
    ports = cluster_stack.redis_ports
    assert len(ports) == 3
    for port in ports:
        info = stack.redis_cluster_info(port)
        assert info["cluster_state"] == "ok", (port, info)
        assert info["cluster_slots_assigned"] == "16384" and info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"  # masters serving slots
        node = _node(port)
        try:
            config = node.config_get("*")
            assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
            assert config["cluster-enabled"] == "yes"
            assert config["dir"] == str(cluster_stack.data_dir.resolve() / "redis" / f"node-{port}")
        finally:
            node.close()
    # Three masters, no replicas, between them every slot once.
    slots = _node(ports[0]).cluster("SLOTS")
    owners = {tuple(entry[2][:2]) for entry in slots}
    assert len(owners) == 3 and all(len(entry) == 3 for entry in slots)  # [start, end, master]: no replica
    assert sum(entry[1] - entry[0] + 1 for entry in slots) == 16384
    services = {s.name: s for s in stack.status(cluster_stack) if s.name.startswith("redis")}
    assert sorted(services) == [f"redis-{port}" for port in ports]
    assert all(s.running for s in services.values())
    assert set(stack.redis_node_pids(cluster_stack)) == set(ports)


def test_nudge_state_reads_a_user_from_the_cluster(
    cluster_stack: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = _write_users(cluster_stack, 5)
    key = next(iter(users))
    prefix = key.rpartition("u")[0]
    for name, value in cluster_stack.to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NUDGE_USER_KEY_PREFIX", prefix)
    # NUDGE_REDIS_URL names one node; the user may live on any other.
    for key, fields in users.items():
        assert cli.main(["state", fields["user_id"], "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == fields, key


def test_a_killed_node_rejoins_with_its_data(cluster_stack: Settings) -> None:
    users = _write_users(cluster_stack, 30)
    client = sync_client(cluster_stack, decode_responses=True)
    assert isinstance(client, RedisCluster)
    key = next(iter(users))
    victim = client.get_node_from_key(key).port
    survivor = next(port for port in cluster_stack.redis_ports if port != victim)
    on_victim = [k for k in users if client.get_node_from_key(k).port == victim]
    client.close()
    _wait_aof_written(victim)
    before = stack.redis_node_pids(cluster_stack)[victim]
    try:
        assert stack.stop_redis_node(cluster_stack, victim, kill=True)
        assert victim not in stack.redis_node_pids(cluster_stack)
        deadline = time.monotonic() + 15
        while stack.redis_cluster_info(survivor)["cluster_state"] == "ok":  # noticed within the node timeout
            assert time.monotonic() < deadline, "the cluster never noticed the dead node"
            time.sleep(0.1)
    finally:
        line = stack.start_redis_node(cluster_stack, victim)  # waits for cluster_state:ok everywhere
    assert line.startswith(f"redis-{victim} started")
    assert stack.redis_node_pids(cluster_stack)[victim] != before
    assert all(stack.redis_cluster_info(port)["cluster_state"] == "ok" for port in cluster_stack.redis_ports)
    client = sync_client(cluster_stack, decode_responses=True)
    try:
        assert on_victim, "no user on the killed node"
        for key, fields in users.items():
            assert client.hgetall(key) == fields, key
            assert 0 < client.ttl(key) <= 3600
    finally:
        client.close()


def test_down_stops_every_node_and_up_restarts_the_same_cluster(tmp_path: Path) -> None:
    port = free_port_block(3, 13_000, 14_000, also=10_000)
    own = Settings(data_dir=tmp_path, redis_cluster=True, redis_port=port)
    try:
        first = stack.up(own, kafka=False)
        assert any(line.startswith("redis cluster created") for line in first), first
        users = _write_users(own, 10)
        pids = stack.redis_node_pids(own)
        assert len(pids) == 3

        assert stack.down(own) == ["kafka  was not running", *(f"redis-{p} stopped" for p in own.redis_ports)]
        assert stack.redis_node_pids(own) == {}
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())
        for p in own.redis_ports:
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open"
        assert all(not s.running for s in stack.status(own))

        again = stack.up(own, kafka=False)  # nodes.conf exists: rejoin, never re-create
        assert not any("created" in line for line in again), again
        client = sync_client(own, decode_responses=True)
        try:
            assert all(client.hgetall(key) == fields for key, fields in users.items())
        finally:
            client.close()
    finally:
        stack.down(own)
    assert stack.redis_node_pids(own) == {}
