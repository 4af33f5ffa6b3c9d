"""models.churn / models.clv / models.learners: they learn, never see NaN, and survive a snapshot."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import churn, clv
from models.evaluation import RollingAUC
from models.inputs import MODEL_KEYS, sanitise
from models.learners import Classifier, Learner, Regressor, prior_weight
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
    """Value labels take 30 days: until then the prior (last month's spend, if still active) is the answer, not 0."""
    learner = clv.learner("linear")
    active = {"spend_30d": 120.0, "recency_days": 0.5, "events_7d": 10.0}
    silent = {**active, "recency_days": 25.0, "events_7d": 0.0}
    assert learner.predict(active) == pytest.approx(clv.active_spend(sanitise(active)[0]))
    assert 100.0 < learner.predict(active) < 120.0  # nearly all of it: this user is around
    assert learner.predict(silent) < 0.1 * learner.predict(active)  # gone quiet: little expected
    assert learner.predict({**active, "spend_30d": 0.0}) == 0.0
    rng = random.Random(5)
    for _ in range(3000):  # every active user spends half of what they did
        past = rng.uniform(20, 400)
        learner.learn({**active, "spend_30d": past}, past / 2)
    assert learner.predict({**active, "spend_30d": 200.0}) == pytest.approx(100.0, rel=0.2)


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


@given(
    st.dictionaries(
        st.sampled_from([*MODEL_KEYS, "junk"]),
        st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 500),
        max_size=12,
    )
)
def test_predict_clean_on_sanitised_inputs_is_predict(raw: dict[str, float]) -> None:
    """The scorer sanitises once and calls predict_clean: the same answer as predict on the raw inputs."""
    churn_learner, clv_learner = churn.learner(), clv.learner()
    for i in range(30):  # something learned, so the models' own parts count too
        churn_learner.learn({"recency_days": float(i % 20), "events_7d": float(i % 7)}, float(i % 20 > 10))
        clv_learner.learn({"spend_30d": float(10 * i), "recency_days": 1.0, "events_7d": 3.0}, 5.0 * i)
    clean, _ = sanitise(raw)
    assert churn_learner.predict_clean(clean) == churn_learner.predict(raw)
    assert clv_learner.predict_clean(clean) == clv_learner.predict(raw)


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


# --- the cold-start prior ---------------------------------------------------------------------


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.floats(0.0, 1e6))
def test_the_priors_weight_starts_at_one_and_shrinks_as_positives_arrive(a: int, b: int, strength: float) -> None:
    lo, hi = sorted((a, b))
    w_lo, w_hi = prior_weight(lo, strength), prior_weight(hi, strength)
    assert 0.0 <= w_hi <= w_lo <= 1.0
    assert prior_weight(0, strength) == (1.0 if strength > 0 else 0.0)
    assert prior_weight(hi, 0.0) == 0.0


def test_the_priors_weight_halves_at_its_strength() -> None:
    assert prior_weight(1000, 1000.0) == 0.5
    assert prior_weight(3000, 1000.0) == 0.25
    assert prior_weight(-5, 1000.0) == 1.0  # a count never goes below 0


def _prior(recency: float | None, events_7d: float = 0.0) -> float:
    raw = {"events_7d": events_7d} if recency is None else {"recency_days": recency, "events_7d": events_7d}
    return churn.churn_prior(sanitise(raw)[0])


@given(st.floats(0.0, 1e7), st.floats(0.0, 1e7), st.floats(0.0, 1e7))
def test_churn_prior_is_a_probability_rising_with_silence_and_falling_with_activity(
    r1: float, r2: float, events: float
) -> None:
    short, long_ = sorted((r1, r2))
    p_short, p_long = _prior(short, events), _prior(long_, events)
    assert 0.0 <= p_short <= p_long <= 1.0
    assert _prior(short, events + 5.0) <= p_short


def test_churn_prior_separates_the_silent_from_the_active() -> None:
    assert _prior(0.2, 30.0) < 0.05 < 0.8 < _prior(14.0, 0.0)
    assert _prior(3.0) < _prior(10.0) < _prior(None)  # no event on record: treated as long silent
    assert _prior(None) == pytest.approx(_prior(30.0))


def test_an_untrained_churn_learner_predicts_its_prior_until_positives_arrive() -> None:
    """Negatives come first (a user's next event): they alone must not hand over to the model."""
    learner = churn.learner("logistic")
    x = {"recency_days": 6.0, "events_7d": 2.0}
    prior = churn.churn_prior(sanitise(x)[0])
    assert learner.predict(x) == pytest.approx(prior)
    for _ in range(500):
        learner.learn({"recency_days": 0.5, "events_7d": 10.0}, 0.0)
    assert learner.n_positive == 0 and learner.predict(x) == pytest.approx(prior)
    for _ in range(int(churn.PRIOR_STRENGTH)):
        learner.learn({"recency_days": 20.0, "events_7d": 0.0}, 1.0)
    model_alone = float(learner.model.predict_proba_one(sanitise(x)[0])[True])
    assert learner.predict(x) == pytest.approx(0.5 * prior + 0.5 * model_alone)  # as many positives as its strength


def test_a_churn_learner_without_prior_is_the_model_alone() -> None:
    learner = churn.learner("logistic", prior_strength=0.0)
    rng = random.Random(4)
    for _ in range(200):
        learner.learn(*toy_churn(rng))
    x = {"recency_days": 6.0, "events_7d": 2.0}
    assert learner.predict(x) == float(learner.model.predict_proba_one(sanitise(x)[0])[True])
    with pytest.raises(ValueError, match="prior_strength"):
        Classifier(_Spy(), prior=churn.churn_prior, prior_strength=-1.0)


def test_the_blended_churn_score_is_the_same_after_a_snapshot() -> None:
    rng = random.Random(6)
    learner = churn.learner("logistic")
    for _ in range(600):
        learner.learn(*toy_churn(rng))
    assert 0.0 < prior_weight(learner.n_positive, learner.prior_strength) < 1.0  # mid-blend
    opened = open_snapshot(seal(learner, key=KEY, version=1, meta={"created_at": 0}), key=KEY).models
    assert isinstance(opened, Classifier) and opened.prior is churn.churn_prior
    assert opened.n_positive == learner.n_positive
    probes = [toy_churn(rng)[0] for _ in range(50)]
    assert [opened.predict(x) for x in probes] == [learner.predict(x) for x in probes]


def test_a_classifier_pickled_before_the_prior_loads_as_the_model_alone() -> None:
    old = Classifier(_Spy())
    del old.__dict__["n_positive"]  # what an older snapshot's Classifier holds
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.predict({}) == 0.3
    loaded.learn({}, 1.0)
    assert loaded.n_positive == 1 and loaded.predict({}) == 0.3
