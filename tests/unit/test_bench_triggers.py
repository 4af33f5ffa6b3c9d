"""`nudge bench triggers`'s pure helpers: percentiles, the event schedule, and joining deliveries to sends."""

from __future__ import annotations

import doctest

import pytest

import bench.triggers
from bench.triggers import BENCH_RULES, TRIGGER_SHARE, join_deliveries, percentile, schedule_events
from triggers.rules import parse_rules


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7], 1, 7),
        ([7], 99, 7),
        (list(range(1, 101)), 50, 50),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 100, 100),
        (list(range(1, 1001)), 99, 990),
        ([10, 20, 30], 50, 20),  # nearest rank: ceil(1.5) = 2
    ],
)
def test_percentile_is_the_nearest_rank(values: list[int], q: float, expected: int | None) -> None:
    assert percentile(values, q) == expected


def test_join_counts_first_delivery_and_reports_missing_duplicates_and_strangers() -> None:
    expected = {"a": 1_000, "b": 2_000, "c": 3_000}
    lines = [
        {"to": "b", "received_at": 2_250},
        {"to": "a", "received_at": 1_100},
        {"to": "a", "received_at": 1_900},  # the same token again: a duplicate, not a second latency
        {"to": "warm-up", "received_at": 5},
        {"to": "c", "received_at": 2_999},  # a millisecond early (rounding): 0, never negative
    ]
    joined = join_deliveries(expected, lines)
    assert joined.latencies_ms == [0, 100, 250]
    assert (joined.missing, joined.duplicates, joined.unexpected) == (0, 1, 1)
    assert joined.timeline == [(0, 100), (1_000, 250), (2_000, 0)]


def test_join_with_nothing_delivered_reports_every_message_missing() -> None:
    joined = join_deliveries({"a": 1, "b": 2}, [])
    assert (joined.latencies_ms, joined.missing) == ([], 2)


def test_schedule_onboards_before_each_first_app_open() -> None:
    rate = 100.0
    plan = schedule_events("t", 3_000, rate, background_users=50)
    assert len(plan) == 3_000
    position = {}
    for i, p in enumerate(plan):
        position.setdefault((p.user_id, p.body["type"]), i)
    opens = [(i, p) for i, p in enumerate(plan) if p.token]
    assert len(opens) == pytest.approx(3_000 * TRIGGER_SHARE, rel=0.1)  # the last LEAD_S of users never open
    for i, p in opens:
        assert p.body["type"] == "app_open"
        onboarded = position[p.user_id, "opt_in"]
        assert position[p.user_id, "profile_update"] < onboarded < i
        assert (i - onboarded) / rate >= 1.5  # the consent is folded before the open arrives
        assert plan[position[p.user_id, "profile_update"]].body["push_token"] == p.token
    assert len({p.token for _, p in opens}) == len(opens)
    background = {p.user_id for p in plan if p.body["type"] == "page_view"}
    assert background <= {f"t-bg{u}" for u in range(50)}


def test_bench_rules_parse() -> None:
    rules = parse_rules(BENCH_RULES)
    assert [r.id for r in rules.rules] == ["bench_cart", "bench_win_back", "bench_welcome"]


def test_doctest_examples_hold() -> None:
    result = doctest.testmod(bench.triggers)
    assert result.attempted >= 3 and result.failed == 0
