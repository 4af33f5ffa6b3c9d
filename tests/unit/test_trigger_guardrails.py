"""Guardrails' pure parts: quiet hours on the user's clock (DST included), holdout, variants, channels, caps."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.guardrails import (
    cap_buckets,
    choose_channel,
    group_share,
    in_holdout,
    quiet_until,
    user_zone,
    variant_for,
)
from triggers.rules import parse_rules

START, END = 22 * 60, 8 * 60
MINUTE = 60_000


def ms(zone: str, *parts: int) -> int:
    return int(datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp() * 1000)  # type: ignore[misc]


def local(epoch_ms: int, zone: str) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).astimezone(ZoneInfo(zone))


@pytest.mark.parametrize(
    ("zone", "at", "expect"),
    [
        # UTC+13, no DST (Tonga): 23:30 local is quiet until 08:00 local tomorrow
        ("Pacific/Tongatapu", (2026, 6, 1, 23, 30), (2026, 6, 2, 8, 0)),
        ("Pacific/Tongatapu", (2026, 6, 1, 7, 59), (2026, 6, 1, 8, 0)),
        ("Pacific/Tongatapu", (2026, 6, 1, 8, 0), (2026, 6, 1, 8, 0)),
        ("Pacific/Tongatapu", (2026, 6, 1, 21, 59), (2026, 6, 1, 21, 59)),
        # UTC-10 (Hawaii): 22:00 sharp is quiet
        ("Pacific/Honolulu", (2026, 6, 1, 22, 0), (2026, 6, 2, 8, 0)),
        ("Pacific/Honolulu", (2026, 6, 1, 3, 0), (2026, 6, 1, 8, 0)),
        # New York, the night the clocks go forward (2026-03-08, 02:00 -> 03:00): 8 hours of night, not 9
        ("America/New_York", (2026, 3, 7, 23, 0), (2026, 3, 8, 8, 0)),
        # ... and back (2026-11-01, 02:00 -> 01:00): 10 hours
        ("America/New_York", (2026, 10, 31, 23, 0), (2026, 11, 1, 8, 0)),
        # Berlin's spring change (2026-03-29)
        ("Europe/Berlin", (2026, 3, 29, 1, 30), (2026, 3, 29, 8, 0)),
    ],
)
def test_quiet_hours_end_at_8_local_whatever_the_offset(
    zone: str, at: tuple[int, ...], expect: tuple[int, ...]
) -> None:
    now = ms(zone, *at)
    until = quiet_until(now, ZoneInfo(zone), START, END)
    assert until == ms(zone, *expect)
    assert local(until, zone).strftime("%H:%M") == f"{expect[3]:02d}:{expect[4]:02d}"


def test_the_dst_nights_really_have_different_lengths() -> None:
    ny = ZoneInfo("America/New_York")
    spring = quiet_until(ms("America/New_York", 2026, 3, 7, 23, 0), ny, START, END)
    autumn = quiet_until(ms("America/New_York", 2026, 10, 31, 23, 0), ny, START, END)
    assert spring - ms("America/New_York", 2026, 3, 7, 23, 0) == 8 * 3_600_000
    assert autumn - ms("America/New_York", 2026, 10, 31, 23, 0) == 10 * 3_600_000


def test_quiet_hours_inside_one_day_and_none() -> None:
    utc = ZoneInfo("UTC")
    noon = ms("UTC", 2026, 6, 1, 12, 0)
    assert quiet_until(noon, utc, 12 * 60, 14 * 60) == ms("UTC", 2026, 6, 1, 14, 0)
    assert quiet_until(noon, utc, 9 * 60, 9 * 60) == noon  # start == end: no quiet hours


ZONES = st.sampled_from(
    ["UTC", "Pacific/Tongatapu", "Pacific/Honolulu", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe",
     "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    zone=ZONES,
    now=st.integers(ms("UTC", 2026, 1, 1, 0, 0), ms("UTC", 2027, 12, 31, 0, 0)),
    start=st.integers(0, 24 * 60 - 1),
    end=st.integers(0, 24 * 60 - 1),
)
def test_quiet_until_is_the_first_allowed_minute(zone: str, now: int, start: int, end: int) -> None:
    """The result is allowed, and every minute from now up to it is quiet: never early, never later than needed."""
    tz = ZoneInfo(zone)

    def quiet(t: int) -> bool:
        lt = local(t, zone)
        m = lt.hour * 60 + lt.minute
        if start == end:
            return False
        return start <= m < end if start < end else m >= start or m < end

    until = quiet_until(now, tz, start, end)
    assert until >= now
    assert not quiet(until)
    if until > now:
        assert quiet(now)
        assert until % MINUTE == 0 or until == now
        # the minute before is still quiet (checked at minute steps back to now, at most a day of them)
        t = until - MINUTE
        while t > now:
            assert quiet(t), f"{local(t, zone)} is allowed but the message waited until {local(until, zone)}"
            t -= MINUTE
        assert until - now <= 25 * 3_600_000


def test_unknown_zones_are_utc() -> None:
    assert user_zone("") == ZoneInfo("UTC")
    assert user_zone("Mars/Olympus") == ZoneInfo("UTC")
    assert user_zone("Europe/Paris") == ZoneInfo("Europe/Paris")


RULES = parse_rules(
    """
