"""Back-off, Retry-After and the token bucket: pure arithmetic, checked for its bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.policy import MAX_RETRY_AFTER_S, TokenBucket, backoff_s, parse_retry_after, retry_delay_s


@given(attempt=st.integers(1, 10_000), base=st.floats(0.001, 600), cap=st.floats(0.001, 3600), seed=st.integers())
def test_backoff_is_full_jitter_within_the_exponential_cap(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff_s(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 60))


def test_backoff_grows_and_spreads() -> None:
    rng = random.Random(3)
    firsts = [backoff_s(1, 1.0, 100.0, rng) for _ in range(2000)]
    fifths = [backoff_s(5, 1.0, 100.0, rng) for _ in range(2000)]
    assert max(firsts) <= 1.0 and max(fifths) > 8.0  # the cap doubles per attempt
    assert len({round(d, 3) for d in firsts}) > 500  # jittered, not one value for every worker


def test_retry_after_wins_over_backoff_and_is_honoured_as_given() -> None:
    rng = random.Random(0)
    assert retry_delay_s(1, 7.0, 0.5, 30.0, rng) == 7.0
    assert retry_delay_s(1, 0.0, 0.5, 30.0, rng) == 0.0
    assert 0.0 <= retry_delay_s(1, None, 0.5, 30.0, rng) <= 0.5


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after("1e9") == MAX_RETRY_AFTER_S
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    http_date = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(http_date, now_s=now.timestamp()) == 30.0


def test_token_bucket_paces_to_the_rate_after_its_burst() -> None:
    bucket = TokenBucket.starting(10.0, now=0.0)  # burst: 1 token
    waits = [bucket.reserve(0.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_token_bucket_refills_but_never_above_its_burst() -> None:
    bucket = TokenBucket.starting(100.0, now=0.0)  # burst 10
    for _ in range(10):
        assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) > 0.0
    bucket = TokenBucket.starting(100.0, now=0.0)
    # An hour idle refills to the burst, not to 360,000 tokens.
    assert [bucket.reserve(3600.0) for _ in range(11)][-1] > 0.0


@given(rate=st.floats(0.1, 10_000), n=st.integers(1, 500))
def test_token_bucket_long_run_rate(rate: float, n: int) -> None:
    """n reservations at one instant are spread so that none is earlier than the rate allows."""
    bucket = TokenBucket.starting(rate, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(n)]
    assert waits == sorted(waits)
    assert waits[-1] >= (n - bucket.burst) / rate - 1e-6


@pytest.mark.parametrize(
    "name",
    ["delivery.policy", "delivery.results", "delivery.ledger", "delivery.plan", "delivery.fcm", "delivery.twilio",
     "delivery.webhook", "delivery.mock_providers"],
)  # fmt: skip
def test_delivery_doctests(name: str) -> None:
    """The examples in the delivery modules' docstrings are documentation: keep them true."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
