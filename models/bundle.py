"""The model bundle: what the trainer learns, seals into a snapshot, and every scorer loads.

This module is the contract between `nudge trainer` (streams/trainer.py)
and the scorers in the stream worker:

- `ModelBundle` holds every model (churn classifier, CLV regressor, the RFM
  sketch and its shipped cut points, the next-best-offer policy), how many
  examples each has learned, and the live quality of each next to its
  baseline. It pickles whole (the evaluators ride along, so a restarted
  trainer keeps its rolling windows); `models.snapshot.seal` signs it.
- `score(bundle, state, now_ms, tiers, with_offer=...)` is what a scorer
  writes into the user's hash: the `SCORE_FIELDS`, as strings, as of `now_ms`
  (event time). The inputs go through `models.inputs.sanitise` once, the
  same gate the trainer's examples went through.
- `learn_example` / `learn_reward` are the trainer's side. Learning is
  progressive validation: each example is first predicted, the prediction
  (and each baseline's) scored against the label, and only then learned, so
  the quality figures are always on examples the model had not seen.

The bandit's context is the sanitised input vector: the worker logs
exposures with it, `learn_reward` learns on what was logged, and the policy
maps it to its own features (`models.bandit.offer_features`).

Baselines, declared up front (the bar each model must clear to be worth it):
churn: the best single feature by rolling AUC among recency (higher, more
churn), events in the last 7 and 30 days and purchases in the last 30 days
(fewer, more churn); CLV: the last 30 days' spend as the prediction of the
next 30 days'.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from features.state import UserState
from models import churn as churn_models
from models import clv as clv_models
from models.bandit import BanditReward, Policy, choose, draw_for, new_policy
from models.bandit import update as bandit_update
from models.evaluation import BaselineAUC, RollingAUC, rolling_log_loss, rolling_mae
from models.inputs import model_inputs, sanitise
from models.labels import Example
from models.learners import Classifier, Regressor
from models.segments import RFMCuts, RFMQuantiles, Tiers, member_tier, rfm_scores, rfm_segment
from models.snapshot import Snapshot, SnapshotRefused

__all__ = [
    "CHURN_BASELINES",
    "CUTS_EVERY",
    "CUTS_MIN_USERS",
    "EARLY_LABELS_UNTIL",
    "QUALITY_WINDOW",
    "SCORE_FIELDS",
    "Evaluators",
    "ModelBundle",
    "bundle_from_snapshot",
    "learn_example",
    "learn_reward",
    "new_bundle",
    "next_version",
    "refresh_cuts",
    "score",
]

SCORE_FIELDS: Final[tuple[str, ...]] = (
    "churn_score",
    "clv_30d",
    "rfm_r",
    "rfm_f",
    "rfm_m",
    "rfm_segment",
    "member_tier",
    "nbo_offer",
    "nbo_score",
    "models_version",
)
# +1: a higher value means churn is more likely; -1: less likely.
CHURN_BASELINES: Final[Mapping[str, int]] = {
    "recency_days": 1,
    "events_7d": -1,
    "events_30d": -1,
    "purchases_30d": -1,
}
# Rolling windows of the quality figures (examples). They pickle with the
# bundle, so they set most of a snapshot's size.
QUALITY_WINDOW: Final = 5_000
# RFM cut points: first shipped once this many users were seen, then refreshed
# every CUTS_EVERY sketch updates (a refresh walks ~2,000 buckets per dimension).
CUTS_MIN_USERS: Final = 100
CUTS_EVERY: Final = 1_000
# The churn model learns the 7-day labels until the 14-day labels have brought this many
# positives (models/churn.py has the figures); the early ones are a stand-in until then.
EARLY_LABELS_UNTIL: Final = 1_000


class _RollingMean:
    """The mean of the last `window` values (the offer reward rate)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.values: deque[float] = deque()
        self.total = 0.0

    def update(self, value: float) -> None:
        if len(self.values) == self.window:
            self.total -= self.values.popleft()
        self.values.append(value)
        self.total += value

    def get(self) -> float | None:
        # Re-summed rather than trusted: a running float sum drifts over millions of updates.
        return math.fsum(self.values) / len(self.values) if self.values else None


