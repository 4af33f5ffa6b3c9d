"""`nudge deliver` against the real stack: Kafka, Redis, and `nudge mock-providers` as a process.

Each test gets its own topics, consumer group and users; the mock provider
runs on a free port with its deliveries file in the test's own directory.
The worker runs as a `nudge deliver` process, so the crash test can kill it
for real (the test-only NUDGE_DELIVERY_CRASH_AFTER_SEND hook, delivery/worker.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from delivery.credentials import write_service_account
from delivery.ledger import ledger_key
from nudge.kafka_clients import connect
from nudge.notifications import Notification
from nudge.settings import Settings
from nudge.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
NUDGE = [sys.executable, "-m", "nudge"]
SID, AUTH, SECRET = "AC" + "0" * 32, "mock-auth-token", "mock-webhook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclasses.dataclass
class Rig:
    settings: Settings
    tmp: Path
    mock_url: str
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    users: list[str] = dataclasses.field(default_factory=list)

    @property
    def deliveries(self) -> Path:
        return self.tmp / "data" / "mock-provider" / "deliveries.jsonl"

    def delivered(self) -> list[dict[str, Any]]:
        if not self.deliveries.exists():
            return []
        return [json.loads(line) for line in self.deliveries.read_text().splitlines() if line]

    def delivered_keys(self) -> list[str]:
        return [d["idempotency_key"] for d in self.delivered()]

    def fault(self, **doc: Any) -> None:
        req = urllib.request.Request(
            f"{self.mock_url}/_mock/faults", data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def worker(self, *, crash: str = "") -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = dict(self.env)
        if crash:
            env["NUDGE_DELIVERY_CRASH_AFTER_SEND"] = crash
        proc = subprocess.Popen(
            [*NUDGE, "deliver", "--metrics-port", str(port)],
            env=env,
            cwd=ROOT,
            stderr=open(self.tmp / f"worker-{len(self.procs)}.log", "wb"),  # noqa: SIM115
        )
        self.procs.append(proc)
        return proc, port

    def notification(self, channel: str, to: str, **kw: Any) -> Notification:
        user = f"u-{uuid.uuid4().hex[:10]}"
        self.users.append(user)
        now = int(time.time() * 1000)
        fields: dict[str, Any] = dict(
            idempotency_key=uuid.uuid4().hex + uuid.uuid4().hex,
            decision_id=f"d-{uuid.uuid4().hex[:8]}",
            user_id=user,
            rule="welcome",
            variant="a",
            channel=channel,
            to=to,
            title="Hi",
            body="Welcome!",
            campaign_id="welcome",
            decided_at=now - 1000,
            send_at=now,
            expires_at=now + 120_000,
        )
        fields.update(kw)
        return Notification(**fields)

    def produce(self, *messages: Notification | tuple[bytes, bytes]) -> None:
        producer = connect(KafkaProducer, self.settings, acks="all")
        try:
            for m in messages:
                key, value = (m.user_id.encode(), m.to_json()) if isinstance(m, Notification) else m
                producer.send(self.settings.topic_notifications, value=value, key=key)
            producer.flush(timeout=10)
        finally:
            producer.close()

    def read(self, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
        consumer = connect(
            KafkaConsumer,
            self.settings,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=500,
        )
        consumer.subscribe([topic])
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    got.extend(batch)
        finally:
            consumer.close()
        assert len(got) >= count, f"{topic}: {len(got)} of {count} messages"
        return got

    def ledger(self, user: str) -> dict[str, dict[str, Any]]:
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            return {k.decode(): json.loads(v) for k, v in client.hgetall(ledger_key(user)).items()}
        finally:
            client.close()


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def rig(unique_topics: Settings, tmp_path: Path) -> Iterator[Rig]:
    tag = unique_topics.app_id
    settings = dataclasses.replace(
        unique_topics,
        topic_notifications=f"{tag}-notifications",
        topic_notifications_dlq=f"{tag}-notifications-dlq",
        topic_decisions=f"{tag}-decisions",
        delivery_group=f"{tag}-delivery",
    )
    ensure_topics(settings, settings.trigger_topics)  # deleted with the test's other t<tag>-* topics
    port = free_port()
    mock_url = f"http://127.0.0.1:{port}"
    credentials = tmp_path / "sa.json"
    write_service_account(credentials, token_uri=f"{mock_url}/token", project_id="nudge-local")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    env.update(settings.to_env())
    env.update(
        NUDGE_DATA_DIR=str(tmp_path / "data"),
        NUDGE_FCM_PROJECT_ID="nudge-local",
        NUDGE_FCM_CREDENTIALS_PATH=str(credentials),
        NUDGE_FCM_URL=mock_url,
        NUDGE_TWILIO_URL=mock_url,
        NUDGE_TWILIO_ACCOUNT_SID=SID,
        NUDGE_TWILIO_AUTH_TOKEN=AUTH,
        NUDGE_TWILIO_FROM="+15005550006",
        NUDGE_WEBHOOK_URL=f"{mock_url}/webhook",
        NUDGE_WEBHOOK_SECRET=SECRET,
        NUDGE_DELIVERY_BACKOFF_S="0.05",
        NUDGE_DELIVERY_BACKOFF_MAX_S="0.2",
        NUDGE_DELIVERY_MAX_ATTEMPTS="4",
        NUDGE_DELIVERY_HTTP_TIMEOUT_S="1",
        NUDGE_DELIVERY_CLAIM_LEASE_S="5",
    )
    mock = subprocess.Popen(
        [*NUDGE, "mock-providers", "--port", str(port), "--fault-timeout-s", "3"],
        env=env,
        cwd=ROOT,
        stderr=open(tmp_path / "mock.log", "wb"),  # noqa: SIM115
    )

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{mock_url}/_mock/health", timeout=1):
                return True
        except OSError:
            return False

    rig = Rig(settings, tmp_path, mock_url, env, [mock])
    try:
        wait_for(up, 20, "the mock provider")
        yield rig
    finally:
        for proc in reversed(rig.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        client = redis.Redis.from_url(settings.redis_url)
        if rig.users:
            client.delete(*(ledger_key(u) for u in rig.users))
        client.close()


def test_5xx_then_success_is_delivered_once(rig: Rig) -> None:
    rig.fault(provider="fcm", mode="5xx", count=2)
    n = rig.notification("push", "tok-" + uuid.uuid4().hex)
    rig.produce(n)
    _worker, port = rig.worker()
    wait_for(lambda: rig.ledger(n.user_id).get(n.idempotency_key, {}).get("state") == "sent", 30, "the sent mark")
    assert rig.delivered_keys() == [n.idempotency_key]
    delivered = rig.delivered()[0]
    assert (
        delivered["provider"] == "fcm" and delivered["to"] == n.to and delivered["data"]["decision_id"] == n.decision_id
    )
    assert metric(port, "nudge_delivery_sends_total", channel="push", outcome="retry") == 2
    assert metric(port, "nudge_delivery_retries_total", channel="push") == 2
    assert rig.ledger(n.user_id)[n.idempotency_key]["message_id"].startswith("projects/nudge-local/messages/")
    # the send flows back to the stream as an app-event
    [event] = rig.read(rig.settings.topic_app_events, 1)
    doc = json.loads(event.value)
    assert event.key == n.user_id.encode()
    assert (doc["type"], doc["campaign_id"], doc["channel"]) == ("message_sent", n.campaign_id, "push")


def test_429_retry_after_is_honoured(rig: Rig) -> None:
    _worker, port = rig.worker()
    warm = rig.notification("sms", "+447911123456")
    rig.produce(warm)  # the worker is up and consuming before the clock starts
    wait_for(lambda: warm.idempotency_key in rig.delivered_keys(), 30, "the warm-up SMS")
    rig.fault(provider="twilio", mode="429", count=1, retry_after=2)
    n = rig.notification("sms", "+447911123457")
    produced_ms = time.time() * 1000
    rig.produce(n)
    wait_for(lambda: n.idempotency_key in rig.delivered_keys(), 30, "the SMS after the 429")
    received = next(d for d in rig.delivered() if d["idempotency_key"] == n.idempotency_key)["received_at"]
    gap_s = (received - produced_ms) / 1000
    # Without Retry-After the back-off is at most 0.2 s here; with it, at least 2 s, never much more.
    assert 2.0 <= gap_s <= 8.0, gap_s
    assert metric(port, "nudge_delivery_sends_total", channel="sms", outcome="retry") == 1


def test_failures_go_to_the_dead_letter_topic_and_the_worker_goes_on(rig: Rig) -> None:
    not_mobile = rig.notification("sms", "+15005550009")
    reserved = rig.notification("push", "tok-1", data={"from": "x"})  # FCM refuses a reserved data key
    webhook_gone = rig.notification("webhook", "u1")
    rig.fault(provider="webhook", mode="unregistered", count=1)
    malformed = (b"u-bad", b'{"channel": "push", "to": "+447911123456"}')
    good = rig.notification("webhook", "u2")
    rig.produce(not_mobile, reserved, webhook_gone, malformed)
    rig.worker()
    dead = rig.read(rig.settings.topic_notifications_dlq, 4)
    by_reason = {dict(m.headers)["nudge.reason"].decode(): m for m in dead}
    assert set(by_reason) == {"invalid_number", "rejected", "gone", "malformed"}
    assert by_reason["invalid_number"].value == not_mobile.to_json()  # original bytes
    assert by_reason["malformed"].value == malformed[1] and by_reason["malformed"].key == malformed[0]
    detail = dict(by_reason["rejected"].headers)["nudge.detail"].decode()
    assert "invalid_argument" in detail
    assert "+447911123456" not in dict(by_reason["malformed"].headers)["nudge.detail"].decode()
    rig.produce(good)
    wait_for(lambda: good.idempotency_key in rig.delivered_keys(), 30, "a good message after the bad ones")
    assert rig.delivered_keys() == [good.idempotency_key]


def test_invalid_token_clears_the_users_push_token(rig: Rig) -> None:
    n = rig.notification("push", "unregistered-" + uuid.uuid4().hex)
    rig.produce(n)
    rig.worker()
    [event] = rig.read(rig.settings.topic_app_events, 1)
    doc = json.loads(event.value)
    assert event.key == n.user_id.encode()
    assert doc["type"] == "profile_update" and doc["user_id"] == n.user_id and doc["push_token"] == ""
    [dead] = rig.read(rig.settings.topic_notifications_dlq, 1)
    assert dict(dead.headers)["nudge.reason"] == b"invalid_token"
    assert rig.delivered_keys() == []


def test_kill_between_provider_answer_and_commit_sends_each_key_at_most_once(rig: Rig) -> None:
    sms = rig.notification("sms", "+447911123456")
    push = rig.notification("push", "tok-" + uuid.uuid4().hex)
    rig.produce(sms)
    first, _ = rig.worker(crash="sms")
    assert first.wait(60) == 137  # died right after Twilio's 201, before the ledger's mark and the commit
    assert rig.delivered_keys() == [sms.idempotency_key]
    assert rig.ledger(sms.user_id)[sms.idempotency_key]["state"] == "claimed"

    rig.produce(push)
    second, _ = rig.worker(crash="push")
    assert second.wait(60) == 137  # died right after FCM's 200
    assert sorted(rig.delivered_keys()) == sorted([sms.idempotency_key, push.idempotency_key])

    third, port = rig.worker()

    def settled() -> bool:
        states = (
            rig.ledger(sms.user_id).get(sms.idempotency_key, {}),
            rig.ledger(push.user_id).get(push.idempotency_key, {}),
        )
        return states[0].get("state") == "sent" and states[1].get("state") == "unknown"

    wait_for(settled, 40, "the SMS re-sent and marked sent, the push marked unknown")
    # The SMS went out again with its key and Twilio (the mock) deduplicated it; the push was not re-sent.
    assert sorted(rig.delivered_keys()) == sorted([sms.idempotency_key, push.idempotency_key])
    wait_for(
        lambda: metric(port, "nudge_delivery_unknown_total", channel="push", why="stale_claim") == 1, 10, "unknown"
    )
    with urllib.request.urlopen(f"{rig.mock_url}/_mock/health", timeout=5) as resp:
        # The SMS's later sends, answered from memory: one, or two when the second worker's lease on the
        # first one's stale claim ran out before it died on the push (it re-sent, then died unmarked).
        assert json.loads(resp.read())["deduplicated"] in (1, 2)
    assert metric(port, "nudge_delivery_sends_total", channel="push", outcome="ok") == 0
    third.send_signal(signal.SIGTERM)
    assert third.wait(30) == 0


async def test_the_lua_claim_script_follows_the_python_rule(settings: Settings) -> None:
    """CLAIM_SCRIPT (atomic in Redis) and `decide` (the rule the unit tests check) agree on every case."""
    import redis.asyncio

    from delivery.ledger import RedisLedger, decide
    from tests.unit.test_delivery_ledger import LEASE, RULES

    client = redis.asyncio.Redis.from_url(settings.redis_url)
    ledger = RedisLedger(client, lease_ms=LEASE, ttl_s=60)
    user = f"u-lua-{uuid.uuid4().hex[:8]}"
    try:
        for i, (entry, worker, now, resend, verdict, _writes) in enumerate(RULES):
            key = f"key-{i}"
            if entry is not None:
                await client.hset(ledger_key(user), key, json.dumps(entry))
            claim = await ledger.claim(user, key, worker=worker, now_ms=now, resend_stale=resend, channel="push")
            expected = decide(entry, worker=worker, now_ms=now, lease_ms=LEASE, resend_stale=resend, channel="push")
            assert claim.verdict is verdict is expected.verdict, (i, entry)
            assert claim.previous == entry
            stored = (await ledger.entries(user)).get(key)
            assert stored == (expected.write if expected.write is not None else entry), (i, stored)
        assert 0 < await client.ttl(ledger_key(user)) <= 60
    finally:
        await client.delete(ledger_key(user))
        await client.aclose()
