"""RFM scores and segments, and member tiers: the two segmentations marketers ask for.

RFM grades each user from 1 to 5 on three dimensions: Recency (days since
the last event; lower is better), Frequency (lifetime orders) and Monetary
value (lifetime spend). The grades are quintiles over all users: 4 cut points
per dimension, estimated by `RFMQuantiles` from the stream of users the
trainer sees (a mergeable sketch with 0.5 % relative error). The cut
points ship in the model snapshot, so every worker grades alike, and a
worker grades with `rfm_scores` alone.

A value equal to a cut point belongs to the lower quintile, so many users
with the same count (most have 0 or 1 orders) share one grade instead of
being spread at random. For R the scale is reversed: the most recent fifth
gets 5.

Segments come from a standard R x FM grid (FM = the mean of F and M, halves
rounded up), the one popularised with RFM analysis in retail CRM:

    FM →        1               2               3                 4                5
    R=5   new_customers  potential_loyalists potential_loyalists champions        champions
    R=4   promising      potential_loyalists potential_loyalists loyal_customers  loyal_customers
    R=3   about_to_sleep about_to_sleep      need_attention      loyal_customers  loyal_customers
    R=2   hibernating    hibernating         at_risk             at_risk          cannot_lose_them
    R=1   lost           lost                at_risk             at_risk          cannot_lose_them

Read it as: recent *and* valuable are champions; valuable but gone quiet
are at risk (or, the most valuable, "cannot lose them"); recent but not yet
valuable are new or promising; neither, for a long time, are lost.

Member tiers are a business rule, not a model: thresholds in
deploy/config/tiers.yaml, loaded and checked by `load_tiers`; see that file.

>>> cuts = RFMCuts(r=(3, 10, 30, 90), f=(0, 1, 2, 5), m=(0, 20, 80, 300))
>>> rfm_scores(2.5, 7, 500.0, cuts)
(5, 5, 5)
>>> rfm_segment(*rfm_scores(2.5, 7, 500.0, cuts))
'champions'
>>> rfm_segment(*rfm_scores(120, 3, 150.0, cuts))
'at_risk'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "QUANTILES",
    "SEGMENTS",
    "QuantileSketch",
    "RFMCuts",
    "RFMQuantiles",
    "Tier",
    "Tiers",
    "load_tiers",
    "member_tier",
    "rfm_scores",
    "rfm_segment",
]

QUANTILES: Final = (0.2, 0.4, 0.6, 0.8)

# _GRID[r - 1][fm - 1]; see the module docstring for the picture.
_GRID: Final = (
    ("lost", "lost", "at_risk", "at_risk", "cannot_lose_them"),
    ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose_them"),
    ("about_to_sleep", "about_to_sleep", "need_attention", "loyal_customers", "loyal_customers"),
    ("promising", "potential_loyalists", "potential_loyalists", "loyal_customers", "loyal_customers"),
    ("new_customers", "potential_loyalists", "potential_loyalists", "champions", "champions"),
)
SEGMENTS: Final[tuple[str, ...]] = tuple(dict.fromkeys(name for row in reversed(_GRID) for name in row))


@dataclass(frozen=True, slots=True)
class RFMCuts:
    """Four non-decreasing cut points per dimension (the 20/40/60/80 % quantiles)."""

    r: tuple[float, float, float, float]
    f: tuple[float, float, float, float]
    m: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        for name in ("r", "f", "m"):
            cuts = getattr(self, name)
            if len(cuts) != 4 or not all(math.isfinite(c) for c in cuts) or list(cuts) != sorted(cuts):
                raise ValueError(f"RFMCuts.{name} must be 4 finite non-decreasing numbers, got {cuts!r}")


def _grade(value: float, cuts: Sequence[float]) -> int:
    """1 + how many cut points lie strictly below `value` (ties go to the lower grade)."""
    return 1 + sum(1 for c in cuts if value > c)


def rfm_scores(recency_days: float, orders: float, spend: float, cuts: RFMCuts) -> tuple[int, int, int]:
    """(R, F, M) grades, each 1..5; R is reversed (recent is 5).

    NaN counts as the worst value on each dimension (never seen, no orders, no spend).
    """
    r = 1 if math.isnan(recency_days) else 6 - _grade(recency_days, cuts.r)
    f = 1 if math.isnan(orders) else _grade(orders, cuts.f)
    m = 1 if math.isnan(spend) else _grade(spend, cuts.m)
    return r, f, m


def rfm_segment(r: int, f: int, m: int) -> str:
    """The segment name of the grades (r, f, m), each 1..5, from the R x FM grid."""
    for name, score in (("r", r), ("f", f), ("m", m)):
        if not 1 <= score <= 5:
            raise ValueError(f"RFM {name} grade must be 1..5, got {score!r}")
    fm = (f + m + 1) // 2
    return _GRID[r - 1][fm - 1]


class QuantileSketch:
    """Quantiles of non-negative values within a relative error, in bounded memory; mergeable.

    The DDSketch idea (Masson, Rim & Lee, 2019): a value x > 0 is counted in
    bucket ceil(log_gamma(x)), with gamma = (1 + a) / (1 - a), so the
    bucket's midpoint is within a relative error `a` of every value in it.
    Memory is one counter per occupied bucket (about 2,000 for values from a
    cent to 10^8 at a = 0.5 %), whatever the stream's length, and two
    sketches merge by adding counters, so partial sketches from several
    trainers or days combine exactly. Values below `MIN_VALUE` (and
    negatives) count as 0.

    Chosen over River's P² estimator because P² interpolates between the
    markers it keeps: on order counts (mostly 0, 1, 2...) it put the 80 %
    cut at 7.1 where the data had 8, which moves whole groups of users across
    a grade boundary.
    """

    MIN_VALUE: Final = 1e-9

    def __init__(self, relative_accuracy: float = 0.005) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.zeros = 0
        self.bins: dict[int, int] = {}
        self.count = 0

    def update(self, value: float) -> None:
        """Count one finite value (the caller skips NaN and inf)."""
        self.count += 1
        if value < self.MIN_VALUE:
            self.zeros += 1
            return
        key = math.ceil(math.log(value) / self._log_gamma)
        self.bins[key] = self.bins.get(key, 0) + 1

    def merge(self, other: QuantileSketch) -> None:
        """Add `other`'s counts into this sketch (same accuracy only)."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        self.count += other.count
        self.zeros += other.zeros
        for key, n in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + n

    def quantile(self, q: float) -> float:
        """The value of rank floor(q * (count - 1)) (0-based), within the relative error."""
        if self.count == 0:
            raise ValueError("QuantileSketch.quantile: no value yet")
        rank = math.floor(q * (self.count - 1))
        seen = self.zeros
        if rank < seen:
            return 0.0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if rank < seen:
                return 2 * self._gamma**key / (self._gamma + 1)
        raise AssertionError("unreachable: counts add up to count")


