"""One outbox message through `Deliverer` with fakes: providers, ledger, sink, clock.

Time is a fake clock that `sleep` advances, so waits are asserted exactly
and the tests take no time.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from typing import Any

import pytest

from delivery.deliverer import Deliverer, Source
from delivery.ledger import InMemoryLedger, ledger_key
from delivery.metrics import DeliveryMetrics
from delivery.plan import RetryPolicy, parse_notification, token_cleared_event
from delivery.results import Outcome, SendResult
from nudge.events import AppEvent, ProfileUpdateEvent, parse_event
from nudge.notifications import Notification

T0 = float(int(time.time()))  # near now: parse_event refuses events far in the future
SOURCE = Source("notifications", 3, 42, 1)
OK = SendResult(Outcome.OK, "ok", 200, message_id="m1")


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeNotifier:
    def __init__(self, channel: str, idempotent: bool, *answers: SendResult) -> None:
        self.channel = channel
        self.provider = "fake"
        self.idempotent = idempotent
        self.answers = deque(answers)
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> SendResult:
        self.sent.append(notification)
        return self.answers.popleft()

    async def close(self) -> None:
        return None


class FakeSink:
    def __init__(self) -> None:
        self.dead: list[tuple[bytes | None, bytes | None, dict[str, str]]] = []
        self.events: list[tuple[bytes, bytes]] = []

    async def dead_letter(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self.dead.append((key, value, {k: v.decode() for k, v in headers}))

    async def app_event(self, key: bytes, value: bytes) -> None:
        self.events.append((key, value))


def note(channel: str = "push", **kw: Any) -> Notification:
    fields: dict[str, Any] = dict(
        idempotency_key="key-" + "a" * 28,
        decision_id="d1",
        user_id="u1",
        rule="welcome",
        variant="a",
        channel=channel,
        to="+447911123456" if channel == "sms" else "tok-1",
        body="Welcome!",
        campaign_id="welcome",
        decided_at=int(T0 * 1000) - 5_000,
        send_at=int(T0 * 1000) - 1_000,
        expires_at=int(T0 * 1000) + 3_600_000,
    )
    fields.update(kw)
    return Notification(**fields)


class Rig:
    def __init__(self, *notifiers: FakeNotifier, max_attempts: int = 4, lease_s: float = 60.0) -> None:
        self.clock = Clock()
        self.ledger = InMemoryLedger(lease_ms=int(lease_s * 1000))
        self.sink = FakeSink()
        self.metrics = DeliveryMetrics()
        self.notifiers = {n.channel: n for n in notifiers}
        self.deliverer = Deliverer(
            notifiers=self.notifiers,  # type: ignore[arg-type]
            ledger=self.ledger,
            sink=self.sink,
            metrics=self.metrics,
            policy=RetryPolicy(max_attempts, 0.5, 30.0),
            rates_per_s={n.channel: 1_000.0 for n in notifiers},
            worker_id="w1",
            lease_s=lease_s,
            clock=self.clock.time,
            monotonic=self.clock.time,
            sleep=self.clock.sleep,
            rng=random.Random(1),
        )

    async def handle(self, n: Notification | bytes) -> str:
        raw = n if isinstance(n, bytes) else n.to_json()
        return await self.deliverer.handle(b"u1", raw, SOURCE)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def entry(self, n: Notification) -> dict[str, Any] | None:
        return self.ledger.hashes.get(ledger_key(n.user_id), {}).get(n.idempotency_key)


async def test_sent_once_and_marked() -> None:
    push = FakeNotifier("push", False, OK)
    rig = Rig(push)
    n = note()
    assert await rig.handle(n) == "sent"
    assert rig.entry(n) == {"state": "sent", "at": int(T0 * 1000), "channel": "push", "message_id": "m1"}
    # The same message again (a redelivery after a crash before the commit): not sent twice.
    assert await rig.handle(n) == "duplicate"
    assert len(push.sent) == 1
    assert rig.metric("nudge_delivery_duplicates_prevented_total", channel="push") == 1
    assert rig.metric("nudge_delivery_sends_total", channel="push", outcome="ok") == 1


@pytest.mark.parametrize("channel", ["push", "sms"])
async def test_a_send_flows_back_as_a_message_sent_app_event(channel: str) -> None:
    notifier = FakeNotifier(channel, channel == "sms", OK)
    rig = Rig(notifier)
    n = note(channel, campaign_id="sitewide10", offer_id="sitewide10")
    assert await rig.handle(n) == "sent"
    [(key, value)] = rig.sink.events
    event = parse_event(value)
    assert isinstance(event, AppEvent) and key == b"u1"
    assert (event.type, event.campaign_id, event.channel, event.ts) == (
        "message_sent",
        "sitewide10",
        channel,
        n.decided_at,
    )
    # A redelivered message is not sent again, but its record goes out again (it may have been lost
    # with the crash); with the same event id and time it opens no second exposure downstream.
    assert await rig.handle(n) == "duplicate"
    assert rig.sink.events == [(key, value), (key, value)]
    assert len(notifier.sent) == 1


async def test_5xx_then_success_backs_off_within_the_jitter_bounds() -> None:
    err = SendResult(Outcome.RETRY, "internal", 500)
    push = FakeNotifier("push", False, err, err, OK)
    rig = Rig(push)
    assert await rig.handle(note()) == "sent"
    assert len(push.sent) == 3
    assert len(rig.clock.sleeps) == 2
    assert 0 <= rig.clock.sleeps[0] <= 0.5 and 0 <= rig.clock.sleeps[1] <= 1.0
    assert rig.metric("nudge_delivery_retries_total", channel="push") == 2


async def test_retry_after_is_honoured() -> None:
    busy = SendResult(Outcome.RETRY, "twilio_20429", 429, retry_after_s=7.0)
    sms = FakeNotifier("sms", True, busy, OK)
    rig = Rig(sms)
    assert await rig.handle(note("sms")) == "sent"
    assert rig.clock.sleeps == [7.0]


async def test_permanent_failure_goes_to_the_dead_letters_with_its_reason_and_frees_the_key() -> None:
    refused = SendResult(Outcome.PERMANENT, "twilio_21602", 400, detail="Message body is required.")
    sms = FakeNotifier("sms", True, refused)
    rig = Rig(sms)
    n = note("sms")
    assert await rig.handle(n) == "dead_letter"
    key, value, headers = rig.sink.dead[0]
    assert (key, value) == (b"u1", n.to_json())  # the original bytes
    assert headers["nudge.reason"] == "rejected"
    assert "twilio_21602" in headers["nudge.detail"] and headers["nudge.attempts"] == "1"
    assert headers["nudge.source.offset"] == "42" and headers["nudge.source.partition"] == "3"
    assert rig.entry(n) is None  # released: a re-drive after a fix may send it
    assert rig.metric("nudge_delivery_dead_letters_total", reason="rejected") == 1


async def test_retries_exhausted() -> None:
    err = SendResult(Outcome.RETRY, "http_503", 503)
    rig = Rig(FakeNotifier("webhook", True, err, err, err), max_attempts=3)
    assert await rig.handle(note("webhook", to="u1")) == "dead_letter"
    assert rig.sink.dead[0][2]["nudge.reason"] == "retries_exhausted"
    assert rig.sink.dead[0][2]["nudge.attempts"] == "3"


async def test_a_retry_that_would_land_after_expiry_is_a_dead_letter_now() -> None:
    busy = SendResult(Outcome.RETRY, "quota_exceeded", 429, retry_after_s=120.0)
    rig = Rig(FakeNotifier("push", False, busy))
    assert await rig.handle(note(expires_at=int(T0 * 1000) + 60_000)) == "dead_letter"
    assert rig.sink.dead[0][2]["nudge.reason"] == "expired"
    assert rig.clock.sleeps == []


async def test_invalid_token_is_fed_back_as_a_profile_update() -> None:
    gone = SendResult(Outcome.INVALID_ADDRESS, "unregistered", 404)
    rig = Rig(FakeNotifier("push", False, gone))
    n = note()
    assert await rig.handle(n) == "dead_letter"
    assert rig.sink.dead[0][2]["nudge.reason"] == "invalid_token"
    [(key, value)] = rig.sink.events
    event = parse_event(value)
    assert isinstance(event, ProfileUpdateEvent)
    assert key == b"u1" and event.user_id == "u1" and event.push_token == ""
    assert event.ts == n.decided_at  # a token registered after the decision is newer and survives
    assert json.loads(value).keys() == {"event_id", "type", "user_id", "ts", "schema_version", "push_token"}
    # Deterministic: the same message's feedback has the same event id (deduplicated downstream).
    assert token_cleared_event(n) == (key, value)
    assert token_cleared_event(note(idempotency_key="other-" + "b" * 20))[1] != value


async def test_invalid_number_is_not_fed_back_as_a_token() -> None:
    bad = SendResult(Outcome.INVALID_ADDRESS, "invalid_number", 400)
    rig = Rig(FakeNotifier("sms", True, bad))
    assert await rig.handle(note("sms")) == "dead_letter"
    assert rig.sink.dead[0][2]["nudge.reason"] == "invalid_number"
    assert rig.sink.events == []


async def test_a_push_time_out_is_unknown_and_never_sent_again() -> None:
    lost = SendResult(Outcome.AMBIGUOUS, "timeout")
    push = FakeNotifier("push", False, lost)
    rig = Rig(push)
    n = note()
    assert await rig.handle(n) == "unknown"
    assert rig.entry(n)["state"] == "unknown"  # type: ignore[index]
    assert await rig.handle(n) == "duplicate"
    assert len(push.sent) == 1
    assert rig.metric("nudge_delivery_unknown_total", channel="push", why="timeout") == 1


async def test_an_sms_time_out_is_retried_with_the_same_key() -> None:
    lost = SendResult(Outcome.AMBIGUOUS, "timeout")
    sms = FakeNotifier("sms", True, lost, OK)
    rig = Rig(sms)
    assert await rig.handle(note("sms")) == "sent"
    assert [s.idempotency_key for s in sms.sent] == [note().idempotency_key] * 2


async def _crashed_claim(rig: Rig, n: Notification, age_s: float) -> None:
    """A claim left by a worker that died between the provider's answer and its record."""
    rig.ledger.hashes.setdefault(ledger_key(n.user_id), {})[n.idempotency_key] = {
        "state": "claimed",
        "by": "dead-worker/1",
        "at": int((T0 - age_s) * 1000),
    }


