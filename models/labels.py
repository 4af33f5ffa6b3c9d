"""Delayed labels in event time: churn and 30-day value, joined to the observation they judge.

When the worker scores a user it may keep an *observation*: the model inputs
and scores as of event time `at`. Its labels only exist later:

churn     1 if the user has no event `t` with ``at < t < at + churn_horizon``,
          else 0. Label 0 is known at the first such event (resolved_at = t);
          label 1 once the watermark reaches ``at + churn_horizon``
          (resolved_at = at + churn_horizon, whatever watermark step got there).
clv_30d   the user's spend over events with ``at < t <= at + clv_window``,
          known once the watermark reaches ``at + clv_window``.
churn_7d  churn over the shorter `early_horizon` (7 days), by the same rules:
          the first churn positives exist a week sooner. The churn model
          learns from both (models/bundle.py): in a fresh system a 14-day
          positive takes two weeks to exist at all, and until enough have
          come the 7-day ones teach what leaving looks like.

Boundaries, exactly (H = churn_horizon):

- an event at ``t == at`` belongs to the observation's inputs (it is usually
  the event that caused the scoring), so it resolves nothing and its spend is
  not in the CLV window;
- coming back at ``at + H - 1 ms`` is label 0; at exactly ``at + H`` the user
  was away for the full horizon: label 1, like any later return;
- the watermark W is a promise that no event with ``ts <= W`` is still to
  come, so label 1 is safe at ``W >= at + H`` (one ms later than strictly
  needed, which keeps the rule the same as the CLV window's close).

Out-of-order events are judged by their own time, not their arrival: an event
older than an observation resolves nothing and adds no spend to it. An event
that arrives after its label was resolved (it broke the watermark's promise)
cannot change the label: the watermark is the contract.

Sampling, so a very active user does not flood training: at most one
observation per `sample_every_ms` of event time (the first at or after
``last + sample_every_ms`` is kept), and at most `max_pending` observations
whose windows are open at the new observation's time. Both rules read event
times only, never how far the watermark has gone, so any batching or
watermark cadence keeps the same observations and yields the same examples
with the same ids (the trainer deduplicates on `example_id`).

Every function is pure: it takes a `PendingLabels` and returns a new one
with what it resolved. `PendingLabels.to_dict()` is plain JSON, for the
worker's changelogged user state.

>>> cfg = LabelConfig()
>>> p, kept = observe(PendingLabels(), user_id="u1", at_ms=0, inputs={"recency_days": 2.0}, scores={"churn": 0.3})
>>> p, out = on_event(p, at_ms=5 * DAY_MS, spend=19.99, config=cfg)   # back after 5 days
>>> [(e.target, e.label) for e in out]   # back within 7 days: both churn labels are 0
[('churn_7d', 0.0), ('churn', 0.0)]
>>> p, out = advance(p, watermark_ms=30 * DAY_MS, config=cfg)          # the CLV window closes
>>> [(e.target, e.label, e.resolved_at) for e in out], p.observations
([('clv_30d', 19.99, 2592000000)], ())
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "DAY_MS",
    "TARGETS",
    "Example",
    "LabelConfig",
    "Observation",
    "PendingLabels",
    "Target",
    "advance",
    "example_id",
    "next_deadline",
    "observe",
    "on_event",
]

DAY_MS = 86_400_000
Target = Literal["churn", "clv_30d", "churn_7d"]
TARGETS: tuple[Target, ...] = ("churn", "clv_30d", "churn_7d")
_STATE_VERSION = 2  # 2: input names once, values per observation


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """How long labels take and how much is sampled (event-time milliseconds)."""

    churn_horizon_ms: int = 14 * DAY_MS
    clv_window_ms: int = 30 * DAY_MS
    sample_every_ms: int = DAY_MS
    max_pending: int = 32
    # The early churn label ("churn_7d"): the same question over a shorter horizon.
    early_horizon_ms: int = 7 * DAY_MS

    def __post_init__(self) -> None:
        for name in ("churn_horizon_ms", "clv_window_ms", "sample_every_ms", "max_pending", "early_horizon_ms"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"LabelConfig.{name} must be a positive integer, got {v!r}")
        if self.early_horizon_ms >= self.churn_horizon_ms:
            raise ValueError("LabelConfig.early_horizon_ms must be shorter than churn_horizon_ms")

    @property
    def longest_ms(self) -> int:
        """How long an observation can wait for its last label."""
        return max(self.churn_horizon_ms, self.clv_window_ms)


DEFAULT_CONFIG = LabelConfig()


@dataclass(frozen=True, slots=True)
class Observation:
    """A scored moment waiting for its labels. Treat the mappings as read-only."""

    at_ms: int
    inputs: dict[str, float]
    scores: dict[str, float]
    versions: dict[str, str]
    churn_open: bool = True
    clv_open: bool = True
    # Integer cents: the sum is exact, so it does not depend on the order events arrive in.
    clv_cents: int = 0
    early_open: bool = True


@dataclass(frozen=True, slots=True)
class PendingLabels:
    """One user's observations awaiting labels, plus when the last one was sampled.

    `last_observed_at` outlives the observations (it drives sampling), and
    `user_id` is set by the first `observe`.
    """

    user_id: str | None = None
    last_observed_at: int | None = None
    observations: tuple[Observation, ...] = ()
    # to_dict's result: the object never changes, and a user's state is written on every
    # flush that touches the user, usually with the same pending labels as the last time.
    _plain: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the user's state (versioned, so the shape can evolve).

        It rides in the user's changelog entry, written on every flush that
        touches the user, so it is compact: the input names once, then each
        observation's values in that order (None where it had no such input),
        and empty score/version maps left out.
        """
        if self._plain is not None:
            return self._plain
        obs = self.observations
        # Sanitised inputs all have the same keys in the same order: then the values
        # are taken as they are (C speed), else looked up by name.
        names = list(obs[0].inputs) if obs else []
        if any(list(o.inputs) != names for o in obs):
            names = sorted({k for o in obs for k in o.inputs})
            rows = [[o.inputs.get(n) for n in names] for o in obs]
        else:
            rows = [list(o.inputs.values()) for o in obs]
        observations = []
        for o, x in zip(obs, rows, strict=True):
            row: dict[str, Any] = {
                "at": o.at_ms,
                "x": x,
                "open": [int(o.churn_open), int(o.clv_open), int(o.early_open)],
                "clv_cents": o.clv_cents,
            }
            if o.scores:
                row["scores"] = o.scores
            if o.versions:
                row["versions"] = o.versions
            observations.append(row)
        plain = {
            "v": _STATE_VERSION,
            "user_id": self.user_id,
            "last_observed_at": self.last_observed_at,
            "names": names,
            "observations": observations,
        }
        object.__setattr__(self, "_plain", plain)
        return plain

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PendingLabels:
        """The inverse of `to_dict`; a malformed value raises ValueError naming the field."""
        try:
            if d["v"] != _STATE_VERSION:
                raise ValueError(f"unknown version {d['v']!r}")
            names = [str(n) for n in d["names"]]
            obs = []
            for o in d["observations"]:
                values = o["x"]
                if len(values) != len(names):
                    raise ValueError(f"{len(values)} values for {len(names)} input names")
                # States written before the early label have two flags: theirs stays closed.
                churn_open, clv_open, early_open = (*o["open"], 0) if len(o["open"]) == 2 else o["open"]
                obs.append(
                    Observation(
                        at_ms=int(o["at"]),
                        inputs={n: float(v) for n, v in zip(names, values, strict=True) if v is not None},
                        scores={str(k): float(v) for k, v in o.get("scores", {}).items()},
                        versions={str(k): str(v) for k, v in o.get("versions", {}).items()},
                        churn_open=bool(churn_open),
                        clv_open=bool(clv_open),
                        clv_cents=int(o["clv_cents"]),
                        early_open=bool(early_open),
                    )
                )
            last = d["last_observed_at"]
            user = d["user_id"]
            return cls(None if user is None else str(user), None if last is None else int(last), tuple(obs))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"PendingLabels.from_dict: malformed state ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True, slots=True)
