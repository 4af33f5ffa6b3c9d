"""`nudge bench soak`'s pure part: trends after the warm-up, the verdicts (which must be able to fail),
histogram quantiles from bucket deltas, and the sampler's parsing of /metrics and /proc.

Samples are synthetic: one every 10 s for 10 minutes, warm-up 120 s, as the issue's soak.
"""

from __future__ import annotations

import doctest
import math
import random

import pytest

from bench import soak
from bench.soak import (
    Sample,
    analyse,
    bucket_deltas,
    counter_rate,
    histogram_quantile,
    lag_bounded,
    process_tree,
    read_scrape,
    rss_flat,
    rss_growth_pct,
    slope,
    trend,
)

EVERY = 10.0
WARMUP = 120.0
TIMES = [i * EVERY for i in range(61)]  # 0..600 s


def series(value: object) -> list[tuple[float, float | None]]:
    """(t, value(t)) over the soak's sample times."""
    return [(t, value(t)) for t in TIMES]  # type: ignore[operator]


def test_module_doctests() -> None:
    assert doctest.testmod(soak).failed == 0


# --- RSS --------------------------------------------------------------------------------------


def test_a_flat_rss_is_flat() -> None:
    t = trend(series(lambda _: 200.0), WARMUP)
    assert t is not None
    assert t.slope_per_s == 0 and rss_growth_pct(t) == 0 and rss_flat(t)


def test_the_warm_up_is_left_out() -> None:
    # Steep during the warm-up (imports, caches, the first users), flat after it.
    t = trend(series(lambda s: 50.0 + s if s < WARMUP else 170.0), WARMUP)
    assert t is not None
    assert t.samples == 49 and t.start == 170.0 and rss_flat(t)
    everything = trend(series(lambda s: 50.0 + s if s < WARMUP else 170.0), 0)
    assert everything is not None and not rss_flat(everything)


def test_a_growing_rss_fails() -> None:
    # 200 MB growing 0.05 MB/s: +30 MB over 10 minutes, about 14 % of its mean.
    t = trend(series(lambda s: 200.0 + 0.05 * s), WARMUP)
    assert t is not None
    assert t.slope_per_s == pytest.approx(0.05)
    assert rss_growth_pct(t) == pytest.approx(0.05 * 600 / t.mean * 100)
    assert 12 < rss_growth_pct(t) < 14
    assert not rss_flat(t)


def test_slow_growth_within_the_target_passes() -> None:
    t = trend(series(lambda s: 200.0 + 0.02 * s), WARMUP)  # +12 MB over 10 min: about 5.5 %
    assert t is not None and rss_flat(t) and 5 < rss_growth_pct(t) < 6


def test_noise_without_a_trend_is_flat_and_noise_with_one_is_not() -> None:
    rng = random.Random(7)
    noisy = trend(series(lambda _: 200.0 + rng.gauss(0, 8)), WARMUP)
    assert noisy is not None and rss_flat(noisy)
    leaking = trend(series(lambda s: 200.0 + 0.06 * s + rng.gauss(0, 8)), WARMUP)
    assert leaking is not None and not rss_flat(leaking)


def test_a_short_window_is_judged_over_ten_minutes() -> None:
    # 60 s after the warm-up, +2 % in the window: extrapolated, 20 % over 10 minutes.
    points = [(t, 100.0 + 2.0 * (t - 60) / 60) for t in range(60, 121, 5)]
    t = trend(points, 60)
    assert t is not None and t.window_s == 60
    assert rss_growth_pct(t) == pytest.approx(2.0 * 10 / t.mean * 100)
    assert not rss_flat(t)


def test_a_shrinking_rss_is_flat() -> None:
    t = trend(series(lambda s: 300.0 - 0.1 * s), WARMUP)
    assert t is not None and rss_growth_pct(t) < 0 and rss_flat(t)


