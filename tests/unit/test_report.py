"""`nudge report`'s pure core: counting, attribution, money and the uplift interval, on hand-built records.

Every expected figure below is worked out by hand from the records in the test
(the arithmetic is written next to it), never taken from the code under test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.offers import Offer
from triggers.decide import Decision, decision_id, idempotency_key
from triggers.report import (
    MIN_HOLDOUT_USERS,
    SHIPPING_COST_EUR,
    build_report,
    newcombe_interval,
    render_text,
    write_chart,
)

H = 3_600_000
WINDOW = 72 * H
T0 = 1_790_000_000_000  # 2026-09-21, any fixed event time
OFFERS = (
    Offer("pct20", "20% off", None, "percent_off", 20.0, "push"),
    Offer("five", "5 off", None, "amount_off", 5.0, "push"),
    Offer("ship", "free shipping", None, "free_shipping", 0.0, "push"),
    Offer("three4two", "3 for 2", None, "bundle", 3.0, "push"),
)


def decision(
    user: str,
    rule: str = "win_back",
    *,
    outcome: str = "sent",
    reason: str = "",
    variant: str = "a",
    at: int = T0,
    send_at: int | None = None,
    offer: str = "",
    episode: str = "1",
    same_id_as: str | None = None,
) -> dict[str, Any]:
    """A decision record exactly as `Decision.record()` writes it."""
    key = idempotency_key(rule, user, [episode])
    d = Decision(
        decision_id=decision_id(key, same_id_as or outcome, reason),
        idempotency_key=key,
        user_id=user,
        rule=rule,
        variant=variant,
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
        channel="push",
        decided_at=at,
        send_at=at if send_at is None else send_at,
        user_timezone="UTC",
        transactional=False,
        models_version="",
        state={},
        offer_id=offer,
    )
    return d.record()


def holdout(user: str, rule: str = "win_back", at: int = T0, variant: str = "a", episode: str = "1") -> dict[str, Any]:
    return decision(user, rule, outcome="suppressed", reason="holdout", at=at, variant=variant, episode=episode)


def purchase(user: str, ts: int, total: float, currency: str = "EUR", offer: str = "", eid: str = "") -> dict[str, Any]:
    record: dict[str, Any] = {"user_id": user, "ts": ts, "total": total, "currency": currency, "offer_id": offer}
    if eid:
        record["event_id"] = eid
    return record


def app(kind: str, user: str, ts: int, campaign: str) -> dict[str, Any]:
    return {"type": kind, "user_id": user, "ts": ts, "campaign_id": campaign}


def report(
    decisions: list[dict[str, Any]], purchases: list[dict[str, Any]] = (), apps: list[dict[str, Any]] = (), **kw: Any
) -> dict[str, Any]:  # type: ignore[assignment]
    return build_report(decisions, purchases, apps, OFFERS, WINDOW, **kw)


def rule_row(result: dict[str, Any], rule: str = "win_back") -> dict[str, Any]:
    return next(r for r in result["rules"] if r["rule"] == rule)


def variant_row(result: dict[str, Any], variant: str, rule: str = "win_back") -> dict[str, Any]:
    return next(v for v in rule_row(result, rule)["variants"] if v["variant"] == variant)


# --- counting -------------------------------------------------------------------------------------


def test_a_record_delivered_three_times_is_one_decision_and_one_send() -> None:
    sent = decision("u1")
    capped = decision("u2", outcome="suppressed", reason="cap:push:day")
    result = report([sent, sent, capped, sent, capped])
    row = rule_row(result)
    assert row["decisions"] == 2 and row["sends"] == 1
    assert row["suppressed"] == {"cap:push:day": 1}
    assert result["inputs"]["decision_records"] == 5 and result["inputs"]["decisions_repeated"] == 3


@pytest.mark.parametrize("same_id", [False, True], ids=["own decision_id", "decision_id reused from the delay"])
def test_a_delayed_message_sent_later_is_one_send_measured_from_its_send_time(same_id: bool) -> None:
    # Quiet hours: decided at T0, held until T0 + 8 h, then sent. triggers/service.py writes the
    # later "sent" record with the delayed record's decision_id; the contract allows its own.
    delayed = decision("u1", outcome="delayed", send_at=T0 + 8 * H)
    sent = decision("u1", reason="after_quiet_hours", send_at=T0 + 8 * H, same_id_as="delayed" if same_id else None)
    if same_id:
        sent["reason"] = ""
    early = purchase("u1", T0 + 1 * H, 30.0)  # before the message reached the user: not its effect
    result = report([delayed, sent, delayed, sent], [early])
    row = rule_row(result)
    assert row["sends"] == 1 and row["delayed"] == 1 and row["decisions"] == 2
    assert row["conversions"] == 0
    later = purchase("u1", T0 + 9 * H, 30.0)
    assert rule_row(report([delayed, sent], [early, later]))["conversions"] == 1


def test_a_delayed_message_not_yet_sent_is_delayed_not_sent() -> None:
    row = rule_row(report([decision("u1", outcome="delayed", send_at=T0 + 8 * H)]))
    assert row["delayed"] == 1 and row["sends"] == 0 and "no sends" in row["notes"]


def test_deliveries_opens_and_clicks_belong_to_the_latest_send_of_that_campaign() -> None:
    # Two messages of one campaign to u1, in two variants, so the rows show which message got what.
    first = decision("u1", at=T0, episode="1", variant="a")
    second = decision("u1", at=T0 + 10 * H, episode="2", variant="b")
    offered = decision("u2", at=T0, offer="pct20", variant="c")  # campaign_id is the offer id, not the rule
    events = [
        app("push_received", "u1", T0 - 1, "win_back"),  # before any send: nobody's
        app("push_received", "u1", T0 + 5, "win_back"),  # the first message
        app("push_received", "u1", T0 + 5, "win_back"),  # the same, reported twice
        app("push_opened", "u1", T0 + 10 * H + 9, "win_back"),  # after the second: the second's
        app("push_received", "u1", T0 + 5, "other_rule"),  # another campaign
        app("push_received", "u2", T0, "pct20"),  # at send_at: counts
        app("push_received", "u2", T0, "win_back"),  # u2's message carried an offer
        app("sms_clicked", "u2", T0 + 60_000, "pct20"),
        app("app_open", "u2", T0 + 60_000, "pct20"),  # not feedback on a message
    ]
    result = report([first, second, offered], apps=events)
    counts = {k: (v["deliveries"], v["opens"], v["clicks"]) for k, v in ((n, variant_row(result, n)) for n in "abc")}
    assert counts == {"a": (1, 0, 0), "b": (0, 1, 0), "c": (1, 0, 1)}
    row = rule_row(result)
    assert (row["sends"], row["deliveries"], row["opens"], row["clicks"]) == (3, 2, 1, 1)
    assert result["inputs"]["feedback_unmatched"] == 3  # before any send, other_rule, u2 by rule id


# --- attribution ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "converts"),
    [(0, False), (1, True), (WINDOW, True), (WINDOW + 1, False)],
    ids=["at the send", "just after", "last ms of the window", "just outside"],
)
def test_a_purchase_converts_inside_the_window_only(offset: int, converts: bool) -> None:
    row = rule_row(report([decision("u1")], [purchase("u1", T0 + offset, 40.0)]))
    assert row["conversions"] == (1 if converts else 0)
    assert row["revenue_eur"] == (40.0 if converts else 0.0)
    assert row["conversion_rate"] == (1.0 if converts else 0.0)


def test_the_offer_purchase_is_attributed_even_after_an_earlier_organic_one() -> None:
    sends = [decision("u1", offer="pct20"), decision("u2")]
    purchases = [
        purchase("u1", T0 + 1 * H, 10.0),  # organic, first
        purchase("u1", T0 + 2 * H, 50.0, offer="pct20"),  # redeems the message's offer
        purchase("u2", T0 + 1 * H, 15.0),  # no offer in u2's message: the first purchase
        purchase("u2", T0 + 2 * H, 99.0),
    ]
    row = rule_row(report(sends, purchases))
    assert row["conversions"] == 2
    assert row["revenue_eur"] == pytest.approx(50.0 + 15.0)
    assert row["offer_cost_eur"] == pytest.approx(0.20 * 50.0)


def test_an_organic_purchase_after_an_offer_message_costs_nothing() -> None:
    row = rule_row(report([decision("u1", offer="pct20")], [purchase("u1", T0 + H, 80.0)]))
    assert row["conversions"] == 1 and row["revenue_eur"] == 80.0
    assert row["offer_cost_eur"] == 0.0  # the coupon was not used


def test_money_is_converted_to_eur_and_other_currencies_are_left_out() -> None:
    sends = [decision("u1"), decision("u2"), decision("u3")]
    purchases = [
        purchase("u1", T0 + H, 109.0, "USD"),  # 109 / 1.09 = 100 EUR
        purchase("u2", T0 + H, 43.0, "GBP"),  # 43 / 0.86 = 50 EUR
        purchase("u3", T0 + H, 1000.0, "JPY"),  # not in the table
    ]
    result = report(sends, purchases)
    assert rule_row(result)["revenue_eur"] == pytest.approx(150.0)
    assert rule_row(result)["conversions"] == 2
    assert result["inputs"]["purchases_unknown_currency"] == 1


def test_a_purchase_delivered_twice_is_counted_once() -> None:
    p = purchase("u1", T0 + H, 20.0, eid="e1")
    result = report([decision("u1"), decision("u2", episode="x")], [p, p, purchase("u2", T0 + H, 20.0, eid="e2")])
    assert rule_row(result)["revenue_eur"] == 40.0 and result["inputs"]["purchases_repeated"] == 1


# --- holdout, uplift, ROI ------------------------------------------------------------------------


def test_holdout_conversions_are_counted_over_the_window_after_the_holdout_decision() -> None:
    held = [holdout(f"h{i}") for i in range(4)]
    purchases = [
        purchase("h0", T0 + H, 10.0),  # inside
        purchase("h1", T0 + WINDOW, 10.0),  # last ms: inside
        purchase("h2", T0 + WINDOW + 1, 10.0),  # just outside
        purchase("h3", T0 - H, 10.0),  # before the decision
    ]
    sends = [decision("t0"), decision("t1")]
    row = rule_row(report([*sends, *held], [*purchases, purchase("t0", T0 + H, 10.0)]))
    assert row["holdout"]["decisions"] == 4 and row["holdout"]["users"] == 4
    assert row["holdout"]["conversions"] == 2 and row["holdout"]["conversion_rate"] == 0.5
    assert row["suppressed"] == {"holdout": 4}
    assert row["uplift"] == pytest.approx(1 / 2 - 2 / 4)


def test_uplift_and_its_interval_match_newcombes_worked_example() -> None:
    # 56 of 70 treated converted, 48 of 80 held out: Newcombe (1998) gives 0.2 (0.0524, 0.3339).
    sends = [decision(f"t{i}") for i in range(70)]
    held = [holdout(f"h{i}") for i in range(80)]
    purchases = [purchase(f"t{i}", T0 + H, 10.0) for i in range(56)]
    purchases += [purchase(f"h{i}", T0 + H, 10.0) for i in range(48)]
    row = rule_row(report([*sends, *held], purchases))
    assert row["uplift"] == pytest.approx(0.2)
    assert row["uplift_ci"] == pytest.approx([0.0524, 0.3339], abs=5e-5)
    assert not any("holdout" in note for note in row["notes"])


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "lower", "upper"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0000),
    ],
)
def test_newcombe_interval_matches_the_papers_table(
    x1: int, n1: int, x2: int, n2: int, lower: float, upper: float
) -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10.
    d, lo, hi = newcombe_interval(x1, n1, x2, n2)
    assert d == pytest.approx(x1 / n1 - x2 / n2)
    assert (lo, hi) == pytest.approx((lower, upper), abs=5e-5)


@given(
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_the_interval_holds_the_estimate_and_stays_within_minus_one_and_one(
    treated: tuple[int, int], held: tuple[int, int], confidence: float
) -> None:
    d, lo, hi = newcombe_interval(*treated, *held, confidence=confidence)
    assert -1.0 <= lo <= d <= hi <= 1.0


def test_a_variant_is_measured_against_its_rules_whole_holdout() -> None:
    sends = [decision("a1", variant="a"), decision("b1", variant="b"), decision("b2", variant="b")]
    # Holdout decisions carry the variant the user would have had; the control is all of them.
    held = [holdout("h1", variant="a"), holdout("h2", variant="b")]
    purchases = [purchase("b1", T0 + H, 10.0), purchase("h2", T0 + H, 10.0)]
    result = report([*sends, *held], purchases)
    a, b = variant_row(result, "a"), variant_row(result, "b")
    assert a["holdout"]["decisions"] == b["holdout"]["decisions"] == 2
    assert a["uplift"] == pytest.approx(0 / 1 - 1 / 2)
    assert b["uplift"] == pytest.approx(1 / 2 - 1 / 2)
    assert (a["sends"], b["sends"], rule_row(result)["sends"]) == (1, 2, 3)
    # ...but each row's own suppressions are its own.
    assert a["suppressed"] == {"holdout": 1} and rule_row(result)["suppressed"] == {"holdout": 2}


def _roi_case(offer: str, total: float, currency: str = "EUR") -> dict[str, Any]:
    """2 sends, one converts with `total` redeeming `offer`; 4 held out, one buys 40 EUR."""
    decisions = [decision("t1", offer=offer), decision("t2", offer=offer)]
    decisions += [holdout(f"h{i}") for i in range(4)]
    purchases = [purchase("t1", T0 + H, total, currency, offer=offer), purchase("h0", T0 + H, 40.0)]
    return rule_row(report(decisions, purchases))


@pytest.mark.parametrize(
    ("offer", "total", "currency", "cost"),
    [
        ("pct20", 100.0, "EUR", 20.0),  # 20 % of 100
        ("five", 86.0, "GBP", 5 / 0.86),  # 5 GBP off, in EUR; the order is 100 EUR
        ("ship", 100.0, "EUR", SHIPPING_COST_EUR),
        ("three4two", 100.0, "EUR", 100.0 / 3),  # one item in three is free
    ],
)
def test_roi_per_offer_kind(offer: str, total: float, currency: str, cost: float) -> None:
    row = _roi_case(offer, total, currency)
    # revenue per send 100 / 2 = 50, per holdout decision 40 / 4 = 10: incremental (50 - 10) x 2 = 80
    assert row["revenue_eur"] == pytest.approx(100.0)
    assert row["holdout"]["revenue_eur"] == pytest.approx(40.0)
    assert row["incremental_revenue_eur"] == pytest.approx(80.0)
    assert row["offer_cost_eur"] == pytest.approx(cost)
    assert row["roi"] == pytest.approx((80.0 - cost) / cost)


def test_no_offer_means_no_cost_and_no_roi() -> None:
    row = _roi_case("", 100.0)
    assert row["offer_cost_eur"] == 0.0 and row["roi"] is None
    assert row["incremental_revenue_eur"] == pytest.approx(80.0)


def test_a_campaign_without_a_holdout_has_no_uplift_and_says_so() -> None:
    decisions = [decision("t1", rule="welcome", offer="pct20"), holdout("h1", rule="win_back")]
    result = report(decisions, [purchase("t1", T0 + H, 50.0, offer="pct20")])
    row = rule_row(result, "welcome")
    assert row["conversions"] == 1 and row["revenue_eur"] == 50.0 and row["offer_cost_eur"] == 10.0
    assert row["uplift"] is None and row["uplift_ci"] is None and row["roi"] is None
    assert any(note.startswith("no holdout") for note in row["notes"])
    assert result["totals"]["rules_without_holdout"] == ["welcome"]
    assert "no holdout" in render_text(result)


def test_a_small_holdout_gets_a_note_and_a_big_enough_one_does_not() -> None:
    small = [decision("t1"), *(holdout(f"h{i}") for i in range(MIN_HOLDOUT_USERS - 1))]
    assert any("too small" in n for n in rule_row(report(small))["notes"])
    big = [*small, holdout("h_last")]
    assert not any("too small" in n for n in rule_row(report(big))["notes"])
    # users, not decisions: one user held out in 40 episodes is still one user
    repeated = [decision("t1"), *(holdout("h", at=T0 + i * H, episode=str(i)) for i in range(40))]
    row = rule_row(report(repeated))
    assert row["holdout"]["decisions"] == 40 and row["holdout"]["users"] == 1
    assert any("too small to say anything (1 users" in n for n in row["notes"])


def test_totals_add_each_rules_own_effect_and_count_a_shared_purchase_once() -> None:
    decisions = [decision("u1", rule="r1"), decision("u1", rule="r2")]
    decisions += [holdout(f"h{i}", rule="r1") for i in range(2)] + [holdout(f"g{i}", rule="r2") for i in range(2)]
    purchases = [purchase("u1", T0 + H, 60.0), purchase("h0", T0 + H, 20.0)]
    result = report(decisions, purchases)
    r1, r2, totals = rule_row(result, "r1"), rule_row(result, "r2"), result["totals"]
    # each rule claims u1's 60 EUR; the totals count that purchase once
    assert r1["revenue_eur"] == r2["revenue_eur"] == 60.0 and totals["revenue_eur"] == 60.0
    # r1: (60/1 - 20/2) x 1 = 50; r2: (60/1 - 0/2) x 1 = 60
    assert r1["incremental_revenue_eur"] == pytest.approx(50.0)
    assert totals["incremental_revenue_eur"] == pytest.approx(110.0)
    # r1: 1 - 1/2; r2: 1 - 0: incremental conversions 0.5 x 1 + 1 x 1
    assert totals["incremental_conversions"] == pytest.approx(1.5)
    assert totals["sends"] == 2 and totals["uplift"] is None and totals["roi"] is None


def test_since_and_rule_keep_only_the_decisions_asked_for() -> None:
    decisions = [decision("u1", at=T0), decision("u2", at=T0 + 5 * H), decision("u3", rule="welcome", at=T0 + 6 * H)]
    assert rule_row(report(decisions, since_ms=T0 + H))["sends"] == 1
    only = report(decisions, rule="welcome")
    assert [r["rule"] for r in only["rules"]] == ["welcome"] and only["totals"]["sends"] == 1


def test_malformed_records_are_counted_not_fatal() -> None:
    broken = [{}, {"decision_id": "x", "outcome": "sent"}, {**decision("u1"), "decided_at": "yesterday"}]
    result = report([*broken, decision("u2")], [{"user_id": "u2", "ts": "x", "total": 1}])
    assert result["inputs"]["decisions_malformed"] == 3 and result["inputs"]["purchases_malformed"] == 1
    assert result["totals"]["sends"] == 1


@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_the_report_ignores_record_order_and_redelivery(rnd: random.Random, extra: int) -> None:
    decisions = [decision(f"t{i}", variant="ab"[i % 2], offer="pct20" if i % 3 else "") for i in range(8)]
    decisions += [decision("t0", outcome="delayed", send_at=T0)] + [holdout(f"h{i}") for i in range(5)]
    purchases = [purchase(f"t{i}", T0 + i * H, 10.0 * i, offer="pct20" if i % 2 else "") for i in range(8)]
    purchases += [purchase("h1", T0 + H, 30.0)]
    expected = report(decisions, purchases)
    shuffled = decisions + rnd.sample(decisions, extra)
    rnd.shuffle(shuffled)
    got = report(shuffled, rnd.sample(purchases, len(purchases)))
    got["inputs"].pop("decision_records"), got["inputs"].pop("decisions_repeated")
    expected["inputs"].pop("decision_records"), expected["inputs"].pop("decisions_repeated")
    assert got == expected


# --- output ----------------------------------------------------------------------------------------


def test_the_table_shows_each_row_and_escapes_what_came_from_the_topic() -> None:
    decisions = [decision("u1", variant="a"), decision("u2", variant="b\x1b[2J"), holdout("h1")]
    decisions.append(decision("u3", outcome="suppressed", reason="quiet_hours"))
    text = render_text(report(decisions, [purchase("u1", T0 + H, 12.5)]))
    assert "\x1b" not in text and "b\\x1b[2J" in text
    assert "campaign win_back" in text and "holdout 1, quiet_hours 1" in text
    assert "total: 1 campaigns" in text and "revenue 12.50 EUR" in text


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    decisions = [decision("u1"), holdout("h1"), decision("w1", rule="welcome")]
    path = tmp_path / "report.png"
    write_chart(report(decisions, [purchase("u1", T0 + H, 10.0)]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.png"
    write_chart(report([]), empty)
    assert empty.stat().st_size > 0


def test_module_doctests() -> None:
    import doctest

    from triggers import report as module

    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted >= 5
