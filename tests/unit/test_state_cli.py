"""`nudge state`: the pure formatter (masking, ages, sections, staleness) and the
command's behaviour with Redis replaced by a stub (JSON, masking, unknown user)."""

from __future__ import annotations

import argparse
import doctest
import json
from datetime import UTC, datetime, timedelta

import pytest

from nudge import args, cli
from nudge.logs import mask_phone
from streams import state_cli
from streams.state_cli import display_url, format_state, human_duration, mask_fields, mask_token

NOW = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
PHONE = "+447700900123"
TOKEN = "c0e1a7d59b3f4e2a8d6c1b0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"


def full_hash(**overrides: str) -> dict[str, str]:
    """A hash as the worker writes it (features.state.UserState.features() + seq/updated_at)."""
    fields = {
        "user_id": "u00042",
        "as_of": str(NOW_MS - (3 * HOUR + 12 * MIN)),
        "first_seen": str(NOW_MS - 20 * DAY),
        "last_event_ts": str(NOW_MS - (3 * HOUR + 12 * MIN)),
        "last_purchase_ts": "",
        "last_add_to_cart_ts": str(NOW_MS - 4 * HOUR),
        "events_total": "132",
        "orders_total": "0",
        "spend_total": "0.00",
        "late_events": "1",
        "events_1h": "12",
        "events_24h": "40",
        "events_7d": "88",
        "events_30d": "132",
        "clicks_24h": "10",
        "add_to_cart_24h": "2",
        "app_opens_7d": "7",
        "purchases_7d": "0",
        "purchases_30d": "0",
        "spend_30d": "0.00",
        "cart_open": "1",
        "cart_size": "2",
        "cart_value": "59.98",
        "top_category": "electronics",
        "lifecycle": "active",
        "push_opt_in": "1",
        "sms_opt_in": "0",
        "timezone": "Europe/London",
        "locale": "en-GB",
        "push_token": TOKEN,
        "phone": PHONE,
        "lat": "51.507412",
        "lon": "-0.127813",
        "seq": "132",
        "updated_at": str(NOW_MS - 2 * MIN),
    }
    fields.update(overrides)
    return fields


def line_of(text: str, label: str) -> str:
    """The row whose label is `label` (labels are indented by two spaces)."""
    rows = [line for line in text.splitlines() if line.startswith(f"  {label} ")]
    assert len(rows) == 1, f"{label!r} rows: {rows}\n{text}"
    return rows[0]


def test_doctests() -> None:
    result = doctest.testmod(state_cli)
    assert result.failed == 0 and result.attempted >= 8


# --- masking -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+447911123456", "+44*******456"),  # 2-digit country code
        ("+12125550123", "+1*******123"),  # 1-digit (NANP)
        ("+79161234567", "+7*******567"),
        ("+3536399812", "+353****812"),  # 3-digit
        ("+4915123456789", "+49********789"),
        ("07911 123456", "***"),  # not E.164: nothing of it shown
        ("+44", "***"),
        ("", ""),
    ],
)
def test_mask_phone_keeps_country_code_and_last_three(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


def test_mask_phone_hides_every_middle_digit() -> None:
    masked = mask_phone(PHONE)
    assert masked.startswith("+44") and masked.endswith("123")
    assert set(masked[3:-3]) == {"*"}


@pytest.mark.parametrize(
    ("token", "masked"), [(TOKEN, "c0e1…"), ("abcdefghijkl", "abcd…"), ("short-token", "…"), ("", "")]
)
def test_mask_token(token: str, masked: str) -> None:
    assert mask_token(token) == masked


def test_mask_fields_masks_personal_data_and_leaves_the_input_alone() -> None:
    fields = full_hash()
    masked = mask_fields(fields)
    assert masked["phone"] == "+44*******123"
    assert masked["push_token"] == "c0e1…"
    assert (masked["lat"], masked["lon"]) == ("51.51", "-0.13")
    assert fields["phone"] == PHONE and fields["lat"] == "51.507412"
    unchanged = {k for k in fields if k not in ("phone", "push_token", "lat", "lon")}
    assert all(masked[k] == fields[k] for k in unchanged)
    # Empty values stay empty (not "***"): "no phone" must stay distinguishable.
    assert mask_fields({"phone": "", "push_token": "", "lat": ""}) == {"phone": "", "push_token": "", "lat": ""}


def test_text_output_never_shows_phone_or_token_unless_raw() -> None:
    text = format_state(full_hash(), key="user:u00042", now=NOW)
    assert PHONE not in text and PHONE[1:] not in text
    assert TOKEN[:5] not in text
    assert "51.507412" not in text
    assert line_of(text, "phone").endswith("+44*******123")
    assert line_of(text, "push_token").endswith("c0e1…")
    assert "51.51, -0.13  (rounded)" in line_of(text, "location")

    raw = format_state(full_hash(), key="user:u00042", now=NOW, raw=True)
    assert line_of(raw, "phone").endswith(PHONE)
    assert line_of(raw, "push_token").endswith(TOKEN)
    assert "personal data in clear" in raw


# --- ages and timestamps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 s"),
        (59_999, "59 s"),
        (MIN, "1 min"),
        (59 * MIN + 59_000, "59 min"),
        (HOUR, "1 h"),
        (3 * HOUR + 12 * MIN, "3 h 12 min"),
        (DAY, "1 d"),
        (2 * DAY + 4 * HOUR + 30 * MIN, "2 d 4 h"),
        (-90_000, "1 min"),
    ],
)
def test_human_duration(ms: int, text: str) -> None:
    assert human_duration(ms) == text


