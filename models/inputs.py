"""The feature vector the models see, as of a given "now", and the gate it passes.

Two steps, used identically when the trainer learns and when a worker scores:

1. `model_inputs(state, now_ms)` reads a `features.state.UserState` *as of
   now_ms* (event time: the watermark in a replay), not as of the user's
   last event. A user who stays silent keeps the same counters in their
   state, but as `now` moves on their recency grows and their windows empty:
   that is what lets churn risk rise without a new event. A value the state
   cannot give (days since the last purchase of a user who never bought) is
   left out, not invented.
2. `sanitise(values)` makes that dict safe for River, which validates nothing
   (NaN or inf would go straight into the weights): every declared input comes
   out finite and within its bounds, whatever came in. Non-finite values are
   dropped; a dropped or absent value is replaced by the input's declared
   default, and inputs that may legitimately be absent also get a
   `<name>_missing` indicator (always present, 0.0 or 1.0), so the model sees
   the same keys on every call and can learn what "absent" means. Values out
   of bounds are clipped; undeclared keys are dropped. Each repair is counted
   by reason (`SANITISE_REASONS`) for a metric.

Every input is declared once in `INPUTS` (name, bounds, default, doc).

Windows as of `now` follow features.definitions exactly, with `now` in
place of `as_of`: a window counts the buckets from `now // bucket_ms -
n_buckets + 1` to `now // bucket_ms`. The state keeps the finest buckets
only for windows up to 30 days, so there is no 90-day window here; lifetime
totals carry the long view.

>>> clean, repairs = sanitise({"recency_days": float("nan"), "cart_open": 7.0, "junk": 1.0})
>>> clean["recency_days"], clean["recency_days_missing"], clean["cart_open"], "junk" in clean
(0.0, 1.0, 1.0, False)
>>> repairs["non_finite"], repairs["clipped"], repairs["unknown"], repairs["missing"] == len(INPUTS) - 2
(1, 1, 1, True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from features.definitions import DAY_MS, WINDOWED, Windowed
from features.state import UserState

__all__ = [
    "INPUTS",
    "MODEL_KEYS",
    "SANITISE_REASONS",
    "Input",
    "model_inputs",
    "sanitise",
    "window_total",
]

SANITISE_REASONS: Final = ("missing", "non_finite", "clipped", "unknown")


@dataclass(frozen=True, slots=True)
class Input:
    """One model input: its bounds, the default for an absent value, what it means.

    `optional` inputs may be absent for a good reason (no purchase yet); they
    carry a `<name>_missing` indicator. Any other input is always computed
    by `model_inputs`, so its absence means a bug or foreign data: it is still
    filled with the default, and counted.
    """

    name: str
    lo: float
    hi: float
    default: float
    doc: str
    optional: bool = False

    def __post_init__(self) -> None:
        # Declared with int literals for reading; stored as floats so outputs are floats.
        for name in ("lo", "hi", "default"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (self.lo <= self.default <= self.hi):
            raise ValueError(f"{self.name}: default {self.default} outside [{self.lo}, {self.hi}]")

    @property
    def missing_key(self) -> str:
        return f"{self.name}_missing"


_TEN_YEARS = 3650.0
INPUTS: Final[tuple[Input, ...]] = (
    Input("recency_days", 0, _TEN_YEARS, 0, "days from the last event to now", optional=True),
    Input("tenure_days", 0, _TEN_YEARS, 0, "days from the first event to now", optional=True),
    Input("events_1h", 0, 10_000, 0, "events of any type in the hour up to now"),
    Input("events_1d", 0, 50_000, 0, "events of any type in the day up to now"),
    Input("events_7d", 0, 100_000, 0, "events of any type in the 7 days up to now"),
    Input("events_30d", 0, 500_000, 0, "events of any type in the 30 days up to now"),
    Input("activity_trend", 0, 1, 0, "events_7d / events_30d: share of the month's activity in its last week", True),
    Input("clicks_1d", 0, 50_000, 0, "click-topic events in the day up to now"),
    Input("clicks_30d", 0, 500_000, 0, "click-topic events in the 30 days up to now"),
    Input("add_to_cart_1d", 0, 10_000, 0, "add_to_cart events in the day up to now"),
    Input("add_to_cart_30d", 0, 100_000, 0, "add_to_cart events in the 30 days up to now"),
    Input("cart_rate_30d", 0, 1, 0, "add_to_cart_30d / clicks_30d: how often a look becomes a cart", optional=True),
    Input("app_opens_7d", 0, 10_000, 0, "app_open events in the 7 days up to now"),
    Input("purchases_7d", 0, 1_000, 0, "purchases in the 7 days up to now"),
    Input("purchases_30d", 0, 5_000, 0, "purchases in the 30 days up to now"),
    Input("spend_30d", 0, 1e6, 0, "spend (currency units) in the 30 days up to now"),
    Input("offer_purchases_30d", 0, 5_000, 0, "purchases with an offer_id (a coupon) in the 30 days up to now"),
    Input("offer_share_30d", 0, 1, 0, "offer_purchases_30d / purchases_30d: buys on coupons", optional=True),
    Input("orders_total", 0, 1e6, 0, "lifetime purchases"),
    Input("spend_total", 0, 1e8, 0, "lifetime spend (currency units)"),
    Input("avg_order_value", 0, 1e5, 0, "spend_total / orders_total", optional=True),
    Input("days_since_purchase", 0, _TEN_YEARS, 0, "days from the last purchase to now", optional=True),
    Input("days_since_add_to_cart", 0, _TEN_YEARS, 0, "days from the last add_to_cart to now", optional=True),
    Input("days_since_install", 0, _TEN_YEARS, 0, "days from the latest app install to now", optional=True),
    Input("cart_open", 0, 1, 0, "1 if items were added to the cart after the last purchase"),
    Input("cart_size", 0, 200, 0, "open cart items"),
    Input("cart_value", 0, 1e6, 0, "value of the open cart (currency units)"),
    Input("push_opt_in", 0, 1, 0, "1 if the latest push consent is an opt-in"),
    Input("sms_opt_in", 0, 1, 0, "1 if the latest SMS consent is an opt-in"),
)
# The keys of every sanitised vector, in a fixed order.
MODEL_KEYS: Final[tuple[str, ...]] = tuple(
    key for i in INPUTS for key in ((i.name, i.missing_key) if i.optional else (i.name,))
)
_MODEL_KEY_SET: Final = frozenset(MODEL_KEYS)
_WINDOW: Final = {w.name: w for w in WINDOWED}


def window_total(state: UserState, window: Windowed, now_ms: int) -> int:
    """The window's sum as of `now_ms` (stored units: cents for money).

    Buckets after `now_ms` are left out too, so scoring "as of" a moment
    before the user's latest event gives what was known then (as far as the
    pruned buckets allow).
    """
    buckets = state.buckets[window.name]
    if not buckets:
        return 0
    newest = now_ms // window.bucket_ms
    oldest = newest - window.n_buckets + 1
    return sum(v for b, v in buckets.items() if oldest <= b <= newest)


def model_inputs(state: UserState, now_ms: int) -> dict[str, float]:
    """The user's model inputs as of `now_ms` (epoch ms, event time); unknowns left out.

    Not sanitised: pass the result through `sanitise` before a model sees it.
    """
    out: dict[str, float] = {}
    if state.last_event_ts is not None:
        out["recency_days"] = (now_ms - state.last_event_ts) / DAY_MS
    if state.first_seen is not None:
        out["tenure_days"] = (now_ms - state.first_seen) / DAY_MS
    windows = {
        "events_1h": "events_1h",
        "events_1d": "events_24h",
        "events_7d": "events_7d",
        "events_30d": "events_30d",
        "clicks_1d": "clicks_24h",
        "clicks_30d": "clicks_30d",
        "add_to_cart_1d": "add_to_cart_24h",
        "add_to_cart_30d": "add_to_cart_30d",
        "offer_purchases_30d": "offer_purchases_30d",
        "app_opens_7d": "app_opens_7d",
        "purchases_7d": "purchases_7d",
        "purchases_30d": "purchases_30d",
        "spend_30d": "spend_30d",
    }
    for name, window_name in windows.items():
        window = _WINDOW[window_name]
        out[name] = window_total(state, window, now_ms) / window.scale
    if out["events_30d"] > 0:
        out["activity_trend"] = out["events_7d"] / out["events_30d"]
    if out["clicks_30d"] > 0:
        out["cart_rate_30d"] = min(1.0, out["add_to_cart_30d"] / out["clicks_30d"])
    if out["purchases_30d"] > 0:
        out["offer_share_30d"] = min(1.0, out["offer_purchases_30d"] / out["purchases_30d"])
    out["orders_total"] = float(state.orders_total)
    out["spend_total"] = state.spend_total_cents / 100
    if state.orders_total > 0:
        out["avg_order_value"] = out["spend_total"] / state.orders_total
    if state.last_purchase_ts is not None:
        out["days_since_purchase"] = (now_ms - state.last_purchase_ts) / DAY_MS
    if state.last_add_to_cart_ts is not None:
        out["days_since_add_to_cart"] = (now_ms - state.last_add_to_cart_ts) / DAY_MS
    if state.installed_at is not None:
        out["days_since_install"] = max(0.0, (now_ms - state.installed_at) / DAY_MS)
    # Open cart: added after the last purchase (as features.state does), and by now.
    last_purchase = state.last_purchase_ts
    open_items = [
        entry
        for entry in state.cart.values()
        if entry[1] == 1 and entry[0] <= now_ms and (last_purchase is None or entry[0] > last_purchase)
    ]
    out["cart_open"] = 1.0 if open_items else 0.0
    out["cart_size"] = float(len(open_items))
    out["cart_value"] = sum(entry[2] for entry in open_items) / 100
    out["push_opt_in"] = 1.0 if state.consent.get("push", [0, 0])[1] else 0.0
    out["sms_opt_in"] = 1.0 if state.consent.get("sms", [0, 0])[1] else 0.0
    return out


def _declared_keys(inputs: Sequence[Input]) -> frozenset[str]:
    if inputs is INPUTS:
        return _MODEL_KEY_SET
    return frozenset(key for i in inputs for key in ((i.name, i.missing_key) if i.optional else (i.name,)))


def sanitise(values: Mapping[str, float], inputs: Sequence[Input] = INPUTS) -> tuple[dict[str, float], Counter[str]]:
    """Every declared input finite and within bounds, plus indicators; repairs counted by reason.

    The output always has the same keys (`MODEL_KEYS` for the default table),
    whatever `values` holds.

    >>> clean, repairs = sanitise({"recency_days": 1e300, "events_7d": 3.0}, INPUTS[:3])
    >>> clean
    {'recency_days': 3650.0, 'recency_days_missing': 0.0, 'tenure_days': 0.0, 'tenure_days_missing': 1.0, 'events_1h': 0.0}
    >>> sorted(repairs.items())
    [('clipped', 1), ('missing', 2), ('unknown', 1)]
    """
    out: dict[str, float] = {}
    repairs: Counter[str] = Counter()
    for spec in inputs:
        raw = values.get(spec.name)
        value: float | None = None
        if raw is None or (spec.optional and values.get(spec.missing_key) == 1.0):
            # Absent, or filled in by an earlier pass: sanitising twice keeps the indicator.
            repairs["missing"] += 1
        else:
            try:
                value = float(raw)
            except (TypeError, ValueError, OverflowError):
                value = math.nan
            if not math.isfinite(value):
                repairs["non_finite"] += 1
                value = None
            elif value < spec.lo or value > spec.hi:
                repairs["clipped"] += 1
                value = min(max(value, spec.lo), spec.hi)
        out[spec.name] = spec.default if value is None else value
        if spec.optional:
            out[spec.missing_key] = 1.0 if value is None else 0.0
    declared = _declared_keys(inputs)
    unknown = sum(1 for key in values if key not in declared)
    if unknown:
        repairs["unknown"] += unknown
    return out, repairs
