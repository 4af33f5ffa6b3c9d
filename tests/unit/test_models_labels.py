"""Delayed labels (models.labels): horizons to the millisecond, out-of-order events, replays."""

from __future__ import annotations

import doctest
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import models.labels
from models.labels import (
    DAY_MS,
    Example,
    LabelConfig,
    PendingLabels,
    example_id,
    next_deadline,
    observe,
)

CFG = LabelConfig()
E7 = CFG.early_horizon_ms


def _only(targets: tuple[str, ...]) -> Any:
    """`on_event` / `advance` keeping the examples of `targets`: the churn and value tests
    below read as if the early label did not exist (it has its own tests)."""

    def wrap(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> tuple[PendingLabels, list[Example]]:
            p, out = fn(*args, **kwargs)
            return p, [e for e in out if e.target in targets]

        return call

    return wrap


on_event = _only(("churn", "clv_30d"))(models.labels.on_event)
advance = _only(("churn", "clv_30d"))(models.labels.advance)
early_on_event = _only(("churn_7d",))(models.labels.on_event)
early_advance = _only(("churn_7d",))(models.labels.advance)
H = CFG.churn_horizon_ms
W = CFG.clv_window_ms
T0 = 1_790_000_000_000  # an event time in 2026


def observed_at(at: int = T0, pending: PendingLabels | None = None, user: str = "u1") -> PendingLabels:
    p, kept = observe(
        pending or PendingLabels(),
        user_id=user,
        at_ms=at,
        inputs={"recency_days": 1.0, "events_7d": 4.0},
        scores={"churn": 0.25},
        versions={"churn": "v7"},
    )
    assert kept
    return p


def labels(examples: list[Example]) -> dict[str, tuple[float, int]]:
    return {e.target: (e.label, e.resolved_at) for e in examples}


def test_doctests() -> None:
    result = doctest.testmod(models.labels)
    assert result.failed == 0 and result.attempted > 0


# --- churn at the horizon's edge ---------------------------------------------


def test_observed_inputs_keep_six_significant_digits_and_whole_numbers_exactly() -> None:
    inputs = {"recency_days": 2.0 / 3.0, "events_7d": 123456789.0, "spend_30d": 1234.56789}
    p, kept = observe(PendingLabels(), user_id="u1", at_ms=T0, inputs=inputs, scores={})
    assert kept and p.observations[0].inputs == {
        "recency_days": 0.666667,
        "events_7d": 123456789.0,
        "spend_30d": 1234.57,
    }


def test_the_early_label_is_churn_over_7_days_by_the_same_rules() -> None:
    p, out = early_on_event(observed_at(), at_ms=T0 + E7 - 1)  # back just inside 7 days
    assert [(e.label, e.resolved_at) for e in out] == [(0.0, T0 + E7 - 1)]
    p, out = early_on_event(observed_at(), at_ms=T0 + E7)  # back at exactly 7 days: too late
    assert out == []
    p, out = early_advance(p, watermark_ms=T0 + E7)
    assert [(e.target, e.label, e.resolved_at) for e in out] == [("churn_7d", 1.0, T0 + E7)]
    assert not p.observations[0].churn_open  # back on day 7: gone a week, but not two (churn 0)
    _, out = early_advance(observed_at(), watermark_ms=T0 + E7 - 1)
    assert out == []
    assert next_deadline(observed_at()) == T0 + E7


def test_a_state_written_before_the_early_label_reads_back_with_it_closed() -> None:
    plain = observed_at().to_dict()
    for row in plain["observations"]:
        row["open"] = row["open"][:2]
    old = PendingLabels.from_dict(plain)
    assert not old.observations[0].early_open and old.observations[0].churn_open
    assert PendingLabels.from_dict(observed_at().to_dict()) == observed_at()


def test_back_just_before_the_horizon_is_churn_0_known_at_that_event() -> None:
    p, out = on_event(observed_at(), at_ms=T0 + H - 1)
    assert labels(out) == {"churn": (0.0, T0 + H - 1)}
    # Nothing more for churn when the horizon passes.
    p, out = advance(p, watermark_ms=T0 + H + DAY_MS)
    assert out == []


@pytest.mark.parametrize("back_at", [T0 + H, T0 + H + 1])
def test_back_exactly_at_or_after_the_horizon_is_churn_1(back_at: int) -> None:
    p, out = on_event(observed_at(), at_ms=back_at)
    assert out == []
    p, out = advance(p, watermark_ms=T0 + H)
    assert labels(out) == {"churn": (1.0, T0 + H)}


def test_churn_1_waits_for_the_watermark_to_reach_the_horizon() -> None:
    p = observed_at()
    p, out = advance(p, watermark_ms=T0 + H - 1)
    assert out == [] and next_deadline(p) == T0 + H
    p, out = advance(p, watermark_ms=T0 + H)
    assert labels(out) == {"churn": (1.0, T0 + H)}
    assert next_deadline(p) == T0 + W


def test_a_big_watermark_jump_resolves_at_the_deadlines_not_at_the_watermark() -> None:
    p, out = advance(observed_at(), watermark_ms=T0 + 400 * DAY_MS)
    assert labels(out) == {"churn": (1.0, T0 + H), "clv_30d": (0.0, T0 + W)}
    assert p.observations == () and next_deadline(p) is None


def test_an_older_watermark_resolves_nothing() -> None:
    _, out = advance(observed_at(), watermark_ms=T0 - DAY_MS)
    assert out == []


# --- out-of-order events -----------------------------------------------------


@pytest.mark.parametrize("late_ts", [T0 - 1, T0 - 5 * DAY_MS, T0])
def test_an_event_not_after_the_observation_resolves_nothing(late_ts: int) -> None:
    p = observed_at()
    p2, out = on_event(p, at_ms=late_ts, spend=50.0)
    assert out == [] and p2 == p
    _, out = advance(p2, watermark_ms=T0 + W)
    assert labels(out) == {"churn": (1.0, T0 + H), "clv_30d": (0.0, T0 + W)}


def test_out_of_order_events_inside_the_window_count_by_their_own_time() -> None:
    p = observed_at()
    p, out1 = on_event(p, at_ms=T0 + 10 * DAY_MS, spend=10.0)
    p, out2 = on_event(p, at_ms=T0 + 2 * DAY_MS, spend=5.5)  # arrives late, still inside
    p, out3 = on_event(p, at_ms=T0 - DAY_MS, spend=99.0)  # before the observation
    assert labels(out1) == {"churn": (0.0, T0 + 10 * DAY_MS)} and out2 == out3 == []
    _, out = advance(p, watermark_ms=T0 + W)
    assert labels(out) == {"clv_30d": (15.5, T0 + W)}


# --- the CLV window ----------------------------------------------------------


def test_clv_window_includes_its_end_and_excludes_the_observation_instant() -> None:
    p = observed_at()
    for ts, spend in [(T0, 1.0), (T0 + 1, 2.0), (T0 + W, 4.0), (T0 + W + 1, 8.0)]:
        p, _ = on_event(p, at_ms=ts, spend=spend)
    _, out = advance(p, watermark_ms=T0 + W)
    assert labels(out)["clv_30d"] == (6.0, T0 + W)


def test_cents_are_summed_exactly_whatever_the_order() -> None:
    spends = [0.1, 0.2, 0.3, 19.99, 0.07]
    results = set()
    for order in (spends, spends[::-1]):
        p = observed_at()
        for k, s in enumerate(order):
            p, _ = on_event(p, at_ms=T0 + (k + 1) * DAY_MS, spend=s)
        _, out = advance(p, watermark_ms=T0 + W)
        results.add(labels(out)["clv_30d"][0])
    assert results == {20.66}


def test_overlapping_observations_each_get_their_own_window() -> None:
    p = observed_at(T0)
    p = observed_at(T0 + 20 * DAY_MS, p)
    p, out = on_event(p, at_ms=T0 + 25 * DAY_MS, spend=30.0)
    # Only the second is still inside its churn horizon; both CLV windows are open.
    assert [(e.observed_at, e.target, e.label) for e in out] == [(T0 + 20 * DAY_MS, "churn", 0.0)]
    p, out = advance(p, watermark_ms=T0 + 60 * DAY_MS)
    got = {(e.observed_at, e.target): e.label for e in out}
    assert got == {(T0, "churn"): 1.0, (T0, "clv_30d"): 30.0, (T0 + 20 * DAY_MS, "clv_30d"): 30.0}


# --- sampling ------------------------------------------------------------------


def test_at_most_one_observation_per_sample_period() -> None:
    p = observed_at(T0)
    for at in (T0, T0 + 1, T0 + DAY_MS - 1, T0 - DAY_MS):
        p2, kept = observe(p, user_id="u1", at_ms=at, inputs={}, scores={})
        assert not kept and p2 is p
    p3, kept = observe(p, user_id="u1", at_ms=T0 + DAY_MS, inputs={}, scores={})
    assert kept and len(p3.observations) == 2


def test_the_pending_cap_counts_open_windows_not_the_watermark() -> None:
    cfg = LabelConfig(sample_every_ms=1, max_pending=3)
    p = PendingLabels()
    kept_at = []
    for k in range(6):
        p, kept = observe(p, user_id="u1", at_ms=T0 + k, inputs={}, scores={}, config=cfg)
        if kept:
            kept_at.append(T0 + k)
    assert kept_at == [T0, T0 + 1, T0 + 2]
    # Once the first window has closed in event time the cap has room again,
    # even though no watermark removed it from the state yet.
    p, kept = observe(p, user_id="u1", at_ms=T0 + cfg.longest_ms, inputs={}, scores={}, config=cfg)
    assert kept and len(p.observations) == 4


def test_observe_refuses_non_finite_values_and_another_users_state() -> None:
    with pytest.raises(ValueError, match="sanitise"):
        observe(PendingLabels(), user_id="u1", at_ms=T0, inputs={"x": float("nan")}, scores={})
    with pytest.raises(ValueError, match="u1"):
        observe(observed_at(), user_id="u2", at_ms=T0 + 9 * DAY_MS, inputs={}, scores={})


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="churn_horizon_ms"):
        LabelConfig(churn_horizon_ms=0)


