"""models.segments: RFM grades at their boundaries, cut points from a known distribution, tiers files."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.segments import (
    SEGMENTS,
    RFMCuts,
    RFMQuantiles,
    load_tiers,
    member_tier,
    rfm_scores,
    rfm_segment,
)

REPO = Path(__file__).resolve().parents[2]
CUTS = RFMCuts(r=(3.0, 10.0, 30.0, 90.0), f=(1.0, 2.0, 4.0, 8.0), m=(10.0, 50.0, 100.0, 500.0))


@pytest.mark.parametrize(
    ("value", "grade"),
    [(0.0, 1), (1.0, 1), (1.0001, 2), (2.0, 2), (3.0, 3), (4.0, 3), (4.5, 4), (8.0, 4), (8.5, 5), (1e300, 5)],
)
def test_grade_boundaries(value: float, grade: int) -> None:
    cuts = RFMCuts(r=(1.0, 2.0, 4.0, 8.0), f=(1.0, 2.0, 4.0, 8.0), m=(1.0, 2.0, 4.0, 8.0))
    # a value on a cut point belongs to the lower quintile; R runs the other way
    assert rfm_scores(value, value, value, cuts) == (6 - grade, grade, grade)


def test_nan_is_the_worst_grade() -> None:
    assert rfm_scores(math.nan, math.nan, math.nan, CUTS) == (1, 1, 1)


@given(st.floats(allow_nan=False), st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_grades_stay_in_range_and_move_the_right_way(r: float, f: float, m: float) -> None:
    scores = rfm_scores(r, f, m, CUTS)
    assert all(1 <= s <= 5 for s in scores)
    more_recent = rfm_scores(r - 1e6, f, m, CUTS)[0] if math.isfinite(r - 1e6) else scores[0]
    assert more_recent >= scores[0]
    assert rfm_scores(r, f + 1e6, m + 1e6, CUTS)[1:] >= scores[1:] or not math.isfinite(f + m + 2e6)


def test_the_grid_covers_every_cell_with_the_eleven_segments() -> None:
    seen = {rfm_segment(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)}
    assert seen == set(SEGMENTS)
    assert len(SEGMENTS) == 11


@pytest.mark.parametrize(
    ("r", "f", "m", "segment"),
    [
        (5, 5, 5, "champions"),
        (5, 1, 1, "new_customers"),
        (4, 1, 1, "promising"),
        (1, 1, 1, "lost"),
        (2, 1, 2, "hibernating"),
        (1, 5, 5, "cannot_lose_them"),
        (2, 4, 3, "at_risk"),
        (3, 3, 3, "need_attention"),
        (3, 2, 1, "about_to_sleep"),
        (4, 5, 4, "loyal_customers"),
        (5, 2, 3, "potential_loyalists"),
    ],
)
def test_segment_examples(r: int, f: int, m: int, segment: str) -> None:
    assert rfm_segment(r, f, m) == segment


def test_sketches_merge_to_the_sketch_of_the_whole() -> None:
    rng = random.Random(5)
    rows = [(rng.uniform(0, 60), float(rng.randrange(5)), rng.lognormvariate(3, 1)) for _ in range(3000)]
    whole, first, second = RFMQuantiles(), RFMQuantiles(), RFMQuantiles()
    for i, row in enumerate(rows):
        whole.update(*row)
        (first if i % 3 else second).update(*row)
    first.merge(second)
    assert first.count == whole.count
    assert first.cuts() == whole.cuts()


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, 6, 1), (1, 1, -2)])
def test_segment_refuses_grades_out_of_range(bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match=r"1\.\.5"):
        rfm_segment(*bad)


def test_cut_points_from_a_known_distribution() -> None:
    rng = random.Random(3)
    rq = RFMQuantiles()
    rs, fs, ms = [], [], []
    for _ in range(20_000):
        r, f, m = rng.uniform(0, 100), float(rng.randrange(10)), rng.expovariate(1 / 50)
        rs.append(r)
        fs.append(f)
        ms.append(m)
        rq.update(r, f, m)
    rq.update(math.nan, 1.0, 1.0)  # skipped, not poisoning the estimators
    assert rq.count == 20_000
    cuts = rq.cuts()
    for got, sample, exact_integers in ((cuts.r, rs, False), (cuts.f, fs, True), (cuts.m, ms, False)):
        ordered = sorted(sample)
        exact = [ordered[math.floor(q * (len(ordered) - 1))] for q in (0.2, 0.4, 0.6, 0.8)]
        if exact_integers:
            assert list(got) == exact
        else:
            assert all(abs(g - e) <= 0.005 * e for g, e in zip(got, exact, strict=True)), (got, exact)
    # and the theoretical quintiles of the uniform and exponential laws
    assert all(abs(g - e) < 2.5 for g, e in zip(cuts.r, (20, 40, 60, 80), strict=True))
    assert all(abs(g - 50 * -math.log(1 - q)) < 3 for g, q in zip(cuts.m, (0.2, 0.4, 0.6, 0.8), strict=True))
    # graded with its own cuts, a uniform sample falls evenly into the five grades
    grades = [rfm_scores(r, 0, 0, cuts)[0] for r in rs]
    assert all(abs(grades.count(g) / len(grades) - 0.2) < 0.02 for g in range(1, 6))


def test_cuts_need_an_observation_and_are_ordered() -> None:
    rq = RFMQuantiles()
    with pytest.raises(ValueError, match="no observation"):
        rq.cuts()
    rq.update(1.0, 2.0, 3.0)
    cuts = rq.cuts()
    assert cuts.f == (2.0,) * 4
    assert all(abs(c - 3.0) <= 0.015 for c in cuts.m)
    with pytest.raises(ValueError, match="non-decreasing"):
        RFMCuts(r=(2.0, 1.0, 3.0, 4.0), f=CUTS.f, m=CUTS.m)


# --- tiers -------------------------------------------------------------------------


def test_the_shipped_tiers_file_loads() -> None:
    tiers = load_tiers(REPO / "deploy" / "config" / "tiers.yaml")
    assert tiers.names[0] == "bronze"
    assert len(tiers.names) >= 3


def test_tier_boundaries() -> None:
    tiers = load_tiers(REPO / "deploy" / "config" / "tiers.yaml")
    for lower, tier in zip(tiers.tiers, tiers.tiers[1:], strict=False):
        # just under both thresholds: still the tier below; either threshold met: this tier
        assert member_tier(tier.min_spend - 0.01, tier.min_orders - 1, tiers) == lower.name
        assert member_tier(tier.min_spend, 0, tiers) == tier.name
        assert member_tier(0, tier.min_orders, tiers) == tier.name
    assert member_tier(math.inf, math.nan, tiers) == tiers.names[0]
    assert member_tier(1e12, 10**9, tiers) == tiers.names[-1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiers.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tiers: [", "cannot read tiers"),
        ("", "bad tiers at file"),
        ("tiers: []", "at tiers"),
        (
            "tiers:\n- {name: a, min_spend: 0, min_orders: 0}\n- {name: a, min_spend: 5, min_orders: 5}",
            "unique, repeated: a",
        ),
        (
            "tiers:\n- {name: a, min_spend: 0, min_orders: 0}\n- {name: b, min_spend: 5, min_orders: 0}",
            "tier b must need more spend and more orders than a",
        ),
        (
            "tiers:\n- {name: b, min_spend: 0, min_orders: 0}\n- {name: a, min_spend: -5, min_orders: 1}",
            "tiers.1.min_spend",
        ),
        ("tiers:\n- {name: a, min_spend: 10, min_orders: 0}", "first tier (a) must have min_spend 0"),
        ("tiers:\n- {name: a, min_spend: 0, min_orders: 0, colour: red}", "tiers.0.colour"),
        ("tiers:\n- {name: Gold!, min_spend: 0, min_orders: 0}", "tiers.0.name"),
        ("version: 2\ntiers:\n- {name: a, min_spend: 0, min_orders: 0}", "at version"),
        ("tiers:\n- {name: a, min_spend: .nan, min_orders: 0}", "tiers.0.min_spend"),
    ],
)
def test_a_bad_tiers_file_is_one_value_error_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_tiers(path)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    assert "\n" not in message


def test_a_missing_tiers_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read tiers"):
        load_tiers(tmp_path / "nope.yaml")
