"""The models' part of the batch step: delayed labels and offer rewards come out of the worker's step.

Driven through `streams.step.step` with a `ModelStage`, as the worker runs it.
All users here sit on one partition, so the event clock's watermark is simply
the latest event folded (the multi-partition rule is tests/unit/test_clock.py's).
"""

from __future__ import annotations

from typing import Any

from features.definitions import DAY_MS, HOUR_MS
from features.state import UserState
from models.offers import by_id, load_offers
from nudge.settings import Settings
from streams.model_stage import OBSERVE_SILENT_FOR_MS, ModelStage, model_stage_for
from streams.step import StepResult, expected_partition, step
from tests.unit.test_features import T0, make
from tests.unit.test_step import CONFIG, P, msg_of

NOW = T0 + 120 * DAY_MS
# Users of one partition: the clock's watermark then follows the latest event.
USERS = [u for u in (f"user{i}" for i in range(200)) if expected_partition(u.encode(), P) == 0][:4]
A, B, C, CLOCK = USERS
CATALOG = by_id(load_offers())
OFFER = next(o for o in CATALOG.values() if o.category is not None)


def batch(stage: ModelStage, states: dict[str, UserState], *events: Any) -> StepResult:
    result = step(states, [msg_of(e, offset=i) for i, e in enumerate(events)], CONFIG, NOW, models=stage)
    states.update(result.states)
    return result


def tick(name: str, at_ms: int) -> tuple[Any, ...]:
    """Events of the clock user on every input topic: the watermark is the slowest topic's latest."""
    return (
        make(f"{name}-c", "page_view", at_ms, user=CLOCK),
        make(f"{name}-a", "app_open", at_ms, user=CLOCK),
        make(f"{name}-p", "purchase", at_ms, user=CLOCK),
    )


def churn(result: StepResult) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for e in result.examples:
        if e.target == "churn" and e.user_id != CLOCK:
            out.setdefault(e.user_id, set()).add(e.label)
    return out


def test_a_user_silent_past_the_horizon_is_labelled_churned_without_an_event_of_their_own() -> None:
    """Observed at its daily boundaries while silent; the first one's horizon passes with no event."""
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("a1", "page_view", T0, user=A))
    # other users' events move event time on; A is not in these batches
    assert churn(batch(stage, states, *tick("c1", T0 + 14 * DAY_MS))) == {}  # its first boundary is after T0
    result = batch(stage, states, *tick("c2", T0 + 15 * DAY_MS))
    assert churn(result) == {A: {1.0}}
    assert A in result.states  # swept in: its changelog entry carries the resolved labels
    assert [c for c, _ in result.changelog].count(A.encode()) == 1
    first = min(e.observed_at for e in result.examples if e.user_id == A)
    assert T0 < first <= T0 + DAY_MS and first - T0 == (first - T0) % DAY_MS


def test_a_return_within_the_horizon_is_labelled_zero_at_the_event() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("b1", "page_view", T0, user=B))
    batch(stage, states, *tick("c1", T0 + 3 * DAY_MS))  # B observed while silent
    result = batch(stage, states, make("b2", "app_open", T0 + 3 * DAY_MS + 1, user=B))
    assert churn(result) == {B: {0.0}}
    assert len([e for e in result.examples if e.target == "churn"]) >= 3  # one per day of silence


def test_a_silent_user_teaches_for_90_days_after_its_latest_event_then_only_is_scored() -> None:
    """Scored every day however long silent, so observed for labels too: not just the horizon's 14 days."""
    stage, states = model_stage_for(Settings.from_env({})), {}
    assert stage.observe_for_ms == OBSERVE_SILENT_FOR_MS == 90 * DAY_MS
    batch(stage, states, make("a1", "page_view", T0, user=A))
    observed: set[int] = set()
    for day in range(15, 121, 15):
        result = batch(stage, states, *tick(f"c{day}", T0 + day * DAY_MS))
        observed |= {e.observed_at for e in result.examples if e.user_id == A and e.target == "churn"}
    days = sorted((at - T0) // DAY_MS for at in observed)
    # one per day of silence for 90 days, and none in the 30 days after (event time ran to day 120)
    assert days[0] == 0 and days[-1] == 89 and len(days) == 90


def test_a_push_received_is_not_a_return() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("b1", "page_view", T0, user=B))
    received = make("p1", "push_received", T0 + 2 * DAY_MS, user=B, campaign_id="newsletter")
    assert churn(batch(stage, states, received)) == {}
    assert 1.0 in churn(batch(stage, states, *tick("c1", T0 + 15 * DAY_MS)))[B]


