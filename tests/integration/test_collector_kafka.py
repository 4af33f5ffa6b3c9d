"""The HTTP collector against the real Kafka: what it accepts is in the topics, keyed by user_id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from nudge.settings import Settings
from nudge.topics import topic_for_event_type
from producers.collector import KafkaAckingProducer, create_app
from tests.integration.test_worker import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def batch(tag: str) -> list[Any]:
    """Valid events of every input topic, several per user, plus two that must not reach Kafka."""
    now = int(time.time() * 1000)
    events: list[Any] = []
    for i in range(30):
        user = f"{tag}-u{i % 7}"
        base = {"event_id": f"{tag}-e{i}", "user_id": user, "ts": now - i, "schema_version": 1}
        if i % 3 == 0:
            events.append({**base, "type": "add_to_cart", "item_id": f"i{i}", "price": 1.25 * i})
        elif i % 3 == 1:
            items = [{"item_id": f"i{i}", "price": 2.5, "quantity": 2}]
            events.append(
                {**base, "type": "purchase", "order_id": f"o{i}", "items": items, "total": 5.0, "currency": "EUR"}
            )
        else:
            events.append({**base, "type": "app_open", "ts": "2024-05-01T10:00:00.123+02:00"})
    events.append({"event_id": f"{tag}-bad", "type": "page_view", "user_id": "x", "ts": now})  # no schema_version
    events.append(dict(events[0]))  # duplicate event_id
    return events


def consume_all(settings: Settings, timeout_s: float = 30.0) -> list[Any]:
    """Every record of the three input topics, read until the end offsets seen at the start."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [
            TopicPartition(topic, p) for topic in settings.input_topics for p in consumer.partitions_for_topic(topic)
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"read {len(records)} of {sum(end.values())} records in {timeout_s} s"
            for batch_records in consumer.poll(timeout_ms=500).values():
                records.extend(batch_records)
        return records
    finally:
        consumer.close()


def assert_in_kafka(settings: Settings, sent: list[Any], accepted_ids: list[str]) -> None:
    records = consume_all(settings)
    by_id = {orjson.loads(r.value)["event_id"]: r for r in records}
    assert len(records) == len(accepted_ids), "rejected or duplicated events reached Kafka"
    originals = {e["event_id"]: e for e in reversed(sent) if isinstance(e, dict)}
    for event_id in accepted_ids:
        record, event = by_id[event_id], originals[event_id]
        assert record.topic == topic_for_event_type(settings, event["type"])
        assert record.key == event["user_id"].encode()
        assert record.value == orjson.dumps(event)


async def test_posted_batch_is_acknowledged_then_found_in_kafka_keyed_by_user_id(unique_topics: Settings) -> None:
    settings = unique_topics
    events = batch("inproc")
    producer = KafkaAckingProducer(settings, ack_timeout_s=20)
    try:
        producer.warm_up(settings.input_topics)
        app = create_app(settings, producer, CollectorRegistry(), ack_timeout_s=20)
        # A real HTTP server on a free port of the loopback interface.
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            health = await client.get("/healthz")
            assert health.status == 200, await health.text()
            resp = await client.post(
                "/v1/events", data=orjson.dumps(events), headers={"Content-Type": "application/json"}
            )
            body = await resp.json()
    finally:
        producer.flush(timeout=30)
        producer.close()

    assert resp.status == 207, body
    assert (body["accepted"], body["rejected"]) == (30, 2)
    assert [r.get("reason") for r in body["results"][-2:]] == ["missing_field", "duplicate_in_batch"]
    accepted = [r["event_id"] for r in body["results"] if r["status"] == "accepted"]
    await asyncio.to_thread(assert_in_kafka, settings, events, accepted)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_nudge_collect_serves_then_flushes_and_exits_0_on_sigterm(unique_topics: Settings) -> None:
    settings = unique_topics
    port = free_port()
    env = {**os.environ, **{d.env: str(getattr(settings, d.name)) for d in Settings.declarations()}}
    env["NUDGE_COLLECTOR_API_KEY"] = ""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge", "-v", "collect", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"nudge collect exited {proc.returncode}: {proc.stderr.read()}"  # type: ignore[union-attr]
            try:
                if http("GET", f"{base}/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "nudge collect did not become healthy within 60 s"
            time.sleep(0.2)

        events = batch("cli")
        status, raw = http("POST", f"{base}/v1/events", orjson.dumps(events))
        body = orjson.loads(raw)
        assert status == 207, body
        status, metrics = http("GET", f"{base}/metrics")
        assert status == 200
        assert b'nudge_collector_events_total{reason="",status="accepted"} 30.0' in metrics

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stopped after 1 request(s): 30 event(s) accepted, 2 rejected, 0 not acknowledged" in stderr
    assert "POST /v1/events 207" in stderr  # the per-request INFO line
    accepted = [r["event_id"] for r in body["results"] if r["status"] == "accepted"]
    assert_in_kafka(settings, events, accepted)


def test_an_address_it_cannot_bind_is_one_line_and_never_claims_to_listen(unique_topics: Settings) -> None:
    env = {**os.environ, **unique_topics.to_env(), "NUDGE_COLLECTOR_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "nudge", "collect", "--host", "256.1.1.1", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on 256.1.1.1" in lines[0], done.stderr
    assert "listening on" not in done.stderr
