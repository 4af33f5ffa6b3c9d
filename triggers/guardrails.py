"""The guardrails' pure parts: holdout, A/B split, quiet hours, channel choice, cap buckets.

The order a decision passes them (triggers.decide, then the atomic script in
triggers.store): consent -> holdout -> dedupe -> frequency caps -> quiet
hours -> channel choice. The channel is *found* first, because consent is
per channel and caps are counted per channel, but a suppression is recorded
under the first guardrail in that order that refuses.

Everything here is a function of its arguments: the user's id and fields,
the rule, the config and `now_ms`.

- Holdout and variants hash the user id (SHA-256, salted by the rule or by
  "global"), so a user is always in the same group, on every process and
  after every restart.
- Quiet hours are read on the user's own wall clock (IANA zone from the
  hash, UTC if unknown), DST included: "08:00" is 08:00 local on the day it
  is, whatever the offset that day.

>>> from zoneinfo import ZoneInfo
>>> ny = ZoneInfo("America/New_York")
>>> at_11pm = 1_785_034_800_000  # 2026-07-25 23:00 in New York (UTC-4)
>>> quiet_until(at_11pm, ny, 22 * 60, 8 * 60) - at_11pm == 9 * 3_600_000
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from triggers.rules import Rule, Variant

__all__ = [
    "cap_buckets",
    "choose_channel",
    "group_share",
    "in_holdout",
    "quiet_until",
    "user_zone",
    "variant_for",
]

_UTC = ZoneInfo("UTC")
_MINUTE_MS = 60_000


def group_share(user_id: str, salt: str) -> float:
    """A user's place in [0, 1) for `salt`: uniform, stable, independent across salts.

    >>> group_share("u1", "global") == group_share("u1", "global") != group_share("u1", "win_back")
    True
    """
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(user_id: str, rule: Rule, global_share: float) -> bool:
    """Whether the user is held out of `rule`: its own share (salted by the rule) or the global one."""
    if rule.holdout is not None:
        return group_share(user_id, f"holdout:{rule.id}") < rule.holdout
    return group_share(user_id, "holdout") < global_share


def variant_for(user_id: str, rule: Rule) -> Variant:
    """The rule's A/B variant for this user, by weight, deterministic."""
    variants = rule.variants
    if len(variants) == 1:
        return variants[0]
    point = group_share(user_id, f"variant:{rule.id}") * sum(v.weight for v in variants)
    for v in variants:
        point -= v.weight
        if point < 0:
            return v
    return variants[-1]


def user_zone(name: str | None) -> ZoneInfo:
    """The user's IANA time zone, or UTC when unknown or not a zone."""
    if not name:
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return _UTC


def _quiet(minute: int, start: int, end: int) -> bool:
    if start == end:
        return False
    return start <= minute < end if start < end else minute >= start or minute < end


def quiet_until(now_ms: int, zone: ZoneInfo, start_min: int, end_min: int) -> int:
    """`now_ms` if it is outside the quiet hours in `zone`, else the first allowed minute after it.

    The window [start, end) is in local wall-clock minutes and may wrap past
    midnight (22:00-08:00). On a DST day the end is the local 08:00 of that
    day, whatever the offset; if a clock change skips it, the first minute
    that exists after it.
    """
    local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    if not _quiet(minute, start_min, end_min):
        return now_ms
    day: date = local.date()
    if start_min > end_min and minute >= start_min:
        day += timedelta(days=1)  # evening: the quiet hours end tomorrow morning
    end = datetime.combine(day, time(end_min // 60, end_min % 60), tzinfo=zone)
    end_ms = int(end.astimezone(UTC).timestamp() * 1000)
    # A skipped local time (spring forward) maps past the gap; walk on to a minute that is allowed.
    while _quiet(_local_minute(end_ms, zone), start_min, end_min):
        end_ms += _MINUTE_MS
    return max(end_ms, now_ms)


def _local_minute(epoch_ms: int, zone: ZoneInfo) -> int:
    local = datetime.fromtimestamp(epoch_ms / 1000, UTC).astimezone(zone)
    return local.hour * 60 + local.minute


def choose_channel(fields: Mapping[str, str], rule: Rule) -> tuple[str, str] | None:
    """(channel, address) of the first of the rule's channels the user consented to and can be reached on.

    push needs push_opt_in and a token; sms needs sms_opt_in and a phone;
    webhook (the brand's own system, e.g. e-mail) is addressed by user id.
    """
    for channel in rule.channels:
        if channel == "push" and fields.get("push_opt_in") == "1" and fields.get("push_token"):
            return channel, fields["push_token"]
        if channel == "sms" and fields.get("sms_opt_in") == "1" and fields.get("phone"):
            return channel, fields["phone"]
        if channel == "webhook" and fields.get("user_id"):
            return channel, fields["user_id"]
    return None


def cap_buckets(epoch_ms: int, zone: ZoneInfo) -> tuple[str, str]:
    """(day, ISO week) of the moment on the user's calendar: the frequency caps' periods.

    >>> cap_buckets(1_785_034_800_000, ZoneInfo("America/New_York"))
    ('20260725', '2026W30')
    """
    local = datetime.fromtimestamp(epoch_ms / 1000, UTC).astimezone(zone)
    year, week, _ = local.isocalendar()
    return local.strftime("%Y%m%d"), f"{year}W{week:02d}"