def test_value_labels_sum_the_spend_of_30_days_after_the_observation_and_a_duplicate_counts_once() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("a1", "page_view", T0, user=A))
    buy = make("o1", "purchase", T0 + DAY_MS + 1, user=A, total=25.0)
    batch(stage, states, buy)
    batch(stage, states, buy)  # redelivered
    batch(stage, states, make("o2", "purchase", T0 + 32 * DAY_MS, user=A, total=99.0))  # after the first window
    result = batch(stage, states, *tick("c1", T0 + 33 * DAY_MS))
    clv = sorted((e.observed_at, e.label) for e in result.examples if e.target == "clv_30d" and e.user_id == A)
    assert clv[0][1] == 25.0 and T0 < clv[0][0] <= T0 + DAY_MS


def test_an_offer_purchased_within_the_window_is_rewarded_once_and_an_ignored_one_gets_zero() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, *tick("x", T0))
    batch(stage, states, make("r1", "push_received", T0 + HOUR_MS, user=A, campaign_id=OFFER.id))
    batch(stage, states, make("r2", "push_received", T0 + HOUR_MS, user=C, campaign_id=OFFER.id))
    result = batch(stage, states, make("o1", "purchase", T0 + 2 * HOUR_MS, user=A, offer_id=OFFER.id, total=5.0))
    assert [(r.user_id, r.offer_id, r.reward) for r in result.rewards] == [(A, OFFER.id, 1.0)]
    assert 0 < result.rewards[0].propensity <= 1
    result = batch(stage, states, *tick("y", T0 + HOUR_MS + 72 * HOUR_MS))
    assert [(r.user_id, r.reward) for r in result.rewards if r.user_id != CLOCK] == [(C, 0.0)]


def test_pending_labels_survive_the_changelog_and_a_new_stage_finds_them_again() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("a1", "page_view", T0, user=A))
    batch(stage, states, *tick("c0", T0 + 2 * DAY_MS))
    # a restart: states come back from the changelog, the stage is new
    recovered = {uid: UserState.from_json(s.to_json()) for uid, s in states.items()}
    fresh = ModelStage(CATALOG)
    fresh.track(recovered.values())
    result = batch(fresh, recovered, *tick("c1", T0 + 15 * DAY_MS))
    assert churn(result) == {A: {1.0}}


def test_the_examples_do_not_depend_on_how_the_log_is_cut_into_batches() -> None:
    events = [make(f"e{i}", "page_view", T0 + i * 7 * HOUR_MS, user=USERS[i % 3]) for i in range(120)]
    events += list(tick("end", T0 + 60 * DAY_MS))

    def examples(size: int) -> set[tuple[str, float]]:
        stage, states, out = ModelStage(CATALOG), {}, set()
        for i in range(0, len(events), size):
            result = batch(stage, states, *events[i : i + size])
            out |= {(e.example_id, e.label) for e in result.examples}
        return out

    whole = examples(len(events))
    assert whole and examples(1) == whole and examples(7) == whole


def test_with_a_bundle_every_write_carries_the_scores_as_of_the_watermark() -> None:
    from models.bundle import SCORE_FIELDS, new_bundle
    from models.segments import load_tiers

    stage, states = ModelStage(CATALOG), {}
    assert all(not set(SCORE_FIELDS) & set(w.fields) for w in batch(stage, states, *tick("x", T0)).writes)
    stage.bundle, stage.tiers = new_bundle(list(CATALOG)), load_tiers("deploy/config/tiers.yaml")
    batch(stage, states, make("a1", "page_view", T0 + HOUR_MS, user=A))
    result = batch(stage, states, *tick("y", T0 + 20 * DAY_MS))  # A is swept in: its score is redone
    write = next(w for w in result.writes if w.user_id == A)
    assert {"churn_score", "clv_30d", "member_tier", "models_version"} <= set(write.fields)
    assert 0.0 <= float(write.fields["churn_score"]) <= 1.0
    assert write.fields["models_version"] == "0"


def _scored(stage: ModelStage, states: dict[str, UserState], *events: Any) -> dict[str, dict[str, str]]:
    return {w.user_id: w.fields for w in batch(stage, states, *events).writes}


def _with_bundle() -> ModelStage:
    from models.bundle import new_bundle
    from models.segments import load_tiers

    stage = ModelStage(CATALOG, tiers=load_tiers("deploy/config/tiers.yaml"))
    stage.use(new_bundle(list(CATALOG)))
    return stage


