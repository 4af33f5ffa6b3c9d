"""Redaction: by field wherever an event is shown, by pattern as the log's safety net."""

from __future__ import annotations

import logging

import orjson
import pytest

from nudge.logs import RedactingFilter, mask_phone, redact, redact_event, redact_line

PHONES = ["+1234567", "+12345678", "+447911123456", "+353861234567", "+999999999999999"]


@pytest.mark.parametrize("phone", PHONES)
def test_a_phone_field_is_masked_whatever_its_length(phone: str) -> None:
    shown = redact_event({"type": "profile_update", "phone": phone})["phone"]
    digits = len(phone) - 1
    hidden = shown.count("*")
    assert hidden >= 4 and hidden >= digits / 2, shown  # the country code and a short tail at most


@pytest.mark.parametrize("phone", PHONES)
def test_free_text_phones_of_every_allowed_length_are_masked(phone: str) -> None:
    assert phone not in redact(f"sms to {phone} failed")
    assert phone[1:] not in redact(f"sms to {phone} failed")


def test_sensitive_fields_are_masked_at_any_depth_and_others_kept() -> None:
    event = {
        "type": "profile_update",
        "user_id": "u1",
        "push_token": "tok-123",
        "nested": {"list": [{"Phone": "+447911123456", "api_key": "k"}], "token": ""},
    }
    shown = redact_event(event)
    assert shown["user_id"] == "u1" and shown["type"] == "profile_update"
    assert shown["push_token"] == "***"
    inner = shown["nested"]["list"][0]
    assert inner["Phone"] == mask_phone("+447911123456") and inner["api_key"] == "***"
    assert shown["nested"]["token"] == ""  # nothing to hide
    assert event["push_token"] == "tok-123"  # the original is untouched


@pytest.mark.parametrize(
    "text",
    [
        "{'push_token': 'abcdef123'}",  # a repr'd dict: single quotes
        '{"push_token": "abcdef123"}',
        "push_token=abcdef123",
        "Authorization: Bearer abcdef123",
        "password = abcdef123",
    ],
)
def test_quoted_and_unquoted_secrets_are_masked_in_free_text(text: str) -> None:
    assert "abcdef123" not in redact(text)


def test_a_line_is_redacted_by_field_even_when_the_value_looks_like_nothing() -> None:
    """Pattern guessing would miss a token that looks like any word; the field name does not."""
    line = orjson.dumps({"event_id": "e1", "push_token": "plainword", "phone": "12"})
    shown = redact_line(line)
    assert "plainword" not in shown and '"12"' not in shown
    assert '"event_id":"e1"' in shown


def test_a_line_that_is_not_json_gets_the_pattern_pass_and_is_cut() -> None:
    shown = redact_line(b"\xffjunk +447911123456 " + b"x" * 500)
    assert "+447911123456" not in shown and "\\xff" in shown
    assert len(shown) <= 200


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("profile %s", {"phone": "+12345678", "push_token": "tok-secret"})
            try:
                raise ValueError("bad phone +447911123456")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.filters.clear()
    text = caplog.text
    assert "+12345678" not in text and "tok-secret" not in text and "+447911123456" not in text
