"""Next-best-offer: a contextual bandit over the offer catalog, its reward attribution and offline evaluation.

The policy
----------
One River `BayesianLinearRegression` per offer (the disjoint LinUCB of Li et
al., 2010, which is what `river.bandit.LinUCBDisjoint` builds too) predicts
the conversion probability of that offer from the user's context, with a
posterior. Each arm's score is an upper confidence bound,

    ucb(a | x) = mean(a | x) + ucb_width * sd(a | x),

with sd the posterior's uncertainty about the mean (the predictive sd
without its noise term, which is the same for every arm and never shrinks).
LinUCB alone is deterministic, so nothing could be evaluated offline from
its logs; the policy wraps it in epsilon-greedy:

    P(a | x) = epsilon / K + (1 - epsilon) * [a is among the arms with the top ucb] / (number tied at the top)

Every `Choice` carries that probability of the arm it took (its
propensity), so logged choices can be re-weighted to estimate any other
policy's value (`ips_value`). `choose` takes the random draw as an
argument, so the same draw (a hash of user and decision time, `draw_for`)
makes a replay choose alike.

Rewards, in event time
----------------------
An *exposure* opens when a user receives an offer (a push_received whose
campaign_id is a catalog offer). A purchase at t rewards it with 1 when
``exposed_at < t <= exposed_at + attribution_window`` and it carries the
offer's id (a coupon redeemed). One purchase rewards at most one exposure,
the latest of that offer. A purchase in the offer's category without its id
does not count: loyal customers buy in every category anyway, and crediting
those organic purchases taught the policy to send category offers to heavy
buyers instead of what converts them.
When the watermark reaches ``exposed_at + attribution_window`` an exposure
still open gets reward 0. Each exposure resolves exactly once, into a
`BanditReward` record for the trainer.

>>> policy = new_policy(["freeship", "fashion30"], BanditConfig(epsilon=0.2), features=raw_features)
>>> choice = choose(policy, {"is_bargain": 1.0}, draw=0.95)
>>> choice.offer_id, choice.propensity   # nothing learned yet: every arm ties, uniform
('fashion30', 0.5)
>>> for _ in range(20):
...     _ = update(policy, {"is_bargain": 1.0}, "fashion30", 1.0)
...     _ = update(policy, {"is_bargain": 1.0}, "freeship", 0.0)
>>> choice = choose(policy, {"is_bargain": 1.0}, draw=0.95)
>>> choice.offer_id, round(choice.score, 2), choice.propensity
('fashion30', 0.99, 0.9)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import orjson
from river import linear_model

from models.offers import Offer

__all__ = [
    "Attribution",
    "BanditConfig",
    "BanditReward",
    "Choice",
    "Exposure",
    "IpsEstimate",
    "Policy",
    "TargetPolicy",
    "action_probabilities",
    "advance",
    "arm_scores",
    "choose",
    "draw_for",
    "expose",
    "ips_value",
    "new_policy",
    "offer_features",
    "on_purchase",
    "raw_features",
    "reward_id",
    "uniform",
    "update",
]

HOUR_MS = 3_600_000
_BIAS = "__bias__"  # an always-on feature: each arm's base rate
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class BanditConfig:
    """Exploration and priors of the policy; the attribution window in event time.

    `noise_precision` is 1 / the reward's noise variance: 4 is the widest a
    0/1 reward can be (variance 0.25), so uncertainty shrinks as it should
    for conversions. `prior_variance` is how far weights may stray from 0
    before any data.
    """

    epsilon: float = 0.05
    ucb_width: float = 1.0
    prior_variance: float = 1.0
    noise_precision: float = 4.0
    attribution_window_ms: int = 72 * HOUR_MS
    max_open_exposures: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 1:
            # epsilon > 0 keeps every propensity positive, which IPS needs.
            raise ValueError(f"BanditConfig.epsilon must be in (0, 1], got {self.epsilon!r}")
        for name in ("ucb_width",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"BanditConfig.{name} must be finite and >= 0, got {getattr(self, name)!r}")
        for name in ("prior_variance", "noise_precision"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"BanditConfig.{name} must be finite and > 0, got {getattr(self, name)!r}")
        for name in ("attribution_window_ms", "max_open_exposures"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"BanditConfig.{name} must be a positive integer, got {v!r}")


DEFAULT_CONFIG = BanditConfig()


# --------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Policy:
    """The learner's state: one Bayesian linear regression per offer, in catalog order.

    Mutable like any River model (`update` learns in place); the trainer
    owns it and ships it in signed snapshots, scorers only `choose`.
    """

    offer_ids: tuple[str, ...]
    config: BanditConfig
    version: str
    # River ships no type hints: each value is a linear_model.BayesianLinearRegression.
    arms: dict[str, Any]
    # Context -> the arms' features (a module-level function, so the policy pickles by name).
    features: Callable[[Mapping[str, float]], dict[str, float]]
    n_updates: int = 0


@dataclass(frozen=True, slots=True)
class Choice:
    """What the policy chose: `score` is the chosen offer's estimated conversion probability
    (the posterior mean, not the optimistic bound), `propensity` the probability the policy
    gave this offer."""

    offer_id: str
    score: float
    propensity: float
    policy_version: str


def new_policy(
    offer_ids: Iterable[str],
    config: BanditConfig = DEFAULT_CONFIG,
    version: str = "nbo-0",
    features: Callable[[Mapping[str, float]], dict[str, float]] | None = None,
) -> Policy:
    """An untrained policy over `offer_ids` (the catalog's order is the tie-break order).

    `features` maps a logged context to what the arms learn on: `offer_features`
    (sanitised model inputs) unless given, e.g. `raw_features` for contexts
    that are features already.
    """
    ids = tuple(offer_ids)
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"new_policy: offer ids must be non-empty and unique, got {ids!r}")
    arms: dict[str, Any] = {
        oid: linear_model.BayesianLinearRegression(alpha=config.prior_variance, beta=config.noise_precision)
        for oid in ids
    }
    return Policy(ids, config, version, arms, features or offer_features)


# What tells customers apart when it comes to offers: how often a look becomes a cart,
# how much they buy on coupons, how much they buy and browse, how recently they
# installed. Counts on a log scale, divided to land near [0, 1] (the prior of every
# weight is the same), each optional input with its indicator.
_OFFER_RATIOS: Final = ("cart_rate_30d", "offer_share_30d")
_OFFER_LOGS: Final = {
    "clicks_30d": 5.0,
    "purchases_30d": 3.0,
    "offer_purchases_30d": 2.0,
    "app_opens_7d": 3.0,
    "recency_days": 3.0,
    "days_since_install": 4.0,
}
_OFFER_OPTIONAL: Final = frozenset({"cart_rate_30d", "offer_share_30d", "recency_days", "days_since_install"})


def offer_features(context: Mapping[str, float]) -> dict[str, float]:
    """The policy's view of a logged context (sanitised model inputs): a few scaled features and a bias.

    >>> offer_features({"cart_rate_30d": 0.2, "clicks_30d": math.e - 1})["clicks_30d"]
    0.2
    """
    x = {_BIAS: 1.0}
    for name in (*_OFFER_RATIOS, *_OFFER_LOGS):
        missing = name not in context or context.get(f"{name}_missing", 0.0) >= 0.5
        value = 0.0 if missing else _finite(context[name])
        scale = _OFFER_LOGS.get(name)
        x[name] = value if scale is None else math.log1p(max(0.0, value)) / scale
        if name in _OFFER_OPTIONAL:
            x[f"{name}_missing"] = 1.0 if missing else 0.0
    return x


def raw_features(context: Mapping[str, float]) -> dict[str, float]:
    """The context as it is (non-finite values dropped), plus the bias."""
    x = {k: float(v) for k, v in context.items() if math.isfinite(v)}
    x[_BIAS] = 1.0
    return x


def _finite(value: float) -> float:
    # River does no validation: a NaN would poison the posterior for good.
    v = float(value)
    return v if math.isfinite(v) else 0.0


@dataclass(frozen=True, slots=True)
class _Posterior:
    """Every arm's weight posterior (mean and covariance) over the policy's fixed feature names.

    Read from River through its public `predict_one` only: the mean of weight
    i is the prediction for the unit context e_i, and the covariance comes
    from the predictive variances of e_i and e_i + e_j (the noise 1 / beta
    taken off). River builds a `proba.Gaussian` (which seeds a
    `random.Random`) for every arm of every choice; the arms change only
    when the policy learns, so a scorer, whose policy never learns, reads
    them once per snapshot and then chooses with two small products per
    choice (the pipeline benchmark's worker spent about 30 % of its step in
    `choose` before).
    """

    index: dict[str, int]
    means: np.ndarray  # (arms, features)
    covariances: np.ndarray  # (arms, features, features)


def _read_posterior(policy: Policy) -> _Posterior | None:
    names = list(policy.features({}))
    if not names:
        return None
    noise_var = 1.0 / policy.config.noise_precision
    d = len(names)
    means = np.zeros((len(policy.offer_ids), d))
    covariances = np.zeros((len(policy.offer_ids), d, d))
    for a, oid in enumerate(policy.offer_ids):
        arm = policy.arms[oid]

        def variance(x: dict[str, float], arm: Any = arm) -> float:
            return float(arm.predict_one(x, with_dist=True).sigma) ** 2 - noise_var

        diagonal = [variance({n: 1.0}) for n in names]
        for i, ni in enumerate(names):
            means[a, i] = float(arm.predict_one({ni: 1.0}))
            covariances[a, i, i] = diagonal[i]
            for j in range(i + 1, d):
                both = variance({ni: 1.0, names[j]: 1.0})
                covariances[a, i, j] = covariances[a, j, i] = (both - diagonal[i] - diagonal[j]) / 2.0
    return _Posterior({n: i for i, n in enumerate(names)}, means, covariances)


# The newest policy's posterior: one policy scores at a time (a new snapshot brings a new one).
# (policy, its n_updates, the posterior once read): read at the second call on an unchanged
# policy, so a loop that learns between choices never pays for a read it cannot reuse.
_posterior: tuple[Policy, int, _Posterior | None] | None = None


def _posterior_for(policy: Policy) -> _Posterior | None:
    global _posterior
    cached = _posterior
    if cached is None or cached[0] is not policy or cached[1] != policy.n_updates:
        _posterior = (policy, policy.n_updates, None)
        return None
    posterior = cached[2]
    if posterior is None:
        posterior = _read_posterior(policy)
        _posterior = (policy, policy.n_updates, posterior)
    return posterior


def _mean_and_ucb(policy: Policy, x: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    posterior = _posterior_for(policy)
    if posterior is not None and len(x) == len(posterior.index) and all(k in posterior.index for k in x):
        v = np.zeros(len(posterior.index))
        for k, value in x.items():
            v[posterior.index[k]] = value
        means = posterior.means @ v
        bounds = means + policy.config.ucb_width * np.sqrt(
            np.maximum(np.einsum("i,aij,j->a", v, posterior.covariances, v), 0.0)
        )
        return {oid: (float(means[a]), float(bounds[a])) for a, oid in enumerate(policy.offer_ids)}
    noise_var = 1.0 / policy.config.noise_precision
    width = policy.config.ucb_width
    out = {}
    for oid in policy.offer_ids:
        dist = policy.arms[oid].predict_one(x, with_dist=True)
        param_var = max(dist.sigma**2 - noise_var, 0.0)
        mu = float(dist.mu)
        out[oid] = (mu, mu + width * math.sqrt(param_var))
    return out


def arm_scores(policy: Policy, context: Mapping[str, float]) -> dict[str, float]:
    """Each offer's upper confidence bound for this context (non-finite context values dropped)."""
    return {oid: ucb for oid, (_, ucb) in _mean_and_ucb(policy, policy.features(context)).items()}


def _probabilities(policy: Policy, ucb: Mapping[str, float]) -> dict[str, float]:
    k, eps = len(policy.offer_ids), policy.config.epsilon
    top = max(ucb.values())
    best = [oid for oid in policy.offer_ids if ucb[oid] == top]
    greedy = (1.0 - eps) / len(best)
    return {oid: eps / k + (greedy if ucb[oid] == top else 0.0) for oid in policy.offer_ids}


def action_probabilities(policy: Policy, context: Mapping[str, float]) -> dict[str, float]:
    """P(offer | context) under the policy: positive for every offer, summing to 1."""
    return _probabilities(policy, arm_scores(policy, context))


def choose(policy: Policy, context: Mapping[str, float], draw: float) -> Choice:
    """The offer for this context, taken by inverse CDF at `draw` in [0, 1).

    The same policy, context and draw give the same choice: pass
    `draw_for(user_id, decided_at_ms)` and a replay decides alike.
    """
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"choose: draw must be in [0, 1), got {draw!r}")
    scored = _mean_and_ucb(policy, policy.features(context))
    probs = _probabilities(policy, {oid: ucb for oid, (_, ucb) in scored.items()})
    cumulative, chosen = 0.0, policy.offer_ids[-1]
    for oid in policy.offer_ids:
        cumulative += probs[oid]
        if draw < cumulative:
            chosen = oid
            break
    return Choice(chosen, scored[chosen][0], probs[chosen], policy.version)


