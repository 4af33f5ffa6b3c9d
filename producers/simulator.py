"""Deterministic traffic simulator: realistic users, sessions, purchases and offer responses.

`nudge simulate` generates the event stream of a population of synthetic users
over a time window and either sends it to Kafka (routed by event type, keyed by
user_id) or writes it as JSON Lines, plus a ground-truth side file saying what
the simulator knows and the pipeline has to discover: each user's cohort, churn
time and true best offer.

Same seed + same arguments -> byte-identical events and ground truth. Each user
draws from its own `random.Random` seeded with (seed, user index), so users are
independent of each other and of how many users there are; nothing depends on
the wall clock.

Cohorts (share of users):

========  =====  ==============================================================
loyal     15 %   frequent sessions, high add-to-cart and checkout rates
bargain   20 %   buy little on their own, respond strongly to discounts
browser   35 %   long sessions, many views, rarely buy
new       15 %   install + first app_open inside the window (first_seen there);
                 a quarter of them drop out again (churn) after a few days
churner   15 %   activity decays, then stops for good at a churn time drawn
                 per user inside the window
========  =====  ==============================================================

Activity follows each user's own IANA time zone: few sessions between 01:00 and
05:00 local, a peak in the evening, more on weekends. Offers from
deploy/config/offers.yaml are "received" (`push_received`, campaign_id = offer
id) about every 2-3 days at daytime local hours, the offer picked uniformly at
random (a logging policy with propensity 1/len(OFFERS), handy for off-policy
evaluation). With its cohort's true probability (TRUE_CONVERSION) the user then
buys within 72 h, a purchase carrying offer_id and an item of the offer's
category. The catalog of items is fixed (the same item ids for every seed).

Library API (no Kafka except `send_events`):

>>> from datetime import UTC, datetime
>>> first = next(generate(users=3, days=1, seed=7, start=datetime(2026, 10, 1, tzinfo=UTC)))
>>> list(first)[:5]
['event_id', 'user_id', 'ts', 'schema_version', 'type']
>>> ground_truth(users=3, days=1, seed=7)["params"]["users"]
3
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gzip
import heapq
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import orjson
from tqdm import tqdm

from nudge.args import instant, integer, number, output_file, output_problem
from nudge.args import seed as seed_arg
from nudge.errors import ConfigError, InputError, UsageError
from nudge.events import MAX_EPOCH_MS, TOPIC_OF_TYPE
from nudge.settings import Settings

__all__ = [
    "CATEGORIES",
    "COHORTS",
    "DEFAULT_START",
    "GENERATOR_VERSION",
    "MAX_USERS",
    "OFFERS",
    "TRUE_CONVERSION",
    "ZONES",
    "ByteSink",
    "Category",
    "Cohort",
    "EventDict",
    "Offer",
    "SimulationSummary",
    "TokenBucket",
    "Zone",
    "configure",
    "dump_truth",
    "generate",
    "ground_truth",
    "retag",
    "run",
    "run_simulation",
    "send_events",
    "truth_path_for",
    "write_events",
]

log = logging.getLogger(__name__)

# Bump when the same seed and arguments would produce different output.
GENERATOR_VERSION: Final = 1
DEFAULT_START: Final = datetime(2026, 10, 1, tzinfo=UTC)
MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
MAX_DAYS: Final = 3660.0
# Every user's generator and ground truth stay in memory for the whole run (about 7 KB
# each, and some 4 s per 10,000 users before the first event): beyond this, split the run.
MAX_USERS: Final = 100_000
MAX_RATE: Final = 10_000_000.0
ATTRIBUTION_MS: Final = 72 * MS_PER_HOUR

# --------------------------------------------------------------------------
# The world: cohorts, time zones, catalog, offers and their true effect.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    """How one kind of user behaves."""

    name: str
    share: float
    sessions_per_day: float  # mean organic sessions on an average day, before decay
    steps_mean: float  # mean page/search/product views per session
    add_to_cart: float  # P(add to cart | product view)
    checkout: float  # P(purchase | a session ends with a non-empty cart)
    remove: float  # P(one remove_from_cart | a session with a cart)


COHORTS: Final[tuple[Cohort, ...]] = (
    Cohort("loyal", 0.15, 1.3, 6.0, 0.30, 0.45, 0.10),
    Cohort("bargain", 0.20, 0.8, 8.0, 0.18, 0.20, 0.25),
    Cohort("browser", 0.35, 1.0, 12.0, 0.06, 0.08, 0.20),
    Cohort("new", 0.15, 0.9, 7.0, 0.15, 0.30, 0.15),
    Cohort("churner", 0.15, 0.9, 6.0, 0.12, 0.30, 0.15),
)
_COHORT_CUM: Final = [sum(c.share for c in COHORTS[: i + 1]) for i in range(len(COHORTS))]


@dataclass(frozen=True, slots=True)
class Zone:
    """A home region: IANA zone, locales, currency, city centre, phone numbering."""

    name: str
    weight: float
    locales: tuple[str, ...]
    currency: str
    lat: float
    lon: float
    phone_prefix: str  # E.164 prefix; fictional/drama ranges where the country has one
    phone_digits: int


ZONES: Final[tuple[Zone, ...]] = (
    Zone("Europe/London", 0.18, ("en-GB",), "GBP", 51.5074, -0.1278, "+447700900", 3),
    Zone("Europe/Berlin", 0.14, ("de-DE", "en-GB"), "EUR", 52.5200, 13.4050, "+4915", 9),
    Zone("Europe/Paris", 0.10, ("fr-FR",), "EUR", 48.8566, 2.3522, "+3363998", 4),
    Zone("Europe/Madrid", 0.06, ("es-ES", "ca-ES"), "EUR", 40.4168, -3.7038, "+346", 8),
    Zone("America/New_York", 0.18, ("en-US", "es-US"), "USD", 40.7128, -74.0060, "+121255501", 2),
    Zone("America/Chicago", 0.06, ("en-US",), "USD", 41.8781, -87.6298, "+131255501", 2),
    Zone("America/Los_Angeles", 0.12, ("en-US", "es-US"), "USD", 34.0522, -118.2437, "+131055501", 2),
    Zone("Asia/Tokyo", 0.10, ("ja-JP", "en-US"), "USD", 35.6762, 139.6503, "+8190", 8),
    Zone("Australia/Sydney", 0.06, ("en-AU",), "USD", -33.8688, 151.2093, "+61491570", 3),
)
_ZONE_CUM: Final = [sum(z.weight for z in ZONES[: i + 1]) for i in range(len(ZONES))]
# Catalog prices are in EUR; other currencies at a fixed rate so runs stay reproducible.
FX: Final[dict[str, float]] = {"EUR": 1.0, "GBP": 0.86, "USD": 1.09}


@dataclass(frozen=True, slots=True)
class Category:
    """An item category: EUR price range, number of items, search terms."""

    name: str
    low: float
    high: float
    items: int
    queries: tuple[str, ...]


CATEGORIES: Final[tuple[Category, ...]] = (
    Category("electronics", 19.0, 1499.0, 60, ("headphones", "laptop", "phone case", "charger", "smartwatch", "tv")),
    Category("fashion", 9.0, 249.0, 70, ("sneakers", "jacket", "dress", "jeans", "t-shirt", "scarf")),
    Category("home", 5.0, 599.0, 50, ("lamp", "sofa cushion", "coffee maker", "bedding", "rug")),
    Category("beauty", 3.0, 89.0, 40, ("moisturiser", "lipstick", "shampoo", "perfume", "sunscreen")),
    Category("sports", 8.0, 399.0, 40, ("running shoes", "yoga mat", "dumbbells", "bike light", "tent")),
    Category("books", 4.0, 45.0, 40, ("novel", "cookbook", "travel guide", "comic", "biography")),
    Category("grocery", 1.0, 39.0, 30, ("coffee beans", "olive oil", "chocolate", "tea", "pasta")),
    Category("toys", 4.0, 149.0, 30, ("lego", "puzzle", "board game", "plush", "rc car")),
)
_CATEGORY_INDEX: Final = {c.name: i for i, c in enumerate(CATEGORIES)}


@dataclass(frozen=True, slots=True)
class _Item:
    item_id: str
    category: str
    price_eur: float


def _build_catalog() -> tuple[tuple[tuple[_Item, ...], list[float]], ...]:
    """Items per category with Zipf-like popularity; fixed, whatever the seed."""
    rng = random.Random("nudge-catalog-v1")
    out = []
    for cat in CATEGORIES:
        lo, hi = math.log(cat.low), math.log(cat.high)
        items = tuple(
            _Item(f"{cat.name[:3]}-{k:03d}", cat.name, max(cat.low, math.floor(math.exp(rng.uniform(lo, hi)))) + 0.99)
            for k in range(cat.items)
        )
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(cat.items)]
        out.append((items, _cumulative(weights)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Offer:
    """One arm of the next-best-offer bandit (mirrors deploy/config/offers.yaml)."""

    id: str
    category: str | None
    kind: str
    value: float


# Kept in step with deploy/config/offers.yaml by tests/unit/test_simulator.py.
OFFERS: Final[tuple[Offer, ...]] = (
    Offer("welcome15", None, "percent_off", 15),
    Offer("sitewide10", None, "percent_off", 10),
    Offer("freeship", None, "free_shipping", 0),
    Offer("fashion30", "fashion", "percent_off", 30),
    Offer("electronics15", "electronics", "percent_off", 15),
    Offer("beauty3for2", "beauty", "bundle", 3),
    Offer("grocery5", "grocery", "amount_off", 5),
)

# Ground truth: P(purchase with this offer within 72 h | offer received), per
# cohort. Each cohort has a different best arm, with a clear gap to the next,
# so a bandit that learns per context has something to find.
TRUE_CONVERSION: Final[dict[str, dict[str, float]]] = {
    "loyal": {"welcome15": 0.05, "sitewide10": 0.14, "freeship": 0.24, "fashion30": 0.12,
              "electronics15": 0.10, "beauty3for2": 0.16, "grocery5": 0.18},
    "bargain": {"welcome15": 0.10, "sitewide10": 0.18, "freeship": 0.12, "fashion30": 0.32,
                "electronics15": 0.22, "beauty3for2": 0.20, "grocery5": 0.24},
    "browser": {"welcome15": 0.02, "sitewide10": 0.04, "freeship": 0.03, "fashion30": 0.05,
                "electronics15": 0.09, "beauty3for2": 0.04, "grocery5": 0.02},
    "new": {"welcome15": 0.22, "sitewide10": 0.10, "freeship": 0.07, "fashion30": 0.08,
            "electronics15": 0.06, "beauty3for2": 0.07, "grocery5": 0.05},
    "churner": {"welcome15": 0.03, "sitewide10": 0.12, "freeship": 0.05, "fashion30": 0.06,
                "electronics15": 0.04, "beauty3for2": 0.04, "grocery5": 0.07},
}  # fmt: skip

# Relative session intensity by local hour 0..23 and by weekday Mon..Sun.
HOUR_WEIGHTS: Final = (0.6, 0.3, 0.15, 0.1, 0.1, 0.2, 0.6, 1.4, 2.0, 2.0, 1.9, 2.0,
                       2.6, 2.4, 2.0, 2.0, 2.2, 2.6, 3.3, 3.9, 4.2, 3.8, 2.8, 1.5)  # fmt: skip
WEEKDAY_WEIGHTS: Final = (0.85, 0.9, 0.95, 1.0, 1.05, 1.25, 1.3)
# Offers go out 09:00-21:00 local: the sender respects quiet hours.
SEND_HOURS: Final = tuple(range(9, 21))
EXPOSURES_PER_DAY: Final = 0.4


def _cumulative(weights: Iterable[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


_HOUR_CUM: Final = _cumulative(HOUR_WEIGHTS)
_CATALOG: Final = _build_catalog()


def _pick(rng: random.Random, cum: list[float]) -> int:
    """Index drawn with cumulative weights `cum` (what `rng.choices` does, without the list)."""
    return bisect.bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: fine for the small means used here.
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Profile:
    """What the simulator decides about a user before its first event."""

    index: int
    user_id: str
    cohort: Cohort
    zone: Zone
    tz: ZoneInfo
    locale: str
    currency: str
    home_lat: float
    home_lon: float
    category_cum: list[float]
    push_opt_in: bool
    sms_opt_in: bool
    push_token: str
    phone: str
    syncs_profile: bool  # an existing user whose app re-sends its profile on first open
    install_ts: int | None
    churn_ts: int | None

    @property
    def best_offer(self) -> str:
        probs = TRUE_CONVERSION[self.cohort.name]
        return max(OFFERS, key=lambda o: probs[o.id]).id


def _user_id(index: int) -> str:
    return f"u{index:05d}"


def _draw_profile(seed: int, index: int, start_ms: int, end_ms: int) -> tuple[_Profile, random.Random]:
    """The user's profile and its RNG, positioned after the profile draws.

    A str seed is hashed with SHA-512 by `random.seed`, so it is stable across
    processes (unlike hash()) and users never share a stream."""
    rng = random.Random(f"nudge-sim-v{GENERATOR_VERSION}:{seed}:{index}")
    cohort = COHORTS[_pick(rng, _COHORT_CUM)]
    zone = ZONES[_pick(rng, _ZONE_CUM)]
    locale = zone.locales[0] if rng.random() < 0.8 else rng.choice(zone.locales)
    home_lat = zone.lat + rng.gauss(0.0, 0.08)
    home_lon = zone.lon + rng.gauss(0.0, 0.08)
    # Gamma-distributed weights give most users one or two favourite categories.
    category_cum = _cumulative(rng.gammavariate(0.6, 1.0) + 1e-3 for _ in CATEGORIES)
    push_opt_in = rng.random() < 0.65
    sms_opt_in = rng.random() < 0.25
    push_token = f"{rng.getrandbits(256):064x}"
    phone = zone.phone_prefix + "".join(str(rng.randrange(10)) for _ in range(zone.phone_digits))
    syncs_profile = rng.random() < 0.6
    span = end_ms - start_ms
    install_ts: int | None = None
    churn_ts: int | None = None
    if cohort.name == "new":
        install_ts = start_ms + int(rng.uniform(0.0, 0.7) * span)
        if rng.random() < 0.25:
            dropout = install_ts + MS_PER_DAY + int(rng.expovariate(1.0 / 4.0) * MS_PER_DAY)
            churn_ts = dropout if dropout < end_ms else None
    elif cohort.name == "churner":
        churn_ts = start_ms + int(rng.uniform(0.15, 0.85) * span)
    profile = _Profile(
        index, _user_id(index), cohort, zone, ZoneInfo(zone.name), locale, zone.currency, home_lat, home_lon,
        category_cum, push_opt_in, sms_opt_in, push_token, phone, syncs_profile, install_ts, churn_ts,
    )  # fmt: skip
    return profile, rng


# One event as a JSON-ready dict, keys in the canonical order of its nudge.events model.
EventDict = dict[str, Any]
# A planned unit of activity: (start ms, tie-break sequence, kind, payload).
_Unit = tuple[int, int, str, Any]


class _UserSim:
    """Generates one user's events in time order, one unit (session, offer) at a time.

    Only the current unit and the units planned for the current local day are
    held, so merging thousands of users keeps memory small."""

    def __init__(
        self, seed: int, profile: _Profile, rng: random.Random, start_ms: int, end_ms: int, *, exposures: bool = True
    ) -> None:
        self.p = profile
        self.exposures = exposures
        self.rng = rng
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.fx = FX[profile.currency]
        self.id_prefix = f"{seed}-{profile.user_id}-"
        self.tag = f"{seed}-{profile.index}"
        self.n_events = 0
        self.n_sessions = 0
        self.n_orders = 0
        self.seq = 0
        self.synced = False
        self.push_opt_in = profile.push_opt_in
        self.sms_opt_in = profile.sms_opt_in
        self.push_token = profile.push_token

    # -- scheduling ---------------------------------------------------------

    def events(self) -> Iterator[EventDict]:
        p = self.p
        horizon = p.churn_ts if p.churn_ts is not None else self.end_ms
        first = p.install_ts if p.install_ts is not None else self.start_ms
        units: list[_Unit] = []
        if p.install_ts is not None:
            self._plan(units, p.install_ts, "install", None)
        day = datetime.fromtimestamp(first / 1000, p.tz).date()
        next_day_ms = self._midnight(day)  # start of the first local day not planned yet
        cursor = first
        while True:
            # Plan a day only when nothing already planned comes before it.
            while next_day_ms < horizon and (not units or units[0][0] >= next_day_ms):
                self._plan_day(units, day, first, horizon)
                day += timedelta(days=1)
                next_day_ms = self._midnight(day)
            if not units:
                return
            ts, _, kind, payload = heapq.heappop(units)
            # A unit never overlaps the previous one: it waits for it to end.
            t = max(ts, cursor)
            if t >= horizon:
                continue
            last = t
            for event in self._run_unit(kind, t, payload, units, horizon):
                if event["ts"] >= horizon:
                    break
                last = event["ts"]
                yield event
            cursor = last + 1000

    def _plan(self, units: list[_Unit], ts: int, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(units, (ts, self.seq, kind, payload))

    def _midnight(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.p.tz).timestamp()) * 1000

    def _local_ms(self, day: date, hour: int) -> int:
        rng = self.rng
        second = rng.randrange(3600)
        local = datetime(day.year, day.month, day.day, hour, second // 60, second % 60, tzinfo=self.p.tz)
        return int(local.timestamp()) * 1000 + rng.randrange(1000)

    def _intensity(self, t: int) -> float:
        p = self.p
        if p.churn_ts is not None:
            # Churners fade out before they stop: 100 % at the start, 25 % at churn.
            first = p.install_ts if p.install_ts is not None else self.start_ms
            frac = min(1.0, max(0.0, (t - first) / max(1, p.churn_ts - first)))
            return 1.0 - 0.75 * frac
        if p.install_ts is not None and 0 <= t - p.install_ts < 3 * MS_PER_DAY:
            return 1.6  # new users explore their new app
        return 1.0

    def _plan_day(self, units: list[_Unit], day: date, first: int, horizon: int) -> None:
        rng = self.rng
        noon = self._midnight(day) + 12 * MS_PER_HOUR
        lam = self.p.cohort.sessions_per_day * WEEKDAY_WEIGHTS[day.weekday()] * self._intensity(noon)
        for _ in range(_poisson(rng, lam)):
            ts = self._local_ms(day, _pick(rng, _HOUR_CUM))
            if first <= ts < horizon:
                self._plan(units, ts, "session", None)
        probs = TRUE_CONVERSION[self.p.cohort.name]
        for _ in range(_poisson(rng, EXPOSURES_PER_DAY)):
            ts = self._local_ms(day, rng.choice(SEND_HOURS))
            offer = rng.choice(OFFERS)
            converts = rng.random() < probs[offer.id]
            # Drawn either way, so a run without the simulator's own offers has the same organic traffic.
            if self.exposures and first <= ts < horizon:
                self._plan(units, ts, "exposure", (offer, converts))

    def _run_unit(self, kind: str, t: int, payload: Any, units: list[_Unit], horizon: int) -> Iterator[EventDict]:
        if kind == "session":
            return self._session(t)
        if kind == "exposure":
            offer, converts = payload
            return self._exposure(t, offer, converts, units, horizon)
        if kind == "conversion":
            offer, via_push = payload
            return self._conversion(t, offer, via_push)
        return self._install(t)

    # -- event builders (keys in the canonical order of nudge.events models) --

    def _envelope(self, t: int, type_: str) -> EventDict:
        self.n_events += 1
        return {
            "event_id": f"{self.id_prefix}{self.n_events:07d}",
            "user_id": self.p.user_id,
            "ts": t,
            "schema_version": 1,
            "type": type_,
        }

    def _click(
        self,
        t: int,
        type_: str,
        sid: str,
        item: _Item | None = None,
        category: str | None = None,
        query: str | None = None,
    ) -> EventDict:
        ev = self._envelope(t, type_)
        if item is not None:
            ev["item_id"] = item.item_id
            ev["category"] = item.category
            ev["price"] = self._price(item)
        elif category is not None:
            ev["category"] = category
        ev["session_id"] = sid
        if query is not None:
            ev["query"] = query
        return ev

    def _app(self, t: int, type_: str, campaign_id: str | None = None) -> EventDict:
        ev = self._envelope(t, type_)
        if campaign_id is not None:
            ev["campaign_id"] = campaign_id
        return ev

    def _consent(self, t: int, type_: str, channel: str) -> EventDict:
        ev = self._envelope(t, type_)
        ev["channel"] = channel
        return ev

    def _profile_update(
        self, t: int, *, timezone: bool = False, locale: bool = False, push_token: bool = False, phone: bool = False
    ) -> EventDict:
        ev = self._envelope(t, "profile_update")
        if timezone:
            ev["timezone"] = self.p.zone.name
        if locale:
            ev["locale"] = self.p.locale
        if push_token:
            ev["push_token"] = self.push_token
        if phone:
            ev["phone"] = self.p.phone
        return ev

    def _location(self, t: int) -> EventDict:
        rng = self.rng
        ev = self._envelope(t, "location")
        ev["lat"] = round(min(90.0, max(-90.0, self.p.home_lat + rng.gauss(0.0, 0.02))), 5)
        ev["lon"] = round(min(180.0, max(-180.0, self.p.home_lon + rng.gauss(0.0, 0.02))), 5)
        return ev

    def _purchase(self, t: int, lines: list[tuple[_Item, float, int]], offer_id: str | None) -> EventDict:
        self.n_orders += 1
        ev = self._envelope(t, "purchase")
        ev["order_id"] = f"o{self.tag}-{self.n_orders}"
        ev["items"] = [
            {"item_id": item.item_id, "category": item.category, "price": price, "quantity": qty}
            for item, price, qty in lines
        ]
        # Sum in cents so total == sum(price * quantity) to the cent.
        ev["total"] = sum(round(price * 100) * qty for _, price, qty in lines) / 100
        ev["currency"] = self.p.currency
        if offer_id is not None:
            ev["offer_id"] = offer_id
        return ev

    def _price(self, item: _Item) -> float:
        return round(item.price_eur * self.fx, 2)

    def _item(self, category_index: int) -> _Item:
        items, cum = _CATALOG[category_index]
        return items[_pick(self.rng, cum)]

    def _favourite_category(self) -> int:
        return _pick(self.rng, self.p.category_cum)

    def _gap(self, mean_s: float, min_s: float = 2.0) -> int:
        return int((min_s + self.rng.expovariate(1.0 / mean_s)) * 1000)

    def _quantity(self, item: _Item) -> int:
        r = self.rng.random()
        if item.category == "grocery":
            return 1 + int(r * 4)
        return 1 if r < 0.82 else 2 if r < 0.96 else 3

    # -- units --------------------------------------------------------------

    def _sync_profile(self, t: int) -> Iterator[EventDict]:
        """The profile an app reports on (re)install: zone, locale, contacts, consent."""
        yield self._profile_update(t, timezone=True, locale=True, push_token=self.push_opt_in, phone=self.sms_opt_in)
        if self.push_opt_in:
            t += self._gap(3.0, 1.0)
            yield self._consent(t, "opt_in", "push")
        if self.sms_opt_in:
            t += self._gap(3.0, 1.0)
            yield self._consent(t, "opt_in", "sms")

    def _install(self, t: int) -> Iterator[EventDict]:
        yield self._app(t, "install")
        self.synced = True
        yield from self._session(t + self._gap(10.0, 3.0), sync=True)

    def _session(self, t: int, *, sync: bool = False) -> Iterator[EventDict]:
        rng, cohort = self.rng, self.p.cohort
        self.n_sessions += 1
        sid = f"s{self.tag}-{self.n_sessions}"
        yield self._app(t, "app_open")
        if sync or (not self.synced and self.p.syncs_profile):
            self.synced = True
            for ev in self._sync_profile(t + 500):
                t = ev["ts"]
                yield ev
        self.synced = True
        if rng.random() < 0.15:
            t += self._gap(2.0, 0.5)
            yield self._location(t)
        for ev in self._contact_changes(t):
            t = ev["ts"]
            yield ev
        cart: list[_Item] = []
        category = self._favourite_category()
        steps = 1 + min(60, int(rng.expovariate(1.0 / cohort.steps_mean)))
        for _ in range(steps):
            t += self._gap(25.0)
            r = rng.random()
            if r < 0.3:
                category = self._favourite_category()
            if r < 0.12:
                cat = CATEGORIES[category]
                yield self._click(t, "search", sid, category=cat.name, query=rng.choice(cat.queries))
            elif r < 0.25:
                yield self._click(t, "page_view", sid, category=CATEGORIES[category].name)
            else:
                item = self._item(category)
                yield self._click(t, "product_view", sid, item)
                if len(cart) < 5 and item not in cart and rng.random() < cohort.add_to_cart:
                    t += self._gap(8.0)
                    cart.append(item)
                    yield self._click(t, "add_to_cart", sid, item)
        if cart and rng.random() < cohort.remove:
            t += self._gap(10.0)
            item = cart.pop(rng.randrange(len(cart)))
            yield self._click(t, "remove_from_cart", sid, item)
        # A cart left behind without a purchase is an abandoned cart: the
        # cart-abandonment rule needs those.
        if cart and rng.random() < cohort.checkout:
            t += self._gap(40.0, 15.0)
            yield self._purchase(t, [(item, self._price(item), self._quantity(item)) for item in cart], None)
        t += self._gap(15.0)
        yield self._app(t, "app_close")

    def _contact_changes(self, t: int) -> list[EventDict]:
        """Rare consent changes and push-token rotations, as real apps see them."""
        rng = self.rng
        r = rng.random()
        if r >= 0.015:
            return []
        t += self._gap(5.0)
        if r < 0.003:
            if self.push_opt_in:
                self.push_opt_in = False
                return [self._consent(t, "opt_out", "push")]
            self.push_opt_in = True
            return [self._profile_update(t, push_token=True), self._consent(t + 1500, "opt_in", "push")]
        if r < 0.005:
            if self.sms_opt_in:
                self.sms_opt_in = False
                return [self._consent(t, "opt_out", "sms")]
            self.sms_opt_in = True
            return [self._profile_update(t, phone=True), self._consent(t + 1500, "opt_in", "sms")]
        if not self.push_opt_in:
            return []
        self.push_token = f"{rng.getrandbits(256):064x}"
        return [self._profile_update(t, push_token=True)]

    def _exposure(self, t: int, offer: Offer, converts: bool, units: list[_Unit], horizon: int) -> Iterator[EventDict]:
        rng = self.rng
        yield self._app(t, "push_received", offer.id)
        if converts:
            # Impulse buys come soon after the push; the rest within the 72 h window.
            if rng.random() < 0.45:
                delay = rng.uniform(2 * 60_000, 2 * MS_PER_HOUR)
            else:
                delay = rng.uniform(2 * MS_PER_HOUR, ATTRIBUTION_MS - MS_PER_HOUR)
            # Keep the purchase observable: before churn / the window's end,
            # with slack for waiting on a session in progress.
            latest = horizon - 30 * 60_000 - t
            if delay > latest:
                delay = rng.uniform(60_000, latest) if latest > 60_000 else -1
            if delay > 0:
                self._plan(units, t + int(delay), "conversion", (offer, delay < 2 * MS_PER_HOUR and rng.random() < 0.8))
        elif rng.random() < 0.12:
            opened = t + self._gap(600.0, 20.0)
            yield self._app(opened, "push_opened", offer.id)
            self._plan(units, opened + 2000, "session", None)

    def _conversion(self, t: int, offer: Offer, via_push: bool) -> Iterator[EventDict]:
        rng = self.rng
        self.n_sessions += 1
        sid = f"s{self.tag}-{self.n_sessions}"
        if via_push:
            yield self._app(t, "push_opened", offer.id)
            t += self._gap(2.0, 0.5)
        yield self._app(t, "app_open")
        category = _CATEGORY_INDEX[offer.category] if offer.category else self._favourite_category()
        basket: list[_Item] = []
        for _ in range(1 + rng.randrange(3)):
            t += self._gap(20.0)
            item = self._item(category)
            yield self._click(t, "product_view", sid, item)
            if item not in basket:
                t += self._gap(6.0)
                basket.append(item)
                yield self._click(t, "add_to_cart", sid, item)
        if rng.random() < 0.3:
            # Something else on the way to checkout.
            t += self._gap(20.0)
            item = self._item(self._favourite_category())
            if item not in basket:
                basket.append(item)
                yield self._click(t, "add_to_cart", sid, item)
        lines = []
        for k, item in enumerate(basket):
            price, qty = self._price(item), self._quantity(item)
            qualifies = offer.category is None or item.category == offer.category
            if qualifies and offer.kind == "percent_off":
                price = round(price * (1 - offer.value / 100), 2)
            elif k == 0 and offer.kind == "bundle":
                # "3 for 2": the unit price paid is two thirds of the list price.
                qty = int(offer.value)
                price = round(price * (offer.value - 1) / offer.value, 2)
            lines.append((item, price, qty))
        t += self._gap(40.0, 15.0)
        yield self._purchase(t, lines, offer.id)
        t += self._gap(15.0)
        yield self._app(t, "app_close")


# --------------------------------------------------------------------------
# Library API
# --------------------------------------------------------------------------


def _window(users: int, days: float, start: datetime) -> tuple[int, int]:
    """Validate the run parameters; return [start, end) in epoch ms."""
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ConfigError(f"simulate: users must be an integer >= 1, got {users!r}")
    if not (isinstance(days, int | float) and math.isfinite(days) and 0 < days <= MAX_DAYS):
        raise ConfigError(f"simulate: days must be in (0, {MAX_DAYS:g}], got {days!r}")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ConfigError(f"simulate: start must be timezone-aware, got {start.isoformat()}")
    start_ms = int(start.timestamp() * 1000)
    end_ms = start_ms + round(days * MS_PER_DAY)
    if start_ms < 0 or end_ms > MAX_EPOCH_MS:
        # The event contract's range (nudge/events.py): outside it every event would be rejected.
        raise ConfigError(
            f"simulate: the window {_iso(start_ms)} .. {_iso(end_ms)} leaves the event time range "
            f"1970-01-01T00:00:00Z .. {_iso(MAX_EPOCH_MS)}"
        )
    return start_ms, end_ms


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError):
        return f"epoch ms {ms}"


def _order_key(event: EventDict) -> tuple[int, str]:
    return event["ts"], event["event_id"]


def _user_events(seed: int, index: int, start_ms: int, end_ms: int, *, exposures: bool = True) -> Iterator[EventDict]:
    profile, rng = _draw_profile(seed, index, start_ms, end_ms)
    return _UserSim(seed, profile, rng, start_ms, end_ms, exposures=exposures).events()


def generate(
    users: int, days: float, seed: int, start: datetime = DEFAULT_START, *, exposures: bool = True
) -> Iterator[EventDict]:
    """Every event of the run as canonical dicts, ordered by (ts, event_id).

    Each dict serialises (orjson) to exactly `dump_event(parse_event_obj(d))`.
    Users are generated lazily and merged, so memory grows with `users`, not
    with the number of events. Without `exposures` the simulator sends no offers
    of its own (with `--respond`, the offers are nudge's); the rest is unchanged."""
    start_ms, end_ms = _window(users, days, start)
    streams = [_user_events(seed, index, start_ms, end_ms, exposures=exposures) for index in range(users)]
    return heapq.merge(*streams, key=_order_key)


def retag(events: Iterable[EventDict], tag: str) -> Iterator[EventDict]:
    """The events with user and event ids prefixed `<tag>-` (in place): a run whose ids never meet an
    earlier run's (the worker would take them for duplicates or late arrivals)."""
    for event in events:
        event["user_id"] = f"{tag}-{event['user_id']}"
        event["event_id"] = f"{tag}-{event['event_id']}"
        yield event


def ground_truth(users: int, days: float, seed: int, start: datetime = DEFAULT_START) -> dict[str, Any]:
    """What the simulator knows and the pipeline must discover (JSON-ready)."""
    start_ms, end_ms = _window(users, days, start)
    if not -(2**63) <= seed < 2**63:  # JSON readers (orjson among them) stop at 64-bit integers
        raise ConfigError(f"simulate: seed must fit in 64 bits, got {seed}")
    per_user: dict[str, Any] = {}
    for index in range(users):
        p, _ = _draw_profile(seed, index, start_ms, end_ms)
        per_user[p.user_id] = {
            "cohort": p.cohort.name,
            "timezone": p.zone.name,
            "locale": p.locale,
            "currency": p.currency,
            "install_ts": p.install_ts,
            "churned": p.churn_ts is not None,
            "churn_ts": p.churn_ts,
            "best_offer": p.best_offer,
            "offer_probs": dict(TRUE_CONVERSION[p.cohort.name]),
        }
    return {
        "params": {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "users": users,
            "days": float(days),
            "start": datetime.fromtimestamp(start_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
            "start_ms": start_ms,
            "end_ms": end_ms,
            "exposures_per_day": EXPOSURES_PER_DAY,
            "attribution_window_ms": ATTRIBUTION_MS,
        },
        "cohorts": {
            c.name: {
                "share": c.share,
                "best_offer": max(OFFERS, key=lambda o, c=c: TRUE_CONVERSION[c.name][o.id]).id,  # type: ignore[misc]
                "offer_probs": dict(TRUE_CONVERSION[c.name]),
            }
            for c in COHORTS
        },
        "offers": [
            {"id": o.id, "category": o.category, "kind": o.kind, "value": o.value, "propensity": 1 / len(OFFERS)}
            for o in OFFERS
        ],
        "users": per_user,
    }


def dump_truth(truth: dict[str, Any]) -> bytes:
    """Deterministic JSON of the ground truth (sorted keys, 2-space indent)."""
    return orjson.dumps(truth, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def truth_path_for(out: str | Path) -> Path:
    """Default ground-truth file next to an output file: <out>.truth.json."""
    out = Path(out)
    return out.with_name(out.name + ".truth.json")


class TokenBucket:
    """Paces a loop to `rate` items/s on average, with bursts of at most `burst`.

    It sleeps only when the bucket is empty, and then until it is full again
    (by default 100 ms worth of items), so a high rate costs about ten sleeps
    per second, not one per item, and time spent elsewhere (sending,
    generating) counts against the budget instead of adding to it."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"token bucket: rate must be > 0, got {rate!r}")
        self.rate = rate
        self.capacity = max(1.0, rate / 10) if burst is None else max(1.0, burst)
        self.tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self.sleeps = 0

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, n: float = 1.0) -> None:
        """Block until `n` tokens are available, then spend them."""
        if n > self.capacity:
            raise ConfigError(f"token bucket: cannot take {n} at once, the burst is {self.capacity:g}")
        self._refill()
        # The tolerance stops float rounding from turning into a spin of tiny sleeps.
        while self.tokens < n - 1e-9:
            self._sleep((self.capacity - self.tokens) / self.rate)
            self.sleeps += 1
            self._refill()
        self.tokens -= n


def _paced(events: Iterable[EventDict], bucket: TokenBucket | None) -> Iterator[EventDict]:
    if bucket is None:
        yield from events
        return
    for event in events:
        bucket.take()
        yield event


def _progress(events: Iterable[EventDict], enabled: bool, desc: str) -> Iterator[EventDict]:
    """tqdm on stderr (hidden when stderr is not a terminal), updated in chunks."""
    if not enabled:
        yield from events
        return
    with tqdm(desc=desc, unit="ev", unit_scale=True, file=sys.stderr, disable=None, mininterval=0.5) as bar:
        pending = 0
        for event in events:
            yield event
            pending += 1
            if pending == 2048:
                bar.update(pending)
                pending = 0
        bar.update(pending)


class ByteSink(Protocol):
    """Anything with `write(bytes)`: a binary file, gzip file, sys.stdout.buffer."""

    def write(self, data: bytes, /) -> object: ...


def write_events(events: Iterable[EventDict], sink: ByteSink) -> Counter[str]:
    """Write events as JSON Lines; return the count per event type."""
    by_type: Counter[str] = Counter()
    buffer: list[bytes] = []
    dumps = orjson.dumps
    for event in events:
        by_type[event["type"]] += 1
        buffer.append(dumps(event))
        if len(buffer) >= 4096:
            buffer.append(b"")
            sink.write(b"\n".join(buffer))
            buffer.clear()
    if buffer:
        buffer.append(b"")
        sink.write(b"\n".join(buffer))
    return by_type


def send_events(events: Iterable[EventDict], settings: Settings, *, client_id: str = "nudge-simulate") -> Counter[str]:
    """Send events to Kafka: topic by event type, key = user_id. Returns the count per topic.

    The Kafka message timestamp is left to the producer (wall clock): event
    time is in the payload, and simulated times in the past would fall outside
    the topic's retention, future ones outside the broker's accepted skew."""
    # Imported here so the generator stays usable (and importable) without a Kafka client.
    from nudge.topics import ensure_topics, topic_for_event_type
    from producers.kafka import EventProducer

    routes = {t: topic_for_event_type(settings, t) for t in TOPIC_OF_TYPE}
    ensure_topics(settings, settings.input_topics)
    by_topic: Counter[str] = Counter()
    with EventProducer(settings, client_id=client_id) as producer:
        for event in events:
            topic = routes[event["type"]]
            if topic is None:  # pragma: no cover - every generated type is routed
                raise ConfigError(f"simulate: no topic for event type {event['type']!r}")
            producer.send(topic, orjson.dumps(event), key=event["user_id"].encode())
            by_topic[topic] += 1
    return by_topic


@dataclass(slots=True)
class SimulationSummary:
    """What a run produced, for the closing summary and for benchmarks."""

    destination: str
    events: int
    elapsed_s: float
    by_topic: dict[str, int]
    by_type: dict[str, int]
    users_by_cohort: dict[str, int]
    truth_path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    responses: dict[str, int] | None = None  # with --respond: deliveries seen, reactions, purchases

    @property
    def rate(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self) -> str:
        users = sum(self.users_by_cohort.values())
        lines = [
            f"simulated {users} users over {self.params.get('days')} days from {self.params.get('start')} "
            f"(seed {self.params.get('seed')}) -> {self.destination}",
            f"events:    {self.events} in {self.elapsed_s:.2f} s ({self.rate:,.0f} events/s)",
            "by topic:  " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_topic.items())),
            "by cohort: " + ", ".join(f"{c.name} {self.users_by_cohort.get(c.name, 0)}" for c in COHORTS),
        ]
        if self.truth_path:
            lines.append(f"truth:     {self.truth_path}")
        if self.responses is not None:
            r = self.responses
            lines.append(
                f"responses: {r.get('delivered', 0)} messages delivered to simulated users, "
                f"{r.get('purchases', 0)} purchases and {r.get('events', 0)} events in reaction"
                + (f" ({r['unmatched']} deliveries not found in the outbox)" if r.get("unmatched") else "")
            )
        return "\n".join(lines)


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[ByteSink]:
    """Write to a temporary file renamed into place, so an interrupted run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            if path.suffix == ".gz":
                # mtime=0 and no name in the header keep gzip output byte-identical across runs.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                    yield gz
            else:
                yield raw
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"simulate: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def run_simulation(
    users: int,
    days: float,
    seed: int,
    start: datetime = DEFAULT_START,
    *,
    out: str | Path | None = None,
    truth: str | Path | None = None,
    settings: Settings | None = None,
    rate: float | None = None,
    progress: bool = False,
    respond: bool = False,
) -> SimulationSummary:
    """Generate a run and deliver it: to Kafka when `out` is None, to stdout for
    "-", else to a JSONL file (gzip'd if it ends in .gz). The ground truth goes
    to `truth` (default <out>.truth.json for a file, none otherwise).

    With `respond` (Kafka only), users react to the messages the mock provider
    delivers (producers/respond.py) and the simulator sends no offers of its own."""
    _window(users, days, start)
    truth_doc = ground_truth(users, days, seed, start)
    cohorts = Counter(u["cohort"] for u in truth_doc["users"].values())
    truth_file = Path(truth) if truth is not None else None
    if truth_file is None and out is not None and str(out) != "-":
        truth_file = truth_path_for(out)

    began = time.perf_counter()
    generated: Iterable[EventDict] = generate(users, days, seed, start, exposures=not respond)
    responses: dict[str, int] | None = None
    if respond:
        if out is not None or settings is None:
            raise ConfigError("simulate: --respond reacts to live deliveries, so it sends to Kafka (no --out)")
        from producers.respond import DeliveryFeed, with_reactions

        responses = {"delivered": 0, "events": 0, "purchases": 0, "unmatched": 0}
        start_ms, end_ms = _window(users, days, start)
        generated = with_reactions(generated, DeliveryFeed(settings), seed, users, start_ms, end_ms, responses)
    events = _paced(_progress(generated, progress, "simulate"), TokenBucket(rate) if rate else None)
    by_type: Counter[str] = Counter()

    def counted(stream: Iterable[EventDict]) -> Iterator[EventDict]:
        for event in stream:
            by_type[event["type"]] += 1
            yield event

    if out is None:
        if settings is None:
            raise ConfigError("simulate: sending to Kafka (no `out`) needs settings")
        destination = f"kafka {settings.kafka_bootstrap}"
        by_topic = dict(send_events(counted(events), settings))
    else:
        if str(out) == "-":
            destination = "stdout"
            try:
                write_events(counted(events), sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                # The reader went away (`| head`): stop quietly, and point stdout
                # at /dev/null so the interpreter's final flush does not fail too.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                destination = "stdout (closed by the reader)"
        else:
            destination = str(out)
            with _atomic_output(Path(out)) as sink:
                write_events(counted(events), sink)
        # No broker, so no topic names: count by topic kind.
        by_topic = {}
        for type_, n in by_type.items():
            kind = TOPIC_OF_TYPE[type_]
            by_topic[kind] = by_topic.get(kind, 0) + n
    elapsed = time.perf_counter() - began
    if truth_file is not None:
        with _atomic_output(truth_file) as sink:
            sink.write(dump_truth(truth_doc))
    return SimulationSummary(
        destination=destination,
        events=sum(by_type.values()),
        elapsed_s=elapsed,
        by_topic=by_topic,
        by_type=dict(by_type),
        users_by_cohort=dict(cohorts),
        truth_path=str(truth_file) if truth_file is not None else None,
        params=dict(truth_doc["params"]),
        responses=responses,
    )


# --------------------------------------------------------------------------
# CLI: `nudge simulate`
# --------------------------------------------------------------------------


_users_arg = integer(1, MAX_USERS, why="every simulated user is held in memory, about 7 KB each")


def _out_arg(text: str) -> Path | str:
    return text if text == "-" else output_file(text)


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Generate realistic, deterministic user traffic (same seed + arguments = same bytes): "
        "to Kafka by default, or to a JSON Lines file with its ground truth."
    )
    parser.add_argument(
        "--users", type=_users_arg, default=1000, metavar="N", help=f"number of users, 1..{MAX_USERS:,} (default 1000)"
    )
    parser.add_argument(
        "--days",
        type=number(0, MAX_DAYS, low_open=True),
        default=7.0,
        metavar="D",
        help=f"length of the window in days, up to {MAX_DAYS:g} (default 7)",
    )
    parser.add_argument("--seed", type=seed_arg, default=42, metavar="S", help="random seed (default 42)")
    parser.add_argument(
        "--start",
        type=instant,
        default=DEFAULT_START,
        metavar="ISO",
        help="event time of the window start, with offset (default 2026-10-01T00:00:00Z); sending to Kafka, "
        "the window must end before now + NUDGE_MAX_FUTURE_MS",
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=number(0.1, MAX_RATE),
        metavar="R",
        help=f"send at most R events/s, 0.1..{MAX_RATE:.0e} (token bucket)",
    )
    pace.add_argument("--max", action="store_true", help="send as fast as possible (the default)")
    parser.add_argument(
        "--out",
        type=_out_arg,
        metavar="FILE",
        help="write JSON Lines here instead of Kafka ('-' = stdout, *.gz = gzip'd)",
    )
    parser.add_argument(
        "--truth",
        type=output_file,
        metavar="FILE",
        help="ground-truth JSON (default <out>.truth.json with --out FILE)",
    )
    parser.add_argument(
        "--respond",
        action="store_true",
        help="close the loop: users react to the messages the mock provider delivers (nudge mock-providers), "
        "buying with the ground truth's probabilities; the simulator then sends no offers of its own",
    )
    parser.epilog = settings_epilog(
        "kafka_bootstrap",
        "topic_clicks",
        "topic_purchases",
        "topic_app_events",
        "topic_notifications",
        "partitions",
        "max_future_ms",
        "data_dir",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    start: datetime = args.start
    start_ms = int(start.timestamp() * 1000)
    end_ms = start_ms + round(args.days * MS_PER_DAY)
    if end_ms > MAX_EPOCH_MS:
        raise UsageError(
            f"--start {_iso(start_ms)} + --days {args.days:g} ends at {_iso(end_ms)}, "
            f"past the event contract's last time {_iso(MAX_EPOCH_MS)}"
        )
    limit_ms = int(time.time() * 1000) + settings.max_future_ms
    if args.out is None and end_ms > limit_ms:
        raise UsageError(
            f"--start {_iso(start_ms)} + --days {args.days:g} ends at {_iso(end_ms)}, after now + "
            f"NUDGE_MAX_FUTURE_MS ({_iso(limit_ms)}): the stream would dead-letter those events; "
            "start earlier, or write them to a file with --out"
        )
    if args.respond and args.out is not None:
        raise UsageError("--respond reacts to live deliveries: it sends to Kafka, not to --out")
    if args.out is not None and args.truth is None and args.out != "-":
        problem = output_problem(truth_path_for(args.out))
        if problem:
            raise UsageError(f"cannot write the ground truth {truth_path_for(args.out)}: {problem} (see --truth)")
    summary = run_simulation(
        args.users,
        args.days,
        args.seed,
        start,
        out=args.out,
        truth=args.truth,
        settings=settings,
        rate=args.rate,
        progress=True,
        respond=args.respond,
    )
    # With events on stdout the summary must not mix into them.
    print(summary.format(), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0
