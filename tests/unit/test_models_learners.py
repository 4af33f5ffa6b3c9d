"""models.churn / models.clv / models.learners: they learn, never see NaN, and survive a snapshot."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from models import churn, clv
from models.evaluation import RollingAUC
from models.inputs import MODEL_KEYS
from models.learners import Classifier, Learner, Regressor
from models.snapshot import open_snapshot, seal

KEY = b"s" * 32


def toy_churn(rng: random.Random) -> tuple[dict[str, float], int]:
    """Separable: churners have been silent over 10 days, the others under 5."""
    churned = rng.random() < 0.25  # imbalanced, like churn
    recency = rng.uniform(10, 40) if churned else rng.uniform(0, 5)
    return {"recency_days": recency, "events_7d": float(rng.randrange(0 if churned else 3, 3 if churned else 30))}, int(
        churned
    )


@pytest.mark.parametrize("kind", ["logistic", "forest", "adaptive_tree"])
def test_churn_learners_learn_a_separable_problem(kind: Any) -> None:
    rng = random.Random(1)
    learner = churn.learner(kind)
    assert isinstance(learner, Learner)
    auc = RollingAUC(500)
    for i in range(3000):
        x, y = toy_churn(rng)
        if i >= 2500:
            auc.update(learner.predict(x), y)
        learner.learn(x, y)
    assert (auc.get() or 0) > 0.97
    assert learner.predict({"recency_days": 35.0, "events_7d": 0.0}) > learner.predict(
        {"recency_days": 0.5, "events_7d": 20.0}
    )


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_clv_learners_learn_spend(kind: Any) -> None:
    rng = random.Random(2)
    learner = clv.learner(kind)
    errors = []
    for i in range(3000):
        past = rng.choice([0.0, 0.0, rng.uniform(10, 300)])
        x = {"spend_30d": past, "purchases_30d": float(past > 0)}
        y = past * 1.1
        if i >= 2500:
            errors.append(abs(learner.predict(x) - y))
        learner.learn(x, y)
    mean_spend = 1.1 * 155 / 3
    assert sum(errors) / len(errors) < 0.5 * mean_spend  # well under predicting the mean for everybody
    assert all(learner.predict({"spend_30d": v}) >= 0 for v in (0.0, 1e9, -5.0))


def test_an_untrained_value_model_predicts_its_prior_and_learns_the_correction() -> None:
    """Value labels take 30 days: until then the prior (last month's spend) is the answer, not 0."""
    learner = clv.learner("linear")
    assert learner.predict({"spend_30d": 120.0}) == pytest.approx(120.0)
    assert learner.predict({"spend_30d": 0.0}) == 0.0
    rng = random.Random(5)
    for _ in range(3000):  # every user spends half of what they did
        past = rng.uniform(20, 400)
        learner.learn({"spend_30d": past}, past / 2)
    assert learner.predict({"spend_30d": 200.0}) == pytest.approx(100.0, rel=0.2)


class _Spy:
    """A stand-in River model that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        self.seen.append(x)
        return {True: 0.3, False: 0.7}

    def predict_one(self, x: dict[str, float]) -> float:
        self.seen.append(x)
        return math.log1p(5.0)

    def learn_one(self, x: dict[str, float], y: Any, w: float = 1.0) -> None:
        self.seen.append(x)


@pytest.mark.parametrize("wrapper", [Classifier, Regressor])
def test_nan_and_inf_never_reach_a_model(wrapper: Any) -> None:
    spy = _Spy()
    learner = wrapper(spy)
    bad = {"recency_days": math.nan, "events_7d": math.inf, "spend_30d": -math.inf, "cart_value": 1e300, "x": 1.0}
    learner.learn(bad, 1.0)
    learner.predict(bad)
    assert len(spy.seen) == 2
    for x in spy.seen:
        assert tuple(x) == MODEL_KEYS
        assert all(math.isfinite(v) for v in x.values())
    assert learner.repairs["non_finite"] == 6 and learner.repairs["clipped"] == 2 and learner.repairs["unknown"] == 2


def test_regressor_skips_a_non_finite_target() -> None:
    spy = _Spy()
    learner = Regressor(spy)
    learner.learn({}, math.nan)
    assert spy.seen == [] and learner.repairs["bad_target"] == 1
    assert learner.predict({}) == 0.0  # nothing learned: no prediction above the largest target seen
    learner.learn({}, 9.0)
    assert learner.predict({}) == pytest.approx(5.0)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown churn model"):
        churn.learner("svm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown CLV model"):
        clv.learner("gbm")  # type: ignore[arg-type]


def test_learners_round_trip_through_a_snapshot_and_keep_learning_alike() -> None:
    rng = random.Random(3)
    models = {"churn": churn.learner("logistic"), "churn_forest": churn.learner("forest"), "clv": clv.learner()}
    for _ in range(300):
        x, y = toy_churn(rng)
        for name, model in models.items():
            model.learn(x, y * 50.0 if name == "clv" else y)
    opened = open_snapshot(seal(models, key=KEY, version=1, meta={"created_at": 0}), key=KEY).models
    assert isinstance(opened, dict)
    probes = [toy_churn(rng) for _ in range(50)]
    for name, model in models.items():
        copy = opened[name]
        assert [copy.predict(x) for x, _ in probes] == [model.predict(x) for x, _ in probes]
        # the restored learner continues exactly where the original would
        for x, y in probes[:20]:
            copy.learn(x, y)
            model.learn(x, y)
        assert [copy.predict(x) for x, _ in probes] == [model.predict(x) for x, _ in probes]
