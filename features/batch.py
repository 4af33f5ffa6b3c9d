"""Batch reference: the same features computed from a plain list of events.

This is the yardstick the streaming engine is tested against. It reads the
definitions in features.definitions but shares no code with the fold in
features.state: it classifies each user's events (expired, duplicate, late,
applied) in arrival order, then computes every feature by filtering the
classified list. Arrival order matters only per user (that is what Kafka
keeps), so `compute` takes events in log order.

>>> from nudge.events import parse_event_obj
>>> e = lambda i, ts: parse_event_obj({"event_id": i, "type": "app_open", "user_id": "u1",
...                                    "ts": ts, "schema_version": 1}, now_ms=ts)
>>> out = compute([e("a", 1000), e("b", 2000), e("a", 1000)])
>>> out["u1"]["events_1h"], out["u1"]["as_of"]
('2', '2000')
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from features.definitions import CATEGORY_BUCKET_MS, CATEGORY_WINDOW_MS, DAY_MS, WINDOWED, cents, money
from features.lifecycle import classify
from features.state import FoldConfig, Outcome
from nudge.events import (
    SYSTEM_TYPES,
    ClickEvent,
    ConsentEvent,
    Event,
    LocationEvent,
    ProfileUpdateEvent,
    PurchaseEvent,
)

__all__ = ["classify_events", "compute", "user_features"]


def classify_events(events: list[Event], config: FoldConfig) -> list[tuple[Event, Outcome]]:
    """One user's events in arrival order, each with what the stream must do with it.

    Arrival order is judged per topic kind (see features.state): each kind is
    classified on its own, so only the order within a topic matters.
    """
    by_kind: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for i, ev in enumerate(events):
        by_kind[ev.topic_kind].append((i, ev))
    ranked: list[tuple[int, Event, Outcome]] = []
    for kind_events in by_kind.values():
        outcomes = _classify_one_stream([ev for _, ev in kind_events], config)
        ranked.extend((i, ev, outcome) for (i, _), (ev, outcome) in zip(kind_events, outcomes, strict=True))
    return [(ev, outcome) for _, ev, outcome in sorted(ranked, key=lambda r: r[0])]


def _classify_one_stream(events: list[Event], config: FoldConfig) -> list[tuple[Event, Outcome]]:
    out: list[tuple[Event, Outcome]] = []
    seen: dict[str, int] = {}  # event_id -> day, for ids still remembered
    per_day: dict[int, int] = defaultdict(int)
    floor_day = 0
    as_of: int | None = None
    for ev in events:
        day = ev.ts // DAY_MS
        if as_of is not None and day < max(floor_day, (as_of - config.dedup_horizon_ms) // DAY_MS):
            out.append((ev, Outcome.EXPIRED))
            continue
        if ev.event_id in seen:
            out.append((ev, Outcome.DUPLICATE))
            continue
        seen[ev.event_id] = day
        per_day[day] += 1
        # Mirror the bounded memory: drop whole oldest days past the cap.
        while sum(per_day.values()) > config.dedup_max_ids and len(per_day) > 1:
            oldest = min(per_day)
            del per_day[oldest]
            floor_day = max(floor_day, oldest + 1)
            seen = {i: d for i, d in seen.items() if d != oldest}
        if ev.type in SYSTEM_TYPES:
            out.append((ev, Outcome.SYSTEM))  # remembered, never counted (see features.state.fold)
            continue
        if as_of is not None and ev.ts < as_of - config.grace_ms:
            out.append((ev, Outcome.LATE))
            continue
        out.append((ev, Outcome.APPLIED))
        if as_of is None or ev.ts > as_of:
            as_of = ev.ts
            horizon_floor = (as_of - config.dedup_horizon_ms) // DAY_MS
            if horizon_floor > floor_day:
                floor_day = horizon_floor
                for d in [d for d in per_day if d < floor_day]:
                    del per_day[d]
                seen = {i: d for i, d in seen.items() if d >= floor_day}
    return out


def user_features(user_id: str, classified: list[tuple[Event, Outcome]]) -> dict[str, str]:
    """Features of one user from the classified list (see classify_events)."""
    counted = [ev for ev, outcome in classified if outcome in (Outcome.APPLIED, Outcome.LATE)]
    windowed = [ev for ev, outcome in classified if outcome is Outcome.APPLIED]
    purchases = [ev for ev in counted if isinstance(ev, PurchaseEvent)]
    as_of = max((ev.ts for ev in windowed), default=None)
    last_purchase = max((ev.ts for ev in purchases), default=None)
    adds = [ev.ts for ev in windowed if ev.type == "add_to_cart"]
    first_seen = min((ev.ts for ev in counted), default=None)
    last_event = max((ev.ts for ev in counted), default=None)
    out: dict[str, str] = {
        "user_id": user_id,
        "as_of": _s(as_of),
        "first_seen": _s(first_seen),
        "last_event_ts": _s(last_event),
        "last_purchase_ts": _s(last_purchase),
        "last_add_to_cart_ts": _s(max(adds, default=None)),
        "installed_at": _s(max((ev.ts for ev in counted if ev.type == "install"), default=None)),
        "events_total": str(len(counted)),
        "orders_total": str(len(purchases)),
        "spend_total": money(sum(cents(ev.total) for ev in purchases)),
        "late_events": str(sum(1 for _, outcome in classified if outcome is Outcome.LATE)),
    }
    for w in WINDOWED:
        total = 0
        if as_of is not None:
            first_bucket = as_of // w.bucket_ms - w.n_buckets + 1
            total = sum(
                w.value(ev) for ev in windowed if w.applies_to(ev.type) and ev.ts // w.bucket_ms >= first_bucket
            )
        out[w.name] = money(total) if w.scale == 100 else str(total)

    # cart: per item, the latest action by event time (ties: later arrival)
    latest: dict[str, tuple[int, bool, int]] = {}
    for ev in windowed:
        if isinstance(ev, ClickEvent) and ev.type in ("add_to_cart", "remove_from_cart"):
            item = ev.item_id or ""
            if item not in latest or ev.ts >= latest[item][0]:
                added = ev.type == "add_to_cart"
                latest[item] = (ev.ts, added, cents(ev.price or 0.0) if added else 0)
    open_items = [v for v in latest.values() if v[1] and (last_purchase is None or v[0] > last_purchase)]
    out["cart_open"] = "1" if open_items else "0"
    out["cart_size"] = str(len(open_items))
    out["cart_value"] = money(sum(v[2] for v in open_items))

    counts: dict[str, int] = defaultdict(int)
    if as_of is not None:
        first_day = as_of // CATEGORY_BUCKET_MS - CATEGORY_WINDOW_MS // CATEGORY_BUCKET_MS + 1
        for ev in windowed:
            if ev.ts // CATEGORY_BUCKET_MS < first_day:
                continue
            if isinstance(ev, ClickEvent) and ev.category:
                counts[ev.category] += 1
            elif isinstance(ev, PurchaseEvent):
                for line in ev.items:
                    if line.category:
                        counts[line.category] += 1
    out["top_category"] = min(counts, key=lambda c: (-counts[c], c)) if counts else ""
    out["lifecycle"] = (
        ""
        if as_of is None or first_seen is None or last_event is None
        else classify(first_seen=first_seen, last_event_ts=last_event, now=as_of)
    )

    consent: dict[str, tuple[int, bool]] = {}
    profile: dict[str, tuple[int, Any]] = {}
    location: tuple[int, float, float] | None = None
    for ev in counted:
        if isinstance(ev, ConsentEvent):
            if ev.channel not in consent or ev.ts >= consent[ev.channel][0]:
                consent[ev.channel] = (ev.ts, ev.type == "opt_in")
        elif isinstance(ev, ProfileUpdateEvent):
            for name in ("timezone", "locale", "push_token", "phone"):
                value = getattr(ev, name)
                if value is not None and (name not in profile or ev.ts >= profile[name][0]):
                    profile[name] = (ev.ts, value)
        elif isinstance(ev, LocationEvent) and (location is None or ev.ts >= location[0]):
            location = (ev.ts, ev.lat, ev.lon)
    out["push_opt_in"] = "1" if consent.get("push", (0, False))[1] else "0"
    out["sms_opt_in"] = "1" if consent.get("sms", (0, False))[1] else "0"
    for name in ("timezone", "locale", "push_token", "phone"):
        out[name] = str(profile[name][1]) if name in profile else ""
    out["lat"] = "" if location is None else repr(location[1])
    out["lon"] = "" if location is None else repr(location[2])
    return out


def compute(events: Iterable[Event], config: FoldConfig | None = None) -> dict[str, dict[str, str]]:
    """Every user's features from events in log order (per-user order is what counts)."""
    config = config or FoldConfig()
    by_user: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        by_user[ev.user_id].append(ev)
    return {user: user_features(user, classify_events(evs, config)) for user, evs in by_user.items()}


def _s(value: int | None) -> str:
    return "" if value is None else str(value)
