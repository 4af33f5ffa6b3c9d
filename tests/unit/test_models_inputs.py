"""models.inputs: features as of now, and the sanitising gate before any model."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from features.definitions import DAY_MS, HOUR_MS, WINDOWED
from features.state import FoldConfig, UserState, fold
from models.inputs import INPUTS, MODEL_KEYS, model_inputs, sanitise, window_total
from nudge.events import Event
from tests.unit.test_features import make

BASE = 1_700_000_000_000 // DAY_MS * DAY_MS  # a day boundary, so bucket edges are easy to reason about
CONFIG = FoldConfig()
NAMES = [i.name for i in INPUTS]


def state_of(events: list[Event]) -> UserState:
    state = UserState("u1")
    for ev in events:
        fold(state, ev, CONFIG)
    return state


# --- sanitise -------------------------------------------------------------------

_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0]),
    st.integers(min_value=-(10**30), max_value=10**30).map(float),
)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)), _floats))
def test_any_floats_sanitise_to_finite_values_within_bounds(values: dict[str, float]) -> None:
    clean, repairs = sanitise(values)
    assert tuple(clean) == MODEL_KEYS
    for spec in INPUTS:
        v = clean[spec.name]
        assert math.isfinite(v)
        assert spec.lo <= v <= spec.hi
        if spec.optional:
            indicator = clean[spec.missing_key]
            assert indicator == (0.0 if math.isfinite(values.get(spec.name, math.nan)) else 1.0)
    given_declared = [values[n] for n in NAMES if n in values]
    assert repairs["non_finite"] == sum(1 for v in given_declared if not math.isfinite(v))
    assert repairs["missing"] == len(NAMES) - len(given_declared)
    assert repairs["clipped"] == sum(
        1
        for spec in INPUTS
        if spec.name in values and math.isfinite(values[spec.name]) and not spec.lo <= values[spec.name] <= spec.hi
    )
    assert repairs["unknown"] == sum(1 for k in values if k not in NAMES)
    # The stage sanitises what an observation keeps, the learner sanitises again: a second
    # pass must change nothing (it used to read a filled-in default as a real value).
    again, second = sanitise(clean)
    assert again == clean and second["unknown"] == second["clipped"] == second["non_finite"] == 0


def test_missing_is_filled_the_same_way_wherever_it_happens() -> None:
    # Absent, NaN and None all give the declared default and the indicator: training and scoring agree.
    absent, _ = sanitise({})
    nan, _ = sanitise(dict.fromkeys(NAMES, math.nan))
    none, _ = sanitise(dict.fromkeys(NAMES))  # type: ignore[arg-type]
    assert absent == nan == none
    assert all(absent[i.name] == i.default for i in INPUTS)
    assert all(absent[i.missing_key] == 1.0 for i in INPUTS if i.optional)


def test_a_fresh_state_has_no_recency_and_sanitises_with_indicators() -> None:
    raw = model_inputs(UserState("u0"), BASE)
    assert "recency_days" not in raw
    assert "days_since_purchase" not in raw
    clean, repairs = sanitise(raw)
    assert clean["recency_days_missing"] == 1.0
    assert repairs["non_finite"] == repairs["clipped"] == repairs["unknown"] == 0


# --- as of now --------------------------------------------------------------------


def test_silent_user_recency_grows_while_events_stay_the_same() -> None:
    state = state_of([make(i, "page_view", BASE + i * HOUR_MS) for i in range(30)])
    before = state.to_json()
    days = [2, 3, 6, 9, 16, 31, 60]  # events span hours 0..29 of day 0
    seen = [model_inputs(state, BASE + d * DAY_MS) for d in days]
    assert state.to_json() == before  # reading as of now changes nothing
    recencies = [s["recency_days"] for s in seen]
    assert recencies == sorted(recencies) and len(set(recencies)) == len(recencies)
    assert [s["tenure_days"] for s in seen] == [float(d) for d in days]
    assert {s["orders_total"] for s in seen} == {0.0}
    assert [s["events_7d"] for s in seen] == [30, 30, 30, 0, 0, 0, 0]
    assert [s["events_30d"] for s in seen] == [30, 30, 30, 30, 30, 0, 0]
    # the worker's own features stay frozen at the last event: the reason this module exists
    assert state.features()["events_7d"] == "30"


def test_windows_as_of_now_drop_old_events() -> None:
    state = state_of(
        [
            make(1, "purchase", BASE + HOUR_MS, total=20.0),
            make(2, "purchase", BASE + 20 * DAY_MS, total=5.5),
            make(3, "app_open", BASE + 20 * DAY_MS + HOUR_MS),
        ]
    )
    at_25 = model_inputs(state, BASE + 25 * DAY_MS)
    assert (at_25["purchases_7d"], at_25["purchases_30d"], at_25["spend_30d"]) == (1, 2, 25.5)
    assert (at_25["events_7d"], at_25["events_30d"], at_25["app_opens_7d"]) == (2, 3, 1)
    assert at_25["activity_trend"] == 2 / 3
    at_31 = model_inputs(state, BASE + 31 * DAY_MS)
    assert (at_31["purchases_30d"], at_31["spend_30d"], at_31["events_30d"]) == (1, 5.5, 2)
    # lifetime values never drop
    assert (at_31["orders_total"], at_31["spend_total"], at_31["avg_order_value"]) == (2, 25.5, 12.75)
    assert at_31["days_since_purchase"] == 11
    # and nothing after `now` counts: as of day 10 only the first purchase had happened
    at_10 = model_inputs(state, BASE + 10 * DAY_MS)
    assert (at_10["purchases_30d"], at_10["spend_30d"]) == (1, 20.0)


def test_windows_as_of_the_latest_event_match_the_workers_features() -> None:
    rng = random.Random(7)
    kinds = ["page_view", "add_to_cart", "app_open", "purchase", "search"]
    events = [
        make(i, k, BASE + rng.randrange(45 * DAY_MS), **({"item_id": "x", "price": 3.0} if k == "add_to_cart" else {}))
        for i, k in enumerate(rng.choice(kinds) for _ in range(400))
    ]
    events.sort(key=lambda e: e.ts)
    state = state_of(events)
    assert state.as_of is not None
    features = state.features()
    for w in WINDOWED:
        assert window_total(state, w, state.as_of) / w.scale == float(features[w.name]), w.name


def test_cart_and_consent() -> None:
    state = state_of(
        [
            make(1, "purchase", BASE),
            make(2, "add_to_cart", BASE + DAY_MS, item_id="a", price=4.0),
            make(3, "add_to_cart", BASE + DAY_MS + 1, item_id="b", price=6.5),
            make(4, "opt_in", BASE + DAY_MS + 2),
        ]
    )
    now = model_inputs(state, BASE + 2 * DAY_MS)
    assert (now["cart_open"], now["cart_size"], now["cart_value"]) == (1, 2, 10.5)
    assert (now["push_opt_in"], now["sms_opt_in"]) == (1, 0)
    assert now["days_since_add_to_cart"] == (DAY_MS - 1) / DAY_MS