def test_timestamps_are_iso_utc_with_their_age() -> None:
    text = format_state(full_hash(), key="user:u00042", now=NOW)
    assert line_of(text, "as_of").split(None, 1)[1].startswith("2026-10-01T08:48:00Z (3 h 12 min ago)")
    assert line_of(text, "written").split(None, 1)[1].startswith("2026-10-01T11:58:00Z (2 min ago)")
    assert line_of(text, "first_seen").endswith("2026-09-11T12:00:00Z (20 d ago)")
    assert line_of(text, "last_add_to_cart_ts").endswith("(4 h ago)")
    assert "seq 132" in line_of(text, "written")


def test_future_and_malformed_timestamps_are_shown_for_what_they_are() -> None:
    text = format_state(
        full_hash(last_event_ts=str(NOW_MS + 5 * MIN), first_seen="yesterday"), key="user:u00042", now=NOW
    )
    assert line_of(text, "last_event_ts").endswith("(in 5 min, ahead of this clock)")
    assert line_of(text, "first_seen").endswith("yesterday (not epoch ms)")


def test_ttl() -> None:
    def expires(ttl_ms: int | None) -> list[str]:
        text = format_state(full_hash(), key="user:u00042", now=NOW, ttl_ms=ttl_ms)
        return [line for line in text.splitlines() if line.startswith("  expires ")]

    assert expires(89 * DAY + 23 * HOUR)[0].endswith("in 89 d 23 h (TTL)")
    assert expires(-1)[0].endswith("never (no TTL)")
    assert expires(None) == []


# --- staleness ---------------------------------------------------------------------------


def test_staleness_note_when_updated_at_is_older_than_the_limit() -> None:
    fresh = format_state(full_hash(updated_at=str(NOW_MS - 59 * MIN)), key="user:u00042", now=NOW)
    assert "stale" not in fresh
    stale = format_state(full_hash(updated_at=str(NOW_MS - 3 * HOUR - 5 * MIN)), key="user:u00042", now=NOW)
    note = [line for line in stale.splitlines() if "stale" in line]
    assert note == [
        "  ! stale: last written 3 h 5 min ago (over 1 h): no events for this user since, "
        "or no worker running (`nudge worker`)"
    ]
    # The limit is a parameter; a hash without updated_at says its age is unknown.
    assert "stale" in format_state(full_hash(), key="k", now=NOW, stale_after=timedelta(minutes=1))
    assert "its age is unknown" in format_state(full_hash(updated_at=""), key="k", now=NOW)


def test_stale_as_of_alone_is_not_a_staleness_note() -> None:
    # Old event time but a fresh write: a replay of old traffic, not a stopped worker.
    text = format_state(full_hash(as_of=str(NOW_MS - 40 * DAY)), key="user:u00042", now=NOW)
    assert "stale" not in text
    assert "(40 d ago)" in line_of(text, "as_of")


# --- sections and missing fields ------------------------------------------------------------


def test_sections_in_order_with_windows_grouped() -> None:
    text = format_state(full_hash(), key="user:u00042", now=NOW)
    titles = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert titles == [
        "user u00042  (key user:u00042)",
        "recency",
        "windows (event time, ending at as_of)",
        "lifetime",
        "cart",
        "lifecycle & models",
        "consent & profile",
    ]
    assert line_of(text, "events").endswith("1h 12 · 24h 40 · 7d 88 · 30d 132")
    assert line_of(text, "purchases").endswith("7d 0 · 30d 0")
    assert line_of(text, "spend").endswith("30d 0.00")
    assert line_of(text, "cart_open").endswith("yes")
    assert line_of(text, "sms_opt_in").endswith("no")
    assert line_of(text, "last_purchase_ts").endswith("—")
    assert "Europe/London (local time 13:00)" in line_of(text, "timezone")


def test_missing_fields_do_not_break_the_output() -> None:
    text = format_state({"as_of": str(NOW_MS)}, key="user:x", now=NOW)
    assert text.splitlines()[0] == "user user:x  (key user:x)"
    assert line_of(text, "events_total").endswith("(not in hash)")
    assert line_of(text, "phone").endswith("(not in hash)")
    assert line_of(text, "lifecycle").endswith("(not in hash)")
    assert "windows" not in text  # no windowed field at all: no empty section
    assert "no updated_at" in text


