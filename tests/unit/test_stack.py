"""The local stack's files, configs and process bookkeeping, without Kafka or Redis.

(The real thing runs in tests/integration/test_stack.py and test_kafka_brokers.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nudge import stack
from nudge.errors import ConfigError, StackError
from nudge.settings import Settings


def _props(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_a_single_broker_keeps_the_original_layout(tmp_path: Path) -> None:
    paths = stack._Paths(Settings(data_dir=tmp_path))
    (node,) = paths.kafka_nodes()
    root = tmp_path.resolve()
    assert node.name == "kafka" and node.node_id == 1
    assert node.data == root / "kafka" / "data"
    assert node.server_properties == root / "kafka" / "server.properties"
    assert node.pidfile == root / "run" / "kafka.pid"
    assert node.log == root / "logs" / "kafka.log"
    (redis_node,) = paths.redis_nodes()
    assert (redis_node.name, redis_node.dir, redis_node.pidfile) == (
        "redis",
        root / "redis",
        root / "run" / "redis.pid",
    )


def test_each_broker_and_cluster_node_has_its_own_directory(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=3, redis_cluster=True, redis_port=7000)
    paths = stack._Paths(s)
    root = tmp_path.resolve()
    nodes = paths.kafka_nodes()
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [(n.port, n.controller_port) for n in nodes] == [(9092, 9192), (9093, 9193), (9094, 9194)]
    for n in nodes:
        home = root / "kafka" / f"node-{n.node_id}"
        assert {n.data.parent, n.server_properties.parent, n.log.parent, n.pidfile.parent} == {home}
    redis_nodes = paths.redis_nodes()
    assert [n.name for n in redis_nodes] == ["redis-7000", "redis-7001", "redis-7002"]
    assert redis_nodes[1].dir == root / "redis" / "node-7001"
    assert redis_nodes[1].cluster_config == root / "redis" / "node-7001" / "nodes.conf"
    assert redis_nodes[1].pidfile == root / "redis" / "node-7001" / "redis.pid"


def test_three_node_kafka_config(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=3, kafka_port=19092, kafka_controller_port=19192)
    paths = stack._Paths(s)
    node = paths.kafka_node(2)
    stack._write_kafka_config(s, paths, node)
    props = _props(node.server_properties)
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert props["log.dirs"] == str(node.data)
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    for topic in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic"):
        assert props[f"{topic}.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == props["share.coordinator.state.topic.min.isr"] == "2"
    assert int(props["broker.session.timeout.ms"]) < 9000
    assert str(node.log) in node.log4j.read_text()


def test_single_node_kafka_config(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    paths = stack._Paths(s)
    (node,) = paths.kafka_nodes()
    stack._write_kafka_config(s, paths, node)
    props = _props(node.server_properties)
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9192"
    assert props["offsets.topic.replication.factor"] == props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "1"
    assert "broker.session.timeout.ms" not in props


def test_two_nodes_replicate_internal_topics_twice_with_min_isr_1(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=2)
    paths = stack._Paths(s)
    node = paths.kafka_node(1)
    stack._write_kafka_config(s, paths, node)
    props = _props(node.server_properties)
    assert props["offsets.topic.replication.factor"] == "2" and props["transaction.state.log.min.isr"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_redis_argv(tmp_path: Path) -> None:
    single = stack._redis_argv("redis-server", stack._Paths(Settings(data_dir=tmp_path)).redis_node(6379))
    assert "--cluster-enabled" not in single
    assert single[single.index("--appendonly") + 1] == "yes"
    s = Settings(data_dir=tmp_path, redis_cluster=True, redis_port=7000)
    node = stack._Paths(s).redis_node(7001)
    argv = stack._redis_argv("redis-server", node)
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags["--port"] == "7001" and flags["--dir"] == str(node.dir)
    assert flags["--cluster-enabled"] == "yes" and flags["--cluster-config-file"] == str(node.cluster_config)
    assert int(flags["--cluster-node-timeout"]) <= 2000
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"


def test_status_and_down_of_a_stack_that_never_ran(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=3, redis_cluster=True, redis_port=7000)
    services = stack.status(s)
    assert [x.name for x in services] == ["kafka-1", "kafka-2", "kafka-3", "redis-7000", "redis-7001", "redis-7002"]
    assert not any(x.running for x in services)
    assert services[0].line(11) == "kafka-1     stopped  127.0.0.1:9092"
    assert stack.down(s) == ["kafka  was not running", "redis  was not running"]
    assert stack.kafka_node_pids(s) == {} and stack.redis_node_pids(s) == {}
    assert not stack.stop_kafka_node(s, 2, kill=True) and not stack.stop_redis_node(s, 7002)


def test_one_node_functions_check_their_argument(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=3, redis_cluster=True, redis_port=7000)
    with pytest.raises(ConfigError, match="NUDGE_KAFKA_BROKERS=3"):
        stack.start_kafka_node(s, 4)
    with pytest.raises(ConfigError, match="7003"):
        stack.start_redis_node(s, 7003)


def test_up_refuses_more_replicas_than_brokers(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_bootstrap="elsewhere:9092", replication=3)
    with pytest.raises(ConfigError, match="NUDGE_REPLICATION=3"):
        stack.up(s)


def test_the_node_count_is_fixed_until_reset(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=5)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "nodes.properties").write_text("cluster.id=abc\nnodes=3\n")
    with pytest.raises(StackError, match="formatted with 3 nodes"):
        stack._check_kafka_layout(s, stack._Paths(s))
    stack._check_kafka_layout(Settings(data_dir=tmp_path, kafka_brokers=3), stack._Paths(s))
    stack.reset(s)
    assert not (tmp_path / "kafka" / "nodes.properties").exists()


def test_pidfile_names(tmp_path: Path) -> None:
    assert stack._pidfile_name(tmp_path / "run" / "kafka.pid", "kafka") == "kafka"
    assert stack._pidfile_name(tmp_path / "kafka" / "node-2" / "kafka.pid", "kafka") == "kafka-2"
    assert stack._pidfile_name(tmp_path / "redis" / "node-7001" / "redis.pid", "redis") == "redis-7001"


def _spawn(tmp_path: Path, name: str, code: str) -> tuple[Path, str, str]:
    pidfile = tmp_path / f"{name}.pid"
    marker = f"nudge-test-{name}"
    proc = subprocess.Popen([sys.executable, "-c", f"# {marker}\n{code}"])
    pidfile.write_text(f"{proc.pid}\n")
    return pidfile, marker, name


def test_stop_kills_what_waits_for_a_lost_quorum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two nodes stop on SIGTERM; the third ignores it, like a broker waiting for
    # a controller quorum that is gone: killed after the grace, not after 30 s.
    monkeypatch.setattr(stack, "QUORUM_GRACE_S", 0.3)
    ready = tmp_path / "ready"
    stubborn = f"import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    targets = [_spawn(tmp_path, f"n{i}", "import time; time.sleep(60)") for i in (1, 2)]
    targets.append(_spawn(tmp_path, "n3", stubborn))
    while not ready.exists():
        time.sleep(0.01)
    started = time.monotonic()
    assert stack._stop_all(targets, quorum=2) == ["n1", "n2", "n3"]
    assert time.monotonic() - started < 5
    assert not any(pidfile.exists() for pidfile, _, _ in targets)
