"""The local stack: a real broker answers, topics exist, Redis has AOF on."""

from __future__ import annotations

import redis
from kafka import KafkaAdminClient

from nudge import stack
from nudge.settings import Settings


def test_up_is_idempotent_and_status_reports_both(settings: Settings) -> None:
    lines = stack.up(settings)
    assert any(line.startswith("kafka  already running") for line in lines)
    assert any(line.startswith("redis  already running") for line in lines)
    services = {s.name: s for s in stack.status(settings)}
    assert services["kafka"].running and services["kafka"].pid
    assert services["redis"].running and services["redis"].since is not None


def test_topics_have_configured_partitions(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(settings.all_topics))}
    finally:
        admin.close()
    assert set(described) == set(settings.all_topics)
    assert all(len(t["partitions"]) == settings.partitions for t in described.values())


def test_redis_runs_with_aof(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert str(settings.data_dir.resolve() / "redis") == client.config_get("dir")["dir"]
