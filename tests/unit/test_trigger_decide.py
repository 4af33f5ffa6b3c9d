"""triggers.decide on hand-built states: which rules fire, what each guardrail decides, what is scheduled."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from nudge.notifications import Notification
from triggers.decide import Context, evaluate, idempotency_key
from triggers.guardrails import in_holdout
from triggers.rules import load_rules, load_stores

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "deploy" / "config" / "rules.yaml")
CONTEXT = Context(stores=load_stores(ROOT / "deploy" / "config" / "stores.yaml"), offer_names={"sitewide10": "10% off"})
MIN = 60_000
# 2026-06-01 14:00 in Berlin: not quiet hours
NOON = int(datetime(2026, 6, 1, 14, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp() * 1000)


def user(uid: str = "u1", **fields: str) -> dict[str, str]:
    base = {
        "user_id": uid,
        "timezone": "Europe/Berlin",
        "push_opt_in": "1",
        "push_token": "tok-" + uid,
        "sms_opt_in": "1",
        "phone": "+4915112345678",
        "as_of": str(NOON - 5 * MIN),
        "first_seen": str(NOON - 90 * 86_400_000),
        "last_event_ts": str(NOON - 5 * MIN),
        "updated_at": str(NOON),
        "models_version": "7",
        "member_tier": "bronze",
        "app_opens_7d": "0",
    }
    base.update(fields)
    return base


# Quiet for 8 days as of NOON: at risk as of now (whatever the stored lifecycle says), past win-back's wait.
SILENT_8D = {"last_event_ts": str(NOON - 8 * 86_400_000), "as_of": str(NOON - 8 * 86_400_000), "lifecycle": "active"}


def not_held_out(rule_id: str, n: int = 1) -> list[str]:
    rule = RULES.by_id()[rule_id]
    out = [u for u in (f"u{i}" for i in range(1000)) if not in_holdout(u, rule, RULES.guardrails.holdout)]
    return out[:n]


def held_out(rule_id: str) -> str:
    rule = RULES.by_id()[rule_id]
    return next(u for u in (f"u{i}" for i in range(1000)) if in_holdout(u, rule, RULES.guardrails.holdout))


def cart(uid: str, added_ago_min: int, **more: str) -> dict[str, str]:
    return user(
        uid,
        cart_open="1",
        cart_size="2",
        cart_value="59.90",
        last_add_to_cart_ts=str(NOON - added_ago_min * MIN),
        **more,
    )


def test_a_fresh_cart_waits_and_is_scheduled_for_30_minutes_after_the_add() -> None:
    uid = not_held_out("cart_abandonment")[0]
    ev = evaluate(cart(uid, 10), RULES, CONTEXT, NOON)
    assert ev.proposals == ()
    assert dict(ev.waits)["cart_abandonment"] == NOON + 20 * MIN


def test_an_abandoned_cart_is_proposed_after_the_wait_with_its_episode_key() -> None:
    uid = not_held_out("cart_abandonment")[0]
    fields = cart(uid, 31)
    ev = evaluate(fields, RULES, CONTEXT, NOON)
    (p,) = [p for p in ev.proposals if p.decision.rule == "cart_abandonment"]
    d = p.decision
    assert d.outcome == "sent" and d.channel == "push" and d.to == f"tok-{uid}"
    assert d.idempotency_key == idempotency_key("cart_abandonment", uid, [fields["last_add_to_cart_ts"]])
    assert p.quiet == "ok" and p.cooldown_until == NOON + 12 * 3_600_000
    assert {name.split(":")[1] for name, _ in p.caps} == {"push", "all"}
    assert "2 item(s)" in d.body or "59.90" in d.body
    # the record keeps what the rule read, never the contact points
    assert d.state["last_add_to_cart_ts"] == fields["last_add_to_cart_ts"]
    assert "push_token" not in d.state and "phone" not in d.state
    assert "tok-" not in str(d.record())
    n = Notification.from_json(d.notification(NOON + 5).to_json())
    assert n.idempotency_key == d.idempotency_key and n.to == f"tok-{uid}" and n.campaign_id == "cart_abandonment"
    assert (n.send_at, n.expires_at) == (NOON + 5, NOON + 5 + 86_400_000)  # outbox times: the wall clock's


def test_a_purchase_after_the_add_cancels_the_cart_rule() -> None:
    uid = not_held_out("cart_abandonment")[0]
    fields = cart(uid, 31, last_purchase_ts=str(NOON - 2 * MIN))
    ev = evaluate(fields, RULES, CONTEXT, NOON, only="cart_abandonment")
    assert ev.proposals == () and ev.waits == ()


def test_the_same_episode_has_the_same_key_and_a_new_cart_a_new_one() -> None:
    uid = not_held_out("cart_abandonment")[0]
    a = evaluate(cart(uid, 31), RULES, CONTEXT, NOON).proposals[0].decision
    again = evaluate(cart(uid, 31), RULES, CONTEXT, NOON + 5 * MIN).proposals[0].decision
    newer = evaluate(cart(uid, 40), RULES, CONTEXT, NOON).proposals[0].decision
    assert a.idempotency_key == again.idempotency_key != newer.idempotency_key
    assert a.decision_id == again.decision_id


def test_win_back_carries_the_next_best_offer_and_waits_for_one() -> None:
    uid = not_held_out("win_back")[0]
    quiet = user(uid, churn_score="0.91", **SILENT_8D, nbo_offer="sitewide10", nbo_score="0.2")
    (p,) = evaluate(quiet, RULES, CONTEXT, NOON).proposals
    assert p.decision.rule == "win_back" and p.decision.offer_id == "sitewide10"
    assert "10% off" in p.decision.body
    assert p.decision.notification(NOON).campaign_id == "sitewide10"  # the bandit's exposure joins on the offer
    no_offer = dict(quiet, nbo_offer="")
    assert evaluate(no_offer, RULES, CONTEXT, NOON).proposals == ()
    assert evaluate(dict(quiet, churn_score="0.5"), RULES, CONTEXT, NOON).proposals == ()


def test_no_consent_is_a_final_suppression() -> None:
    uid = not_held_out("win_back")[0]
    fields = user(uid, churn_score="0.9", **SILENT_8D, nbo_offer="sitewide10", push_opt_in="0", sms_opt_in="0")
    ev = evaluate(fields, RULES, CONTEXT, NOON)
    assert ev.proposals == ()
    assert [(d.rule, d.outcome, d.reason) for d in ev.final] == [("win_back", "suppressed", "consent")]


def test_the_holdout_is_recorded_not_sent() -> None:
    uid = held_out("win_back")
    fields = user(uid, churn_score="0.9", **SILENT_8D, nbo_offer="sitewide10")
    ev = evaluate(fields, RULES, CONTEXT, NOON)
    assert [(d.outcome, d.reason) for d in ev.final] == [("suppressed", "holdout")]
    assert ev.proposals == ()


@pytest.mark.parametrize(
    ("zone", "hour", "quiet"), [("Pacific/Tongatapu", 23, "delay"), ("Pacific/Honolulu", 3, "delay")]
)
def test_quiet_hours_delay_to_8_local(zone: str, hour: int, quiet: str) -> None:
    uid = not_held_out("win_back")[0]
    now = int(datetime(2026, 6, 1, hour, 0, tzinfo=ZoneInfo(zone)).timestamp() * 1000)
    fields = user(uid, timezone=zone, churn_score="0.9", **SILENT_8D, nbo_offer="sitewide10")
    (p,) = evaluate(fields, RULES, CONTEXT, now).proposals
    assert p.quiet == quiet and p.decision.outcome == "delayed"
    at = datetime.fromtimestamp(p.decision.send_at / 1000, ZoneInfo(zone))
    assert (at.hour, at.minute) == (8, 0)
    assert p.decision.user_timezone == zone
    # the cool-down counts from when it will be sent
    assert p.cooldown_until == p.decision.send_at + 7 * 86_400_000


def test_the_geofence_drops_at_night_and_names_the_store() -> None:
    uid = not_held_out("geofence_store")[0]
    berlin_night = int(datetime(2026, 6, 1, 23, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp() * 1000)
    near = user(uid, lat="52.5220", lon="13.4130", as_of=str(berlin_night - MIN), top_category="books")
    (p,) = evaluate(near, RULES, CONTEXT, berlin_night, only="geofence_store").proposals
    assert p.quiet == "drop"
    (day,) = evaluate(dict(near, as_of=str(NOON - MIN)), RULES, CONTEXT, NOON, only="geofence_store").proposals
    assert "Berlin Mitte" in day.decision.title and day.quiet == "ok"
    far = dict(near, lat="48.1", lon="11.5", as_of=str(NOON - MIN))
    assert evaluate(far, RULES, CONTEXT, NOON, only="geofence_store").proposals == ()


def test_tier_reached_is_transactional_and_bypasses_caps() -> None:
    uid = not_held_out("tier_reached")[0]
    (p,) = evaluate(user(uid, member_tier="gold"), RULES, CONTEXT, NOON, only="tier_reached").proposals
    assert p.decision.transactional and p.caps == ()
    assert p.decision.idempotency_key == idempotency_key("tier_reached", uid, ["gold"])


def test_welcome_fires_once_on_a_new_users_first_open() -> None:
    uid = not_held_out("welcome")[0]
    new = user(uid, first_seen=str(NOON - 10 * MIN), app_opens_7d="1")
    (p,) = evaluate(new, RULES, CONTEXT, NOON, only="welcome").proposals
    assert p.cooldown_until == -1  # forever
    assert evaluate(dict(new, app_opens_7d="0"), RULES, CONTEXT, NOON, only="welcome").proposals == ()


def test_proposals_come_highest_priority_first() -> None:
    uid = next(
        u
        for u in (f"u{i}" for i in range(1000))
        if not any(in_holdout(u, r, RULES.guardrails.holdout) for r in RULES.rules)
    )
    both = cart(uid, 45, churn_score="0.9", **SILENT_8D, nbo_offer="sitewide10")
    rules = [p.decision.rule for p in evaluate(both, RULES, CONTEXT, NOON).proposals]
    assert rules[:2] == ["cart_abandonment", "win_back"]


def test_lifecycle_is_read_as_of_now_and_win_back_waits_for_the_silence() -> None:
    uid = not_held_out("win_back")[0]
    recent = user(uid, churn_score="0.95", lifecycle="at_risk", nbo_offer="sitewide10")  # stored stage: ignored
    ev = evaluate(recent, RULES, CONTEXT, NOON, only="win_back")
    # active as of now: nothing to send, but a look again once 7 days of silence would have passed
    assert ev.proposals == () and ev.waits == (("win_back", int(recent["last_event_ts"]) + 7 * 86_400_000),)
    three_days = {"last_event_ts": str(NOON - 3 * 86_400_000), "first_seen": str(NOON - 90 * 86_400_000)}
    assert evaluate(dict(recent, **three_days), RULES, CONTEXT, NOON, only="win_back").proposals == ()
    (p,) = evaluate(dict(recent, **SILENT_8D), RULES, CONTEXT, NOON, only="win_back").proposals
    assert p.decision.state["lifecycle"] == "at_risk"


def test_a_rule_may_name_a_fixed_offer() -> None:
    from triggers.rules import parse_rules

    rules = parse_rules(
        "version: 1\nrules:\n  - id: promo\n    when: [{cart_open: {eq: 1}}]\n    once_per: [last_add_to_cart_ts]\n"
        "    cooldown: 1d\n    offer: fashion30\n    holdout: 0.0\n    message: {body: '{offer_name}'}\n"
    )
    (p,) = evaluate(cart("u1", 1), rules, Context(offer_names={"fashion30": "30% off fashion"}), NOON).proposals
    assert (p.decision.offer_id, p.decision.body) == ("fashion30", "30% off fashion")


def test_a_state_without_a_user_id_decides_nothing() -> None:
    assert evaluate({"churn_score": "0.9"}, RULES, CONTEXT, NOON).proposals == ()


def test_a_rules_max_state_age_skips_it_on_older_state() -> None:
    from triggers.rules import parse_rules

    rules = parse_rules(
        "version: 1\nguardrails: {holdout: 0.0}\nrules:\n  - id: fresh_only\n    when: [{cart_open: {eq: 1}}]\n"
        "    once_per: [last_add_to_cart_ts]\n    cooldown: 1d\n    max_state_age: 5m\n    message: {body: hi}\n"
    )
    fields = cart("u1", 1)
    assert len(evaluate(fields, rules, CONTEXT, NOON, state_age_ms=4 * MIN).proposals) == 1
    assert evaluate(fields, rules, CONTEXT, NOON, state_age_ms=6 * MIN).proposals == ()
