"""Feature definitions, declared once, read by both engines.

The streaming engine (`features.state.fold`) keeps sparse time buckets per
windowed feature; the batch reference (`features.batch`) filters a plain list
of events with the same definitions. Neither knows Kafka or Redis.

Window semantics (exact, so another team can recompute them): an event with
event time `ts` falls in bucket `ts // bucket_ms`. A window of `window_ms`
with bucket `bucket_ms` counts the events whose bucket is one of the last
`window_ms // bucket_ms` buckets ending with the bucket of `as_of` (the
user's latest event time). The window so covers between `window_ms -
bucket_ms` and `window_ms` of time; buckets are aligned to the UNIX epoch (UTC).

Money is summed in integer minor units (cents) so that sums are exact and do
not depend on the order events arrive in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nudge.events import CLICK_TYPES, Event, PurchaseEvent

__all__ = [
    "CATEGORY_BUCKET_MS",
    "CATEGORY_WINDOW_MS",
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "WINDOWED",
    "Windowed",
    "cents",
    "money",
]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def cents(amount: float) -> int:
    """Money in integer minor units (half away from zero)."""
    return int(amount * 100 + (0.5 if amount >= 0 else -0.5))


def money(total_cents: int) -> str:
    """Cents as a decimal string with two places: 1234 -> '12.34'."""
    sign = "-" if total_cents < 0 else ""
    whole, frac = divmod(abs(total_cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def _one(_event: Event) -> int:
    return 1


_ONE = _one  # the default `value`: engines may treat it as the constant 1


def _order_total_cents(event: Event) -> int:
    assert isinstance(event, PurchaseEvent)
    return cents(event.total)


def _with_offer(event: Event) -> int:
    assert isinstance(event, PurchaseEvent)
    return 1 if event.offer_id else 0


@dataclass(frozen=True, slots=True)
class Windowed:
    """A sum over an event-time window ending at `as_of`.

    `event_types` None means every event type. `value` gives what one event
    adds (1 for counts, cents for money). `scale` divides the stored integer
    on output (100 for money).
    """

    name: str
    event_types: frozenset[str] | None
    window_ms: int
    bucket_ms: int
    value: Callable[[Event], int] = _ONE
    scale: int = 1
    doc: str = ""

    def __post_init__(self) -> None:
        if self.window_ms % self.bucket_ms:
            raise ValueError(f"{self.name}: window {self.window_ms} is not a multiple of bucket {self.bucket_ms}")

    @property
    def n_buckets(self) -> int:
        return self.window_ms // self.bucket_ms

    def applies_to(self, event_type: str) -> bool:
        return self.event_types is None or event_type in self.event_types


_CLICKS = frozenset(CLICK_TYPES)
_PURCHASE = frozenset({"purchase"})

WINDOWED: tuple[Windowed, ...] = (
    Windowed("events_1h", None, HOUR_MS, MINUTE_MS, doc="events of any type, last 60 one-minute buckets"),
    Windowed("events_24h", None, DAY_MS, 10 * MINUTE_MS, doc="events of any type, last 144 ten-minute buckets"),
    Windowed("events_7d", None, 7 * DAY_MS, HOUR_MS, doc="events of any type, last 168 one-hour buckets"),
    Windowed("events_30d", None, 30 * DAY_MS, 6 * HOUR_MS, doc="events of any type, last 120 six-hour buckets"),
    Windowed(
        "clicks_24h", _CLICKS, DAY_MS, 10 * MINUTE_MS, doc="events on the clicks topic, last 144 ten-minute buckets"
    ),
    Windowed(
        "add_to_cart_24h",
        frozenset({"add_to_cart"}),
        DAY_MS,
        10 * MINUTE_MS,
        doc="add_to_cart events, last 144 ten-minute buckets",
    ),
    Windowed(
        "app_opens_7d", frozenset({"app_open"}), 7 * DAY_MS, HOUR_MS, doc="app_open events, last 168 one-hour buckets"
    ),
    Windowed("clicks_30d", _CLICKS, 30 * DAY_MS, DAY_MS, doc="events on the clicks topic, last 30 one-day buckets"),
    Windowed(
        "add_to_cart_30d",
        frozenset({"add_to_cart"}),
        30 * DAY_MS,
        DAY_MS,
        doc="add_to_cart events, last 30 one-day buckets",
    ),
    Windowed("purchases_7d", _PURCHASE, 7 * DAY_MS, HOUR_MS, doc="purchase events, last 168 one-hour buckets"),
    Windowed(
        "offer_purchases_30d",
        _PURCHASE,
        30 * DAY_MS,
        DAY_MS,
        value=_with_offer,
        doc="purchases carrying an offer_id (a coupon redeemed), last 30 one-day buckets",
    ),
    Windowed("purchases_30d", _PURCHASE, 30 * DAY_MS, HOUR_MS, doc="purchase events, last 720 one-hour buckets"),
    Windowed(
        "spend_30d",
        _PURCHASE,
        30 * DAY_MS,
        HOUR_MS,
        value=_order_total_cents,
        scale=100,
        doc="sum of purchase totals, last 720 one-hour buckets",
    ),
)

# top_category: interactions per category in the last 30 one-day buckets. A
# click event with a category counts 1; a purchase counts 1 per line item.
# Ties go to the alphabetically first category.
CATEGORY_WINDOW_MS = 30 * DAY_MS
CATEGORY_BUCKET_MS = DAY_MS