@dataclass(slots=True)
class Evaluators:
    """Progressive-validation state: rolling metrics of the models and their baselines."""

    churn_auc: RollingAUC
    churn_baseline: BaselineAUC
    churn_log_loss: Any  # river utils.Rolling(LogLoss)
    clv_mae: Any  # river utils.Rolling(MAE)
    clv_baseline_mae: Any
    nbo_reward: _RollingMean

    @classmethod
    def new(cls, window: int = QUALITY_WINDOW) -> Evaluators:
        return cls(
            churn_auc=RollingAUC(window),
            churn_baseline=BaselineAUC(CHURN_BASELINES, window),
            churn_log_loss=rolling_log_loss(window),
            clv_mae=rolling_mae(window),
            clv_baseline_mae=rolling_mae(window),
            nbo_reward=_RollingMean(window),
        )


@dataclass(slots=True)
class ModelBundle:
    """Every model, its learned counts and its live quality; version 0 is untrained.

    `rfm` is the trainer's sketch; `cuts` are what scorers grade with (None
    until enough users were seen). `learned` counts examples learned per
    target ("churn", "churn_7d", "clv_30d"), bandit "rewards", and the 14-day
    churn positives among them ("churn_positive"). `quality` holds the latest
    rolling figures (absent until defined): churn_auc, churn_baseline_auc,
    churn_log_loss, clv_mae, clv_baseline_mae, nbo_reward_rate.
    """

    version: int
    churn: Classifier
    clv: Regressor
    rfm: RFMQuantiles
    cuts: RFMCuts | None
    bandit: Policy
    learned: dict[str, int] = field(
        default_factory=lambda: {"churn": 0, "churn_7d": 0, "clv_30d": 0, "rewards": 0, "churn_positive": 0}
    )
    quality: dict[str, float] = field(default_factory=dict)
    evaluators: Evaluators = field(default_factory=Evaluators.new)
    churn_baseline_feature: str = ""


def new_bundle(offer_ids: Sequence[str], *, churn_kind: str = "logistic", clv_kind: str = "linear") -> ModelBundle:
    """An untrained bundle (version 0) over the offer catalog's ids."""
    return ModelBundle(
        version=0,
        churn=churn_models.learner(churn_kind),  # type: ignore[arg-type]  # checked by learner()
        clv=clv_models.learner(clv_kind),  # type: ignore[arg-type]
        rfm=RFMQuantiles(),
        cuts=None,
        bandit=new_policy(offer_ids),
    )


def bundle_from_snapshot(snapshot: Snapshot) -> ModelBundle:
    """The bundle an opened snapshot carries; a signed blob holding anything else is "corrupt"."""
    bundle = snapshot.models
    if not isinstance(bundle, ModelBundle):
        raise SnapshotRefused("corrupt", f"payload is a {type(bundle).__name__}, not a ModelBundle")
    return bundle


def score(bundle: ModelBundle, state: UserState, now_ms: int, tiers: Tiers, *, with_offer: bool) -> dict[str, str]:
    """The user's score fields as of `now_ms` (event time), as the strings the hash stores.

    rfm_r/f/m and rfm_segment only once the bundle has cut points;
    nbo_offer/nbo_score only `with_offer` (the choice costs far more than the
    rest; its draw is fixed by user and `now_ms`, so a replay chooses alike).
    """
    raw = model_inputs(state, now_ms)
    clean, _ = sanitise(raw)
    out = {
        "churn_score": f"{bundle.churn.predict_clean(clean):.4f}",
        "clv_30d": f"{bundle.clv.predict_clean(clean):.2f}",
    }
    orders, spend = raw["orders_total"], raw["spend_total"]
    if bundle.cuts is not None:
        r, f, m = rfm_scores(raw.get("recency_days", math.nan), orders, spend, bundle.cuts)
        out.update(rfm_r=str(r), rfm_f=str(f), rfm_m=str(m), rfm_segment=rfm_segment(r, f, m))
    out["member_tier"] = member_tier(spend, orders, tiers)
    if with_offer:
        choice = choose(bundle.bandit, clean, draw_for(state.user_id, now_ms))
        out["nbo_offer"] = choice.offer_id
        out["nbo_score"] = f"{choice.score:.4f}"
    out["models_version"] = str(bundle.version)
    return out