async def test_a_dead_workers_push_claim_is_unknown_not_resent() -> None:
    push = FakeNotifier("push", False, OK)
    rig = Rig(push, lease_s=60)
    n = note()
    await _crashed_claim(rig, n, age_s=61)
    assert await rig.handle(n) == "unknown"
    assert push.sent == []
    assert rig.entry(n)["state"] == "unknown"  # type: ignore[index]
    assert rig.metric("nudge_delivery_unknown_total", channel="push", why="stale_claim") == 1


async def test_a_dead_workers_sms_claim_is_resent_with_the_same_key() -> None:
    sms = FakeNotifier("sms", True, OK)
    rig = Rig(sms, lease_s=60)
    n = note("sms")
    await _crashed_claim(rig, n, age_s=61)
    assert await rig.handle(n) == "sent"
    assert [s.idempotency_key for s in sms.sent] == [n.idempotency_key]
    assert rig.metric("nudge_delivery_resent_after_crash_total", channel="sms") == 1


async def test_a_fresh_claim_is_waited_for_until_it_goes_stale() -> None:
    push = FakeNotifier("push", False, OK)
    rig = Rig(push, lease_s=8)
    n = note()
    await _crashed_claim(rig, n, age_s=0)
    assert await rig.handle(n) == "unknown"  # waited out the lease, then the stale rule
    assert push.sent == []
    assert 8.0 <= sum(rig.clock.sleeps) <= 10.0