class RFMQuantiles:
    """Streaming 20/40/60/80 % quantiles of R, F and M over all users.

    One `QuantileSketch` per dimension: bounded memory, mergeable, 0.5 %
    relative error. F counts orders, so its cut points are rounded to whole
    orders. The trainer feeds one (r, f, m) per user observation; `cuts()`
    is what goes into a snapshot. Picklable.
    """

    def __init__(self, relative_accuracy: float = 0.005) -> None:
        self.sketches = {dim: QuantileSketch(relative_accuracy) for dim in "rfm"}
        self.count = 0

    def update(self, r: float, f: float, m: float) -> None:
        """Add one user's (recency days, orders, spend); a user with a non-finite value is skipped."""
        if not all(math.isfinite(v) for v in (r, f, m)):
            return
        self.sketches["r"].update(r)
        self.sketches["f"].update(f)
        self.sketches["m"].update(m)
        self.count += 1

    def merge(self, other: RFMQuantiles) -> None:
        for dim, sketch in self.sketches.items():
            sketch.merge(other.sketches[dim])
        self.count += other.count

    def cuts(self) -> RFMCuts:
        """The current cut points; ValueError before the first update."""
        if self.count == 0:
            raise ValueError("RFMQuantiles.cuts: no observation yet")
        out: dict[str, tuple[float, float, float, float]] = {}
        for dim, sketch in self.sketches.items():
            values = [sketch.quantile(q) for q in QUANTILES]
            if dim == "f":
                values = [float(round(v)) for v in values]
            out[dim] = (values[0], values[1], values[2], values[3])
        return RFMCuts(**out)


# --- member tiers ----------------------------------------------------------------


class Tier(BaseModel):
    """A tier reached by lifetime spend OR lifetime orders, whichever comes first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
    min_spend: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    min_orders: Annotated[int, Field(ge=0)]


class Tiers(BaseModel):
    """Tiers from the lowest to the highest; the lowest is open to everybody."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _ordered(self) -> Tiers:
        names = [t.name for t in self.tiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique, repeated: {', '.join(duplicates)}")
        first = self.tiers[0]
        if first.min_spend != 0 or first.min_orders != 0:
            raise ValueError(f"the first tier ({first.name}) must have min_spend 0 and min_orders 0")
        for lower, higher in zip(self.tiers, self.tiers[1:], strict=False):
            if not (higher.min_spend > lower.min_spend and higher.min_orders > lower.min_orders):
                raise ValueError(
                    f"tier {higher.name} must need more spend and more orders than {lower.name} "
                    f"(got {higher.min_spend}/{higher.min_orders} after {lower.min_spend}/{lower.min_orders})"
                )
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)


def load_tiers(path: str | Path) -> Tiers:
    """Read and check a tiers file; any problem is one ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read tiers: {_one_line(exc)}") from None
    try:
        return Tiers.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValueError(f"{path}: bad tiers at {where}: {message}{more}") from None


def member_tier(spend: float, orders: float, tiers: Tiers) -> str:
    """The highest tier whose spend or orders threshold is met (non-finite counts as 0).

    >>> t = Tiers.model_validate({"tiers": [
    ...     {"name": "bronze", "min_spend": 0, "min_orders": 0},
    ...     {"name": "silver", "min_spend": 100, "min_orders": 5}]})
    >>> member_tier(99.99, 4, t), member_tier(100, 0, t), member_tier(0, 5, t)
    ('bronze', 'silver', 'silver')
    """
    spend = spend if math.isfinite(spend) else 0.0
    orders = orders if math.isfinite(orders) else 0.0
    for tier in reversed(tiers.tiers):
        if spend >= tier.min_spend or orders >= tier.min_orders:
            return tier.name
    return tiers.tiers[0].name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
