"""The rule language: the shipped files are valid and fit the worker's hash; errors name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.definitions import WINDOWED
from features.state import UserState
from models.bundle import SCORE_FIELDS
from models.segments import SEGMENTS, load_tiers
from triggers.rules import (
    Condition,
    RulesError,
    distance_m,
    load_rules,
    load_stores,
    parse_duration,
    parse_rules,
    parse_stores,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "config" / "rules.yaml"
STORES = ROOT / "deploy" / "config" / "stores.yaml"
# Every field the worker writes to a user's hash (features/state.py, models/bundle.py, streams/store.py).
HASH_FIELDS = set(UserState("u1").features()) | {w.name for w in WINDOWED} | set(SCORE_FIELDS) | {"seq", "updated_at"}

GOOD = """
version: 1
rules:
  - id: r
    when:
      - churn_score: {gte: 0.7}
    once_per: [last_event_ts]
    cooldown: 7d
    message: {body: "hi"}
"""


def test_the_shipped_rules_load_and_read_only_fields_the_worker_writes() -> None:
    rules = load_rules(RULES)
    stores = load_stores(STORES)
    assert {r.id for r in rules.rules} >= {
        "win_back",
        "cart_abandonment",
        "welcome",
        "tier_reached",
        "rfm_at_risk_big_spenders",
        "geofence_store",
    }
    assert stores
    tiers = {t.name for t in load_tiers(ROOT / "deploy" / "config" / "tiers.yaml").tiers}
    for rule in rules.rules:
        for c in rule.when:
            assert c.field in HASH_FIELDS, f"{rule.id}: {c.field} is not a field the worker writes"
            for op, want in c.ops:
                if op == "after":
                    assert want in HASH_FIELDS
                if c.field == "rfm_segment" and op in ("in", "eq"):
                    assert set(want if op == "in" else [want]) <= set(SEGMENTS), f"{rule.id}: unknown segment"
                if c.field == "member_tier" and op in ("in", "eq"):
                    assert set(want if op == "in" else [want]) <= tiers, f"{rule.id}: unknown tier"
        for name in rule.once_per:
            assert name in HASH_FIELDS | {"store_id"}, f"{rule.id}: once_per {name}"
        if rule.wait is not None:
            assert rule.wait.after in HASH_FIELDS


def test_rules_are_sorted_by_priority_highest_first() -> None:
    second = GOOD.split("rules:\n")[1].replace("id: r", "id: urgent\n    priority: 9")
    rules = parse_rules(GOOD + second)
    assert [r.id for r in rules.rules] == ["urgent", "r"]
    assert rules.rules[1].line == 4


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        ("cooldown: 7d", 8, "cooldown: '7days'"),
        ("churn_score: {gte: 0.7}", 6, "unknown operator 'greater'"),
        ("churn_score: {gte: 0.7}", 6, "needs a number"),
        ('message: {body: "hi"}', 9, "placeholder {x.__class__}"),
        ("once_per: [last_event_ts]", 7, "once_per must list"),
        ("cooldown: 7d", 8, "unknown key 'coldown'"),
    ],
)
def test_a_bad_rule_is_refused_with_its_line_and_reason(change: str, line: int, reason: str) -> None:
    replacement = {
        "cooldown: '7days'": "cooldown: 7days",
        "unknown operator 'greater'": "churn_score: {greater: 0.7}",
        "needs a number": "churn_score: {gte: high}",
        "placeholder {x.__class__}": 'message: {body: "{x.__class__}"}',
        "once_per must list": "once_per: []",
        "unknown key 'coldown'": "coldown: 7d",
    }[reason]
    with pytest.raises(RulesError) as err:
        parse_rules(GOOD.replace(change, replacement), source="rules.yaml")
    message = str(err.value)
    assert message.startswith(f"rules.yaml:{line}: "), message
    assert reason.split("'")[0].rstrip() in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("version: 2\nrules: []", "version must be 1"),
        ("version: 1\nrules: []", "'rules' must be a non-empty list"),
        ("version: 1\nrules: [1]", "each rule must be a mapping"),
        (GOOD + GOOD.split("rules:\n")[1], "used twice"),
        (GOOD.replace("cooldown: 7d", "cooldown: 7d\n    channels: [email]"), "channels must list"),
        (GOOD.replace("cooldown: 7d", "cooldown: 7d\n    quiet_hours: later"), "quiet_hours must be delay or drop"),
        (GOOD.replace('message: {body: "hi"}', 'message: {body: "{offer_name}"}'), "needs `offer:` on the rule"),
        (GOOD.replace('message: {body: "hi"}', 'message: {body: "{store_name}"}'), "needs a near_store"),
        (GOOD.replace('message: {body: "hi"}', ""), "give either message or variants"),
        (GOOD.replace("cooldown: 7d", "cooldown: 7d\n    wait: {after: x}"), "wait must be"),
        (GOOD.replace("version: 1", "version: 1\nguardrails: {holdout: 1.5}"), "holdout must be a share"),
        (GOOD.replace("version: 1", "version: 1\nguardrails: {quiet_hours: {start: 22, end: '08:00'}}"), "HH:MM"),
        (GOOD.replace("version: 1", "version: 1\nguardrails: {caps: {fax: {day: 1}}}"), "unknown key 'fax'"),
        ("version: 1\nrules: [{id: a, id: b}]", "given twice"),
        ("version: 1\nrules:\n  - {id: [", "not valid YAML"),
    ],
)
def test_file_level_errors_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(RulesError, match=r"^rules\.yaml:") as err:
        parse_rules(text, source="rules.yaml")
    assert reason in str(err.value)


def test_an_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the rule file"):
        load_rules(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("ops", "fields", "holds"),
    [
        ((("gte", 0.7),), {"x": "0.7"}, True),
        ((("gte", 0.7),), {"x": "0.69"}, False),
        ((("gte", 0.7),), {"x": ""}, False),
        ((("gte", 0.7),), {}, False),
        ((("gt", 3),), {"x": "gold"}, False),
        ((("eq", 1),), {"x": "1"}, True),
        ((("eq", "gold"),), {"x": "gold"}, True),
        ((("ne", "gold"),), {"x": "silver"}, True),
        ((("in", ("a", "b")),), {"x": "b"}, True),
        ((("not_in", ("a", "b")),), {"x": "b"}, False),
        ((("between", (1.0, 3.0)),), {"x": "3"}, True),
        ((("between", (1.0, 3.0)),), {"x": "3.01"}, False),
        ((("exists", False),), {"x": ""}, True),
        ((("exists", True),), {"x": ""}, False),
        ((("older_than", 1000),), {"x": "8000"}, True),  # now = 10000: 2 s old
        ((("older_than", 3000),), {"x": "8000"}, False),
        ((("newer_than", 3000),), {"x": "8000"}, True),
        ((("after", "y"),), {"x": "5", "y": "4"}, True),
        ((("after", "y"),), {"x": "5", "y": "5"}, False),
        ((("after", "y"),), {"x": "5", "y": ""}, True),
        ((("gte", 1), ("lte", 2)), {"x": "1.5"}, True),
        ((("gte", 1), ("lte", 2)), {"x": "2.5"}, False),
        ((("gte", 1),), {"x": "nan"}, False),
    ],
)
def test_condition_operators(ops: tuple[tuple[str, object], ...], fields: dict[str, str], holds: bool) -> None:
    assert Condition("x", ops).holds(fields, now_ms=10_000) is holds


def test_time_conditions_are_as_of_now_not_as_of_the_state() -> None:
    rules = parse_rules(GOOD.replace("churn_score: {gte: 0.7}", "last_event_ts: {older_than: 7d}"))
    fields = {"last_event_ts": "0", "as_of": "0"}
    assert not rules.rules[0].matches(fields, now_ms=6 * 86_400_000, stores=())
    assert rules.rules[0].matches(fields, now_ms=7 * 86_400_000, stores=())


def test_templates_fill_known_fields_and_leave_missing_ones_empty() -> None:
    rules = parse_rules(GOOD.replace('body: "hi"', 'title: "Hi {first_name}", body: "{cart_size} items"'))
    assert rules.rules[0].variants[0].message.render({"cart_size": "3"}) == ("Hi ", "3 items")


def test_geofence_finds_the_nearest_store_within_the_radius() -> None:
    stores = parse_stores(
        "version: 1\nstores:\n  - {id: a, name: A, lat: 0.0, lon: 0.0}\n  - {id: b, name: B, lat: 0.002, lon: 0.0}\n"
    )
    rules = parse_rules(
        GOOD.replace("churn_score: {gte: 0.7}", "near_store: {within_m: 300}").replace("[last_event_ts]", "[store_id]")
    )
    rule = rules.rules[0]
    at_b = {"lat": "0.0019", "lon": "0.0"}
    assert rule.matches(at_b, 0, stores)
    assert not rule.matches({"lat": "0.01", "lon": "0.0"}, 0, stores)
    assert not rule.matches({"lat": "", "lon": ""}, 0, stores)
    assert 220 < distance_m(0.0, 0.0, 0.002, 0.0) < 225


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("version: 1\nstores: [{id: a, name: A, lat: 91, lon: 0}]", "lat must be"),
        ("version: 1\nstores: [{id: a, name: A, lat: 0, lon: 0}, {id: a, name: B, lat: 0, lon: 0}]", "unique"),
        ("version: 1\nstores: [{id: a, name: A, lat: 0, lon: 0, x: 1}]", "unknown key 'x'"),
    ],
)
def test_bad_store_files_are_refused(text: str, reason: str) -> None:
    with pytest.raises(RulesError, match=reason):
        parse_stores(text)


@pytest.mark.parametrize("text", ["7", "7 days", "-1d", "1y", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
