"""`nudge state USER_ID`: print one user's live state from Redis, readably.

The worker writes each user's features to the hash `<user_key_prefix><user_id>`
(streams/store.py). This command reads it with its TTL and prints it grouped
in sections, every timestamp as ISO UTC with its age, and a note when the
state looks stale. Personal data is masked unless `--raw`: the phone keeps its
country code and last 3 digits, the push token its first 4 characters, and
the location is rounded to about 1 km.

The formatting is pure, a function of the hash and `now`, so it is tested
without Redis:

>>> now = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
>>> text = format_state({"as_of": "1790844480000", "updated_at": "1790856000000"}, key="user:u1", now=now)
>>> for line in text.splitlines()[2:4]:
...     print(line)
  written              2026-10-01T12:00:00Z (0 s ago)
  as_of                2026-10-01T08:48:00Z (3 h 12 min ago), event time of the latest event
>>> mask_phone("+447911123456")
'+44*******456'
>>> mask_token("f3a9c0ffee0123456789")
'f3a9…'
>>> human_duration(3 * 3_600_000 + 12 * 60_000)
'3 h 12 min'
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from features.lifecycle import classify
from nudge.args import user_id_arg
from nudge.errors import ConfigError, DependencyUnavailable, InputError
from nudge.logs import display_url, mask_phone
from nudge.settings import Settings
from nudge.text import printable

__all__ = [
    "STALE_AFTER",
    "configure",
    "display_url",
    "format_state",
    "human_duration",
    "mask_fields",
    "mask_token",
    "read_state",
    "run",
    "safe_json",
]

# updated_at older than this earns a staleness note: a live worker rewrites a
# user's hash on every event, so an hour of silence means no events or no worker.
STALE_AFTER: Final = timedelta(hours=1)
_NONE: Final = "—"
_LABEL_WIDTH: Final = 21
_MISSING: Final = "(not in hash)"

# E.164 country codes are 1 to 3 digits and prefix-free: these are the 1- and
# 2-digit ones; every other code has 3 digits.
_WINDOWED: Final = re.compile(r"^(?P<base>[a-z_]+?)_(?P<span>\d+[mhd])$")

# Sections in display order: (title, fields). Windowed fields (name_<n>[mhd])
# are found by name, so a new window shows up without a change here.
_RECENCY: Final = ("last_event_ts", "last_add_to_cart_ts", "last_purchase_ts", "first_seen")
_LIFETIME: Final = ("events_total", "orders_total", "spend_total", "late_events")
_CART: Final = ("cart_open", "cart_size", "cart_value")
_MODELS: Final = ("lifecycle", "top_category")
_SCORES: Final = ("churn_score", "churn_model_version", "nbo_offer", "nbo_score", "nbo_model_version")
_PROFILE: Final = ("push_opt_in", "sms_opt_in", "timezone", "locale", "push_token", "phone", "location")
_HEADER: Final = ("user_id", "seq", "updated_at", "as_of")
_FLAGS: Final = frozenset({"cart_open", "push_opt_in", "sms_opt_in"})
_PRIVATE: Final = ("phone", "push_token", "lat", "lon")


# --------------------------------------------------------------------------
# Pure helpers: masking, durations, timestamps
# --------------------------------------------------------------------------


def mask_token(token: str) -> str:
    """First 4 characters and an ellipsis; a short token shows nothing."""
    if not token:
        return ""
    return f"{token[:4]}…" if len(token) >= 12 else "…"


def _round_coordinate(value: str) -> str:
    # Two decimals is about 1 km: enough to see the city, not the home.
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return "***"


def mask_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """The hash with personal data masked (phone, push token, precise location)."""
    out = dict(fields)
    for name, mask in (("phone", mask_phone), ("push_token", mask_token)):
        if out.get(name):
            out[name] = mask(out[name])
    for name in ("lat", "lon"):
        if out.get(name):
            out[name] = _round_coordinate(out[name])
    return out


def human_duration(ms: int) -> str:
    """A duration for people: '45 s', '12 min', '3 h 12 min', '2 d 4 h'.

    >>> human_duration(45_000), human_duration(12 * 60_000 + 59_000), human_duration(2 * 86_400_000 + 4 * 3_600_000)
    ('45 s', '12 min', '2 d 4 h')
    """
    seconds = abs(ms) // 1000
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _age(ms: int, now_ms: int) -> str:
    delta = now_ms - ms
    # Event times can run ahead of this machine's clock (other clocks, simulated traffic).
    return f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(delta)}, ahead of this clock"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _timestamp(value: str | None, now_ms: int) -> str:
    if value is None:
        return _MISSING
    if value == "":
        return _NONE
    ms = _epoch_ms(value)
    if ms is None:
        return f"{value} (not epoch ms)"
    return f"{_iso(ms)} ({_age(ms, now_ms)})"


# --------------------------------------------------------------------------
# The formatter
# --------------------------------------------------------------------------


def format_state(
    fields: Mapping[str, str],
    *,
    key: str,
    now: datetime,
    ttl_ms: int | None = None,
    raw: bool = False,
    stale_after: timedelta = STALE_AFTER,
) -> str:
    """A user's hash as readable text, grouped in sections.

    `ttl_ms` is Redis' PTTL: None when unknown, -1 for a key that never
    expires. Personal data is masked unless `raw`. Control characters are
    escaped (`nudge.text.printable`), so the text is safe for a terminal.
    """
    if now.tzinfo is None:
        raise ValueError("format_state: `now` must be timezone-aware")
    # Field names and values come from Redis: anyone who can write there could plant
    # a terminal escape or a forged line, so they are shown escaped.
    fields = {printable(name): printable(value) for name, value in fields.items()}
    key = printable(key)
    now_ms = int(now.timestamp() * 1000)
    stale_after_ms = int(stale_after.total_seconds() * 1000)
    shown = dict(fields) if raw else mask_fields(fields)
    lines: list[str] = []
    row = _row_writer(lines)

    user = fields.get("user_id") or key
    lines.append(f"user {user}  (key {key})")
    lines.append("")
    written = _epoch_ms(fields.get("updated_at"))
    seq = fields.get("seq")
    row("written", _timestamp(fields.get("updated_at"), now_ms) + (f"   seq {seq}" if seq else ""))
    row("as_of", _timestamp(fields.get("as_of"), now_ms) + ", event time of the latest event")
    if ttl_ms is not None:
        expiry = "never (no TTL)" if ttl_ms < 0 else f"in {human_duration(ttl_ms)} (TTL)"
        row("expires", expiry)
    if written is None:
        lines.append("  ! no updated_at: this hash was not written by a nudge worker, its age is unknown")
    elif now_ms - written > stale_after_ms:
        lines.append(
            f"  ! stale: last written {human_duration(now_ms - written)} ago (over {human_duration(stale_after_ms)}): "
            "no events for this user since, or no worker running (`nudge worker`)"
        )

    _section(lines, "recency")
    for name in _RECENCY:
        row(name, _timestamp(fields.get(name), now_ms))

    windows = _windows(shown)
    if windows:
        _section(lines, "windows (event time, ending at as_of)")
        for base, spans in windows.items():
            row(base, " · ".join(f"{span} {value or _NONE}" for span, value in spans))

    _section(lines, "lifetime")
    for name in _LIFETIME:
        row(name, _plain(shown, name))

    _section(lines, "cart")
    for name in _CART:
        row(name, _plain(shown, name))

    _section(lines, "lifecycle & models")
    row("lifecycle", _lifecycle(fields, now_ms))
    row("top_category", _plain(shown, "top_category"))
    scored = [name for name in _SCORES if name in fields]
    if scored:
        for name in scored:
            row(name, _plain(shown, name))
    else:
        row("models", f"{_NONE} (no churn or next-best-offer scores in this hash yet)")

    _section(lines, "consent & profile" + ("  [--raw: personal data in clear]" if raw else ""))
    for name in _PROFILE:
        if name == "location":
            lat, lon = shown.get("lat"), shown.get("lon")
            value = f"{lat}, {lon}" if lat and lon else _NONE if lat == "" or lon == "" else _MISSING
            row("location", value + ("" if raw or not (lat and lon) else "  (rounded)"))
        elif name == "timezone":
            row(name, _timezone(shown.get(name), now))
        else:
            row(name, _plain(shown, name))

    known = {*_HEADER, *_RECENCY, *_LIFETIME, *_CART, *_MODELS, *_SCORES, *_PROFILE, *_PRIVATE}
    known.update(name for name in fields if _WINDOWED.match(name))
    others = sorted(set(fields) - known)
    if others:
        _section(lines, "other fields")
        for name in others:
            row(name, _plain(shown, name))
    return "\n".join(lines)


def _row_writer(lines: list[str]) -> Callable[[str, str], None]:
    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<{_LABEL_WIDTH}}{value}")

    return row


def _section(lines: list[str], title: str) -> None:
    lines.append("")
    lines.append(title)


def _plain(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        return _MISSING
    if value == "":
        return _NONE
    if name in _FLAGS:
        return {"1": "yes", "0": "no"}.get(value, value)
    return value


def _windows(fields: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
    """{'events': [('1h', '3'), ('24h', '41')], ...}, shortest window first."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, value in fields.items():
        m = _WINDOWED.match(name)
        if m:
            out.setdefault(m["base"], []).append((m["span"], value))
    unit_ms = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
    for spans in out.values():
        spans.sort(key=lambda sv: int(sv[0][:-1]) * unit_ms[sv[0][-1]])
    order = ("events", "clicks", "add_to_cart", "app_opens", "purchases", "spend")
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _lifecycle(fields: Mapping[str, str], now_ms: int) -> str:
    stored = fields.get("lifecycle")
    text = _MISSING if stored is None else stored or _NONE
    first, last = _epoch_ms(fields.get("first_seen")), _epoch_ms(fields.get("last_event_ts"))
    if first is None or last is None:
        return text
    # The worker classifies as of the user's latest event, where a user is
    # new or active by definition; a trigger asks as of the wall clock.
    current = classify(first_seen=first, last_event_ts=last, now=max(now_ms, last))
    return f"{text} (at as_of and now)" if current == stored else f"{text} (at as_of) · {current} now"


