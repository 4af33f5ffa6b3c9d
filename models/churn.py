"""Churn-risk models: factories returning River models, and the learner to hold them.

Churn here is "no event in the next 14 days" (the label, see the issue's
labelling rule); the models see `models.inputs` as of the moment scored.
What the models see (`churn_features`): the sanitised inputs with counts,
days and money on a log1p scale (the step from 0 to 1 event in a week says
more than the step from 40 to 41), and without the lifetime totals and the
tenure. Those grow with the age of the system as much as with the user: in
the first weeks every user is "new" and every total small, so a model that
learned on them in week 2 misranks users in week 5 (measured with
`nudge eval`: dropping them took the all-users AUC from 0.947 to 0.957 and
the early-subset AUC from 0.824 to 0.859).

Three candidates, compared on live metrics (models.evaluation, `nudge eval`):

- `logistic()`: log features | StandardScaler | LogisticRegression with
  plain SGD. Scaling matters more than anything else for SGD on inputs
  whose ranges differ. Left unbalanced: churn labels arrive two weeks late,
  so the first positives are few, and weighting them by the class ratio
  made early models swing (AUC 0.81 balanced vs 0.91 unbalanced with Adam;
  SGD 0.947 vs Adam 0.913, both unbalanced). This is the one we keep: best
  live AUC and the cheapest to learn and score.
- `forest()`: an Aggregated Mondrian Forest. Nonlinear, no scaling, no
  learning rate, but with 14-day delayed labels it ranked far worse on the
  same run (AUC 0.79-0.81) at ten times the learning cost.
- `adaptive_tree()`: a Hoeffding Adaptive Tree, which replaces branches when
  the concept drifts.

`learner(kind)` gives the candidate wrapped, ready for the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Literal

from river import compose, forest, linear_model, optim, preprocessing, tree

from models.learners import Classifier

__all__ = ["LEFT_OUT", "LOG_SCALED", "adaptive_tree", "churn_features", "forest_model", "learner", "logistic"]

Kind = Literal["logistic", "forest", "adaptive_tree"]

# Inputs read on a log1p scale: counts, days and money.
LOG_SCALED: Final = frozenset(
    {
        "recency_days",
        "events_1h",
        "events_1d",
        "events_7d",
        "events_30d",
        "clicks_1d",
        "clicks_30d",
        "add_to_cart_1d",
        "add_to_cart_30d",
        "app_opens_7d",
        "purchases_7d",
        "purchases_30d",
        "offer_purchases_30d",
        "spend_30d",
        "days_since_purchase",
        "days_since_add_to_cart",
        "cart_size",
        "cart_value",
    }
)
# Inputs that measure the age of the system as much as the user's (see the module's docstring).
LEFT_OUT: Final = frozenset(
    {
        "tenure_days",
        "tenure_days_missing",
        "days_since_install",
        "days_since_install_missing",
        "orders_total",
        "spend_total",
        "avg_order_value",
        "avg_order_value_missing",
    }
)


def churn_features(x: Mapping[str, float]) -> dict[str, float]:
    """Sanitised inputs as the churn models see them (a module-level function: it pickles by name).

    >>> churn_features({"recency_days": math.e - 1, "tenure_days": 30.0, "cart_open": 1.0})
    {'recency_days': 1.0, 'cart_open': 1.0}
    """
    return {k: math.log1p(v) if k in LOG_SCALED else v for k, v in x.items() if k not in LEFT_OUT}


def _shaped(model: Any) -> Any:
    return compose.FuncTransformer(churn_features) | model


def logistic(lr: float = 0.01, l2: float = 1e-4) -> Any:
    """Log features | StandardScaler | LogisticRegression(SGD(lr), L2): the model we keep."""
    return _shaped(
        preprocessing.StandardScaler()
        | linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2, intercept_lr=lr)
    )


def forest_model(n_estimators: int = 10, seed: int = 42) -> Any:
    """Log features | an Aggregated Mondrian Forest classifier (no scaling needed)."""
    return _shaped(forest.AMFClassifier(n_estimators=n_estimators, use_aggregation=True, seed=seed))


def adaptive_tree(seed: int = 42) -> Any:
    """Log features | a Hoeffding Adaptive Tree classifier: splits when the evidence is enough, adapts to drift."""
    return _shaped(tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, leaf_prediction="nba", seed=seed))


def learner(kind: Kind = "logistic", **options: Any) -> Classifier:
    """The candidate `kind` behind `Learner` (unbalanced: see the module's docstring)."""
    if kind == "logistic":
        return Classifier(logistic(**options))
    if kind == "forest":
        return Classifier(forest_model(**options))
    if kind == "adaptive_tree":
        return Classifier(adaptive_tree(**options))
    raise ValueError(f"unknown churn model {kind!r}; choose logistic, forest or adaptive_tree")
