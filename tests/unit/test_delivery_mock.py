"""The mock provider's checks and its fault queue (pure parts; the server runs in the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from delivery.mock_providers import (
    Fault,
    MockConfig,
    MockProviders,
    parse_fault,
    validate_fcm_message,
    validate_twilio_form,
)


@pytest.mark.parametrize(
    ("doc", "status", "says"),
    [
        ({}, 400, "'message' is required"),
        ({"message": {"token": "t", "topic": "x"}}, 400, "Exactly one of token"),
        ({"message": {"token": "t", "bogus": 1}}, 400, 'Unknown name "bogus"'),
        ({"message": {"token": "t", "data": {"n": 1}}}, 400, "TYPE_STRING"),
        ({"message": {"token": "t", "data": {"from": "x"}}}, 400, "Invalid data payload key: from"),
        ({"message": {"token": "t", "data": {"google.x": "x"}}}, 400, "Invalid data payload key"),
        ({"message": {"token": ""}}, 400, "not a valid FCM registration token"),
        ({"message": {"token": "invalid-1"}}, 400, "not a valid FCM registration token"),
        ({"message": {"token": "unregistered-1"}}, 404, "Requested entity was not found"),
    ],
)
def test_fcm_refusals_have_googles_shape(doc: dict, status: int, says: str) -> None:
    problem = validate_fcm_message(doc)
    assert problem is not None
    code, body = problem
    assert code == status and body["error"]["code"] == status and says in body["error"]["message"]


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": "+15005550006", "Body": "x"}, 21604),
        ({"To": "+447911123456", "Body": "x"}, 21603),
        ({"To": "+447911123456", "From": "+15005550006"}, 21602),
        ({"To": "+447911123456", "From": "+15005550006", "Body": "x" * 1601}, 21617),
        ({"To": "447911123456", "From": "+15005550006", "Body": "x"}, 21211),
        ({"To": "+15005550001", "From": "+15005550006", "Body": "x"}, 21211),
        ({"To": "+15005550009", "From": "+15005550006", "Body": "x"}, 21614),
        ({"To": "+447911123456", "MessagingServiceSid": "XX1", "Body": "x"}, 21701),
    ],
)
def test_twilio_refusals_have_twilios_shape(form: dict[str, str], code: int) -> None:
    problem = validate_twilio_form(form)
    assert problem is not None and problem[1]["code"] == code and problem[1]["status"] == 400


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "expected a JSON object"),
        ({"provider": "fcm", "mode": "boom"}, "mode must be one of"),
        ({"provider": "fcm", "mode": "5xx", "count": 0}, "count must be"),
        ({"provider": "fcm", "mode": "5xx", "count": True}, "count must be"),
        ({"provider": "fcm", "mode": "429", "retry_after": -1}, "retry_after must be"),
    ],
)
def test_bad_fault_requests(doc: object, says: str) -> None:
    problem = parse_fault(doc)
    assert isinstance(problem, str) and says in problem


def test_queued_faults_are_used_up_in_order(tmp_path: Path) -> None:
    state = MockProviders(MockConfig(deliveries=tmp_path / "d.jsonl"))
    state.faults["fcm"].append(Fault("fcm", "5xx", 2))
    state.faults["fcm"].append(Fault("fcm", "429", 1, retry_after=3))
    taken = [state.take_fault("fcm") for _ in range(4)]
    assert [(f.mode, f.retry_after) if f else None for f in taken] == [("5xx", 1.0), ("5xx", 1.0), ("429", 3.0), None]
    assert state.take_fault("twilio") is None


def test_fail_rate_is_seeded(tmp_path: Path) -> None:
    def draws(seed: int) -> list[bool]:
        state = MockProviders(MockConfig(deliveries=tmp_path / "d.jsonl", fail_rate=0.3, seed=seed))
        return [state.take_fault("twilio") is not None for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert 30 <= sum(draws(7)) <= 90


def test_deliveries_are_one_json_line_each(tmp_path: Path) -> None:
    state = MockProviders(MockConfig(deliveries=tmp_path / "mock-provider" / "d.jsonl"))
    state.record("twilio", to="+447911123456", key="k1", title="", body="hi", data={})
    state.record("fcm", to="tok", key="k2", title="T", body="B", data={"a": "b"})
    lines = (tmp_path / "mock-provider" / "d.jsonl").read_text().splitlines()  # flushed, readable while open
    state.close()
    import json

    docs = [json.loads(line) for line in lines]
    assert [d["idempotency_key"] for d in docs] == ["k1", "k2"]
    assert set(docs[0]) == {"provider", "to", "idempotency_key", "title", "body", "data", "received_at"}