def draw_for(user_id: str, decided_at_ms: int, salt: str = "") -> float:
    """A uniform draw in [0, 1) fixed by (user, decision time, salt): randomness a replay repeats.

    >>> draw_for("u1", 1000) == draw_for("u1", 1000) != draw_for("u1", 1001)
    True
    """
    digest = hashlib.blake2b(f"{user_id}\x1f{decided_at_ms}\x1f{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def update(policy: Policy, context: Mapping[str, float], offer_id: str, reward: float) -> bool:
    """Learn one logged (context, offer, reward), in place. False for an offer the policy does not know.

    Learning on the logged offer only is what makes the per-arm regressions
    unbiased under any logging policy that tried each arm in each context.
    """
    arm = policy.arms.get(offer_id)
    if arm is None:
        return False
    if not math.isfinite(reward):
        raise ValueError(f"update: reward must be finite, got {reward!r}")
    arm.learn_one(policy.features(context), float(reward))
    policy.n_updates += 1
    return True


def uniform(offer_ids: Sequence[str]) -> Callable[[Mapping[str, float]], dict[str, float]]:
    """The uniform random policy (the simulator's logging policy), as `ips_value` takes it."""
    ids = tuple(offer_ids)
    p = 1.0 / len(ids)
    return lambda _context: dict.fromkeys(ids, p)


# --------------------------------------------------------------------------
# Attribution: exposures and their rewards, in event time
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exposure:
    """An offer a user received, waiting for a purchase or the end of its window."""

    at_ms: int
    offer_id: str
    context: dict[str, float]
    propensity: float
    policy_version: str


@dataclass(frozen=True, slots=True)
class BanditReward:
    """A resolved exposure: what the trainer learns from and what `ips_value` re-weights.

    `reward_id` depends on (user, exposure time, offer) only: replays dedup.
    """

    reward_id: str
    user_id: str
    offer_id: str
    exposed_at: int
    resolved_at: int
    context: dict[str, float]
    reward: float
    propensity: float
    policy_version: str = ""

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys)."""
        return orjson.dumps(
            {
                "reward_id": self.reward_id,
                "user_id": self.user_id,
                "offer_id": self.offer_id,
                "exposed_at": self.exposed_at,
                "resolved_at": self.resolved_at,
                "context": self.context,
                "reward": self.reward,
                "propensity": self.propensity,
                "policy_version": self.policy_version,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> BanditReward:
        """The inverse of `to_json`; a malformed record raises ValueError."""
        try:
            d = orjson.loads(data)
            out = cls(
                reward_id=str(d["reward_id"]),
                user_id=str(d["user_id"]),
                offer_id=str(d["offer_id"]),
                exposed_at=int(d["exposed_at"]),
                resolved_at=int(d["resolved_at"]),
                context={str(k): float(v) for k, v in d["context"].items()},
                reward=float(d["reward"]),
                propensity=float(d["propensity"]),
                policy_version=str(d["policy_version"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"BanditReward.from_json: malformed record ({exc.__class__.__name__}: {exc})") from None
        if not 0 < out.propensity <= 1:
            raise ValueError(f"BanditReward.from_json: propensity {out.propensity!r} is not in (0, 1]")
        return out


@dataclass(frozen=True, slots=True)
class Attribution:
    """One user's open exposures (plain JSON via to_dict/from_dict, for the user's state)."""

    user_id: str | None = None
    exposures: tuple[Exposure, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": _STATE_VERSION,
            "user_id": self.user_id,
            "exposures": [
                {
                    "at": e.at_ms,
                    "offer_id": e.offer_id,
                    "context": e.context,
                    "propensity": e.propensity,
                    "policy_version": e.policy_version,
                }
                for e in self.exposures
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attribution:
        """The inverse of `to_dict`; a malformed value raises ValueError."""
        try:
            if d["v"] != _STATE_VERSION:
                raise ValueError(f"unknown version {d['v']!r}")
            exposures = tuple(
                Exposure(
                    at_ms=int(e["at"]),
                    offer_id=str(e["offer_id"]),
                    context={str(k): float(v) for k, v in e["context"].items()},
                    propensity=float(e["propensity"]),
                    policy_version=str(e["policy_version"]),
                )
                for e in d["exposures"]
            )
            user = d["user_id"]
            return cls(None if user is None else str(user), exposures)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"Attribution.from_dict: malformed state ({exc.__class__.__name__}: {exc})") from None


def reward_id(user_id: str, exposed_at: int, offer_id: str) -> str:
    """A stable id for an exposure's reward: 32 hex digits of BLAKE2b."""
    return hashlib.blake2b(f"{user_id}\x1f{exposed_at}\x1f{offer_id}".encode(), digest_size=16).hexdigest()