version: 1
rules:
  - id: own
    holdout: 0.25
    when: [{x: {eq: 1}}]
    once_per: [x]
    cooldown: 1d
    channels: [push, sms]
    variants:
      - {id: a, weight: 3, message: {body: "a"}}
      - {id: b, weight: 1, message: {body: "b"}}
  - id: shared
    when: [{x: {eq: 1}}]
    once_per: [x]
    cooldown: 1d
    channels: [sms, webhook]
    message: {body: "m"}
"""
).by_id()


def test_holdout_shares_are_met_deterministic_and_per_rule() -> None:
    users = [f"u{i}" for i in range(40_000)]
    own = [in_holdout(u, RULES["own"], 0.10) for u in users]
    shared = [in_holdout(u, RULES["shared"], 0.10) for u in users]
    assert 0.24 < sum(own) / len(users) < 0.26
    assert 0.09 < sum(shared) / len(users) < 0.11
    assert own == [in_holdout(u, RULES["own"], 0.10) for u in users]
    # a rule's own holdout is drawn independently of the global one
    both = sum(1 for a, b in zip(own, shared, strict=True) if a and b) / len(users)
    assert 0.02 < both < 0.03


def test_variants_split_by_weight_and_stay_put() -> None:
    users = [f"u{i}" for i in range(20_000)]
    picks = [variant_for(u, RULES["own"]).id for u in users]
    assert 0.73 < picks.count("a") / len(picks) < 0.77
    assert picks == [variant_for(u, RULES["own"]).id for u in users]
    assert 0 <= group_share("u1", "x") < 1


@pytest.mark.parametrize(
    ("fields", "rule", "expect"),
    [
        ({"push_opt_in": "1", "push_token": "tok", "sms_opt_in": "1", "phone": "+15550001"}, "own", ("push", "tok")),
        ({"push_opt_in": "1", "push_token": "", "sms_opt_in": "1", "phone": "+15550001"}, "own", ("sms", "+15550001")),
        ({"push_opt_in": "0", "push_token": "tok", "sms_opt_in": "0", "phone": "+15550001"}, "own", None),
        ({"push_opt_in": "1", "push_token": "tok", "sms_opt_in": "0", "user_id": "u1"}, "shared", ("webhook", "u1")),
        ({"sms_opt_in": "1", "phone": "+15550001", "user_id": "u1"}, "shared", ("sms", "+15550001")),
    ],
)
def test_channel_choice_needs_consent_and_an_address(
    fields: dict[str, str], rule: str, expect: tuple[str, str] | None
) -> None:
    assert choose_channel(fields, RULES[rule]) == expect


def test_cap_periods_follow_the_users_calendar() -> None:
    # 23:30 on Sunday 2026-06-07 in Honolulu is already Monday in UTC: the user's day and week count.
    at = ms("Pacific/Honolulu", 2026, 6, 7, 23, 30)
    assert cap_buckets(at, ZoneInfo("Pacific/Honolulu")) == ("20260607", "2026W23")
    assert cap_buckets(at, ZoneInfo("UTC")) == ("20260608", "2026W24")