# --- ids and serialisation -------------------------------------------------------


def test_examples_carry_what_the_model_saw_and_a_stable_id() -> None:
    _, out = on_event(observed_at(user="u9"), at_ms=T0 + DAY_MS)
    (e,) = out
    assert e.example_id == example_id("u9", T0, "churn")
    assert e.inputs == {"recency_days": 1.0, "events_7d": 4.0}
    assert (e.scores, e.versions, e.user_id) == ({"churn": 0.25}, {"churn": "v7"}, "u9")
    assert Example.from_json(e.to_json()) == e
    assert len({example_id("u9", T0, t) for t in ("churn", "clv_30d")} | {example_id("u90", T0, "churn")}) == 3


def test_a_malformed_example_or_state_is_one_value_error() -> None:
    with pytest.raises(ValueError, match=r"Example\.from_json"):
        Example.from_json(b'{"target": "ltv"}')
    with pytest.raises(ValueError, match=r"PendingLabels\.from_dict"):
        PendingLabels.from_dict({"v": 1, "user_id": "u1"})


# --- replay: any batching, any watermark cadence, the same examples ------------------


@dataclass(frozen=True)
class Ev:
    ts: int
    spend: float


@dataclass(frozen=True)
class Obs:
    at: int


GAPS = st.one_of(
    st.sampled_from([0, 1, H - 1, H, H + 1, W - 1, W, W + 1, DAY_MS]),
    st.integers(0, 20 * DAY_MS),
)