def expose(
    attribution: Attribution,
    *,
    user_id: str,
    at_ms: int,
    offer_id: str,
    context: Mapping[str, float],
    propensity: float,
    catalog: Mapping[str, Offer],
    policy_version: str = "",
    config: BanditConfig = DEFAULT_CONFIG,
) -> tuple[Attribution, bool]:
    """Open an exposure when `user_id` receives `offer_id` at event time `at_ms`.

    Returns False (state unchanged) for a campaign that is not a catalog
    offer, for the same exposure seen twice, and past `max_open_exposures`
    exposures whose windows are open at `at_ms`. `context` is what the
    policy saw when choosing; `propensity` the probability it gave the offer.
    """
    if attribution.user_id is not None and attribution.user_id != user_id:
        raise ValueError(f"expose: state of user {attribution.user_id!r} given for user {user_id!r}")
    if offer_id not in catalog:
        return attribution, False
    if not 0 < propensity <= 1:
        raise ValueError(f"expose: propensity must be in (0, 1], got {propensity!r}")
    window = config.attribution_window_ms
    if any(e.at_ms == at_ms and e.offer_id == offer_id for e in attribution.exposures):
        return attribution, False
    if sum(1 for e in attribution.exposures if at_ms < e.at_ms + window) >= config.max_open_exposures:
        return attribution, False
    ctx = {str(k): float(v) for k, v in context.items() if math.isfinite(v)}
    e = Exposure(at_ms, offer_id, ctx, float(propensity), policy_version)
    return Attribution(user_id, (*attribution.exposures, e)), True


