"""Per-user state and the fold that advances it: `fold(state, event) -> outcome`.

The streaming engine keeps one `UserState` per user in a changelog-backed
Faust table and folds every event into it; `UserState.features()` is what
goes to Redis. Rules, in the order `fold` applies them:

Kafka orders a user's events only within one topic, and the three input
topics are consumed at their own pace. So everything that depends on arrival
order is judged per *stream*, the event's topic kind (clicks, purchases,
app-events): each stream has its own watermark (the latest event time it
brought) and its own dedup memory. That makes the state the same however the
topics interleave, which is what lets a replay reproduce it exactly.

1. Expired: an event older than its stream's dedup memory (`ts` before the
   day of `watermark - dedup_horizon_ms`, or before days dropped to keep the
   memory under `dedup_max_ids`) cannot be checked for duplicates, so it is
   rejected (the worker dead-letters it with reason `too_old`).
2. Duplicate: an event whose event_id was already folded changes nothing.
   Ids are remembered as 48-bit hashes in one-day buckets (event time).
3. Lifetime fields take every other event, however late: events_total,
   orders_total, spend_total, first_seen (min ts), last_event_ts and
   last_purchase_ts (max ts). Consent and profile fields are
   last-writer-wins by event time (equal times: the later arrival wins).
4. Late: an event more than `grace_ms` older than its stream's watermark
   counts in late_events and stops here.
5. Everything else lands in the windowed buckets (features.definitions),
   the category counts and the cart, and moves its stream's watermark and
   `as_of` (the latest of the watermarks) forward.

All of it depends only on the events and their order per user, never on the
wall clock: replaying a log gives the same state.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from features.definitions import _ONE, CATEGORY_BUCKET_MS, CATEGORY_WINDOW_MS, DAY_MS, WINDOWED, cents, money
from features.lifecycle import classify
from nudge.events import (
    EVENT_TYPES,
    SYSTEM_TYPES,
    ClickEvent,
    ConsentEvent,
    Event,
    LocationEvent,
    ProfileUpdateEvent,
    PurchaseEvent,
)

__all__ = ["FoldConfig", "Outcome", "UserState", "event_hash", "fold"]

_WINDOW_FIELDS = tuple(w.name for w in WINDOWED)
_PROFILE_FIELDS = ("timezone", "locale", "push_token", "phone")
_CART_LIMIT = 200
_PRUNE_EVERY_MS = 3_600_000
# event type -> [(window name, bucket ms, value function or None for 1)]
_WINDOWS_BY_TYPE: dict[str, list[tuple[str, int, Any]]] = {
    t: [(w.name, w.bucket_ms, None if w.value is _ONE else w.value) for w in WINDOWED if w.applies_to(t)]
    for t in EVENT_TYPES
}


class Outcome(enum.Enum):
    APPLIED = "applied"
    LATE = "late"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    SYSTEM = "system"  # nudge's own record (a message sent): remembered for dedup, never the user's activity


@dataclass(frozen=True, slots=True)
class FoldConfig:
    grace_ms: int = 3_600_000
    dedup_horizon_ms: int = 7 * DAY_MS
    dedup_max_ids: int = 4096

    @classmethod
    def from_settings(cls, settings: Any) -> FoldConfig:
        return cls(settings.grace_ms, settings.dedup_horizon_ms, settings.dedup_max_ids)


def event_hash(event_id: str) -> int:
    """48-bit hash of an event id: the dedup memory stores these."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=6).digest(), "little")


