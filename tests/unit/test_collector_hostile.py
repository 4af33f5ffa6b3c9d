"""The collector under hostile bodies: every event gets its own verdict, no content ever makes a 500.

Each body holds one good event beside the hostile one (unless the body itself
is the hostile part), so a test also proves the good event is not refused
with it.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from nudge.events import MAX_AMOUNT
from nudge.settings import Settings
from producers.collector import check_batch, create_app, decode_body, split_array
from tests.unit.test_collector import JSON, FakeProducer, app_open, click, purchase


def raw_array(*elements: bytes) -> bytes:
    return b"[" + b",".join(elements) + b"]"


GOOD = orjson.dumps(click("good"))

# name -> (body, expected verdict of the hostile element: (status, reason))
CORPUS: dict[str, tuple[bytes, tuple[str, str]]] = {
    # the finding: orjson.dumps raised "Recursion limit reached" and the batch got a 500
    "extra field nested 254+ deep": (
        raw_array(GOOD, orjson.dumps(click("deep"))[:-1] + b',"extra":' + b'{"x":' * 300 + b"1" + b"}" * 301),
        ("rejected", "invalid_value"),
    ),
    "nested past the decoder's 1024 limit": (
        raw_array(GOOD, b'{"a":' * 1100 + b"1" + b"}" * 1100),
        ("rejected", "invalid_value"),
    ),
    "invalid UTF-8 inside one event": (raw_array(GOOD, b'{"event_id": "\xff\xfe"}'), ("rejected", "not_utf8")),
    "NaN literal": (raw_array(GOOD, b'{"total": NaN}'), ("rejected", "not_json")),
    "lone surrogate escape": (raw_array(GOOD, b'{"user_id": "\\ud800"}'), ("rejected", "not_json")),
    "total 1e308": (
        orjson.dumps([click("good"), {**purchase("big"), "total": 1e308}]),
        ("rejected", "invalid_value"),
    ),
    "price 1e308": (
        orjson.dumps([click("good"), {**purchase("big"), "items": [{"item_id": "i", "price": 1e308, "quantity": 1}]}]),
        ("rejected", "invalid_value"),
    ),
    "amount just over the bound": (
        orjson.dumps([click("good"), {**purchase("big"), "total": MAX_AMOUNT * 1.0001}]),
        ("rejected", "invalid_value"),
    ),
    "quantity 10^12": (
        orjson.dumps([click("good"), {**purchase("q"), "items": [{"item_id": "i", "price": 1.0, "quantity": 10**12}]}]),
        ("rejected", "invalid_value"),
    ),
    "integer beyond 64 bits as ts": (
        raw_array(GOOD, orjson.dumps(click("x"))[:-1] + b',"ts": 99999999999999999999999}'),
        ("rejected", "wrong_type"),
    ),
    "ts in the year 1": (
        orjson.dumps([click("good"), click("y1", ts="0001-01-01T00:00:00+14:00")]),
        ("rejected", "invalid_value"),
    ),
    "blank user_id": (orjson.dumps([click("good"), click("b", user_id="   ")]), ("rejected", "invalid_value")),
    "terminal escape in user_id": (
        orjson.dumps([click("good"), click("esc", user_id="\x1b[31mred")]),
        ("rejected", "invalid_value"),
    ),
    "NUL in event_id": (orjson.dumps([click("good"), click("a\x00b")]), ("rejected", "invalid_value")),
    "time zone with a NUL": (
        orjson.dumps([click("good"), {**app_open("tz"), "type": "profile_update", "timezone": "Europe/\x00Paris"}]),
        ("rejected", "invalid_value"),
    ),
    "time zone as a path": (
        orjson.dumps([click("good"), {**app_open("tz"), "type": "profile_update", "timezone": "../../etc/passwd"}]),
        ("rejected", "invalid_value"),
    ),
    "array nested past the decoder's limit as an event": (
        raw_array(GOOD, b"[" * 2000 + b"]" * 2000),
        ("rejected", "invalid_value"),
    ),
    "event that is a string": (raw_array(GOOD, b'"hello"'), ("rejected", "not_object")),
    "event that is null": (raw_array(GOOD, b"null"), ("rejected", "not_object")),
    "unknown type": (orjson.dumps([click("good"), {**click("t"), "type": "teleport"}]), ("rejected", "unknown_type")),
    "schema version 2": (
        orjson.dumps([click("good"), {**click("v"), "schema_version": 2}]),
        ("rejected", "unsupported_schema_version"),
    ),
    "type that is a list": (
        orjson.dumps([click("good"), {**click("l"), "type": ["page_view"]}]),
        ("rejected", "unknown_type"),
    ),
    "5000 items in a purchase": (
        orjson.dumps([click("good"), {**purchase("many"), "items": [{"item_id": "i", "price": 1.0}] * 5000}]),
        ("rejected", "too_large"),
    ),
}


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(Settings.from_env({}), FakeProducer(), CollectorRegistry())
    test_client: TestClient[Any, Any] = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_hostile_event_gets_its_own_verdict_and_the_good_one_is_accepted(
    client: TestClient[Any, Any], name: str
) -> None:
    body, (status, reason) = CORPUS[name]
    resp = await client.post("/v1/events", data=body, headers=JSON)
    payload = orjson.loads(await resp.read())

    assert resp.status == 207, payload
    assert payload["accepted"] == 1 and payload["rejected"] == 1
    assert payload["results"][0] == {"index": 0, "event_id": "good", "status": "accepted"}
    hostile = payload["results"][1]
    assert (hostile["index"], hostile["status"], hostile["reason"]) == (1, status, reason), hostile
    # a detail a client can act on, and nothing of the hostile bytes echoed back beyond it
    assert hostile["detail"] and len(hostile["detail"]) < 300


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\xff\xfe[]", "not valid UTF-8 at byte 0"),
        (b'[{"a": 1}, {"b": ', "not a JSON array"),
        (b'[{"a": "unterminated}]', "not a JSON array"),
        (b"[1,]", "not a JSON array"),
        (b"", "not a JSON array"),
        (b"   ", "not a JSON array"),
        (b'"just a string"', "JSON str"),
        (b"42", "JSON int"),
    ],
)
async def test_bodies_that_are_no_array_at_all_get_400_saying_why(
    client: TestClient[Any, Any], body: bytes, needle: str
) -> None:
    resp = await client.post("/v1/events", data=body, headers=JSON)
    payload = orjson.loads(await resp.read())
    assert resp.status == 400
    assert needle in payload["error"]
    assert "surrogates" not in payload["error"]


async def test_a_gzip_bomb_is_refused_by_its_inflated_size(client: TestClient[Any, Any]) -> None:
    bomb = gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]")
    assert len(bomb) < 20_000
    resp = await client.post("/v1/events", data=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert resp.status == 413


async def test_the_server_answers_normally_after_the_whole_corpus(client: TestClient[Any, Any]) -> None:
    for body, _ in CORPUS.values():
        resp = await client.post("/v1/events", data=body, headers=JSON)
        assert resp.status == 207
    resp = await client.post("/v1/events", data=orjson.dumps([click("after")]), headers=JSON)
    assert resp.status == 200
    metrics = (await (await client.get("/metrics")).read()).decode()
    assert 'nudge_collector_requests_total{code="500"} 0.0' in metrics


def test_split_array_skips_brackets_and_commas_inside_strings() -> None:
    assert split_array(b' [ {"a": "],[{"} , "x\\"," ] ') == [b' {"a": "],[{"} ', b' "x\\"," ']
    assert split_array(b"[]") == []
    for broken in (b"[", b"]", b"[}", b'["x]', b"[[1]", b"{}", b"[1]]"):
        assert split_array(broken) is None, broken


def test_a_bug_while_checking_one_event_costs_that_event_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from producers import collector

    real = collector.parse_event_obj  # type: ignore[attr-defined]

    def explode(obj: Any, **_: Any) -> Any:
        if obj.get("event_id") == "bad":
            raise RuntimeError("boom")
        return real(obj, **_)

    monkeypatch.setattr(collector, "parse_event_obj", explode)
    results, outbound = check_batch(decode_body(orjson.dumps([click("bad"), click("ok")])), Settings.from_env({}))
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert results[0]["reason"] == "unprocessable"
    assert [m.event_id for m in outbound] == ["ok"]