def _resolve(attribution: Attribution, e: Exposure, resolved_at: int, reward: float) -> BanditReward:
    user = attribution.user_id or ""
    return BanditReward(
        reward_id=reward_id(user, e.at_ms, e.offer_id),
        user_id=user,
        offer_id=e.offer_id,
        exposed_at=e.at_ms,
        resolved_at=resolved_at,
        context=e.context,
        reward=reward,
        propensity=e.propensity,
        policy_version=e.policy_version,
    )


def on_purchase(
    attribution: Attribution,
    *,
    at_ms: int,
    offer_id: str | None,
    config: BanditConfig = DEFAULT_CONFIG,
) -> tuple[Attribution, list[BanditReward]]:
    """A purchase at `at_ms` carrying `offer_id` (None: bought without a coupon, rewards nothing).

    Rewards (1) the latest open exposure of that offer inside its window, if any.
    """
    if offer_id is None:
        return attribution, []
    window = config.attribution_window_ms
    live = [e for e in attribution.exposures if e.offer_id == offer_id and e.at_ms < at_ms <= e.at_ms + window]
    if not live:
        return attribution, []
    winner = max(live, key=lambda e: e.at_ms)
    rest = tuple(e for e in attribution.exposures if e is not winner)
    return replace(attribution, exposures=rest), [_resolve(attribution, winner, at_ms, 1.0)]


