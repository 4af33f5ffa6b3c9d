"""Simulated users who react to the messages nudge really delivered: `nudge simulate --respond`.

The loop this closes: simulator -> Kafka -> worker -> Redis -> triggers ->
notifications -> delivery -> the mock provider, which appends every message
it delivers to a device to `<data dir>/mock-provider/deliveries.jsonl`. The
responder reads that file (new lines only) and the `notifications` topic (to
know which user, channel and offer a delivered idempotency key was), and the
user reacts with the simulator's ground truth:

- a push is received (`push_received`, campaign_id = the offer, or the rule
  when the message has none: the same join key the bandit's exposures use);
- with the cohort's `TRUE_CONVERSION` for an offer (or
  `TRUE_MESSAGE_CONVERSION` for a message without one) the user buys within
  the 72-hour attribution window, the purchase carrying the offer's id;
- else, sometimes, the message is only opened (`push_opened` /
  `sms_clicked`): no purchase follows, so the conversion rate is exactly the
  ground truth's.

Users in the holdout get no message, so they only buy at their own organic
rate: the difference is the uplift `nudge report` measures, earned live
rather than scripted. The reaction of one delivery is a pure function of the
run's seed, the user and the idempotency key (`reactions`), so a message
delivered twice could not make a user buy twice even if it got through.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import ValidationError

from nudge.notifications import Notification
from nudge.settings import Settings
from producers.simulator import (
    ATTRIBUTION_MS,
    MS_PER_HOUR,
    OFFERS,
    TRUE_CONVERSION,
    EventDict,
    Offer,
    _draw_profile,
    _UserSim,
)

__all__ = ["OPEN_RATE", "TRUE_MESSAGE_CONVERSION", "Delivered", "DeliveryFeed", "reactions", "with_reactions"]


# Ground truth for messages without an offer (a cart reminder, a welcome): P(purchase within 72 h | received).
TRUE_MESSAGE_CONVERSION: Final[dict[str, float]] = {
    "loyal": 0.10,
    "bargain": 0.05,
    "browser": 0.02,
    "new": 0.08,
    "churner": 0.03,
}
# P(the message is opened | received, no purchase follows).
OPEN_RATE: Final[dict[str, float]] = {"loyal": 0.30, "bargain": 0.25, "browser": 0.15, "new": 0.30, "churner": 0.08}
_OFFERS: Final = {o.id: o for o in OFFERS}
_KEEP_NOTIFICATIONS: Final = 200_000


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message the mock provider delivered, joined with what nudge meant to send."""

    user_id: str
    channel: str
    campaign_id: str
    offer_id: str | None
    idempotency_key: str


def _index(user_id: str) -> int | None:
    """The simulator's user index from its id (u00042 -> 42, or a run's tagged d1234-u00042 -> 42);
    None for a user it did not make."""
    local = user_id.rsplit("-", 1)[-1]
    if len(local) < 2 or local[0] != "u" or not local[1:].isdigit():
        return None
    return int(local[1:])


def reactions(seed: int, users: int, start_ms: int, end_ms: int, delivered: Delivered, at_ms: int) -> list[EventDict]:
    """The user's reaction to one delivered message, received at `at_ms` (event time), in time order."""
    index = _index(delivered.user_id)
    if index is None or index >= users:
        return []
    profile, _ = _draw_profile(seed, index, start_ms, end_ms)
    rng = random.Random(f"nudge-respond-v1:{seed}:{delivered.user_id}:{delivered.idempotency_key}")
    sim = _UserSim(seed, profile, rng, start_ms, end_ms)
    # Ids of their own: never equal to an organic event's, and the same on a second delivery.
    sim.id_prefix = f"{seed}-{profile.user_id}-r{delivered.idempotency_key[:16]}-"
    sim.tag = f"{seed}-{index}-r{delivered.idempotency_key[:8]}"
    cohort = profile.cohort.name
    offer = _OFFERS.get(delivered.offer_id or "")
    push = delivered.channel == "push"
    t = at_ms + rng.randrange(1_000, 5_000)
    out: list[EventDict] = []
    if push:
        out.append(sim._app(t, "push_received", delivered.campaign_id))
    p_buy = TRUE_CONVERSION[cohort][offer.id] if offer is not None else TRUE_MESSAGE_CONVERSION[cohort]
    if rng.random() < p_buy:
        # As with the simulator's own exposures: impulse buys soon, the rest within the window.
        if rng.random() < 0.45:
            delay = rng.uniform(2 * 60_000, 2 * MS_PER_HOUR)
        else:
            delay = rng.uniform(2 * MS_PER_HOUR, ATTRIBUTION_MS - MS_PER_HOUR)
        via_message = delay < 2 * MS_PER_HOUR and rng.random() < 0.8
        what = offer if offer is not None else Offer(delivered.campaign_id, None, "none", 0)
        for ev in sim._conversion(t + int(delay), what, via_message):
            if ev["type"] == "purchase" and offer is None:
                ev.pop("offer_id", None)
            out.append(ev)
    elif rng.random() < OPEN_RATE[cohort]:
        opened = t + int(rng.expovariate(1 / 600.0) * 1000) + 20_000
        out.append(sim._app(opened, "push_opened", delivered.campaign_id))
    if not push:
        # An SMS has no receipt from a device, and its "open" is a click on its link.
        out = [ev for ev in out if ev["type"] != "push_received"]
        for ev in out:
            if ev["type"] == "push_opened":
                ev["type"] = "sms_clicked"
    return sorted(out, key=lambda ev: (ev["ts"], ev["event_id"]))