class UserState:
    """Everything the fold remembers about one user. Mutable; see `fold`."""

    __slots__ = (
        "as_of",
        "buckets",
        "cart",
        "categories",
        "consent",
        "events_total",
        "first_seen",
        "installed_at",
        "last_add_to_cart_ts",
        "last_event_ts",
        "last_purchase_ts",
        "late_events",
        "location",
        "models",
        "orders_total",
        "profile",
        "spend_total_cents",
        "streams",
        "user_id",
    )

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.as_of: int | None = None
        self.first_seen: int | None = None
        self.last_event_ts: int | None = None
        self.last_purchase_ts: int | None = None
        self.last_add_to_cart_ts: int | None = None
        self.installed_at: int | None = None
        self.events_total = 0
        self.orders_total = 0
        self.spend_total_cents = 0
        self.late_events = 0
        # feature name -> {bucket index: value}
        self.buckets: dict[str, dict[int, int]] = {name: {} for name in _WINDOW_FIELDS}
        # category -> {day index: interactions}
        self.categories: dict[str, dict[int, int]] = {}
        # item_id -> [ts of the latest cart action, 1 added / 0 removed, price cents]
        self.cart: dict[str, list[int]] = {}
        # channel -> [ts, 1 opted in / 0 out]
        self.consent: dict[str, list[int]] = {}
        # field -> [ts, value]
        self.profile: dict[str, list[Any]] = {}
        self.location: list[Any] | None = None  # [ts, lat, lon]
        # per topic kind: watermark and dedup memory
        self.streams: dict[str, StreamMemory] = {}
        # the models' per-user memory (pending labels, open offer exposures), owned by the
        # model stage (streams/model_stage.py): JSON values, or objects with a to_dict()
        # giving them; the fold never reads it
        self.models: dict[str, Any] = {}

    # --- serialisation (the table's changelog) ---------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "u": self.user_id,
            "as_of": self.as_of,
            "first_seen": self.first_seen,
            "last_event_ts": self.last_event_ts,
            "last_purchase_ts": self.last_purchase_ts,
            "last_add_to_cart_ts": self.last_add_to_cart_ts,
            "installed_at": self.installed_at,
            "events_total": self.events_total,
            "orders_total": self.orders_total,
            "spend_total_cents": self.spend_total_cents,
            "late_events": self.late_events,
            # int-keyed dicts as they are: serialise with orjson.OPT_NON_STR_KEYS (to_json)
            "buckets": {name: bs for name, bs in self.buckets.items() if bs},
            "categories": self.categories,
            "cart": self.cart,
            "consent": self.consent,
            "profile": self.profile,
            "location": self.location,
            "streams": {kind: mem.to_dict() for kind, mem in self.streams.items()},
            **({"models": {k: _plain(v) for k, v in self.models.items()}} if self.models else {}),
        }

    def to_json(self) -> bytes:
        """The changelog form of this state."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, raw: bytes) -> UserState:
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserState:
        state = cls(data["u"])
        for name in (
            "as_of",
            "first_seen",
            "last_event_ts",
            "last_purchase_ts",
            "last_add_to_cart_ts",
            "events_total",
            "orders_total",
            "spend_total_cents",
            "late_events",
            "cart",
            "consent",
            "profile",
            "location",
        ):
            setattr(state, name, data[name])
        state.installed_at = data.get("installed_at")  # absent in states written before it existed
        for name, bs in data["buckets"].items():
            state.buckets[name] = {int(b): v for b, v in bs.items()}
        state.categories = {c: {int(d): v for d, v in ds.items()} for c, ds in data["categories"].items()}
        state.streams = {kind: StreamMemory.from_dict(d) for kind, d in data["streams"].items()}
        state.models = data.get("models", {})
        return state

    # --- what goes to Redis ------------------------------------------------------

    def features(self) -> dict[str, str]:
        """The user's features as Redis hash fields (strings; '' when unknown)."""
        as_of = self.as_of
        out: dict[str, str] = {
            "user_id": self.user_id,
            "as_of": _s(as_of),
            "first_seen": _s(self.first_seen),
            "last_event_ts": _s(self.last_event_ts),
            "last_purchase_ts": _s(self.last_purchase_ts),
            "last_add_to_cart_ts": _s(self.last_add_to_cart_ts),
            "installed_at": _s(self.installed_at),
            "events_total": str(self.events_total),
            "orders_total": str(self.orders_total),
            "spend_total": money(self.spend_total_cents),
            "late_events": str(self.late_events),
        }
        for w in WINDOWED:
            total = 0
            bs = self.buckets[w.name]
            if as_of is not None and bs:
                lowest = as_of // w.bucket_ms - w.n_buckets + 1
                # Usually every bucket is in the window (pruning keeps it so): sum in C.
                total = sum(bs.values()) if min(bs) >= lowest else sum(v for b, v in bs.items() if b >= lowest)
            out[w.name] = money(total) if w.scale == 100 else str(total)
        open_items = [entry for entry in self.cart.values() if entry[1] == 1 and self._after_purchase(entry[0])]
        out["cart_open"] = "1" if open_items else "0"
        out["cart_size"] = str(len(open_items))
        out["cart_value"] = money(sum(entry[2] for entry in open_items))
        out["top_category"] = self._top_category()
        out["lifecycle"] = (
            ""
            if as_of is None or self.first_seen is None or self.last_event_ts is None
            else classify(first_seen=self.first_seen, last_event_ts=self.last_event_ts, now=as_of)
        )
        out["push_opt_in"] = "1" if self.consent.get("push", [0, 0])[1] else "0"
        out["sms_opt_in"] = "1" if self.consent.get("sms", [0, 0])[1] else "0"
        for name in _PROFILE_FIELDS:
            out[name] = str(self.profile[name][1]) if name in self.profile else ""
        out["lat"] = "" if self.location is None else repr(self.location[1])
        out["lon"] = "" if self.location is None else repr(self.location[2])
        return out

    def _after_purchase(self, ts: int) -> bool:
        return self.last_purchase_ts is None or ts > self.last_purchase_ts

    def _top_category(self) -> str:
        if self.as_of is None:
            return ""
        lowest = self.as_of // CATEGORY_BUCKET_MS - CATEGORY_WINDOW_MS // CATEGORY_BUCKET_MS + 1
        best, best_count = "", 0
        for category in sorted(self.categories):
            count = sum(v for d, v in self.categories[category].items() if d >= lowest)
            if count > best_count:
                best, best_count = category, count
        return best

    def _prune(self, config: FoldConfig) -> None:
        """Drop what no window can see any more (as_of just moved forward)."""
        as_of = self.as_of
        assert as_of is not None
        for w in WINDOWED:
            lowest = as_of // w.bucket_ms - w.n_buckets + 1
            bs = self.buckets[w.name]
            if bs and min(bs) < lowest:
                self.buckets[w.name] = {b: v for b, v in bs.items() if b >= lowest}
        lowest_day = as_of // CATEGORY_BUCKET_MS - CATEGORY_WINDOW_MS // CATEGORY_BUCKET_MS + 1
        for category in list(self.categories):
            days = {d: v for d, v in self.categories[category].items() if d >= lowest_day}
            if days:
                self.categories[category] = days
            else:
                del self.categories[category]