def advance(
    attribution: Attribution, *, watermark_ms: int, config: BanditConfig = DEFAULT_CONFIG
) -> tuple[Attribution, list[BanditReward]]:
    """Event time reached `watermark_ms`: exposures whose window has closed get reward 0.

    Resolved at the window's end (``exposed_at + attribution_window``), not at
    the watermark, so any watermark cadence gives the same records.
    """
    window = config.attribution_window_ms
    closed = [e for e in attribution.exposures if watermark_ms >= e.at_ms + window]
    if not closed:
        return attribution, []
    rest = tuple(e for e in attribution.exposures if watermark_ms < e.at_ms + window)
    return replace(attribution, exposures=rest), [_resolve(attribution, e, e.at_ms + window, 0.0) for e in closed]


# --------------------------------------------------------------------------
# Offline evaluation
# --------------------------------------------------------------------------


TargetPolicy = Policy | Callable[[Mapping[str, float]], Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class IpsEstimate:
    """An off-policy estimate: `value` with its standard error, over `n` logged rewards."""

    value: float
    stderr: float
    n: int
    effective_n: float


def ips_value(rewards: Iterable[BanditReward], target: TargetPolicy, *, self_normalised: bool = False) -> IpsEstimate:
    """Estimate the mean reward `target` would have earned, from rewards logged under another policy.

    Inverse propensity scoring: each logged reward counts
    ``pi_target(offer | context) / propensity`` times. Unbiased when every
    propensity is the true logging probability and positive wherever the
    target puts mass. `self_normalised` divides by the sum of weights
    instead of n (SNIPS): a little bias, much less variance when weights are
    large. `effective_n` = (sum w)^2 / sum w^2 says how many logged rewards
    the estimate is really worth.
    """
    probs_of: Callable[[Mapping[str, float]], Mapping[str, float]]
    if isinstance(target, Policy):
        policy = target
        probs_of = lambda ctx: action_probabilities(policy, ctx)  # noqa: E731
    else:
        probs_of = target
    logged = [(probs_of(r.context).get(r.offer_id, 0.0) / r.propensity, r.reward) for r in rewards]
    n = len(logged)
    if n == 0:
        raise ValueError("ips_value: no logged rewards to evaluate on")
    sw = sum(w for w, _ in logged)
    sw2 = sum(w * w for w, _ in logged)
    eff = sw * sw / sw2 if sw2 else 0.0
    if self_normalised:
        if sw == 0:
            raise ValueError("ips_value: the target policy gives no weight to any logged offer")
        value = sum(w * r for w, r in logged) / sw
        # Delta-method variance of a ratio estimator.
        var = sum((w * (r - value)) ** 2 for w, r in logged) / (sw * sw)
        return IpsEstimate(value, math.sqrt(var), n, eff)
    terms = [w * r for w, r in logged]
    value = sum(terms) / n
    var = sum((t - value) ** 2 for t in terms) / (n - 1) / n if n > 1 else 0.0
    return IpsEstimate(value, math.sqrt(var), n, eff)