@st.composite
def timelines(draw: st.DrawFn) -> list[Ev | Obs]:
    """One user's inputs in arrival order: events (some late) and observations as of the newest time."""
    now, items = T0, []
    for _ in range(draw(st.integers(1, 30))):
        now += draw(GAPS)
        if draw(st.booleans()):
            items.append(Obs(now))
        late = draw(st.sampled_from([0, 0, 0, 1, DAY_MS, H, 3 * DAY_MS]))
        spend = draw(st.sampled_from([0.0, 0.0, 9.99, 25.5]))
        items.append(Ev(now - late, spend))
    return items


def reference(items: list[Ev | Obs], cfg: LabelConfig) -> list[Example]:
    """The labels by their definition, from the whole timeline at once."""
    out = []
    p = PendingLabels()
    for i, it in enumerate(items):
        if not isinstance(it, Obs):
            continue
        p, kept = observe(p, user_id="u1", at_ms=it.at, inputs={"i": float(i)}, scores={}, config=cfg)
        if not kept:
            continue
        later = [e for e in items[i + 1 :] if isinstance(e, Ev) and e.ts > it.at]
        back = [e for e in later if e.ts - it.at < cfg.churn_horizon_ms]
        churn = (0.0, back[0].ts) if back else (1.0, it.at + cfg.churn_horizon_ms)
        spend = sum(round(e.spend * 100) for e in later if e.ts <= it.at + cfg.clv_window_ms) / 100
        for target, (label, resolved_at) in (("churn", churn), ("clv_30d", (spend, it.at + cfg.clv_window_ms))):
            out.append(
                Example(example_id("u1", it.at, target), "u1", target, it.at, resolved_at, {"i": float(i)}, label)  # type: ignore[arg-type]
            )
    return sorted(out, key=lambda e: e.example_id)


