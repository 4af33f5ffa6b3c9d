"""`nudge report --serve`'s pure part: records grown message by message, and the report exported as gauges.

Expected figures are worked out by hand from the messages in each test.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models.offers import Offer
from tests.unit.test_report import OFFERS, T0, WINDOW, decision, holdout
from triggers.campaign_exporter import CampaignRecords, ReportCollector
from triggers.report import build_report

H = 3_600_000


def purchase_msg(user: str, ts: int, total: float = 20.0, event_id: str = "") -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id or f"p-{user}-{ts}",
            "type": "purchase",
            "user_id": user,
            "ts": ts,
            "schema_version": 1,
            "order_id": f"o-{user}-{ts}",
            "items": [{"item_id": "i1", "price": total, "quantity": 1}],
            "total": total,
            "currency": "EUR",
        }
    )


def feed(records: CampaignRecords, kind: str, *values: Any) -> None:
    for value in values:
        records.add(kind, value if isinstance(value, bytes) or value is None else orjson.dumps(value))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def exported(records: CampaignRecords, offers: tuple[Offer, ...] = OFFERS) -> dict[Any, float]:
    report = build_report(records.decisions, records.purchases, records.app_events, offers, WINDOW)
    registry = CollectorRegistry()
    registry.register(ReportCollector(lambda: report, lambda: {("purchases", 0): 7}))
    return samples(registry)


def test_a_purchase_before_any_decision_of_its_user_is_not_kept() -> None:
    records = CampaignRecords()
    feed(records, "purchases", purchase_msg("u1", T0 - H))
    feed(records, "decisions", decision("u1"))
    feed(records, "purchases", purchase_msg("u1", T0 + H), purchase_msg("u2", T0 + H))
    assert [p["user_id"] for p in records.purchases] == ["u1"]
    assert records.purchases[0]["ts"] == T0 + H


def test_bad_messages_are_counted_and_never_raise() -> None:
    records = CampaignRecords()
    feed(records, "decisions", b"{not json", None, decision("u1"))
    feed(records, "purchases", b"[]", b"garbage", purchase_msg("u1", T0 + H))
    feed(
        records,
        "app_events",
        b"{}",
        {"type": "app_open", "user_id": "u1", "ts": T0, "event_id": "a", "schema_version": 1},
    )
    assert len(records.decisions) == 3  # the two bad ones stay, as {}, so the report counts them malformed
    assert records.rejected == 2
    assert records.app_events == []  # an app_open is not feedback on a message


def test_gauges_follow_the_report_treated_against_holdout() -> None:
    # win_back: 4 sends, 2 convert within the window -> 0.5; 4 holdout decisions, 1 converts -> 0.25.
    records = CampaignRecords()
    feed(records, "decisions", *(decision(f"s{i}") for i in range(4)), *(holdout(f"h{i}") for i in range(4)))
    feed(
        records,
        "purchases",
        purchase_msg("s0", T0 + H, 30.0),
        purchase_msg("s1", T0 + 2 * H, 10.0),
        purchase_msg("s2", T0 + WINDOW + H),  # after the window: not a conversion
        purchase_msg("h0", T0 + H),
    )
    got = exported(records)
    assert got[("nudge_campaign_sends", (("rule", "win_back"),))] == 4
    assert got[("nudge_campaign_decisions", (("rule", "win_back"),))] == 8
    assert got[("nudge_campaign_conversion_ratio", (("group", "treated"), ("rule", "win_back")))] == 0.5
    assert got[("nudge_campaign_conversion_ratio", (("group", "holdout"), ("rule", "win_back")))] == 0.25
    assert got[("nudge_campaign_uplift_ratio", (("bound", "estimate"), ("rule", "win_back")))] == pytest.approx(0.25)
    low = got[("nudge_campaign_uplift_ratio", (("bound", "low"), ("rule", "win_back")))]
    high = got[("nudge_campaign_uplift_ratio", (("bound", "high"), ("rule", "win_back")))]
    assert low < 0.25 < high
    assert got[("nudge_campaign_revenue_eur", (("rule", "win_back"),))] == 40.0
    assert got[("nudge_campaign_offer_cost_eur", (("rule", "win_back"),))] == 0.0  # no offer was redeemed
    assert got[("nudge_consumer_lag_messages", (("partition", "0"), ("topic", "purchases")))] == 7


def test_a_figure_the_report_cannot_give_is_absent_not_zero() -> None:
    records = CampaignRecords()
    feed(records, "decisions", decision("s0", rule="welcome"))  # no holdout, no offer
    got = exported(records)
    assert ("nudge_campaign_sends", (("rule", "welcome"),)) in got
    names = {name for name, _ in got}
    assert "nudge_campaign_uplift_ratio" not in names
    assert "nudge_campaign_roi_ratio" not in names
    assert ("nudge_campaign_conversion_ratio", (("group", "holdout"), ("rule", "welcome"))) not in got


def test_a_rule_gone_from_the_report_leaves_no_stale_series() -> None:
    current: dict[str, Any] = {"rules": []}
    registry = CollectorRegistry()
    registry.register(ReportCollector(lambda: current, dict))
    current = build_report([decision("s0", rule="welcome")], [], [], OFFERS, WINDOW)
    assert ("nudge_campaign_sends", (("rule", "welcome"),)) in samples(registry)
    current = build_report([decision("s0", rule="win_back")], [], [], OFFERS, WINDOW)
    got = samples(registry)
    assert ("nudge_campaign_sends", (("rule", "welcome"),)) not in got
    assert ("nudge_campaign_sends", (("rule", "win_back"),)) in got


def test_forgetting_drops_old_decisions_and_their_users_records() -> None:
    records = CampaignRecords()
    feed(records, "decisions", decision("old", at=T0), decision("new", at=T0 + 48 * H))
    feed(records, "purchases", purchase_msg("old", T0 + H), purchase_msg("new", T0 + 49 * H))
    assert records.newest_decision_ms() == T0 + 48 * H
    records.forget_before(records.newest_decision_ms() - 24 * H)
    assert [d["user_id"] for d in records.decisions] == ["new"]
    assert [p["user_id"] for p in records.purchases] == ["new"]
    # a user kept by a recent decision keeps only the purchases that decision could claim
    feed(records, "purchases", purchase_msg("new", T0 + H), purchase_msg("new", T0 + 50 * H))
    records.forget_before(records.newest_decision_ms() - 24 * H)
    assert [p["ts"] for p in records.purchases] == [T0 + 49 * H, T0 + 50 * H]
    feed(records, "purchases", purchase_msg("old", T0 + 50 * H))  # no decision names "old" any more
    assert {p["user_id"] for p in records.purchases} == {"new"}
