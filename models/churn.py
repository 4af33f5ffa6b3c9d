"""Churn-risk models: factories returning River models, and the learner to hold them.

Churn here is "no event in the next 14 days" (the label, see the issue's
labelling rule); the models see `models.inputs` as of the moment scored.
Three candidates, meant to be compared on live metrics (models.evaluation):

- `logistic()`: StandardScaler | LogisticRegression. Scaling matters more
  than anything else for SGD on inputs whose ranges differ by 10^6 (days vs
  counts vs spend). Adam adapts each weight's step, so one learning rate
  suits all inputs; a small L2 keeps rarely-active inputs (the `_missing`
  indicators) from drifting. Class balance is the learner's job
  (`Classifier(balance=True)`), so the loss is left symmetric.
- `forest()`: an Aggregated Mondrian Forest. Nonlinear (recency matters in
  thresholds, not linearly), no scaling needed, no learning rate; slower.
  Takes no sample weights, so it learns unbalanced.
- `adaptive_tree()`: a Hoeffding Adaptive Tree, which replaces branches when
  the concept drifts; takes sample weights.

`learner(kind)` gives the candidate wrapped, ready for the trainer.
"""

from __future__ import annotations

from typing import Any, Literal

from river import forest, linear_model, optim, preprocessing, tree

from models.learners import Classifier

__all__ = ["adaptive_tree", "forest_model", "learner", "logistic"]

Kind = Literal["logistic", "forest", "adaptive_tree"]


def logistic(lr: float = 0.01, l2: float = 1e-4) -> Any:
    """StandardScaler | LogisticRegression(Adam(lr), L2): the fast, well-understood baseline model."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.Adam(lr), l2=l2, intercept_lr=lr
    )


def forest_model(n_estimators: int = 10, seed: int = 42) -> Any:
    """An Aggregated Mondrian Forest classifier (no scaling needed)."""
    return forest.AMFClassifier(n_estimators=n_estimators, use_aggregation=True, seed=seed)


def adaptive_tree(seed: int = 42) -> Any:
    """A Hoeffding Adaptive Tree classifier: splits when the evidence is enough, adapts to drift."""
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, leaf_prediction="nba", seed=seed)


def learner(kind: Kind = "logistic", **options: Any) -> Classifier:
    """The candidate `kind` behind `Learner`, class-balanced where the model takes weights."""
    if kind == "logistic":
        return Classifier(logistic(**options), balance=True)
    if kind == "forest":
        return Classifier(forest_model(**options), balance=False)
    if kind == "adaptive_tree":
        return Classifier(adaptive_tree(**options), balance=True)
    raise ValueError(f"unknown churn model {kind!r}; choose logistic, forest or adaptive_tree")