def run(items: list[Ev | Obs], cfg: LabelConfig, watermarks: dict[int, int], roundtrips: set[int]) -> list[Example]:
    """Feed the timeline, advancing the watermark after item i to watermarks[i]."""
    p, out = PendingLabels(), []
    for i, it in enumerate(items):
        if isinstance(it, Obs):
            p, _ = observe(p, user_id="u1", at_ms=it.at, inputs={"i": float(i)}, scores={}, config=cfg)
        else:
            p, resolved = on_event(p, at_ms=it.ts, spend=it.spend, config=cfg)
            out += resolved
        if i in watermarks:
            p, resolved = advance(p, watermark_ms=watermarks[i], config=cfg)
            out += resolved
        if i in roundtrips:  # the state goes through the changelog
            p = PendingLabels.from_dict(orjson.loads(orjson.dumps(p.to_dict())))
    p, resolved = advance(p, watermark_ms=2**62, config=cfg)
    assert p.observations == ()
    return sorted(out + resolved, key=lambda e: e.example_id)


@settings(max_examples=300, deadline=None)
@given(items=timelines(), data=st.data())
def test_any_watermark_cadence_gives_the_reference_examples(items: list[Ev | Obs], data: st.DataObject) -> None:
    cfg = CFG
    # A watermark after item i may not pass anything still to come: events
    # later in arrival order (ts > W) and observations (at >= W).
    bound, bounds = 2**62, [0] * len(items)
    for i in range(len(items) - 1, -1, -1):
        bounds[i] = bound
        it = items[i]
        bound = min(bound, it.ts - 1 if isinstance(it, Ev) else it.at)
    watermarks, last = {}, 0
    for i in range(len(items)):
        if data.draw(st.booleans(), label=f"advance after {i}"):
            hi = min(bounds[i], T0 + 10_000 * DAY_MS)
            if hi > last:
                last = data.draw(st.integers(last, hi), label="watermark")
                watermarks[i] = last
    roundtrips = set(data.draw(st.lists(st.integers(0, len(items) - 1), max_size=5), label="round trips"))
    expected = reference(items, cfg)
    assert run(items, cfg, {}, set()) == expected
    assert run(items, cfg, watermarks, roundtrips) == expected
    assert len({e.example_id for e in expected}) == len(expected)


def test_pending_state_names_each_input_once_and_stays_small() -> None:
    """It rides in every changelog write of the user: 14 pending days of 30 inputs stay under 5 kB."""
    pending = PendingLabels()
    inputs = {f"input_{i:02d}": i * 1.5 for i in range(30)}
    for day in range(14):
        pending, kept = observe(pending, user_id="u1", at_ms=T0 + day * DAY_MS, inputs=inputs, scores={}, config=CFG)
        assert kept
    raw = orjson.dumps(pending.to_dict())
    assert raw.count(b"input_00") == 1
    assert len(raw) < 5_000, len(raw)
    assert PendingLabels.from_dict(orjson.loads(raw)) == pending