class StreamMemory:
    """What one user's stream (topic kind) remembers: its watermark and the
    ids of its recent events, as {day index: [hashes]}; days before
    `floor_day` are forgotten. `ids` holds the same hashes as a set, for the
    duplicate check; `seen` is kept in its changelog form (lists), so writing
    the changelog copies nothing."""

    __slots__ = ("count", "floor_day", "ids", "seen", "watermark")

    def __init__(self) -> None:
        self.watermark: int | None = None
        self.floor_day = 0
        self.seen: dict[int, list[int]] = {}
        self.ids: set[int] = set()
        self.count = 0

    def expired(self, day: int, config: FoldConfig) -> bool:
        if self.watermark is None:
            return False
        return day < max(self.floor_day, (self.watermark - config.dedup_horizon_ms) // DAY_MS)

    def remember(self, h: int, day: int, config: FoldConfig) -> bool:
        """Add an id; False if it was already there (a duplicate)."""
        ids = self.ids
        if h in ids:
            return False
        ids.add(h)
        day_ids = self.seen.get(day)
        if day_ids is None:
            self.seen[day] = [h]
        else:
            day_ids.append(h)
        self.count += 1
        while self.count > config.dedup_max_ids and len(self.seen) > 1:
            oldest = min(self.seen)
            self._forget_day(oldest)
            self.floor_day = max(self.floor_day, oldest + 1)
        return True

    def _forget_day(self, day: int) -> None:
        dropped = self.seen.pop(day)
        self.ids.difference_update(dropped)
        self.count -= len(dropped)

    def advance(self, ts: int, config: FoldConfig) -> None:
        self.watermark = ts
        floor = (ts - config.dedup_horizon_ms) // DAY_MS
        if floor > self.floor_day:
            self.floor_day = floor
            for day in [d for d in self.seen if d < floor]:
                self._forget_day(day)

    def to_dict(self) -> dict[str, Any]:
        """The changelog form (shares `seen`: serialise it, do not keep it)."""
        return {"watermark": self.watermark, "floor_day": self.floor_day, "seen": self.seen}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamMemory:
        mem = cls()
        mem.watermark = data["watermark"]
        mem.floor_day = data["floor_day"]
        mem.seen = {int(day): list(hashes) for day, hashes in data["seen"].items()}
        mem.ids = {h for hashes in mem.seen.values() for h in hashes}
        mem.count = len(mem.ids)
        return mem


def fold(state: UserState, event: Event, config: FoldConfig) -> Outcome:
    """Fold one event into `state` (in place) and say what happened to it."""
    ts = event.ts
    day = ts // DAY_MS
    stream = state.streams.get(event.topic_kind)
    if stream is None:
        stream = state.streams[event.topic_kind] = StreamMemory()
    if stream.expired(day, config):
        return Outcome.EXPIRED
    if not stream.remember(event_hash(event.event_id), day, config):
        return Outcome.DUPLICATE
    if event.type in SYSTEM_TYPES:
        return Outcome.SYSTEM

    # 3. lifetime, profile and consent: every event, however late
    state.events_total += 1
    state.first_seen = ts if state.first_seen is None else min(state.first_seen, ts)
    state.last_event_ts = ts if state.last_event_ts is None else max(state.last_event_ts, ts)
    if isinstance(event, PurchaseEvent):
        state.orders_total += 1
        state.spend_total_cents += cents(event.total)
        state.last_purchase_ts = ts if state.last_purchase_ts is None else max(state.last_purchase_ts, ts)
    elif isinstance(event, ConsentEvent):
        _lww(state.consent, event.channel, ts, 1 if event.type == "opt_in" else 0)
    elif isinstance(event, ProfileUpdateEvent):
        for name in _PROFILE_FIELDS:
            value = getattr(event, name)
            if value is not None:
                _lww(state.profile, name, ts, value)
    elif isinstance(event, LocationEvent) and (state.location is None or ts >= state.location[0]):
        state.location = [ts, event.lat, event.lon]
    elif event.type == "install":
        state.installed_at = ts if state.installed_at is None else max(state.installed_at, ts)

    # 4. late events stop here
    if stream.watermark is not None and ts < stream.watermark - config.grace_ms:
        state.late_events += 1
        return Outcome.LATE
    if stream.watermark is None or ts > stream.watermark:
        stream.advance(ts, config)

    # 5. windows, categories, cart
    kind = event.type
    buckets = state.buckets
    for name, bucket_ms, value in _WINDOWS_BY_TYPE[kind]:
        b = ts // bucket_ms
        bs = buckets[name]
        bs[b] = bs.get(b, 0) + (1 if value is None else value(event))
    if isinstance(event, ClickEvent):
        if event.category:
            _count(state.categories, event.category, ts // CATEGORY_BUCKET_MS)
        if kind == "add_to_cart" or kind == "remove_from_cart":
            _cart(state, event, ts)
    elif isinstance(event, PurchaseEvent):
        for item in event.items:
            if item.category:
                _count(state.categories, item.category, ts // CATEGORY_BUCKET_MS)
    if state.as_of is None or ts > state.as_of:
        # Pruning only bounds memory (outputs filter by window anyway), so
        # do it when as_of enters a new hour, not on every event.
        if state.as_of is None or ts // _PRUNE_EVERY_MS != state.as_of // _PRUNE_EVERY_MS:
            state.as_of = ts
            state._prune(config)
        else:
            state.as_of = ts
    return Outcome.APPLIED


def _lww(table: dict[str, list[Any]], name: str, ts: int, value: Any) -> None:
    current = table.get(name)
    if current is None or ts >= current[0]:
        table[name] = [ts, value]


def _count(categories: dict[str, dict[int, int]], category: str, day: int) -> None:
    days = categories.setdefault(category, {})
    days[day] = days.get(day, 0) + 1


def _cart(state: UserState, event: ClickEvent, ts: int) -> None:
    added = event.type == "add_to_cart"
    if added:
        state.last_add_to_cart_ts = ts if state.last_add_to_cart_ts is None else max(state.last_add_to_cart_ts, ts)
    item = event.item_id or ""
    current = state.cart.get(item)
    if current is None or ts >= current[0]:
        state.cart[item] = [ts, 1 if added else 0, cents(event.price or 0.0) if added else 0]
    # Entries older than the last purchase are closed: forget them.
    if state.last_purchase_ts is not None or len(state.cart) > _CART_LIMIT:
        keep = sorted(state.cart.items(), key=lambda kv: kv[1][0])[-_CART_LIMIT:]
        state.cart = {k: v for k, v in keep if state._after_purchase(v[0])}


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def _s(value: int | None) -> str:
    return "" if value is None else str(value)
