"""NUDGE_KAFKA_BROKERS=3: three KRaft nodes, a three-voter quorum, topics with
replication 3 and min.insync.replicas 2, and acks=all producing through the
`kill -9` of a broker, which then rejoins (fixture `three_brokers`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource

from nudge import stack
from nudge.settings import Settings
from producers.simulator import generate
from streams.process import WorkerProcess
from tests.integration.conftest import unique_scope
from tests.integration.test_worker import free_port, mismatches, reference_of, wait_for_parity


@pytest.fixture
def admin(three_brokers: Settings) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=three_brokers.kafka_bootstrap, request_timeout_ms=15_000)
    yield client
    client.close()


@pytest.fixture
def scoped(three_brokers: Settings) -> Iterator[Settings]:
    with unique_scope(three_brokers) as settings:
        yield settings


def _partitions(admin: KafkaAdminClient, topic: str) -> dict[int, dict[str, Any]]:
    (described,) = admin.describe_topics([topic])
    return {p["partition_index"]: p for p in described["partitions"]}


def _configs(admin: KafkaAdminClient, kind: str, name: str) -> dict[str, str]:
    result = admin.describe_configs([ConfigResource(kind, name)], config_filter="all")
    return {key: config["value"] for key, config in result[kind.lower()][name].items()}


def _produce(settings: Settings, topic: str, start: int, count: int) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    try:
        futures = [
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(start, start + count)
        ]
        for future in futures:
            future.get(timeout=60)  # acks=all: on every in-sync replica, at least min.insync.replicas
    finally:
        producer.close()


def _consume_all(settings: Settings, topic: str, expected: int) -> set[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        consumer.seek_to_beginning()
        seen: set[bytes] = set()
        deadline = time.monotonic() + 30
        while len(seen) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.update(r.value for r in records)
        return seen
    finally:
        consumer.close()


def test_three_brokers_in_a_three_voter_quorum(three_brokers: Settings, admin: KafkaAdminClient) -> None:
    assert three_brokers.kafka_bootstrap.count(",") == 2
    brokers = admin.describe_cluster()["brokers"]
    assert sorted((b["broker_id"], b["port"]) for b in brokers if not b["is_fenced"]) == [
        (i + 1, port) for i, port in enumerate(three_brokers.kafka_ports)
    ]
    (partition,) = admin.describe_metadata_quorum()["topics"][0]["partitions"]
    assert sorted(v["replica_id"] for v in partition["current_voters"]) == [1, 2, 3]
    assert partition["leader_id"] in (1, 2, 3) and partition["observers"] == []
    services = [s for s in stack.status(three_brokers) if s.name.startswith("kafka")]
    assert [s.name for s in services] == ["kafka-1", "kafka-2", "kafka-3"] and all(s.running for s in services)
    assert sorted(stack.kafka_node_pids(three_brokers)) == [1, 2, 3]


def test_topics_have_replication_3_and_min_insync_2(scoped: Settings, admin: KafkaAdminClient) -> None:
    assert (scoped.replication, scoped.min_insync_replicas) == (3, 2)
    for topic in scoped.all_topics:
        partitions = _partitions(admin, topic)
        assert len(partitions) == scoped.partitions
        assert all(len(p["replica_nodes"]) == 3 and len(p["isr_nodes"]) == 3 for p in partitions.values()), topic
        assert _configs(admin, "TOPIC", topic)["min.insync.replicas"] == "2"
    broker = _configs(admin, "BROKER", "1")
    assert broker["min.insync.replicas"] == "2" and broker["default.replication.factor"] == "3"
    assert broker["offsets.topic.replication.factor"] == "3" and broker["transaction.state.log.min.isr"] == "2"


def test_acks_all_survives_a_killed_broker_which_rejoins(scoped: Settings, admin: KafkaAdminClient) -> None:
    topic = scoped.topic_clicks
    _produce(scoped, topic, 0, 100)
    victim = _partitions(admin, topic)[0]["leader_id"]  # partition 0 must move
    try:
        assert stack.stop_kafka_node(scoped, victim, kill=True)
        assert victim not in stack.kafka_node_pids(scoped)
        _produce(scoped, topic, 100, 100)  # 2 replicas left: min.insync.replicas still met
        partitions = _partitions(admin, topic)
        assert all(victim not in p["isr_nodes"] and len(p["isr_nodes"]) == 2 for p in partitions.values())
        assert partitions[0]["leader_id"] != victim
        assert _consume_all(scoped, topic, 200) == {f"v{i}".encode() for i in range(200)}
    finally:
        if victim not in stack.kafka_node_pids(scoped):
            line = stack.start_kafka_node(scoped, victim)  # waits until all 3 are registered
    assert line.startswith(f"kafka-{victim} started")
    brokers = admin.describe_cluster()["brokers"]
    assert sorted(b["broker_id"] for b in brokers if not b["is_fenced"]) == [1, 2, 3]
    deadline = time.monotonic() + 60
    while not all(len(p["isr_nodes"]) == 3 for p in _partitions(admin, topic).values()):
        assert time.monotonic() < deadline, "the restarted broker never caught up"
        time.sleep(0.5)
    _produce(scoped, topic, 200, 10)


def test_worker_parity_while_a_broker_is_killed_mid_replay(scoped: Settings, tmp_path: Path) -> None:
    """A developer replays a log into a 3-broker Kafka while one broker dies
    (kill -9) and comes back later: the replay finishes with no error, the
    worker's state equals the batch reference, nothing is lost or doubled,
    and the worker's log says so in a line or two, not hundreds."""
    events = list(generate(2500, 1.0, 41))  # about 38k events
    reference = reference_of(events)
    log_file = tmp_path / "events.jsonl"
    log_file.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in events))

    worker_log = tmp_path / "worker.log"
    env = {**os.environ, **scoped.to_env()}
    victim = 2
    with WorkerProcess(scoped, web_port=free_port(), log_path=worker_log) as worker:
        replay = subprocess.Popen(
            [sys.executable, "-m", "nudge", "replay", str(log_file), "--speed", "20000"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            worker.wait_processed(len(events) // 5, timeout=120, poll=0.05)
            stack.stop_kafka_node(scoped, victim, kill=True)
            out, err = replay.communicate(timeout=180)
        finally:
            if replay.poll() is None:
                replay.kill()
        try:
            assert replay.returncode == 0, f"replay failed:\n{out}\n{err}"
            noise = [line for line in (out + err).splitlines() if "ERROR" in line or "Traceback" in line]
            assert not noise, f"the replaying user saw errors: {noise[:5]}"
            assert worker.total("nudge_stream_events_total") < len(events), "the broker died too late to matter"
            # The state converges with the broker still down ...
            deadline = time.monotonic() + 180
            while mismatches(scoped, reference):
                assert time.monotonic() < deadline, "no parity with one broker down"
                worker.check_alive()
                time.sleep(1.0)
        finally:
            stack.start_kafka_node(scoped, victim)
        # ... and every offset is committed (checked with every broker up:
        # kafka-python's admin client does not fail over by itself).
        wait_for_parity(scoped, reference, [worker], timeout=120)
        # The metric says Kafka is fine again once the clients stop failing.
        deadline = time.monotonic() + 60
        while worker.metrics().get('nudge_dependency_up{dependency="kafka"}') != 1:
            assert time.monotonic() < deadline, "nudge_dependency_up never said Kafka was back"
            time.sleep(0.5)
        metrics = worker.metrics()
    total = worker.total("nudge_stream_events_total", metrics)
    duplicates = sum(v for k, v in metrics.items() if k.startswith("nudge_stream_events_total{") and "duplicate" in k)
    assert (total, duplicates) == (len(events), 0), "an event was lost, or produced twice"
    text = worker_log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert not errors, f"{len(errors)} error lines in the worker's log: {errors[:5]}"
    # The broker outage: a line when connections failed, one when they worked again.
    assert 1 <= text.count("kafka connections failing") <= 2, text.count("kafka connections failing")
    assert text.count("kafka connections work again") == text.count("kafka connections failing")