def test_missing_values_are_skipped_and_too_few_give_no_trend() -> None:
    t = trend([(0, None), (200, 10.0), (210, None), (220, 12.0)], WARMUP)
    assert t is not None and t.samples == 2 and t.slope_per_s == pytest.approx(0.1)
    assert trend([(200, 10.0), (210, None)], WARMUP) is None
    assert trend([(10, 10.0), (20, 11.0)], WARMUP) is None  # all in the warm-up


# --- lag --------------------------------------------------------------------------------------


def test_a_sawtooth_lag_is_bounded_even_with_high_peaks() -> None:
    t = trend(series(lambda s: 5000.0 if int(s) % 30 == 0 else 200.0), WARMUP)
    assert t is not None and t.peak == 5000.0 and lag_bounded(t)


def test_a_growing_lag_is_not_bounded() -> None:
    # The worker falls behind by 50 messages/s: +24,000 over the 8-minute window.
    t = trend(series(lambda s: 50.0 * s), WARMUP)
    assert t is not None and t.rise == pytest.approx(24_000) and not lag_bounded(t)


def test_a_large_lag_that_grows_slowly_is_bounded_until_it_rises_by_half_its_mean() -> None:
    slow = trend(series(lambda s: 100_000.0 + 10 * s), WARMUP)  # +4,800 on a mean of ~103,600
    assert slow is not None and lag_bounded(slow)
    fast = trend(series(lambda s: 100_000.0 + 200 * s), WARMUP)  # +96,000 on a mean of ~172,000
    assert fast is not None and not lag_bounded(fast)


def test_a_small_rise_is_noise() -> None:
    t = trend(series(lambda s: 1.0 * s), WARMUP)  # 0 .. 600 messages: under the 1,000 floor
    assert t is not None and lag_bounded(t)


# --- the analysis of a whole soak ---------------------------------------------------------------


def _soak(worker_rss: object, worker_lag: object) -> list[Sample]:
    out = []
    for t in TIMES:
        out.append(
            Sample(
                t=t,
                rss_mb={"worker": worker_rss(t), "collector": 60.0},  # type: ignore[operator]
                fds={"worker": 40, "collector": 12},
                lag={"worker": worker_lag(t), "collector": None},  # type: ignore[operator]
            )
        )
    return out


def test_analyse_passes_a_healthy_soak() -> None:
    result = analyse(_soak(lambda _: 180.0, lambda s: 300.0 if int(s) % 20 else 2_000.0), WARMUP)
    assert result["passed"] and result["verdicts"] == {"rss_flat": True, "lag_bounded": True}
    assert result["processes"]["collector"]["lag_bounded"] is None  # it consumes nothing
    assert result["processes"]["worker"]["fds"]["start"] == 40


@pytest.mark.parametrize(
    ("rss", "lag", "verdicts"),
    [
        (lambda s: 180.0 + 0.1 * s, lambda _: 300.0, {"rss_flat": False, "lag_bounded": True}),
        (lambda _: 180.0, lambda s: 100.0 * s, {"rss_flat": True, "lag_bounded": False}),
    ],
    ids=["leak", "falling behind"],
)
def test_analyse_fails_a_soak_that_misses_a_target(rss: object, lag: object, verdicts: dict[str, bool]) -> None:
    result = analyse(_soak(rss, lag), WARMUP)
    assert result["verdicts"] == verdicts and not result["passed"]


def test_analyse_freshness_over_the_window() -> None:
    samples = _soak(lambda _: 180.0, lambda _: 0.0)
    for i, s in enumerate(samples):  # 10 events per sample: 9 under 50 ms, 1 under 250 ms
        s.freshness_buckets = [(0.05, 9.0 * i), (0.25, 10.0 * i), (math.inf, 10.0 * i)]
    fresh = analyse(samples, WARMUP)["freshness"]
    assert fresh["observations"] == 480
    assert fresh["p50_ms"] == pytest.approx(50 * 240 / 432)
    assert 50 < fresh["p99_ms"] <= 250


