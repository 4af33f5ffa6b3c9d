"""Customer value models: spend in the next 30 days, learned online.

The target is heavy-tailed (most users spend nothing in a month, a few
spend a lot), so the learner (`models.learners.Regressor`) fits log1p(spend)
and predicts back on the money scale. It learns the *correction* to a prior,
the last 30 days' spend (`last_month_spend`, also the baseline we report):
a value label takes 30 days of event time to arrive, and until the first
ones do, a model that predicts the prior is as good as the baseline instead
of predicting nothing (on a 60-day run, the evaluation days before day 30
see no value label at all). Two candidates for the correction:

- `linear()`: StandardScaler | LinearRegression(Adam): cheap, and on a log
  scale nearly as good as anything when spend follows past spend.
- `tree()`: a Hoeffding Adaptive Tree regressor with linear leaves: catches
  thresholds (a user with no purchase in 30 days spends ~0) at a few times
  the cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from river import linear_model, optim, preprocessing, tree

from models.learners import Regressor

__all__ = ["last_month_spend", "learner", "linear", "tree_model"]

Kind = Literal["linear", "tree"]


def linear(lr: float = 0.01, l2: float = 1e-4) -> Any:
    """StandardScaler | LinearRegression(Adam(lr), L2) on log1p(spend)."""
    return preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.Adam(lr), l2=l2, intercept_lr=lr
    )


def tree_model(seed: int = 42) -> Any:
    """A Hoeffding Adaptive Tree regressor with model leaves."""
    return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeRegressor(
        grace_period=100, leaf_prediction="model", seed=seed
    )


def last_month_spend(x: Mapping[str, float]) -> float:
    """The prior: the next 30 days' spend will be the last 30 days'.

    >>> last_month_spend({"spend_30d": 42.0})
    42.0
    """
    return float(x.get("spend_30d", 0.0))


def learner(kind: Kind = "linear", **options: Any) -> Regressor:
    """The candidate `kind` behind `Learner` (sanitised inputs, log1p target, corrections to the prior)."""
    if kind == "linear":
        return Regressor(linear(**options), prior=last_month_spend)
    if kind == "tree":
        return Regressor(tree_model(**options), prior=last_month_spend)
    raise ValueError(f"unknown CLV model {kind!r}; choose linear or tree")
