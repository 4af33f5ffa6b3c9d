"""Lifecycle stage rules.

A user's stage as of a point in (event) time `now`:

| stage    | rule (first match wins)                               |
|----------|--------------------------------------------------------|
| churned  | no event for more than 30 days (`now - last_event_ts`) |
| dormant  | no event for more than 14 days                          |
| at_risk  | no event for more than 7 days                           |
| new      | first event at most 7 days ago                          |
| active   | otherwise                                               |

The worker writes the stage as of `as_of` (the user's latest event), where a
user is by definition new or active; readers that need the stage as of the
wall clock (the trigger service, a win-back rule) call `classify` with their
own `now` on the hash's `last_event_ts` and `first_seen`.

>>> DAY = 86_400_000
>>> classify(first_seen=0, last_event_ts=20 * DAY, now=21 * DAY)
'active'
>>> classify(first_seen=0, last_event_ts=20 * DAY, now=35 * DAY)
'dormant'
>>> classify(first_seen=5 * DAY, last_event_ts=6 * DAY, now=6 * DAY)
'new'
"""

from __future__ import annotations

from typing import Final

__all__ = ["AT_RISK_AFTER_MS", "CHURNED_AFTER_MS", "DORMANT_AFTER_MS", "NEW_FOR_MS", "STAGES", "classify"]

_DAY: Final = 86_400_000
NEW_FOR_MS: Final = 7 * _DAY
AT_RISK_AFTER_MS: Final = 7 * _DAY
DORMANT_AFTER_MS: Final = 14 * _DAY
CHURNED_AFTER_MS: Final = 30 * _DAY
STAGES: Final = ("new", "active", "at_risk", "dormant", "churned")


def classify(*, first_seen: int, last_event_ts: int, now: int) -> str:
    """The lifecycle stage as of `now` (epoch ms, event time)."""
    idle = now - last_event_ts
    if idle > CHURNED_AFTER_MS:
        return "churned"
    if idle > DORMANT_AFTER_MS:
        return "dormant"
    if idle > AT_RISK_AFTER_MS:
        return "at_risk"
    if now - first_seen <= NEW_FOR_MS:
        return "new"
    return "active"
