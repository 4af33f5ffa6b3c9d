"""The fold (streaming engine) against the batch reference, and the rules
the feature semantics promise."""

from __future__ import annotations

import random
from typing import Any

import pytest

from features import batch
from features.definitions import DAY_MS, HOUR_MS, MINUTE_MS
from features.state import FoldConfig, Outcome, UserState, fold
from nudge.events import Event, parse_event_obj

T0 = 1_790_000_000_000  # 2026-09-21
CATEGORIES = ("books", "garden", "toys", "tech")


def make(i: int | str, kind: str, ts: int, user: str = "u1", **extra: Any) -> Event:
    body: dict[str, Any] = {"event_id": str(i), "type": kind, "user_id": user, "ts": ts, "schema_version": 1, **extra}
    if kind == "purchase":
        body.setdefault("order_id", f"o{i}")
        body.setdefault("items", [{"item_id": "x", "category": "books", "price": 10.0}])
        body.setdefault("total", 10.0)
        body.setdefault("currency", "EUR")
    if kind in ("opt_in", "opt_out"):
        body.setdefault("channel", "push")
    ev = parse_event_obj(body, now_ms=ts)
    assert not hasattr(ev, "reason"), ev
    return ev  # type: ignore[return-value]


def stream_features(events: list[Event], config: FoldConfig) -> dict[str, dict[str, str]]:
    states: dict[str, UserState] = {}
    for ev in events:
        state = states.setdefault(ev.user_id, UserState(ev.user_id))
        fold(state, ev, config)
        # Round-trip through the changelog format now and then, as a restart would.
        if random.random() < 0.05:
            states[ev.user_id] = UserState.from_json(state.to_json())
    return {u: s.features() for u, s in states.items()}


def random_log(seed: int, n: int = 3000, users: int = 20) -> list[Event]:
    rng = random.Random(seed)
    kinds = ["page_view", "product_view", "add_to_cart", "remove_from_cart", "search", "purchase", "app_open",
             "opt_in", "opt_out", "profile_update", "location"]  # fmt: skip
    clock = {f"u{k}": T0 for k in range(users)}
    events: list[Event] = []
    for i in range(n):
        user = f"u{rng.randrange(users)}"
        clock[user] += rng.choice([5_000, 60_000, 20 * MINUTE_MS, 3 * HOUR_MS, 2 * DAY_MS])
        ts = clock[user]
        r = rng.random()
        if r < 0.1:
            ts -= rng.randrange(2 * HOUR_MS)  # out of order, often past the 1 h grace
        elif r < 0.12:
            ts -= rng.randrange(10 * DAY_MS)  # very late: may be past the dedup horizon
        kind = rng.choice(kinds)
        extra: dict[str, Any] = {}
        if kind in ("page_view", "product_view", "add_to_cart", "remove_from_cart"):
            extra = {
                "item_id": f"i{rng.randrange(8)}",
                "category": rng.choice(CATEGORIES),
                "price": rng.randrange(1, 5000) / 100,
            }
        elif kind == "purchase":
            items = [{"item_id": f"i{rng.randrange(8)}", "category": rng.choice(CATEGORIES), "price": rng.randrange(1, 9000) / 100}
                     for _ in range(rng.randrange(1, 4))]  # fmt: skip
            extra = {"items": items, "total": round(sum(it["price"] for it in items), 2)}
        elif kind == "profile_update":
            extra = {
                "timezone": rng.choice(["Europe/Berlin", "Asia/Tokyo"]),
                "phone": f"+4477009{rng.randrange(10**5):05d}",
            }
        elif kind == "location":
            extra = {"lat": rng.uniform(-80, 80), "lon": rng.uniform(-170, 170)}
        events.append(make(f"e{i}", kind, ts, user, **extra))
        if rng.random() < 0.05 and events:
            events.append(rng.choice(events))  # redelivery of an earlier event
    return events


@pytest.mark.parametrize("seed", range(6))
def test_fold_equals_batch_reference_on_messy_logs(seed: int) -> None:
    events = random_log(seed)
    config = FoldConfig(grace_ms=HOUR_MS, dedup_horizon_ms=7 * DAY_MS, dedup_max_ids=4096)
    assert stream_features(events, config) == batch.compute(events, config)


def test_fold_equals_batch_when_the_dedup_memory_overflows() -> None:
    events = random_log(99, n=2000, users=3)
    config = FoldConfig(dedup_max_ids=50)
    expected = batch.compute(events, config)
    assert stream_features(events, config) == expected
    classified = batch.classify_events([e for e in events if e.user_id == "u0"], config)
    assert any(outcome is Outcome.EXPIRED for _, outcome in classified)


def test_replaying_the_same_log_twice_changes_nothing() -> None:
    events = random_log(7)
    config = FoldConfig()
    assert stream_features(events + events, config) == stream_features(events, config)