def learn_example(bundle: ModelBundle, example: Example) -> str | None:
    """Predict, score the prediction and the baselines, then learn (progressive validation).

    Returns None when the example was learned, else why not: "bad_label" (a
    value label that is not a number) or "early_label_retired" (a 7-day churn
    label once the 14-day ones have brought `EARLY_LABELS_UNTIL` positives).
    """
    x, ev, q = example.inputs, bundle.evaluators, bundle.quality
    if example.target == "churn":
        label = example.label >= 0.5
        p = bundle.churn.predict(x)
        ev.churn_auc.update(p, label)
        ev.churn_log_loss.update(label, p)
        ev.churn_baseline.update(x, label)
        bundle.churn.learn(x, float(label))
        _update_rfm(bundle, x)
        if (auc := ev.churn_auc.get()) is not None:
            q["churn_auc"] = auc
        if (best := ev.churn_baseline.best()) is not None:
            bundle.churn_baseline_feature, q["churn_baseline_auc"] = best
        q["churn_log_loss"] = float(ev.churn_log_loss.get())
        bundle.learned["churn"] += 1
        bundle.learned["churn_positive"] = bundle.learned.get("churn_positive", 0) + label
    elif example.target == "churn_7d":
        # Early labels teach the churn model what leaving looks like a week sooner
        # (models/labels.py), until the 14-day labels have brought enough positives:
        # kept on, they pull the model toward the 7-day question's higher churn rate.
        if bundle.learned.get("churn_positive", 0) >= EARLY_LABELS_UNTIL:
            return "early_label_retired"
        bundle.churn.learn(x, float(example.label >= 0.5))
        bundle.learned["churn_7d"] = bundle.learned.get("churn_7d", 0) + 1
    elif example.target == "clv_30d":
        if not math.isfinite(example.label):
            return "bad_label"  # Example.from_json accepts "NaN"; the regressor would count it anyway
        ev.clv_mae.update(example.label, bundle.clv.predict(x))
        ev.clv_baseline_mae.update(example.label, float(x.get("spend_30d", 0.0)))
        bundle.clv.learn(x, example.label)
        q["clv_mae"] = float(ev.clv_mae.get())
        q["clv_baseline_mae"] = float(ev.clv_baseline_mae.get())
        bundle.learned["clv_30d"] += 1
    else:  # pragma: no cover - Example.from_json refuses other targets
        raise ValueError(f"learn_example: unknown target {example.target!r}")
    return None


def learn_reward(bundle: ModelBundle, reward: BanditReward) -> str | None:
    """Learn one logged exposure and its reward; None when learned, else why not, as `learn_example`:
    "bad_label" (a reward that is not a number) or "unknown_offer" (no longer in the catalog)."""
    if not math.isfinite(reward.reward):
        return "bad_label"
    if not bandit_update(bundle.bandit, reward.context, reward.offer_id, reward.reward):
        return "unknown_offer"
    bundle.evaluators.nbo_reward.update(reward.reward)
    rate = bundle.evaluators.nbo_reward.get()
    if rate is not None:
        bundle.quality["nbo_reward_rate"] = rate
    bundle.learned["rewards"] += 1
    return None


def _update_rfm(bundle: ModelBundle, x: Mapping[str, float]) -> None:
    # A user never seen has no recency: it would count as "most recent" and skew the R cuts.
    if x.get("recency_days_missing", 0.0) >= 0.5 or "recency_days" not in x:
        return
    bundle.rfm.update(x["recency_days"], x.get("orders_total", 0.0), x.get("spend_total", 0.0))
    n = bundle.rfm.count
    if n >= CUTS_MIN_USERS and (bundle.cuts is None or n % CUTS_EVERY == 0):
        refresh_cuts(bundle)


def next_version(bundle: ModelBundle) -> int:
    """Before sealing a snapshot: the next version, on the bundle and its policy (choices log it), and fresh cuts."""
    refresh_cuts(bundle)
    bundle.version += 1
    bundle.bandit.version = f"nbo-{bundle.version}"
    return bundle.version


def refresh_cuts(bundle: ModelBundle) -> None:
    """Recompute the shipped cut points from the sketch (the trainer calls it before sealing)."""
    if bundle.rfm.count >= CUTS_MIN_USERS:
        bundle.cuts = bundle.rfm.cuts()
