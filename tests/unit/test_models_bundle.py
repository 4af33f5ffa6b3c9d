"""models.bundle: the trainer/scorer contract scores in the agreed formats, learns, and survives a snapshot."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

import models.bundle as bundle_module
import models.inputs
import models.learners
from features.state import UserState
from models.bandit import BanditReward, reward_id
from models.bundle import (
    CUTS_MIN_USERS,
    SCORE_FIELDS,
    ModelBundle,
    bundle_from_snapshot,
    learn_example,
    learn_reward,
    new_bundle,
    score,
)
from models.churn import churn_prior
from models.inputs import model_inputs, sanitise
from models.labels import DAY_MS, Example, example_id
from models.learners import prior_weight
from models.segments import SEGMENTS, Tiers
from models.snapshot import SnapshotRefused, open_snapshot, seal

KEY = b"b" * 32
OFFERS = ("freeship", "fashion30", "home10")
TIERS = Tiers.model_validate(
    {
        "tiers": [
            {"name": "bronze", "min_spend": 0, "min_orders": 0},
            {"name": "gold", "min_spend": 100, "min_orders": 5},
        ]
    }
)
NOW = 1_700_000_000_000


def churn_example(rng: random.Random, i: int) -> Example:
    """Churners have been silent for longer and were less active (noisy, so AUC stays below 1)."""
    churned = rng.random() < 0.3
    recency = rng.expovariate(1 / 12) if churned else rng.expovariate(1 / 3)
    orders = float(rng.randrange(0, 3 if churned else 10))
    raw = {
        "recency_days": recency,
        "events_7d": float(rng.randrange(0, 5 if churned else 40)),
        "orders_total": orders,
        "spend_total": orders * rng.uniform(10, 60),
    }
    inputs, _ = sanitise(raw)
    return Example(example_id(f"u{i}", i, "churn"), f"u{i}", "churn", i, i + 1, inputs, float(churned))


def clv_example(rng: random.Random, i: int) -> Example:
    spend = rng.choice([0.0, 0.0, rng.uniform(5, 200)])
    inputs, _ = sanitise({"spend_30d": spend, "purchases_30d": float(spend > 0)})
    label = spend * rng.uniform(0.5, 1.5) if rng.random() < 0.7 else 0.0
    return Example(example_id(f"u{i}", i, "clv_30d"), f"u{i}", "clv_30d", i, i + 1, inputs, label)


def user(spend_cents: int = 12_345, orders: int = 3) -> UserState:
    state = UserState("u1")
    state.first_seen = NOW - 40 * DAY_MS
    state.last_event_ts = NOW - 2 * DAY_MS
    state.last_purchase_ts = NOW - 5 * DAY_MS
    state.orders_total = orders
    state.spend_total_cents = spend_cents
    return state


def trained(n: int = 3000, seed: int = 1) -> ModelBundle:
    rng = random.Random(seed)
    bundle = new_bundle(OFFERS)
    for i in range(n):
        learn_example(bundle, churn_example(rng, i))
        if i % 3 == 0:
            learn_example(bundle, clv_example(rng, i))
    return bundle


def test_untrained_bundle_scores_every_field_in_its_format() -> None:
    bundle = new_bundle(OFFERS)
    out = score(bundle, user(), NOW, TIERS, with_offer=True)
    # No cut points yet: no RFM grades, everything else present.
    assert set(out) == set(SCORE_FIELDS) - {"rfm_r", "rfm_f", "rfm_m", "rfm_segment"}
    assert re.fullmatch(r"[01]\.\d{4}", out["churn_score"])
    assert re.fullmatch(r"\d+\.\d{2}", out["clv_30d"])
    assert out["member_tier"] == "gold"  # 123.45 spent
    assert out["nbo_offer"] in OFFERS and re.fullmatch(r"-?\d+\.\d{4}", out["nbo_score"])
    assert out["models_version"] == "0"
    assert "nbo_offer" not in score(bundle, user(), NOW, TIERS, with_offer=False)
    # untrained, the churn score is the fixed prior's, not the untrained model's 0.5
    assert out["churn_score"] == f"{churn_prior(sanitise(model_inputs(user(), NOW))[0]):.4f}" != "0.5000"


def test_scoring_sanitises_the_inputs_once_for_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer's hot path: one pass of the gate per score, not one per model (it was three)."""
    bundle = trained(300)
    calls = []
    real = models.inputs.sanitise

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    for module in (models.inputs, bundle_module, models.learners):
        monkeypatch.setattr(module, "sanitise", counting)
    out = score(bundle, user(), NOW, TIERS, with_offer=False)
    assert len(calls) == 1 and float(out["churn_score"]) == pytest.approx(
        bundle.churn.predict(model_inputs(user(), NOW)), abs=5e-5
    )


