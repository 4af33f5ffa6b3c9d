"""models.evaluation: rolling AUC is exact (brute force agrees), baselines pick the best declared feature."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics

from models.evaluation import BaselineAUC, RollingAUC, rolling_log_loss, rolling_mae


def brute_auc(pairs: list[tuple[float, int]]) -> float | None:
    pos = [s for s, y in pairs if y]
    neg = [s for s, y in pairs if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# Few distinct scores on purpose: ties are where approximations go wrong.
_scores = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, -3.0]), st.floats(-1e6, 1e6))


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 25), stream=st.lists(st.tuples(_scores, st.integers(0, 1)), max_size=80))
def test_rolling_auc_equals_brute_force_after_every_update(window: int, stream: list[tuple[float, int]]) -> None:
    auc = RollingAUC(window)
    for i, (score, label) in enumerate(stream):
        auc.update(score, label)
        expected = brute_auc(stream[max(0, i + 1 - window) : i + 1])
        got = auc.get()
        assert (got is None) == (expected is None)
        if got is not None:
            assert got == pytest.approx(expected, abs=1e-12)
        assert len(auc) == min(i + 1, window)


def test_river_rolling_roc_auc_counts_ties_as_zero() -> None:
    # Why RollingAUC exists: this is the case River gets wrong.
    river_auc = metrics.RollingROCAUC(window_size=2)
    ours = RollingAUC(2)
    for score, label in [(0.6, 1), (0.6, 0)]:
        river_auc.update(label, score)
        ours.update(score, label)
    assert ours.get() == 0.5
    assert river_auc.get() != 0.5


def test_rolling_auc_refuses_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="finite"):
        RollingAUC(3).update(float("nan"), 1)


def test_baseline_picks_the_best_declared_feature() -> None:
    rng = random.Random(11)
    baseline = BaselineAUC({"recency_days": 1, "events_7d": -1, "noise": 1}, window=500)
    for _ in range(2000):
        churned = rng.random() < 0.3
        recency = rng.uniform(5, 30) if churned else rng.uniform(0, 10)
        events = rng.randrange(0, 3) if churned else rng.randrange(1, 6)
        baseline.update({"recency_days": recency, "events_7d": float(events), "noise": rng.random()}, churned)
    best = baseline.best()
    assert best is not None
    name, auc = best
    assert name == "recency_days"
    assert auc == pytest.approx(baseline.aucs["recency_days"].get())
    assert 0.45 < (baseline.aucs["noise"].get() or 0) < 0.55
    assert (baseline.aucs["events_7d"].get() or 0) > 0.6  # -1 direction: fewer events, more churn


def test_baseline_needs_directions() -> None:
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        BaselineAUC({"recency_days": 2})


def test_rolling_log_loss_and_mae_forget_old_updates() -> None:
    mae = rolling_mae(window=2)
    for y, p in [(100.0, 0.0), (1.0, 2.0), (3.0, 2.0)]:
        mae.update(y, p)
    assert mae.get() == 1.0
    loss = rolling_log_loss(window=1)
    loss.update(True, 0.01)
    loss.update(True, 0.99)
    assert loss.get() < 0.02
