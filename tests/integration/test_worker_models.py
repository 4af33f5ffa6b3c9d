"""The worker with models on, against the real stack: it loads a signed snapshot from the
topic, writes every user's scores to Redis with that snapshot's version, sends the
delayed labels and offer rewards it resolves to the trainer's topics, and refuses a
snapshot signed with another key while it keeps scoring with the good one."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.bundle import SCORE_FIELDS, new_bundle, next_version
from models.offers import load_offers
from models.snapshot import seal
from nudge.settings import Settings
from producers.simulator import generate
from streams.process import WorkerProcess
from streams.trainer import SNAPSHOT_KEY
from tests.integration.conftest import unique_scope
from tests.integration.test_worker import free_port, produce, redis_state

pytestmark = pytest.mark.integration

KEY = "m" * 40
USERS, DAYS, SEED = 120, 20, 5


@pytest.fixture
def scoped(settings: Settings) -> Iterator[Settings]:
    with unique_scope(dataclasses.replace(settings, model_key=KEY, partitions=3)) as s:
        yield s


def publish(settings: Settings, blob: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=settings.max_message_bytes)
    try:
        producer.send(settings.topic_model_snapshots, key=SNAPSHOT_KEY, value=blob).get(timeout=30)
    finally:
        producer.close()


def snapshots(worker: WorkerProcess) -> tuple[float, float]:
    """The version the worker scores with, and how many snapshots it refused for their signature."""
    try:
        m = worker.metrics()
    except OSError:
        return 0.0, 0.0  # its web server is not up yet
    return m.get("nudge_worker_model_version", 0.0), m.get(
        'nudge_worker_snapshots_refused_total{reason="bad_signature"}', 0.0
    )


def count(settings: Settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def test_scores_reach_every_user_with_the_snapshots_version(scoped: Settings, tmp_path: Path) -> None:
    bundle = new_bundle([o.id for o in load_offers(scoped.offers_path)])
    next_version(bundle)  # version 1
    publish(scoped, seal(bundle, key=KEY.encode(), version=bundle.version, meta={"created_at": 0}))
    publish(scoped, seal(bundle, key=b"x" * 40, version=99, meta={"created_at": 0}))  # a foreign key: refused
    events: list[dict[str, Any]] = list(generate(USERS, DAYS, SEED))
    users = sorted({e["user_id"] for e in events})
    worker = WorkerProcess(scoped, web_port=free_port(), log_path=tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 90
        while snapshots(worker) != (1.0, 1.0):
            worker.check_alive()
            assert time.monotonic() < deadline, f"(version, refused) is {snapshots(worker)}, not (1, 1)"
            time.sleep(0.2)
        produce(scoped, events)
        worker.wait_processed(len(events), timeout=180)
        deadline = time.monotonic() + 60
        while True:
            state = redis_state(scoped, users)
            missing = [u for u in users if state[u].get("models_version") != "1"]
            if not missing:
                break
            assert time.monotonic() < deadline, f"{len(missing)} users without scores, e.g. {state[missing[0]]}"
            time.sleep(0.5)
    finally:
        worker.stop()
    for uid in users:
        fields = state[uid]
        assert set(SCORE_FIELDS) - {"rfm_r", "rfm_f", "rfm_m", "rfm_segment"} <= set(fields), uid  # no cuts yet
        assert 0.0 <= float(fields["churn_score"]) <= 1.0
        assert fields["nbo_offer"] in {o.id for o in load_offers(scoped.offers_path)}
    # Twenty days of event time resolve plenty of labels and offer exposures.
    assert count(scoped, scoped.topic_training_examples) > USERS
    assert count(scoped, scoped.topic_bandit_rewards) > 0
