"""Simulated reactions to delivered messages: valid events, the ground truth's rates, merged in time order."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from nudge.events import Rejection, parse_event
from producers.respond import TRUE_MESSAGE_CONVERSION, Delivered, reactions, with_reactions
from producers.simulator import TRUE_CONVERSION, _draw_profile, generate

SEED, USERS = 7, 400
START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000)
END = START + 30 * 86_400_000
AT = START + 10 * 86_400_000


def delivered(user: str, key: str, channel: str = "push", offer: str | None = "fashion30") -> Delivered:
    return Delivered(user, channel, offer or "cart_abandonment", offer, key)


def test_reactions_are_valid_events_with_ids_of_their_own() -> None:
    seen: set[str] = set()
    for i in range(200):
        for ev in reactions(SEED, USERS, START, END, delivered(f"u{i % USERS:05d}", f"key{i:012d}"), AT):
            parsed = parse_event(orjson.dumps(ev))
            assert not isinstance(parsed, Rejection), (ev, parsed)
            assert ev["event_id"] not in seen
            seen.add(ev["event_id"])
            assert ev["ts"] > AT
    organic = {ev["event_id"] for ev in generate(5, 30, SEED)}
    assert not seen & organic


def test_a_second_delivery_of_the_same_message_reacts_identically() -> None:
    d = delivered("u00003", "k" * 32)
    assert reactions(SEED, USERS, START, END, d, AT) == reactions(SEED, USERS, START, END, d, AT)


@pytest.mark.parametrize("offer", ["fashion30", "welcome15", None])
def test_conversions_follow_the_ground_truth(offer: str | None) -> None:
    by_cohort: Counter[str] = Counter()
    bought: Counter[str] = Counter()
    for i in range(6000):
        user = f"u{i % USERS:05d}"
        cohort = _draw_profile(SEED, i % USERS, START, END)[0].cohort.name
        events = reactions(SEED, USERS, START, END, delivered(user, f"key{i:012d}", offer=offer), AT)
        purchases = [e for e in events if e["type"] == "purchase"]
        assert len(purchases) <= 1
        by_cohort[cohort] += 1
        if purchases:
            bought[cohort] += 1
            assert purchases[0].get("offer_id") == offer
            assert purchases[0]["ts"] - AT < 72 * 3_600_000
    for cohort, n in by_cohort.items():
        truth = TRUE_CONVERSION[cohort][offer] if offer else TRUE_MESSAGE_CONVERSION[cohort]
        rate = bought[cohort] / n
        assert abs(rate - truth) < 4 * (truth * (1 - truth) / n) ** 0.5 + 0.005, (cohort, rate, truth)


def test_an_sms_has_no_receipt_and_is_clicked_not_opened() -> None:
    types: Counter[str] = Counter()
    for i in range(500):
        types.update(
            e["type"] for e in reactions(SEED, USERS, START, END, delivered("u00001", f"s{i:015d}", "sms"), AT)
        )
    assert types["push_received"] == 0 and types["push_opened"] == 0
    assert types["sms_clicked"] > 0


def test_users_the_simulator_did_not_make_do_not_react() -> None:
    assert reactions(SEED, USERS, START, END, delivered("alice", "k" * 16), AT) == []
    assert reactions(SEED, USERS, START, END, delivered(f"u{USERS:05d}", "k" * 16), AT) == []


class FakeFeed:
    def __init__(self, at_poll: dict[int, list[Delivered]]) -> None:
        self.at_poll = at_poll
        self.polls = 0
        self.unknown = 0
        self.closed = False

    def poll(self) -> list[Delivered]:
        self.polls += 1
        return self.at_poll.get(self.polls, [])

    def close(self) -> None:
        self.closed = True


def test_reactions_merge_into_the_stream_in_time_order_and_stop_at_the_window() -> None:
    organic = list(generate(30, 30, SEED))
    feed = FakeFeed({1: [delivered(f"u{i:05d}", f"key{i:012d}") for i in range(30)]})
    counts = {"delivered": 0, "events": 0, "purchases": 0, "unmatched": 0}
    merged = list(with_reactions(organic, feed, SEED, 30, START, END, counts, poll_s=0.0))  # type: ignore[arg-type]
    assert feed.closed and counts["delivered"] == 30
    assert len(merged) == len(organic) + counts["events"] and counts["events"] > 30
    assert [e["ts"] for e in merged] == sorted(e["ts"] for e in merged)
    assert all(e["ts"] < END for e in merged)


def test_without_exposures_the_organic_traffic_is_unchanged() -> None:
    with_offers = [e for e in generate(40, 10, SEED) if e["type"] != "push_received" and "offer_id" not in e]
    without = list(generate(40, 10, SEED, exposures=False))
    assert not any(e["type"] == "push_received" for e in without)
    # sessions, carts and organic purchases are drawn alike; only the offer-driven units are gone
    organic_ids = {e["event_id"] for e in without}
    assert len(organic_ids & {e["event_id"] for e in with_offers}) > 0.5 * len(without)