def test_a_user_never_seen_scores_without_error() -> None:
    out = score(trained(300), UserState("nobody"), NOW, TIERS, with_offer=True)
    assert out["member_tier"] == "bronze" and out["rfm_r"] == "1"  # no recency: the worst grade


def test_trained_bundle_scores_rfm_and_churn_rises_with_silence() -> None:
    bundle = trained()
    out = score(bundle, user(), NOW, TIERS, with_offer=False)
    assert set(out) == set(SCORE_FIELDS) - {"nbo_offer", "nbo_score"}
    assert all(out[f] in "12345" and len(out[f]) == 1 for f in ("rfm_r", "rfm_f", "rfm_m"))
    assert out["rfm_segment"] in SEGMENTS
    later = score(bundle, user(), NOW + 30 * DAY_MS, TIERS, with_offer=False)
    assert float(later["churn_score"]) > float(out["churn_score"])  # nobody sent an event
    assert int(later["rfm_r"]) <= int(out["rfm_r"])


def test_learning_a_churn_stream_lifts_auc_and_reports_quality() -> None:
    bundle = trained()
    q = bundle.quality
    positives = bundle.churn.n_positive  # only 14-day labels were learned
    assert 600 < positives < 1200  # about 30 % churners
    assert bundle.learned == {"churn": 3000, "churn_7d": 0, "clv_30d": 1000, "rewards": 0, "churn_positive": positives}
    assert q["churn_auc"] > 0.75
    assert 0.5 < q["churn_baseline_auc"] < 1 and bundle.churn_baseline_feature in (
        "recency_days",
        "events_7d",
        "events_30d",
        "purchases_30d",
    )
    assert 0 < q["churn_log_loss"] < 0.69  # better than a coin
    assert q["clv_mae"] >= 0 and q["clv_baseline_mae"] >= 0


def test_early_labels_teach_the_churn_model_without_touching_its_quality_figures() -> None:
    rng = random.Random(3)
    bundle = new_bundle(OFFERS)
    for i in range(2000):
        e = churn_example(rng, i)
        learn_example(
            bundle, Example(example_id(e.user_id, i, "churn_7d"), e.user_id, "churn_7d", i, i + 1, e.inputs, e.label)
        )
    assert bundle.learned["churn_7d"] == 2000 and bundle.learned["churn"] == 0
    assert "churn_auc" not in bundle.quality  # the figures judge the 14-day question only
    silent, active = (
        sanitise({"recency_days": 30.0, "events_7d": 0.0})[0],
        sanitise({"recency_days": 0.2, "events_7d": 30.0})[0],
    )
    assert bundle.churn.predict(silent) > 0.5 > bundle.churn.predict(active)


def early(e: Example) -> Example:
    return Example(
        example_id(e.user_id, e.observed_at, "churn_7d"),
        e.user_id,
        "churn_7d",
        e.observed_at,
        e.resolved_at,
        e.inputs,
        e.label,
    )


def test_early_labels_retire_once_the_14_day_labels_brought_enough_positives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "EARLY_LABELS_UNTIL", 50)
    rng = random.Random(4)
    bundle = new_bundle(OFFERS)
    i = 0
    while bundle.learned["churn_positive"] < 50:
        e = churn_example(rng, i)
        assert learn_example(bundle, early(e)) is None  # still learned: too few 14-day positives
        assert learn_example(bundle, e) is None
        i += 1
    assert bundle.learned["churn_7d"] == i
    probe = sanitise({"recency_days": 9.0, "events_7d": 1.0})[0]
    before = bundle.churn.predict(probe)
    for j in range(200):
        assert learn_example(bundle, early(churn_example(rng, i + j))) == "early_label_retired"
    assert bundle.learned["churn_7d"] == i and bundle.churn.predict(probe) == before  # the model did not move
    # the 14-day labels go on teaching
    learn_example(bundle, churn_example(rng, i + 200))
    assert bundle.learned["churn"] == i + 1


