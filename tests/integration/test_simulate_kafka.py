"""`nudge simulate` into a real broker: every event on its topic, keyed by its user, once."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import orjson
import pytest
from kafka import KafkaConsumer

from nudge import cli
from nudge.settings import Settings
from nudge.topics import topic_for_event_type
from producers.simulator import generate, run_simulation

pytestmark = pytest.mark.integration


def _consume(settings: Settings, expected: int, timeout_s: float = 60.0) -> list[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) of every message on the input topics, read until `expected` arrived."""
    consumer = KafkaConsumer(
        *settings.input_topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    got: list[tuple[str, bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend((r.topic, r.key, r.value) for r in records)
        # Anything beyond the expected count would be a duplicate: give it a moment to show up.
        for records in consumer.poll(timeout_ms=1000).values():
            got.extend((r.topic, r.key, r.value) for r in records)
    finally:
        consumer.close()
    return got


def test_simulate_routes_by_type_and_keys_by_user(unique_topics: Settings) -> None:
    users, days, seed = 40, 1.0, 21
    summary = run_simulation(users, days, seed, settings=unique_topics)
    expected = [orjson.dumps(e) for e in generate(users, days, seed)]
    assert summary.events == len(expected) > 300

    got = _consume(unique_topics, len(expected))
    assert Counter(value for _, _, value in got) == Counter(expected)
    per_user: dict[tuple[str, str], list[str]] = defaultdict(list)
    for topic, key, value in got:
        event = orjson.loads(value)
        assert topic == topic_for_event_type(unique_topics, event["type"]), event
        assert key == event["user_id"].encode()
        per_user[(topic, event["user_id"])].append(event["event_id"])
    # Keyed by user, so one partition per user and topic: the user's order survives.
    for ids in per_user.values():
        assert ids == sorted(ids)
    assert summary.by_topic == dict(Counter(topic for topic, _, _ in got))
    assert set(summary.by_topic) == set(unique_topics.input_topics)


def test_cli_rate_paces_the_send(
    unique_topics: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for env, value in (
        ("NUDGE_KAFKA_BOOTSTRAP", unique_topics.kafka_bootstrap),
        ("NUDGE_TOPIC_CLICKS", unique_topics.topic_clicks),
        ("NUDGE_TOPIC_PURCHASES", unique_topics.topic_purchases),
        ("NUDGE_TOPIC_APP_EVENTS", unique_topics.topic_app_events),
    ):
        monkeypatch.setenv(env, value)
    users, days, seed, rate = 25, 1.0, 3, 120.0
    n = sum(1 for _ in generate(users, days, seed))
    # Long enough (~4 s) that connecting to the broker cannot hide an unpaced send.
    assert n / rate > 3.0
    began = time.monotonic()
    argv = ["simulate", "--users", str(users), "--days", str(days), "--seed", str(seed), "--rate", str(rate)]
    assert cli.main(argv) == 0
    elapsed = time.monotonic() - began
    # One 100 ms burst may go out at once; the rest waits for the bucket.
    assert elapsed >= (n - rate / 10) / rate
    assert f"events:    {n} in" in capsys.readouterr().out
    assert len(_consume(unique_topics, n)) == n
