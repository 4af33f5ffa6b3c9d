"""The `Learner` protocol and the wrappers that put River models behind it.

A learner is what the trainer and the scorers hold: `predict(x) -> float`
and `learn(x, y)`, where `x` is the *raw* output of
`models.inputs.model_inputs`. The wrappers sanitise `x` first
(`models.inputs.sanitise`), so a NaN, an infinity or an absurd value never
reaches River, which checks nothing, and training and scoring fill a missing
input the same way. What was repaired is counted in `repairs` (by reason)
for a metric. Wrappers pickle with their model, so a snapshot carries them
whole.

- `Classifier`: `predict` is P(y = 1). Examples are not re-weighted by
  class: with labels two weeks late, weighting the first few positives up
  made the early models swing (models/churn.py has the figures). Optionally
  shrunk toward a fixed prior until it has learned enough positives
  (`prior_weight`).
- `Regressor`: learns on log1p(y) and predicts expm1 of that, never below 0:
  spend is heavy-tailed, and a squared loss on the raw scale would chase the
  few big spenders. (Its predictions are so nearer a median than a mean, which
  suits MAE, the metric we report.) Optionally as a correction to a prior.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from models.inputs import INPUTS, Input, sanitise

__all__ = ["Classifier", "Learner", "Regressor", "prior_weight"]


@runtime_checkable
class Learner(Protocol):
    """An online model over raw model inputs."""

    def predict(self, x: Mapping[str, float]) -> float: ...

    def learn(self, x: Mapping[str, float], y: float) -> None: ...


class _Sanitising:
    def __init__(self, model: Any, *, inputs: Sequence[Input] = INPUTS) -> None:
        self.model = model
        self.inputs = tuple(inputs)
        self.repairs: Counter[str] = Counter()
        self.n_learned = 0

    def _clean(self, x: Mapping[str, float]) -> dict[str, float]:
        clean, repairs = sanitise(x, self.inputs)
        if repairs:
            self.repairs.update(repairs)
        return clean

    def predict(self, x: Mapping[str, float]) -> float:
        return self.predict_clean(self._clean(x))

    def predict_clean(self, clean: Mapping[str, float]) -> float:
        """`predict` for inputs that are already `sanitise`'s output (the scorer's hot path:
        `models.bundle.score` sanitises once for every model). Anything else goes through `predict`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, learned={self.n_learned})"


def prior_weight(positives: int, strength: float) -> float:
    """The prior's share of a blended prediction: strength / (positives + strength), 1.0 down to 0.

    `strength` is how many positives the model must have learned to count as
    much as the prior (0: no prior).

    >>> prior_weight(0, 500.0), prior_weight(500, 500.0), prior_weight(1500, 500.0), prior_weight(7, 0.0)
    (1.0, 0.5, 0.25, 0.0)
    """
    if strength <= 0:
        return 0.0
    return strength / (max(positives, 0) + strength)


class Classifier(_Sanitising):
    """A River binary classifier behind `Learner`: predict() is P(y = 1).

    With a `prior` (P(y = 1) from the sanitised inputs, module-level so it
    pickles), a prediction is ``w * prior(x) + (1 - w) * model(x)``, with
    ``w = prior_weight(positives learned, prior_strength)``: untrained, it
    predicts the prior, and the model takes over as positives arrive. It
    counts positives, not examples, because the rare class is what takes
    long to arrive: churn negatives come with the user's next event, the
    first positive only after days of silence (models/churn.py has the
    figures).
    """

    # Class-level defaults: a Classifier pickled before the prior existed loads without one.
    prior: Callable[[Mapping[str, float]], float] | None = None
    prior_strength = 0.0
    n_positive = 0

    def __init__(
        self,
        model: Any,
        *,
        prior: Callable[[Mapping[str, float]], float] | None = None,
        prior_strength: float = 0.0,
    ) -> None:
        super().__init__(model)
        if prior is not None:
            if not (math.isfinite(prior_strength) and prior_strength >= 0):
                raise ValueError(f"Classifier: prior_strength must be a finite number >= 0, got {prior_strength!r}")
            self.prior = prior
            self.prior_strength = float(prior_strength)
        self.n_positive = 0

    def predict_clean(self, clean: Mapping[str, float]) -> float:
        proba = self.model.predict_proba_one(clean)
        # An untrained model may answer {} : no opinion is 0.5, not 0.
        p = float(proba.get(True, 0.0)) if proba else 0.5
        if self.prior is None:
            return p
        w = prior_weight(self.n_positive, self.prior_strength)
        return p if w == 0.0 else w * self.prior(clean) + (1.0 - w) * p

    def learn(self, x: Mapping[str, float], y: float) -> None:
        self.n_learned += 1
        label = bool(y >= 0.5)
        self.n_positive += label
        self.model.learn_one(self._clean(x), label)


class Regressor(_Sanitising):
    """A River regressor behind `Learner`, on a log1p scale; predictions are >= 0.

    With a `prior` (a function of the sanitised inputs, module-level so it
    pickles), the model learns the correction to it on the log scale,
    log1p(y) - log1p(prior(x)): untrained, it predicts the prior, not 0. That
    matters when labels take long to arrive (30 days for customer value).
    """

    def __init__(self, model: Any, *, prior: Callable[[Mapping[str, float]], float] | None = None) -> None:
        super().__init__(model)
        self.prior = prior
        # The largest target learned (log scale): an online linear model can extrapolate
        # wildly on inputs unlike any it learned from, so predictions stay within what was seen.
        self.ceiling = 0.0

    def _offset(self, clean: Mapping[str, float]) -> float:
        return 0.0 if self.prior is None else math.log1p(max(0.0, self.prior(clean)))

    def predict_clean(self, clean: Mapping[str, float]) -> float:
        offset = self._offset(clean)
        raw = float(self.model.predict_one(clean)) + offset
        if not math.isfinite(raw):
            raw = offset
        return math.expm1(min(max(raw, 0.0), max(self.ceiling, offset)))

    def learn(self, x: Mapping[str, float], y: float) -> None:
        if not math.isfinite(y):
            self.repairs["bad_target"] += 1
            return
        self.n_learned += 1
        clean = self._clean(x)
        target = math.log1p(max(y, 0.0))
        self.ceiling = max(self.ceiling, target)
        self.model.learn_one(clean, target - self._offset(clean))