def test_unknown_fields_and_model_scores_are_shown() -> None:
    text = format_state(
        full_hash(churn_score="0.82", churn_model_version="3", nbo_offer="freeship", future_feature="x"),
        key="user:u00042",
        now=NOW,
    )
    assert line_of(text, "churn_score").endswith("0.82")
    assert line_of(text, "nbo_offer").endswith("freeship")
    assert "other fields" in text and line_of(text, "future_feature").endswith("x")
    no_models = format_state(full_hash(), key="user:u00042", now=NOW)
    assert "no churn or next-best-offer scores" in line_of(no_models, "models")


def test_lifecycle_as_of_the_wall_clock() -> None:
    # Stored 'active' at as_of; ten idle days later a trigger would see at_risk.
    idle = full_hash(last_event_ts=str(NOW_MS - 10 * DAY), as_of=str(NOW_MS - 10 * DAY))
    assert line_of(format_state(idle, key="k", now=NOW), "lifecycle").endswith("active (at as_of) · at_risk now")
    assert line_of(format_state(full_hash(), key="k", now=NOW), "lifecycle").endswith("active (at as_of and now)")


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_state(full_hash(), key="k", now=datetime(2026, 10, 1, 12, 0))


def test_display_url_hides_the_password() -> None:
    assert display_url("redis://user:pw@host:6379/0") == "redis://***@host:6379/0"
    assert display_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# --- the command, with Redis stubbed ------------------------------------------------------------


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """Replace the Redis read with a dict of user id -> hash."""
    hashes: dict[str, dict[str, str]] = {}

    def read_state(settings: object, user_id: str) -> tuple[dict[str, str], int]:
        fields = hashes.get(user_id, {})
        return dict(fields), (-2 if not fields else 90 * DAY)

    monkeypatch.setattr(state_cli, "read_state", read_state)
    monkeypatch.setenv("NUDGE_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    return hashes


def test_json_is_masked_unless_raw(stored: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    stored["u00042"] = full_hash()
    assert cli.main(["state", "u00042", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["phone"] == "+44*******123" and data["push_token"] == "c0e1…"
    assert PHONE not in out and TOKEN not in out
    assert data["events_1h"] == "12" and set(data) == set(full_hash())

    assert cli.main(["state", "u00042", "--json", "--raw"]) == 0
    assert json.loads(capsys.readouterr().out) == full_hash()


def test_text_mode_prints_the_formatted_state(
    stored: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    stored["u00042"] = full_hash(updated_at=str(int(datetime.now(UTC).timestamp() * 1000) - 5000))
    assert cli.main(["state", "u00042"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("user u00042  (key user:u00042)")
    assert "+44*******123" in out and PHONE not in out
    assert "in 90 d (TTL)" in out and "stale" not in out


def test_unknown_user_is_one_line_and_exit_1(
    stored: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["state", "nobody"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "no state for user nobody in Redis at redis://***@127.0.0.1:6379/0 (key user:nobody)\n"
    # A key pasted instead of an id gets a hint.
    assert cli.main(["state", "user:u00042"]) == 1
    assert "try u00042" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("user_id", "shown"),
    [
        ("", "'' is empty"),
        ("   ", "is blank"),
        ("x" * 129, "has 129 characters"),
        ("probe-\udcff", "'probe-\\xff' holds a control character or undecodable byte"),  # argv byte 0xff
        ("u1\x1b[2J", "'u1\\x1b[2J' holds a control character"),
    ],
)
def test_bad_user_id_is_a_usage_error(user_id: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["state", user_id])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nudge state: error: argument USER_ID: ") and err.count("\n") == 1
    assert shown in err and "\x1b" not in err


def test_user_id_rule_is_the_collectors() -> None:
    from nudge.events import id_problem

    for text in ("u1", "", " ", "a\x00b", "é" * 128, "é" * 129, "probe-\udcff"):
        accepted = id_problem(text) is None
        try:
            args.user_id_arg(text)
        except argparse.ArgumentTypeError:
            assert not accepted, text
        else:
            assert accepted, text


def test_terminal_escapes_in_redis_are_shown_escaped(
    stored: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    stored["u00042"] = full_hash(
        top_category="\x1b[2J\x1b]0;pwned\x07", locale="en\nforged: line", note="\u202eevil\x9b", timezone="\x1b[31m"
    )
    assert cli.main(["state", "u00042"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in out and "en\\nforged: line" in out and "\\u202eevil\\x9b" in out
    assert cli.main(["state", "u00042", "--json", "--raw"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert json.loads(out)["note"] == "\u202eevil\x9b"  # still the stored value, once parsed


def test_undecodable_bytes_from_redis_are_shown_as_escapes() -> None:
    assert state_cli._text(b"caf\xc3\xa9 \xff") == "café \\xff"


def test_help_lists_the_env_vars_and_warns_about_raw(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["state", "--help"])
    out = capsys.readouterr().out
    assert "NUDGE_REDIS_URL" in out and "NUDGE_USER_KEY_PREFIX" in out
    assert "PERSONAL DATA" in out


def test_memory_store_url_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_REDIS_URL", "memory://")
    assert cli.main(["state", "u1"]) == 1
    assert "memory://" in capsys.readouterr().err