async def test_waits_until_send_at() -> None:
    push = FakeNotifier("push", False, OK)
    rig = Rig(push)
    assert await rig.handle(note(send_at=int(T0 * 1000) + 90_000)) == "sent"
    assert rig.clock.sleeps == [90.0]


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"", "malformed", "empty message"),
        (b"not json", "malformed", "message: Invalid JSON"),
        (b'{"schema_version": 2}', "malformed", "schema_version"),
    ],
)
async def test_malformed_messages_are_dead_letters(raw: bytes, reason: str, detail: str) -> None:
    rig = Rig(FakeNotifier("push", False))
    assert await rig.handle(raw) == "dead_letter"
    headers = rig.sink.dead[0][2]
    assert headers["nudge.reason"] == reason and detail in headers["nudge.detail"]


async def test_malformed_detail_never_echoes_the_address() -> None:
    bad = json.loads(note("sms").to_json())
    bad["body"] = ""  # invalid, while `to` holds a phone number
    detail = parse_notification(json.dumps(bad).encode())
    assert "+447911123456" not in str(detail) and "body" in str(detail)


async def test_expired_and_unconfigured_channels_are_dead_letters_without_a_send() -> None:
    push = FakeNotifier("push", False, OK)
    rig = Rig(push)
    assert await rig.handle(note(expires_at=int(T0 * 1000) - 1)) == "dead_letter"
    assert await rig.handle(note("sms")) == "dead_letter"
    assert [d[2]["nudge.reason"] for d in rig.sink.dead] == ["expired", "channel_not_configured"]
    assert push.sent == []


def test_notification_edge_cases() -> None:
    with pytest.raises(ValueError):
        note(idempotency_key="short")
    with pytest.raises(ValueError):
        note(channel="fax")
    with pytest.raises(ValueError):
        note(data={f"k{i}": "v" for i in range(33)})
    with pytest.raises(ValueError):
        Notification.from_json(note().to_json().replace(b'"schema_version":1', b'"schema_version":1,"extra":1'))
    assert Notification.from_json(note(body="é" * 1600).to_json()).body == "é" * 1600
