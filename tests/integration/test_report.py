"""`nudge report` against the real Kafka: decisions, purchases and app events produced to this test's own
topics, the command run as a user runs it, and its JSON checked figure by figure.

The records are written exactly as their producers write them: `Decision.record()` for the decisions
(triggers/service.py), the event contract for purchases and app events (nudge/events.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from nudge.kafka_clients import connect
from nudge.settings import Settings
from triggers.decide import Decision, decision_id, idempotency_key

ROOT = Path(__file__).resolve().parents[2]
H = 3_600_000
# Ten days ago: old enough for the whole attribution window, young enough for the event contract.
T0 = int(time.time() * 1000) - 10 * 24 * H
RULE = "it_rule"


def _decision(user: str, outcome: str = "sent", reason: str = "", *, send_at: int = T0, offer: str = "") -> bytes:
    key = idempotency_key(RULE, user, ["1"])
    record = Decision(
        decision_id=decision_id(key, outcome, reason),
        idempotency_key=key,
        user_id=user,
        rule=RULE,
        variant="a",
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
        channel="push",
        decided_at=T0,
        send_at=send_at,
        user_timezone="UTC",
        transactional=False,
        models_version="",
        state={},
        offer_id=offer,
    ).record()
    return orjson.dumps(record)


def _purchase(user: str, n: int, ts: int, total: float, currency: str = "EUR", offer: str | None = None) -> bytes:
    event: dict[str, Any] = {
        "event_id": f"p-{user}-{n}",
        "type": "purchase",
        "user_id": user,
        "ts": ts,
        "schema_version": 1,
        "order_id": f"o-{user}-{n}",
        "items": [{"item_id": "i1", "price": total}],
        "total": total,
        "currency": currency,
    }
    if offer is not None:
        event["offer_id"] = offer
    return orjson.dumps(event)


def _app(user: str, n: int, kind: str, ts: int, campaign: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"a-{user}-{n}",
            "type": kind,
            "user_id": user,
            "ts": ts,
            "schema_version": 1,
            "campaign_id": campaign,
        }
    )


def _produce(s: Settings) -> None:
    decisions = [
        _decision("t1", offer="welcome15"),  # welcome15: 15 % off (deploy/config/offers.yaml)
        _decision("t2", "delayed", send_at=T0 + 8 * H),  # quiet hours ...
        _decision("t2", "sent", "after_quiet_hours", send_at=T0 + 8 * H),  # ... then sent
        _decision("t3"),
        _decision("t3"),  # redelivered
        *(_decision(f"h{i}", "suppressed", "holdout") for i in range(1, 5)),
        _decision("c1", "suppressed", "consent"),
    ]
    purchases = [
        _purchase("t1", 1, T0 + H, 100.0, offer="welcome15"),
        _purchase("t2", 1, T0 + 2 * H, 43.0, "GBP"),  # before t2's message went out
        _purchase("t2", 2, T0 + 9 * H, 21.8, "USD"),  # 21.8 / 1.09 = 20 EUR
        _purchase("h1", 1, T0 + H, 30.0),
        _purchase("nobody", 1, T0 + H, 500.0),  # a user no campaign decided on
    ]
    apps = [
        _app("t1", 1, "push_received", T0 + 60_000, "welcome15"),
        _app("t1", 2, "push_opened", T0 + 120_000, "welcome15"),
        _app("t3", 1, "push_received", T0 - H, RULE),  # before the send
    ]
    producer = connect(KafkaProducer, s, acks="all")
    try:
        for topic, values in (
            (s.topic_decisions, decisions),
            (s.topic_purchases, [*purchases, b"not json"]),
            (s.topic_app_events, apps),
        ):
            for value in values:
                user = orjson.loads(value)["user_id"] if value.startswith(b"{") else "x"
                producer.send(topic, key=user.encode(), value=value)
        producer.flush()
    finally:
        producer.close()


def test_report_reads_the_three_topics_and_writes_the_figures(unique_topics: Settings, tmp_path: Path) -> None:
    _produce(unique_topics)
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    done = subprocess.run(
        [sys.executable, "-m", "nudge", "report", "--json", str(out), "--png", str(png)],
        env={**os.environ, **unique_topics.to_env()},
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert f"campaign {RULE}".encode() in done.stdout and b"total: 1 campaigns" in done.stdout
    report = orjson.loads(out.read_bytes())
    assert png.read_bytes()[:4] == b"\x89PNG"
    (row,) = report["rules"]
    assert row["rule"] == RULE and [v["variant"] for v in row["variants"]] == ["a"]
    # t1 sent, t2 delayed + sent, t3 sent (twice on the topic), h1..h4 held out, c1 without consent
    assert row["decisions"] == 1 + 2 + 1 + 4 + 1
    assert (row["sends"], row["delayed"]) == (3, 1)
    assert row["suppressed"] == {"consent": 1, "holdout": 4}
    assert (row["deliveries"], row["opens"], row["clicks"]) == (1, 1, 0)
    # t1 (100 EUR with the offer) and t2 (20 EUR after its send) converted; t3 did not
    assert row["conversions"] == 2
    assert row["revenue_eur"] == pytest.approx(120.0)
    assert row["offer_cost_eur"] == pytest.approx(15.0)
    assert row["holdout"]["conversions"] == 1 and row["holdout"]["revenue_eur"] == pytest.approx(30.0)
    assert row["uplift"] == pytest.approx(2 / 3 - 1 / 4)
    lo, hi = row["uplift_ci"]
    assert -1 <= lo < row["uplift"] < hi <= 1
    # incremental revenue: (120 / 3 - 30 / 4) x 3 = 97.5; ROI (97.5 - 15) / 15 = 5.5
    assert row["incremental_revenue_eur"] == pytest.approx(97.5)
    assert row["roi"] == pytest.approx(5.5)
    assert any("too small" in note for note in row["notes"])
    inputs = report["inputs"]
    assert inputs["decision_records"] == 10 and inputs["decisions_repeated"] == 1
    assert inputs["purchases_rejected"] == 1
    assert inputs["purchases"] == 4  # "nobody"'s purchase was dropped while reading
    assert inputs["feedback_unmatched"] == 1


def test_report_for_one_rule_with_no_decisions_says_so(unique_topics: Settings, tmp_path: Path) -> None:
    _produce(unique_topics)
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "nudge", "report", "--rule", "other_rule", "--json", str(out)],
        env={**os.environ, **unique_topics.to_env()},
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"no decisions for rule 'other_rule'" in done.stderr
    report = orjson.loads(out.read_bytes())
    assert report["rules"] == [] and report["totals"]["sends"] == 0