def _timezone(name: str | None, now: datetime) -> str:
    if name is None:
        return _MISSING
    if not name:
        return f"{_NONE} (quiet hours use UTC)"
    try:
        local = now.astimezone(ZoneInfo(name))
    except (ZoneInfoNotFoundError, ValueError):
        return f"{name} (unknown zone)"
    return f"{name} (local time {local:%H:%M})"


# --------------------------------------------------------------------------
# Redis and the command
# --------------------------------------------------------------------------


def read_state(settings: Settings, user_id: str) -> tuple[dict[str, str], int]:
    """The user's hash and its PTTL in ms (-2: no such key, -1: no TTL)."""
    from redis.exceptions import RedisClusterException, RedisError, ResponseError

    from nudge.redis_client import sync_client, unreachable

    url = display_url(settings.redis_url)
    key = settings.user_key_prefix + user_id
    if settings.redis_url.startswith("memory://"):
        raise ConfigError("NUDGE_REDIS_URL=memory:// keeps state inside the worker; point it at a Redis to read it")
    try:
        # A cluster client (NUDGE_REDIS_CLUSTER) connects here to read the slot map.
        # Bytes, decoded below: a hash holding invalid UTF-8 must show, not crash the decoder.
        client = sync_client(settings, decode_responses=False, socket_connect_timeout=2, socket_timeout=5)
    except ValueError as exc:
        raise ConfigError(f"NUDGE_REDIS_URL={url!r} is not a Redis URL: {exc}") from None
    except (RedisError, RedisClusterException, OSError) as exc:
        raise DependencyUnavailable(f"reading {key}: {unreachable(settings, exc)}") from None
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pttl(key)
            fields, ttl = pipe.execute()
    except ResponseError as exc:
        raise InputError(f"reading {key} from Redis at {url}: not a user hash: {exc}") from None
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable(f"reading {key}: {unreachable(settings, exc)}") from None
    finally:
        client.close()
    return {_text(name): _text(value) for name, value in fields.items()}, int(ttl)