def test_window_boundaries_follow_buckets() -> None:
    # events_1h uses one-minute buckets: the last 60 buckets ending with as_of's.
    base = (T0 // MINUTE_MS) * MINUTE_MS
    state = UserState("u1")
    config = FoldConfig()
    for i, ts in enumerate([base - 59 * MINUTE_MS, base - 59 * MINUTE_MS - 1, base + 59_999]):
        fold(state, make(i, "app_open", ts), config)
    # as_of = base + 59.999 s lies in bucket `base`; bucket base-59min is the oldest in the window.
    assert state.features()["events_1h"] == "2"
    assert state.features()["events_total"] == "3"


def test_late_event_updates_lifetime_only() -> None:
    state = UserState("u1")
    config = FoldConfig(grace_ms=HOUR_MS)
    assert fold(state, make(1, "purchase", T0, total=5.0), config) is Outcome.APPLIED
    assert fold(state, make(2, "purchase", T0 - 2 * HOUR_MS, total=7.5), config) is Outcome.LATE
    assert fold(state, make(3, "purchase", T0 - 30 * MINUTE_MS, total=1.0), config) is Outcome.APPLIED
    f = state.features()
    assert (f["orders_total"], f["spend_total"], f["purchases_7d"], f["spend_30d"]) == ("3", "13.50", "2", "6.00")
    assert f["late_events"] == "1" and f["as_of"] == str(T0)


def test_duplicate_and_expired() -> None:
    state = UserState("u1")
    config = FoldConfig(dedup_horizon_ms=2 * DAY_MS)
    assert fold(state, make(1, "app_open", T0), config) is Outcome.APPLIED
    assert fold(state, make(1, "app_open", T0), config) is Outcome.DUPLICATE
    assert fold(state, make(2, "app_open", T0 + 5 * DAY_MS), config) is Outcome.APPLIED
    assert fold(state, make(1, "app_open", T0), config) is Outcome.EXPIRED
    assert state.features()["events_total"] == "2"


def test_cart_opens_after_add_and_closes_with_purchase() -> None:
    state = UserState("u1")
    config = FoldConfig()
    fold(state, make(1, "add_to_cart", T0, item_id="a", price=3.0), config)
    fold(state, make(2, "add_to_cart", T0 + 1000, item_id="b", price=4.5), config)
    assert (state.features()["cart_open"], state.features()["cart_value"]) == ("1", "7.50")
    fold(state, make(3, "remove_from_cart", T0 + 2000, item_id="b"), config)
    assert state.features()["cart_size"] == "1"
    fold(state, make(4, "purchase", T0 + 3000), config)
    assert state.features()["cart_open"] == "0"
    fold(state, make(5, "add_to_cart", T0 + 4000, item_id="c", price=1.0), config)
    assert state.features()["cart_open"] == "1"


def test_consent_is_last_writer_wins_by_event_time() -> None:
    state = UserState("u1")
    config = FoldConfig()
    fold(state, make(1, "opt_in", T0 + 10), config)
    fold(state, make(2, "opt_out", T0), config)  # older: ignored
    assert state.features()["push_opt_in"] == "1"
    fold(state, make(3, "opt_out", T0 + 20), config)
    assert state.features()["push_opt_in"] == "0"


def test_top_category_ties_go_alphabetically() -> None:
    state = UserState("u1")
    for i, cat in enumerate(["toys", "books", "toys", "books"]):
        fold(state, make(i, "page_view", T0 + i, category=cat), FoldConfig())
    assert state.features()["top_category"] == "books"


@pytest.mark.parametrize("seed", range(4))
def test_state_does_not_depend_on_how_topics_interleave(seed: int) -> None:
    # Kafka keeps order only within a topic: any merge of the per-topic
    # sequences must give the same state.
    events = random_log(seed, n=2000, users=5)
    rng = random.Random(seed)
    per_kind: dict[str, list[Event]] = {}
    for ev in events:
        per_kind.setdefault(ev.topic_kind, []).append(ev)
    merged: list[Event] = []
    queues = {k: list(v) for k, v in per_kind.items()}
    while queues:
        kind = rng.choice(sorted(queues))
        merged.extend(queues[kind][: rng.randrange(1, 300)])
        taken = sum(1 for e in merged if e.topic_kind == kind)
        queues[kind] = per_kind[kind][taken:]
        if not queues[kind]:
            del queues[kind]
    assert len(merged) == len(events)
    config = FoldConfig()
    assert stream_features(merged, config) == stream_features(events, config)
    assert batch.compute(merged, config) == batch.compute(events, config)


@pytest.mark.parametrize(
    ("field", "value"),
    [("total", 1e308), ("total", 1e12 * 1.001), ("price", 1e308), ("quantity", 10**12), ("price", float("inf"))],
)
def test_numbers_beyond_the_contract_are_rejected_before_any_fold(field: str, value: float) -> None:
    body: dict[str, Any] = {
        "event_id": "big",
        "type": "purchase",
        "user_id": "u1",
        "ts": 1_700_000_000_000,
        "schema_version": 1,
        "order_id": "o1",
        "items": [{"item_id": "x", "price": 1.0, "quantity": 1}],
        "total": 1.0,
        "currency": "EUR",
    }
    if field == "total":
        body["total"] = value
    else:
        body["items"] = [{**body["items"][0], field: value}]
    verdict = parse_event_obj(body, now_ms=1_700_000_000_000)
    assert getattr(verdict, "reason", None) == "invalid_value", verdict


def test_the_largest_amounts_the_contract_accepts_fold_without_overflow() -> None:
    """Each bound at its maximum, many times over: every window and lifetime sum stays finite."""
    from nudge.events import MAX_AMOUNT, MAX_QUANTITY

    items = [{"item_id": f"x{i}", "category": "c", "price": MAX_AMOUNT, "quantity": MAX_QUANTITY} for i in range(1000)]
    events = [make(i, "purchase", 1_700_000_000_000 + i * MINUTE_MS, items=items, total=MAX_AMOUNT) for i in range(50)]
    events += [
        make(f"c{i}", "add_to_cart", 1_700_000_000_000 + i, item_id=f"x{i}", price=MAX_AMOUNT) for i in range(50)
    ]
    features = stream_features(events, FoldConfig())["u1"]
    assert features["spend_total"] == f"{50 * MAX_AMOUNT:.2f}"
    assert all("inf" not in v and "nan" not in v for v in features.values())