def test_a_bundle_from_before_the_positive_count_keeps_learning_early_labels() -> None:
    bundle = new_bundle(OFFERS)
    del bundle.learned["churn_positive"]  # as pickled before the count existed
    assert learn_example(bundle, early(churn_example(random.Random(5), 0))) is None
    assert learn_example(bundle, churn_example(random.Random(5), 1)) is None
    assert "churn_positive" in bundle.learned


def test_a_value_label_that_is_not_a_number_is_not_learned() -> None:
    bundle = new_bundle(OFFERS)
    e = clv_example(random.Random(6), 0)
    bad = Example(e.example_id, e.user_id, e.target, e.observed_at, e.resolved_at, e.inputs, float("nan"))
    assert learn_example(bundle, bad) == "bad_label" and bundle.learned["clv_30d"] == 0


def test_rfm_cuts_appear_after_enough_users() -> None:
    rng = random.Random(2)
    bundle = new_bundle(OFFERS)
    for i in range(CUTS_MIN_USERS - 1):
        learn_example(bundle, churn_example(rng, i))
    assert bundle.cuts is None
    learn_example(bundle, churn_example(rng, CUTS_MIN_USERS))
    assert bundle.cuts is not None and bundle.cuts.r[0] <= bundle.cuts.r[3]


def test_an_example_of_a_user_never_seen_does_not_feed_the_rfm_sketch() -> None:
    bundle = new_bundle(OFFERS)
    inputs, _ = sanitise({})
    learn_example(bundle, Example("x", "u", "churn", 0, 1, inputs, 1.0))
    assert bundle.rfm.count == 0 and bundle.learned["churn"] == 1


def test_rewards_teach_the_bandit_and_report_the_rate() -> None:
    bundle = new_bundle(OFFERS)
    ctx, _ = sanitise({"recency_days": 1.0})
    for i in range(200):
        offer = OFFERS[i % 3]
        r = BanditReward(reward_id("u", i, offer), "u", offer, i, i + 1, ctx, float(offer == "home10"), 1 / 3)
        learn_reward(bundle, r)
    assert bundle.learned["rewards"] == 200
    assert bundle.quality["nbo_reward_rate"] == pytest.approx(1 / 3, abs=0.01)
    unknown = BanditReward("z", "u", "retired", 0, 1, ctx, 1.0, 0.5)
    assert learn_reward(bundle, unknown) == "unknown_offer"
    assert learn_reward(bundle, BanditReward("n", "u", "home10", 0, 1, ctx, float("nan"), 0.5)) == "bad_label"
    assert bundle.learned["rewards"] == 200


def test_a_sealed_bundle_opens_and_scores_identically() -> None:
    bundle = trained(1500)
    assert 0.0 < prior_weight(bundle.churn.n_positive, bundle.churn.prior_strength) < 1.0  # the blend is in play
    bundle.version = 7
    blob = seal(bundle, key=KEY, version=7, meta={"created_at": 0})
    opened = bundle_from_snapshot(open_snapshot(blob, key=KEY))
    for now in (NOW, NOW + 3 * DAY_MS, NOW + 40 * DAY_MS):
        assert score(opened, user(), now, TIERS, with_offer=True) == score(bundle, user(), now, TIERS, with_offer=True)
    assert opened.learned == bundle.learned and opened.quality == bundle.quality
    # and keeps learning alike
    rng = random.Random(9)
    for i in range(200):
        ex = churn_example(rng, i)
        learn_example(opened, ex)
        learn_example(bundle, ex)
    assert opened.quality == bundle.quality


def test_a_snapshot_holding_something_else_is_refused() -> None:
    blob = seal({"not": "a bundle"}, key=KEY, version=1, meta={"created_at": 0})
    with pytest.raises(SnapshotRefused) as refused:
        bundle_from_snapshot(open_snapshot(blob, key=KEY))
    assert refused.value.reason == "corrupt"