def _text(raw: bytes | str) -> str:
    """A Redis reply as text; an undecodable byte is kept as its escape (\\xff)."""
    return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")


# C1 controls, DEL and bidi overrides: json.dumps leaves them as they are (it escapes C0 only).
_JSON_UNSAFE: Final = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def safe_json(obj: object) -> str:
    """JSON with every character a terminal would act on escaped as \\uXXXX (still valid JSON).

    >>> print(safe_json({"name": "caf\u00e9\u009b2J"}))
    {
      "name": "café\\u009b2J"
    }
    """
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.description = (
        "Print a user's live state from Redis (the hash the stream worker writes), grouped in\n"
        "sections, with every timestamp as ISO UTC and its age, the TTL left and a note when\n"
        "it is stale. Phone and push token are masked and the location rounded unless --raw."
    )
    parser.add_argument("user_id", type=user_id_arg, metavar="USER_ID", help="the user's id, e.g. u00042")
    parser.add_argument("--json", action="store_true", help="print the hash as JSON (field -> stored string)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="do not mask: prints PERSONAL DATA (phone number, push token, precise location) as stored",
    )
    parser.epilog = settings_epilog("redis_url", "redis_cluster", "user_key_prefix")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    user_id: str = args.user_id
    key = settings.user_key_prefix + user_id
    fields, ttl_ms = read_state(settings, user_id)
    if not fields:
        hint = ""
        if settings.user_key_prefix and user_id.startswith(settings.user_key_prefix):
            hint = f"; USER_ID is without the prefix, try {user_id[len(settings.user_key_prefix) :]}"
        print(
            f"no state for user {user_id} in Redis at {display_url(settings.redis_url)} (key {key}){hint}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        shown = fields if args.raw else mask_fields(fields)
        print(safe_json(shown))
    else:
        print(format_state(fields, key=key, now=datetime.now(UTC), ttl_ms=ttl_ms, raw=args.raw))
    return 0
