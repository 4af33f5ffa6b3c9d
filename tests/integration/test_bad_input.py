"""Malformed input against the real worker: every bad message ends in the DLQ
with its reason and source coordinates, duplicates change nothing, wrongly
keyed events still reach their user, and the good events around them are all
processed exactly as the batch reference says."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from features import batch
from features.definitions import DAY_MS
from features.state import FoldConfig
from nudge.events import Event, parse_event_obj
from nudge.settings import Settings
from producers.kafka import EventProducer
from streams.dlq import parse_dlq_headers
from streams.process import WorkerProcess
from tests.integration.test_worker import free_port, mismatches

NOW = int(time.time() * 1000)


def ev(i: int, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": f"bad-{i}", "type": "page_view", "user_id": f"b{i}", "ts": NOW - 60_000,
                            "schema_version": 1, "item_id": "i1", "category": "toys", "price": 3.5}  # fmt: skip
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def purchase(i: int, **over: Any) -> dict[str, Any]:
    body = ev(i, type="purchase", item_id=..., category=..., price=..., order_id=f"o{i}",
              items=[{"item_id": "x", "category": "toys", "price": 2.0, "quantity": 1}], total=2.0, currency="EUR")  # fmt: skip
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def j(obj: Any) -> bytes:
    return orjson.dumps(obj)


# (value, expected DLQ reason); key = the user id where the value has one.
CORPUS: list[tuple[bytes | None, str]] = [
    (b"this is not json", "not_json"),
    (b'{"event_id": "x", "type": "page_view", "user_id"', "not_json"),
    (b"", "not_json"),
    (None, "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'"just a string"', "not_object"),
    (b"42", "not_object"),
    (b"\xff\xfe\xfa not utf-8 \xc3\x28", "not_utf8"),
    (b'{"event_id": "x", "price": NaN}', "not_json"),
    (j(ev(1, event_id=...)), "missing_field"),
    (j(ev(2, user_id=...)), "missing_field"),
    (j(ev(3, ts=...)), "missing_field"),
    (j(ev(4, type=...)), "missing_field"),
    (j(ev(5, schema_version=...)), "missing_field"),
    (j(ev(6, type="teleport")), "unknown_type"),
    (j(ev(7, schema_version=2)), "unsupported_schema_version"),
    (j(ev(8, event_id="")), "invalid_value"),
    (j(ev(9, event_id="e" * 129)), "invalid_value"),
    (j(ev(10, user_id=12345)), "wrong_type"),
    (j(ev(11, ts=True)), "wrong_type"),
    (j(ev(12, ts=1.5e12)), "wrong_type"),
    (j(ev(13, ts="2026-01-01T10:00:00")), "invalid_value"),
    (j(ev(14, ts="yesterday")), "invalid_value"),
    (j(ev(15, ts=NOW + 365 * DAY_MS)), "future_timestamp"),
    (j(ev(16, price=-1)), "invalid_value"),
    (j(ev(17, price="3.50")), "wrong_type"),
    (j(purchase(18, items=[])), "invalid_value"),
    (j(purchase(19, order_id=...)), "missing_field"),
    (j(purchase(20, total=-5)), "invalid_value"),
    (j(purchase(21, currency="euro")), "invalid_value"),
    (j(ev(22, type="opt_in")), "missing_field"),
    (j(ev(23, type="opt_in", channel="email")), "invalid_value"),
    (j(ev(24, type="profile_update", timezone="Mars/Olympus")), "invalid_value"),
    (j(ev(25, type="profile_update", phone="0123")), "invalid_value"),
    (j(ev(26, type="location", lat=123.0, lon=0.0)), "invalid_value"),
    (j(ev(27, item_id={"nested": True})), "wrong_type"),
    (j(ev(28, query="x" * (70 * 1024))), "too_large"),
    (j(ev(29, query="y" * (1024 * 1024))), "too_large"),
]


def good(i: int, ts: int) -> dict[str, Any]:
    return {"event_id": f"good-{i}", "type": "app_open", "user_id": f"g{i % 7}", "ts": ts, "schema_version": 1}


def read_all(settings: Settings, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, fetch_max_bytes=8 << 20,
                             max_partition_fetch_bytes=8 << 20)  # fmt: skip
    tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
    consumer.close()
    return out


def test_malformed_messages_go_to_the_dlq_and_good_ones_are_processed(unique_topics: Settings, tmp_path: Path) -> None:
    s = unique_topics
    assert len({reason for _, reason in CORPUS}) >= 9 and len(CORPUS) >= 30
    good_events: list[dict[str, Any]] = []
    sent_bad: dict[bytes, str] = {}
    with EventProducer(s, client_id="test-bad") as producer:
        for n, (value, reason) in enumerate(CORPUS):
            key = f"badkey-{n}".encode()
            sent_bad[key] = reason
            producer.send(s.topic_clicks, value, key=key)
            g = good(n, NOW - (len(CORPUS) - n) * 1000)
            good_events.append(g)
            producer.send(s.topic_app_events, j(g), key=g["user_id"].encode())
        # A redelivered good event: deduplicated, not counted twice.
        producer.send(s.topic_app_events, j(good_events[3]), key=good_events[3]["user_id"].encode())
        good_events.append(good_events[3])
        # Wrong and missing keys: re-keyed, still counted for their user.
        for i, key in enumerate([b"not-the-user", None]):
            g = {**good(1000 + i, NOW - 500), "user_id": "g-rekeyed"}
            good_events.append(g)
            producer.send(s.topic_app_events, j(g), key=key)
        # Older than the dedup memory of its stream: too_old.
        old = {**good(2000, NOW - 9 * DAY_MS), "user_id": "g0"}
        producer.send(s.topic_app_events, j(old), key=b"g0")
        good_events.append(old)
        sent_bad[b"g0"] = "too_old"

    with WorkerProcess(s, web_port=free_port(), log_path=tmp_path / "worker.log") as worker:
        dlq = read_all(s, s.topic_dlq, len(sent_bad))
        parsed: list[Event] = [parse_event_obj(g) for g in good_events]  # type: ignore[misc]
        reference = batch.compute(parsed, FoldConfig.from_settings(s))
        deadline = time.monotonic() + 60
        while mismatches(s, reference) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert mismatches(s, reference) == []
        metrics = worker.metrics()

    got = {record.key: parse_dlq_headers(record.headers) for record in dlq}
    assert {k: h["reason"] for k, h in got.items()} == sent_bad
    for record in dlq:
        headers = parse_dlq_headers(record.headers)
        if record.key != b"g0":
            n = int(record.key.split(b"-")[1])
            assert record.value == CORPUS[n][0] or (record.value is None and CORPUS[n][0] in (None, b""))
            assert headers["source.topic"] == s.topic_clicks
        assert int(headers["source.offset"]) >= 0 and headers["detail"]
    assert metrics[f'nudge_stream_events_total{{outcome="rekeyed",topic="{s.topic_app_events}"}}'] == 2
    assert metrics[f'nudge_stream_events_total{{outcome="duplicate",topic="{s.topic_app_events}"}}'] == 1
    assert metrics['nudge_stream_dlq_total{reason="too_large"}'] == 2
