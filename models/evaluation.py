"""Progressive evaluation of the online models: exact rolling ROC AUC, log loss, MAE, baselines.

`RollingAUC` is the exact ROC AUC of the last `window` (score, label) pairs:
the probability that a random positive scores above a random negative, ties
counting one half (the Mann-Whitney U statistic over the window). River's
`metrics.RollingROCAUC` is exact without ties but counts a tied
positive/negative pair as 0 instead of 1/2 (a window of [(0.6, 1), (0.6, 0)]
gives it 0.0, not 0.5); our baselines score with integer features (events
in 7 days, days of recency), which tie all the time, so it would understate
them badly. Here, both classes are kept in sorted lists and U is updated as
pairs enter and leave: O(log n) to find ranks plus a list shift (a memmove)
per update, fine for windows of thousands.

Log loss and MAE are River's metrics over a rolling window (`rolling_log_loss`,
`rolling_mae`). `BaselineAUC` tracks the rolling AUC of single features,
each with a declared direction (recency: higher means more churn), and
reports the best: the bar a churn model must clear to be worth its cost.

>>> auc = RollingAUC(window=4)
>>> for score, label in [(0.9, 1), (0.1, 0), (0.6, 1), (0.6, 0)]:
...     auc.update(score, label)
>>> auc.get()  # pairs: (.9>.1) (.9>.6) (.6>.1) (.6=.6): 3.5 of 4
0.875
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import metrics, utils

__all__ = ["BaselineAUC", "RollingAUC", "auc", "rolling_log_loss", "rolling_mae"]


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool | int] | np.ndarray) -> float | None:
    """Exact ROC AUC of a whole sample, ties counting 1/2 (None without both classes).

    >>> auc([0.9, 0.1, 0.6, 0.6], [1, 0, 1, 0])
    0.875
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks over ties: each run of equal scores shares the mean of its positions.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


class RollingAUC:
    """Exact ROC AUC (ties = 1/2) over the last `window` updates."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self._pairs: deque[tuple[float, bool]] = deque()
        self._pos: list[float] = []
        self._neg: list[float] = []
        self._u2 = 0  # twice the U statistic: an integer, so it never drifts

    def update(self, score: float, label: bool | int) -> None:
        """Add one (score, label); the oldest pair leaves once the window is full."""
        if not math.isfinite(score):
            raise ValueError(f"RollingAUC: score must be finite, got {score!r}")
        positive = bool(label)
        if len(self._pairs) == self.window:
            old_score, old_positive = self._pairs.popleft()
            self._u2 -= self._wins2(old_score, old_positive)
            own = self._pos if old_positive else self._neg
            del own[bisect.bisect_left(own, old_score)]
        self._pairs.append((score, positive))
        self._u2 += self._wins2(score, positive)
        bisect.insort(self._pos if positive else self._neg, score)

    def _wins2(self, score: float, positive: bool) -> int:
        """Twice the pairs this score wins against the other class (ties count 1)."""
        other = self._neg if positive else self._pos
        lo = bisect.bisect_left(other, score)
        hi = bisect.bisect_right(other, score)
        below, ties = lo, hi - lo
        # a positive wins over negatives below it; a negative "wins" for the positives above it
        return 2 * below + ties if positive else 2 * (len(other) - hi) + ties

    def get(self) -> float | None:
        """The AUC of the window, or None while it lacks either class."""
        if not self._pos or not self._neg:
            return None
        return self._u2 / (2 * len(self._pos) * len(self._neg))

    def __len__(self) -> int:
        return len(self._pairs)


def rolling_log_loss(window: int = 10_000) -> Any:
    """River's log loss (probabilities clipped inside) over the last `window` updates."""
    return utils.Rolling(metrics.LogLoss, window_size=window)


def rolling_mae(window: int = 10_000) -> Any:
    """River's mean absolute error over the last `window` updates."""
    return utils.Rolling(metrics.MAE, window_size=window)


class BaselineAUC:
    """Rolling AUC of single features used as scores; `best()` is the baseline to beat.

    `directions` maps a feature to +1 (higher value, more likely positive:
    recency for churn) or -1 (events in the last 7 days). Declared up front,
    not picked after the fact, so a baseline cannot look better by chance.
    """

    def __init__(self, directions: Mapping[str, int], window: int = 10_000) -> None:
        bad = {name: d for name, d in directions.items() if d not in (1, -1)}
        if bad or not directions:
            raise ValueError(f"directions must map feature names to +1 or -1, got {dict(directions)!r}")
        self.directions = dict(directions)
        self.aucs = {name: RollingAUC(window) for name in directions}

    def update(self, x: Mapping[str, float], label: bool | int) -> None:
        """Score the example with each feature it has (finite values only)."""
        for name, auc in self.aucs.items():
            value = x.get(name)
            if value is not None and math.isfinite(value):
                auc.update(self.directions[name] * value, label)

    def best(self) -> tuple[str, float] | None:
        """(feature, AUC) of the best single feature, or None before both classes are seen."""
        scored = [(auc, name) for name, a in self.aucs.items() if (auc := a.get()) is not None]
        if not scored:
            return None
        auc, name = max(scored)
        return name, auc