class Example:
    """A resolved training example: what the models saw at `observed_at` and what happened next.

    `example_id` depends only on (user, observation time, target), so replays
    and retries produce the same id and the trainer learns each example once.
    """

    example_id: str
    user_id: str
    target: Target
    observed_at: int
    resolved_at: int
    inputs: dict[str, float]
    label: float
    scores: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys): equal examples give equal bytes."""
        return orjson.dumps(
            {
                "example_id": self.example_id,
                "user_id": self.user_id,
                "target": self.target,
                "observed_at": self.observed_at,
                "resolved_at": self.resolved_at,
                "inputs": self.inputs,
                "label": self.label,
                "scores": self.scores,
                "versions": self.versions,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Example:
        """The inverse of `to_json`; a malformed record raises ValueError."""
        try:
            d = orjson.loads(data)
            target = d["target"]
            if target not in TARGETS:
                raise ValueError(f"unknown target {target!r}")
            return cls(
                example_id=str(d["example_id"]),
                user_id=str(d["user_id"]),
                target=target,
                observed_at=int(d["observed_at"]),
                resolved_at=int(d["resolved_at"]),
                inputs={str(k): float(v) for k, v in d["inputs"].items()},
                label=float(d["label"]),
                scores={str(k): float(v) for k, v in d["scores"].items()},
                versions={str(k): str(v) for k, v in d["versions"].items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"Example.from_json: malformed record ({exc.__class__.__name__}: {exc})") from None


def example_id(user_id: str, observed_at: int, target: str) -> str:
    """A stable id: 32 hex digits of BLAKE2b over (user, observation time, target).

    >>> example_id("u1", 0, "churn") == example_id("u1", 0, "churn") != example_id("u1", 0, "clv_30d")
    True
    """
    # The unit separator cannot occur in a user id (nudge.events' id rule refuses control characters).
    key = f"{user_id}\x1f{observed_at}\x1f{target}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def _finite(name: str, values: Mapping[str, float], *, digits: int | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        f = float(v)
        if not math.isfinite(f):
            # Sanitising is the caller's job (one gate for training and scoring alike);
            # a NaN here is a bug upstream, and it would also break the JSON state.
            raise ValueError(f"observe: {name}[{k!r}] is {v!r}; sanitise inputs before observing")
        out[k] = f if digits is None or f.is_integer() else float(f"{f:.{digits}g}")
    return out


def observe(
    pending: PendingLabels,
    *,
    user_id: str,
    at_ms: int,
    inputs: Mapping[str, float],
    scores: Mapping[str, float],
    versions: Mapping[str, str] | None = None,
    config: LabelConfig = DEFAULT_CONFIG,
) -> tuple[PendingLabels, bool]:
    """Keep (or not) an observation of `user_id` scored as of event time `at_ms`.

    Returns the new state and whether the observation was kept. `at_ms`
    should be the "as of" time of the scores: every event already folded
    into `inputs` has ``ts <= at_ms`` (an event folded in before the
    observation is its input, never its label).
    """
    if pending.user_id is not None and pending.user_id != user_id:
        raise ValueError(f"observe: state of user {pending.user_id!r} given for user {user_id!r}")
    last = pending.last_observed_at
    if last is not None and at_ms < last + config.sample_every_ms:
        return pending, False
    still_open = sum(1 for o in pending.observations if at_ms < o.at_ms + config.longest_ms)
    if still_open >= config.max_pending:
        return pending, False
    obs = Observation(
        at_ms=at_ms,
        # Six significant digits: a model does not see the difference, and the inputs ride in
        # the user's changelog entry on every flush (17-digit floats made them twice as long).
        inputs=_finite("inputs", inputs, digits=6),
        scores=_finite("scores", scores),
        versions={str(k): str(v) for k, v in (versions or {}).items()},
    )
    return PendingLabels(user_id, at_ms, (*pending.observations, obs)), True


def _example(pending: PendingLabels, o: Observation, target: Target, resolved_at: int, label: float) -> Example:
    user = pending.user_id or ""
    return Example(
        example_id=example_id(user, o.at_ms, target),
        user_id=user,
        target=target,
        observed_at=o.at_ms,
        resolved_at=resolved_at,
        inputs=o.inputs,
        label=label,
        scores=o.scores,
        versions=o.versions,
    )


def on_event(
    pending: PendingLabels, *, at_ms: int, spend: float = 0.0, config: LabelConfig = DEFAULT_CONFIG
) -> tuple[PendingLabels, list[Example]]:
    """A user's own event at event time `at_ms` (with `spend`, 0 unless a purchase).

    Resolves churn = 0 for each pending observation with
    ``at < at_ms < at + churn_horizon`` and adds `spend` to every open CLV
    window with ``at < at_ms <= at + clv_window``. Pass only what the user
    did: a push we sent (push_received) says nothing about whether they left.
    """
    if not pending.observations:
        return pending, []
    cents = _cents(spend)
    resolved: list[Example] = []
    changed = False
    kept: list[Observation] = []
    for o in pending.observations:
        dt = at_ms - o.at_ms
        if dt <= 0:
            kept.append(o)
            continue
        churn_open, clv_cents, early_open = o.churn_open, o.clv_cents, o.early_open
        if early_open and dt < config.early_horizon_ms:
            resolved.append(_example(pending, o, "churn_7d", at_ms, 0.0))
            early_open = False
        if churn_open and dt < config.churn_horizon_ms:
            resolved.append(_example(pending, o, "churn", at_ms, 0.0))
            churn_open = False
        if o.clv_open and cents and dt <= config.clv_window_ms:
            clv_cents += cents
        if churn_open != o.churn_open or clv_cents != o.clv_cents or early_open != o.early_open:
            changed = True
            # A direct constructor call: dataclasses.replace costs ~2 us per observation.
            o = Observation(o.at_ms, o.inputs, o.scores, o.versions, churn_open, o.clv_open, clv_cents, early_open)
        if o.churn_open or o.clv_open or o.early_open:
            kept.append(o)
        else:
            changed = True
    if not changed:
        return pending, resolved
    return PendingLabels(pending.user_id, pending.last_observed_at, tuple(kept)), resolved


def advance(
    pending: PendingLabels, *, watermark_ms: int, config: LabelConfig = DEFAULT_CONFIG
) -> tuple[PendingLabels, list[Example]]:
    """Event time has reached `watermark_ms` (no event with ``ts <= watermark_ms`` is still to come).

    Resolves churn = 1 for observations whose horizon has passed without an
    event, and the CLV label for those whose window has closed; an
    observation with both labels out leaves the state. Watermarks only move
    forward: an older one resolves nothing new.
    """
    due = next_deadline(pending, config)
    if due is None or watermark_ms < due:
        return pending, []
    resolved: list[Example] = []
    kept: list[Observation] = []
    for o in pending.observations:
        churn_at, clv_at = o.at_ms + config.churn_horizon_ms, o.at_ms + config.clv_window_ms
        early_at = o.at_ms + config.early_horizon_ms
        churn_open, clv_open, early_open = o.churn_open, o.clv_open, o.early_open
        if early_open and watermark_ms >= early_at:
            resolved.append(_example(pending, o, "churn_7d", early_at, 1.0))
            early_open = False
        if churn_open and watermark_ms >= churn_at:
            resolved.append(_example(pending, o, "churn", churn_at, 1.0))
            churn_open = False
        if clv_open and watermark_ms >= clv_at:
            resolved.append(_example(pending, o, "clv_30d", clv_at, o.clv_cents / 100))
            clv_open = False
        if churn_open or clv_open or early_open:
            kept.append(
                Observation(o.at_ms, o.inputs, o.scores, o.versions, churn_open, clv_open, o.clv_cents, early_open)
            )
    return PendingLabels(pending.user_id, pending.last_observed_at, tuple(kept)), resolved


def next_deadline(pending: PendingLabels, config: LabelConfig = DEFAULT_CONFIG) -> int | None:
    """The earliest watermark at which `advance` would resolve something, or None.

    Lets the worker index users by deadline instead of advancing all of them
    on every watermark tick.
    """
    best: int | None = None
    for o in pending.observations:
        if o.early_open:
            t = o.at_ms + config.early_horizon_ms
            best = t if best is None or t < best else best
        if o.churn_open:
            t = o.at_ms + config.churn_horizon_ms
            best = t if best is None or t < best else best
        if o.clv_open:
            t = o.at_ms + config.clv_window_ms
            best = t if best is None or t < best else best
    return best


def _cents(spend: float) -> int:
    f = float(spend)
    if not math.isfinite(f):
        raise ValueError(f"on_event: spend is {spend!r}; it must be a finite amount")
    return round(f * 100)