class DeliveryFeed:
    """New deliveries: the mock provider's file, joined with the outbox topic by idempotency key.

    Both are read from where they end when the feed opens: a simulation
    reacts to what is delivered while it runs.
    """

    def __init__(self, settings: Settings, deliveries: Path | None = None) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from nudge.kafka_clients import connect

        self.path = deliveries or Path(settings.data_dir) / "mock-provider" / "deliveries.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.consumer = connect(KafkaConsumer, settings, group_id=None, enable_auto_commit=False)
        parts = self.consumer.partitions_for_topic(settings.topic_notifications) or set()
        tps = [TopicPartition(settings.topic_notifications, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        self.sent: OrderedDict[str, Notification] = OrderedDict()
        self.waiting: list[dict[str, Any]] = []  # delivered before its notification was read
        self.unknown = 0

    def poll(self) -> list[Delivered]:
        for records in self.consumer.poll(timeout_ms=0, max_records=5_000).values():
            for record in records:
                try:
                    n = Notification.from_json(record.value)
                except ValidationError:
                    continue
                self.sent[n.idempotency_key] = n
                if len(self.sent) > _KEEP_NOTIFICATIONS:
                    self.sent.popitem(last=False)
        lines = self.waiting + list(self._new_lines())
        self.waiting = []
        out: list[Delivered] = []
        for line in lines:
            key = str(line.get("idempotency_key", ""))
            known = self.sent.get(key)
            if known is None:
                if line.get("_tries", 0) < 20:
                    self.waiting.append({**line, "_tries": line.get("_tries", 0) + 1})
                else:
                    self.unknown += 1
                continue
            out.append(Delivered(known.user_id, known.channel, known.campaign_id, known.offer_id, key))
        return out

    def _new_lines(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for raw in data[: end + 1].splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict):
                yield line

    def close(self) -> None:
        self.consumer.close()


def with_reactions(
    events: Iterable[EventDict],
    feed: DeliveryFeed,
    seed: int,
    users: int,
    start_ms: int,
    end_ms: int,
    counts: dict[str, int],
    *,
    poll_s: float = 0.2,
) -> Iterator[EventDict]:
    """The simulation's events with the users' reactions merged in, in time order.

    Every `poll_s` (wall clock) the feed is read; a delivery is received at the
    event time the simulation has reached. Reactions due after the window's end
    are dropped, as the simulation's own events are.
    """
    pending: list[tuple[int, str, EventDict]] = []
    last_poll = 0.0
    try:
        for event in events:
            if time.monotonic() - last_poll >= poll_s:
                last_poll = time.monotonic()
                for delivered in feed.poll():
                    counts["delivered"] += 1
                    for r in reactions(seed, users, start_ms, end_ms, delivered, event["ts"]):
                        heapq.heappush(pending, (r["ts"], r["event_id"], r))
                counts["unmatched"] = feed.unknown
            while pending and pending[0][0] <= event["ts"]:
                yield _counted(heapq.heappop(pending)[2], counts)
            yield event
        while pending and pending[0][0] < end_ms:
            yield _counted(heapq.heappop(pending)[2], counts)
    finally:
        feed.close()


def _counted(event: EventDict, counts: dict[str, int]) -> EventDict:
    counts["events"] += 1
    if event["type"] == "purchase":
        counts["purchases"] += 1
    return event
