"""The HTTP collector against a fake producer: status codes, per-event results, metrics."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from nudge.errors import DeliveryError
from nudge.settings import Settings
from producers import collector
from producers.collector import Outbound, check_batch, create_app

TS = 1_700_000_000_000
JSON = {"Content-Type": "application/json"}


def click(event_id: str = "e1", user_id: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "page_view",
        "user_id": user_id,
        "ts": TS,
        "schema_version": 1,
        "item_id": "i1",
        **extra,
    }


def purchase(event_id: str = "p1", user_id: str = "u2") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "purchase",
        "user_id": user_id,
        "ts": "2023-11-14T22:13:20+00:00",
        "schema_version": 1,
        "order_id": "o1",
        "items": [{"item_id": "i1", "price": 9.5, "quantity": 2}],
        "total": 19.0,
        "currency": "EUR",
    }


def app_open(event_id: str = "a1", user_id: str = "u3") -> dict[str, Any]:
    return {"event_id": event_id, "type": "app_open", "user_id": user_id, "ts": TS, "schema_version": 1}


class FakeProducer:
    """Acknowledges (or fails, or never answers) every message it is given."""

    def __init__(self, mode: str = "ack") -> None:
        self.mode = mode
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.problem: str | None = None

    def submit(self, messages: Sequence[Outbound], on_done: Callable[[BaseException | None], None]) -> None:
        if self.mode == "raise":
            raise RuntimeError("a bug in the producer")
        if self.mode == "refuse":
            on_done(DeliveryError(f"cannot queue a message for {messages[0].topic}: KafkaTimeoutError"))
            return
        self.sent.extend((m.topic, m.key, m.value) for m in messages)
        if self.mode == "ack":
            on_done(None)
        elif self.mode == "fail":
            on_done(DeliveryError("NotEnoughReplicas"))
        # mode "hang": never called back

    def unhealthy_reason(self) -> str | None:
        return self.problem


Make = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client() -> AsyncIterator[Make]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        producer: FakeProducer | None = None,
        registry: CollectorRegistry | None = None,
        ack_timeout_s: float = 5.0,
        **overrides: Any,
    ) -> TestClient[Any, Any]:
        settings = Settings.from_env({}, **overrides)
        app = create_app(
            settings, producer or FakeProducer(), registry or CollectorRegistry(), ack_timeout_s=ack_timeout_s
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def post(client: TestClient[Any, Any], payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    resp = await client.post("/v1/events", data=body, headers=headers or JSON)
    return resp.status, orjson.loads(await resp.read())


async def test_all_valid_is_200_and_each_event_is_produced_to_its_topic_keyed_by_user(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, topic_clicks="c", topic_purchases="p", topic_app_events="a")
    # Spacing and key order the client chose; the value produced is its JSON re-serialised.
    batch = [click("e1", "ü-1"), purchase(), app_open()]
    status, body = await post(client, batch)

    assert status == 200
    assert body["accepted"] == 3 and body["rejected"] == 0
    assert body["results"] == [
        {"index": 0, "event_id": "e1", "status": "accepted"},
        {"index": 1, "event_id": "p1", "status": "accepted"},
        {"index": 2, "event_id": "a1", "status": "accepted"},
    ]
    assert producer.sent == [
        ("c", "ü-1".encode(), orjson.dumps(batch[0])),
        ("p", b"u2", orjson.dumps(batch[1])),
        ("a", b"u3", orjson.dumps(batch[2])),
    ]
    # Values are the client's own fields, not a normalised model dump (ts stays a string).
    assert orjson.loads(producer.sent[1][2])["ts"] == "2023-11-14T22:13:20+00:00"


async def test_mixed_batch_is_207_with_exact_reasons_in_request_order(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer)
    no_user = click("e2")
    del no_user["user_id"]
    batch = [
        click("e1"),
        no_user,
        {**click("e3"), "type": "teleport"},
        click("e4", price="cheap"),
        {**click("e5"), "schema_version": 2},
        "not an object",
        {**click("e6"), "price": -1},
        {**click("e7"), "ts": 4_000_000_000_000},
        app_open("a1"),
    ]
    status, body = await post(client, batch)

    assert status == 207
    assert (body["accepted"], body["rejected"]) == (2, 7)
    assert [r["index"] for r in body["results"]] == list(range(9))
    assert [r["status"] for r in body["results"]] == ["accepted"] + ["rejected"] * 7 + ["accepted"]
    assert [r.get("reason") for r in body["results"]] == [
        None,
        "missing_field",
        "unknown_type",
        "wrong_type",
        "unsupported_schema_version",
        "not_object",
        "invalid_value",
        "future_timestamp",
        None,
    ]
    assert body["results"][1]["detail"].startswith("user_id")
    assert body["results"][2]["event_id"] == "e3"
    assert [key for _, key, _ in producer.sent] == [b"u1", b"u3"]


async def test_duplicate_event_id_rejects_the_later_one(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer)
    status, body = await post(client, [click("e1", "u1"), click("e2"), click("e1", "u9")])

    assert status == 207
    assert body["results"][2] == {
        "index": 2,
        "status": "rejected",
        "reason": "duplicate_in_batch",
        "detail": "event_id already accepted at index 0",
        "event_id": "e1",
    }
    assert [key for _, key, _ in producer.sent] == [b"u1", b"u1"]


def test_an_invalid_first_copy_does_not_make_a_valid_second_copy_a_duplicate() -> None:
    results, outbound = check_batch([click("e1", price=-5), click("e1")], Settings.from_env({}))
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert [m.index for m in outbound] == [1]


async def test_event_over_max_event_bytes_is_too_large(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, max_event_bytes=300)
    status, body = await post(client, [click("e1", query="x" * 400), click("e2")])

    assert status == 207
    assert body["results"][0]["reason"] == "too_large"
    assert "> 300" in body["results"][0]["detail"]
    assert len(producer.sent) == 1


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (click(), "JSON object"),
        (b"[]", "empty array"),
        (b'"hello"', "JSON str"),
    ],
)
async def test_body_that_is_not_a_non_empty_json_array_is_400(make_client: Make, payload: Any, needle: str) -> None:
    producer = FakeProducer()
    client = await make_client(producer)
    status, body = await post(client, payload)
    assert status == 400
    assert needle in body["error"]
    assert producer.sent == []


async def test_body_over_the_limit_is_413_with_and_without_content_length(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, collector_max_body_bytes=1000)
    big = orjson.dumps([click(f"e{i}") for i in range(20)])
    assert len(big) > 1000

    status, body = await post(client, big)
    assert status == 413 and "1000" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:
        # Chunked transfer: no Content-Length, the limit is enforced while reading.
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    resp = await client.post("/v1/events", data=chunks(), headers=JSON)
    assert resp.status == 413
    assert "NUDGE_COLLECTOR_MAX_BODY_BYTES" in (await resp.json())["error"]
    assert producer.sent == []


async def test_batch_over_max_batch_is_413(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, collector_max_batch=3)
    status, body = await post(client, [click(f"e{i}") for i in range(4)])
    assert status == 413
    assert "4 events" in body["error"]
    assert producer.sent == []
    status, _ = await post(client, [click(f"e{i}") for i in range(3)])
    assert status == 200


async def test_api_key_missing_or_wrong_is_401_and_right_is_200(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, collector_api_key="s3cret")

    status, body = await post(client, [click()])
    assert (status, body["error"]) == (401, "missing X-Api-Key header")
    status, body = await post(client, [click()], {**JSON, "X-Api-Key": "s3cret-not"})
    assert (status, body["error"]) == (401, "wrong X-Api-Key")
    assert producer.sent == []

    status, body = await post(client, [click()], {**JSON, "X-Api-Key": "s3cret"})
    assert status == 200 and body["accepted"] == 1


async def test_non_json_content_type_is_415(make_client: Make) -> None:
    client = await make_client()
    status, body = await post(client, [click()], {"Content-Type": "text/plain"})
    assert status == 415 and "text/plain" in body["error"]
    status, _ = await post(client, [click()], {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


@pytest.mark.parametrize("mode", ["fail", "refuse", "hang"])
async def test_kafka_not_acknowledging_is_503_and_nothing_is_accepted(make_client: Make, mode: str) -> None:
    client = await make_client(FakeProducer(mode), ack_timeout_s=0.2)
    resp = await client.post("/v1/events", data=orjson.dumps([click("e1"), click("e2", price=-1)]), headers=JSON)

    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    body = await resp.json()
    assert set(body) == {"error"}  # no per-event results, so no "accepted" to misread
    assert "retry" in body["error"]


async def test_healthz_follows_producer_and_last_delivery(make_client: Make) -> None:
    producer = FakeProducer()
    client = await make_client(producer, ack_timeout_s=0.2)

    resp = await client.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})

    producer.problem = "no connection to Kafka at 127.0.0.1:9092"
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == producer.problem

    # A failed delivery turns it red until a later delivery succeeds.
    producer.problem = None
    producer.mode = "fail"
    await post(client, [click("e1")])
    assert (await client.get("/healthz")).status == 503
    producer.mode = "ack"
    await post(client, [click("e2")])
    assert (await client.get("/healthz")).status == 200


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


async def test_metrics_count_requests_events_and_latency(make_client: Make) -> None:
    registry = CollectorRegistry()
    producer = FakeProducer()
    client = await make_client(producer, registry)

    await post(client, [click("e1"), click("e2"), click("e1"), {"type": "teleport"}])
    await post(client, b"[]")
    producer.mode = "fail"
    await post(client, [click("e3")])

    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert sample(text, "nudge_collector_requests_total", code="207") == 1
    assert sample(text, "nudge_collector_requests_total", code="400") == 1
    assert sample(text, "nudge_collector_requests_total", code="503") == 1
    assert sample(text, "nudge_collector_requests_total", code="200") == 0
    assert sample(text, "nudge_collector_events_total", status="accepted", reason="") == 2
    assert sample(text, "nudge_collector_events_total", status="rejected", reason="duplicate_in_batch") == 1
    assert sample(text, "nudge_collector_events_total", status="rejected", reason="unknown_type") == 1
    assert sample(text, "nudge_collector_events_total", status="failed", reason="not_acknowledged") == 1
    assert sample(text, "nudge_collector_request_seconds_count") == 3
    assert sample(text, "nudge_collector_request_seconds_bucket", le="30.0") == 3


async def test_logs_carry_counts_but_never_event_bodies_or_the_api_key(
    make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(collector_api_key="topsecret-key")
    profile = {**app_open("p1"), "type": "profile_update", "phone": "+447911123456", "push_token": "tok-abcdef"}
    caplog.set_level("DEBUG")
    await post(client, [profile, click("e1", price=-1)], {**JSON, "X-Api-Key": "topsecret-key"})
    await post(client, [profile], {**JSON, "X-Api-Key": "wrong-key-value"})

    text = caplog.text
    assert "1 accepted, 1 rejected (invalid_value=1)" in text
    for secret in ("+447911123456", "tok-abcdef", "topsecret-key", "wrong-key-value"):
        assert secret not in text


def test_help_lists_the_env_vars_and_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from nudge.cli import OneLineParser

    parser = OneLineParser(prog="nudge collect", formatter_class=argparse.RawDescriptionHelpFormatter)
    collector.configure(parser)
    help_text = parser.format_help()
    for env in ("NUDGE_COLLECTOR_HOST", "NUDGE_COLLECTOR_PORT", "NUDGE_COLLECTOR_API_KEY", "NUDGE_KAFKA_BOOTSTRAP"):
        assert env in help_text
    assert parser.parse_args(["--port", "9000"]).func is collector.run
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--port", "70000"])
    assert exit_info.value.code == 2
    assert "--port: 70000 is not in 1..65535" in capsys.readouterr().err


async def test_a_producer_that_raises_fails_its_request_and_the_next_one_is_served(make_client: Make) -> None:
    producer = FakeProducer("raise")
    client = await make_client(producer)
    status, body = await post(client, [click("e1")])
    assert status == 503 and "retry" in body["error"]
    producer.mode = "ack"
    status, body = await post(client, [click("e2")])
    assert status == 200 and body["accepted"] == 1