# --- histograms, counters, parsing ----------------------------------------------------------------


def test_quantiles_from_bucket_deltas() -> None:
    before = [(0.1, 100.0), (0.5, 100.0), (math.inf, 100.0)]
    after = [(0.1, 100.0), (0.5, 200.0), (math.inf, 200.0)]  # the interval: 100 events in (0.1, 0.5]
    interval = bucket_deltas(before, after)
    assert interval == [(0.1, 0.0), (0.5, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, interval) == pytest.approx(0.3)
    assert histogram_quantile(0.99, interval) == pytest.approx(0.496)
    assert histogram_quantile(0.5, bucket_deltas(after, after)) is None


def test_a_rank_in_the_inf_bucket_gives_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 10.0), (60.0, 10.0), (math.inf, 100.0)]) == 60.0


def test_a_restarted_process_starts_its_buckets_again() -> None:
    assert bucket_deltas([(1.0, 50.0), (math.inf, 60.0)], [(1.0, 3.0), (math.inf, 4.0)]) == [
        (1.0, 3.0),
        (math.inf, 4.0),
    ]


def test_counter_rate_uses_the_window() -> None:
    points = [(0.0, 0.0), (2.0, None), (10.0, 100.0), (20.0, 1100.0), (30.0, 2100.0)]
    assert counter_rate(points, 10, 30) == 100.0
    assert counter_rate(points, 25, 30) is None
    assert slope([(0, 0.0), (10, 100.0), (20, 200.0)]) == pytest.approx(10.0)


def test_read_scrape_sums_the_series() -> None:
    page = "\n".join(
        [
            "# HELP nudge_consumer_lag_messages Messages not consumed yet",
            "# TYPE nudge_consumer_lag_messages gauge",
            'nudge_consumer_lag_messages{topic="clicks",partition="0"} 10.0',
            'nudge_consumer_lag_messages{topic="clicks",partition="1"} 5.0',
            "# TYPE nudge_stream_events_total counter",
            'nudge_stream_events_total{topic="clicks",outcome="applied"} 900.0',
            'nudge_stream_events_total{topic="clicks",outcome="late"} 100.0',
            "# TYPE nudge_stream_freshness_seconds histogram",
            'nudge_stream_freshness_seconds_bucket{le="0.05"} 7.0',
            'nudge_stream_freshness_seconds_bucket{le="+Inf"} 9.0',
            "nudge_stream_freshness_seconds_count 9.0",
            "nudge_stream_freshness_seconds_sum 0.4",
            "",
        ]
    )
    scrape = read_scrape(page)
    assert scrape.lag == 15.0 and scrape.events == 1000.0
    assert scrape.freshness == ((0.05, 7.0), (math.inf, 9.0))
    assert read_scrape("process_cpu_seconds_total 3.0\n").lag is None


def test_process_tree_holds_the_descendants_only() -> None:
    parents = {100: 1, 101: 100, 102: 101, 103: 1, 104: 100}
    assert process_tree(100, parents) == [100, 101, 104, 102]
    assert process_tree(103, parents) == [103]


def test_this_process_is_sampled_from_proc() -> None:
    import os

    from bench.soak import _fd_count, _parents, _rss_bytes

    me = os.getpid()
    rss = _rss_bytes(me)
    fds = _fd_count(me)
    assert rss is not None and rss > 1_000_000
    assert fds is not None and fds >= 3
    assert _parents()[me] == os.getppid()
    assert _rss_bytes(2**22 + 12345) is None  # beyond pid_max: gone


def test_the_users_longest_memory_is_the_labels_window() -> None:
    from bench.soak import _memory_days
    from nudge.settings import Settings

    assert _memory_days(Settings()) == 30.0  # the CLV window (models/labels.py); dedup keeps 7 days
    assert _memory_days(Settings(churn_horizon_ms=45 * 86_400_000)) == 45.0