def test_a_silent_user_is_rescored_every_day_long_after_its_labels_are_done() -> None:
    """Churn risk must keep meaning "as of now" for a user gone for months, not only while labels are open."""
    stage, states = _with_bundle(), {}
    batch(stage, states, make("a1", "page_view", T0, user=A))
    rescored_on = []
    for day in range(40, 44):
        fields = _scored(stage, states, *tick(f"d{day}", T0 + day * DAY_MS))
        if A in fields:
            rescored_on.append(day)
            assert float(fields[A]["churn_score"]) >= 0.0
    assert rescored_on == [40, 41, 42, 43]  # the first at the catch-up, then one per day of event time


def test_a_new_snapshot_rescores_every_user_within_the_sweep_budget_per_batch() -> None:
    from models.bundle import new_bundle

    stage, states = _with_bundle(), {}
    stage.min_sweep_per_batch = 2  # and a one-event batch: two users swept per batch
    batch(stage, states, *tick("t0", T0), *(make(f"u{i}", "page_view", T0, user=u) for i, u in enumerate((A, B, C))))
    quiet = T0 + HOUR_MS  # no daily boundary passes: only the snapshot's pass rescores
    assert set(_scored(stage, states, make("q0", "app_open", quiet, user=CLOCK))) == {CLOCK}
    assert not stage.backlog()
    fresh = new_bundle(list(CATALOG))
    fresh.version = 7
    stage.use(fresh)
    first = _scored(stage, states, make("q1", "app_open", quiet + 1, user=CLOCK))
    assert stage.backlog()  # one left: an idle batch of the shell would take it
    second = _scored(stage, states)
    assert len(set(first) - {CLOCK}) == 2 and set(second) - {CLOCK} == {A, B, C} - set(first)
    assert {f["models_version"] for f in (*first.values(), *second.values())} == {"7"}
    assert all(f["nbo_offer"] in CATALOG for uid, f in (*first.items(), *second.items()) if uid != CLOCK)
    assert not stage.backlog()


def test_the_offer_is_chosen_at_first_sight_and_with_new_models_not_on_every_event() -> None:
    from models.bundle import new_bundle

    stage, states = _with_bundle(), {}
    first = _scored(stage, states, make("a1", "page_view", T0, user=A))
    assert first[A]["nbo_offer"] in CATALOG and 0.0 <= float(first[A]["nbo_score"]) <= 1.0
    again = _scored(stage, states, make("a2", "page_view", T0 + HOUR_MS, user=A))
    assert "nbo_offer" not in again[A] and "churn_score" in again[A]
    daily = _scored(stage, states, *tick("d2", T0 + 2 * DAY_MS))  # A's daily rescore: the cheap fields only
    assert "churn_score" in daily[A] and "nbo_offer" not in daily[A]
    stage.use(new_bundle(list(CATALOG)))
    assert _scored(stage, states, *tick("d3", T0 + 2 * DAY_MS + 1))[A]["nbo_offer"] in CATALOG


def test_a_message_sent_is_not_the_users_activity() -> None:
    """nudge's own record of a send never reaches the fold: no event, no recency, no return."""
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, make("b1", "page_view", T0, user=B))
    before = states[B].features()
    sent = make("s1", "message_sent", T0 + 2 * DAY_MS, user=B, campaign_id="win_back", channel="push")
    result = batch(stage, states, sent)
    assert result.counts == {("app-events", "system"): 1}
    assert states[B].features() == before  # events_total, last_event_ts, windows, lifecycle: untouched
    assert churn(result) == {}
    assert 1.0 in churn(batch(stage, states, *tick("c1", T0 + 15 * DAY_MS)))[B]  # still silent: churned


def test_an_sms_send_opens_the_offers_exposure_and_a_push_send_waits_for_the_device() -> None:
    stage, states = ModelStage(CATALOG), {}
    batch(stage, states, *tick("x", T0))
    sms = make("s1", "message_sent", T0 + HOUR_MS, user=A, campaign_id=OFFER.id, channel="sms")
    push = make("s2", "message_sent", T0 + HOUR_MS, user=C, campaign_id=OFFER.id, channel="push")
    batch(stage, states, sms, push)
    buy_a = make("o1", "purchase", T0 + 2 * HOUR_MS, user=A, offer_id=OFFER.id, total=5.0)
    buy_c = make("o2", "purchase", T0 + 2 * HOUR_MS, user=C, offer_id=OFFER.id, total=5.0)
    result = batch(stage, states, buy_a, buy_c)
    # the SMS's send was its exposure; the push's exposure opens only with the device's push_received
    assert [(r.user_id, r.offer_id, r.reward) for r in result.rewards] == [(A, OFFER.id, 1.0)]
    batch(stage, states, sms)  # delivery wrote it again after a crash: the same time and offer, no new exposure
    again = batch(stage, states, *tick("y", T0 + 80 * HOUR_MS))
    assert [r for r in again.rewards if r.user_id == A] == []
