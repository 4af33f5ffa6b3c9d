"""`nudge report`: what each campaign sent, held back and earned, measured against its holdout.

Reads the decisions, purchases and app-events topics from the beginning and
prints, per rule and per (rule, variant): decisions, sends, suppressions by
reason, deliveries, opens, clicks, conversions, the holdout's conversion
rate, the uplift with a 95 % confidence interval, attributed revenue, offer
cost and ROI, then totals over all campaigns. `build_report` is the pure
part, over plain records, so every figure is tested without Kafka.

How a message is counted (the README's "Reading `nudge report`" says the same):

- a decision record may arrive twice (at-least-once): records are deduplicated
  by (decision_id, outcome, reason); a message is counted once per
  idempotency key, so a delayed message later sent is one send;
- a purchase is attributed to a send when it falls in
  ``send_at < ts <= send_at + attribution window`` (models/bandit.py's
  window): the user's first purchase in the window, or the first one carrying
  the message's offer id if there is one (a redeemed coupon);
- the holdout of a rule (its suppressed "holdout" decisions, one per episode)
  converts when the user buys within the window after `decided_at`;
- uplift = treated rate - holdout rate, with Newcombe's hybrid score interval
  (Newcombe 1998, method 10); a variant is compared with its rule's holdout,
  since the holdout is drawn before the variant matters;
- money is in EUR (`FX_PER_EUR`); an offer costs only when the attributed
  purchase redeemed it (carries its id): an unused coupon gave nothing away;
- ROI = (incremental revenue - offer cost) / offer cost, incremental revenue =
  (revenue per send - revenue per holdout decision) x sends.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

import orjson

from models.offers import Offer
from nudge.errors import ConfigError, DependencyUnavailable, UsageError
from nudge.events import MAX_EPOCH_MS, AppEvent, PurchaseEvent, id_problem, parse_event
from nudge.settings import Settings
from nudge.text import printable, quoted

__all__ = [
    "FEEDBACK_TYPES",
    "FX_PER_EUR",
    "MIN_HOLDOUT_USERS",
    "SHIPPING_COST_EUR",
    "build_report",
    "configure",
    "newcombe_interval",
    "offer_cost_eur",
    "render_text",
    "run",
    "to_eur",
    "wilson_interval",
]

# Fixed reference rates, units of the currency per 1 EUR (EUR = amount / rate): the
# simulator's table (producers/simulator.py FX). A report compares campaigns, not
# days, so one fixed table keeps the figures reproducible; a purchase in any other
# currency is left out of attribution (treated and holdout alike) and counted.
FX_PER_EUR: Final[Mapping[str, float]] = {"EUR": 1.0, "GBP": 0.86, "USD": 1.09}
# What a free_shipping offer costs us per redeemed order: the shipping we no longer charge.
SHIPPING_COST_EUR: Final = 4.90
# Below this many distinct holdout users a rate difference is noise; the row says so.
MIN_HOLDOUT_USERS: Final = 30
# App events that count as feedback on a message, and the counter each feeds.
FEEDBACK_TYPES: Final[Mapping[str, str]] = {
    "push_received": "deliveries",
    "push_opened": "opens",
    "sms_clicked": "clicks",
}
_STALL_S: Final = 30.0


# --------------------------------------------------------------------------
# Statistics: Wilson and Newcombe intervals
# --------------------------------------------------------------------------


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (no continuity correction).

    >>> lo, hi = wilson_interval(56, 70)
    >>> round(lo, 4), round(hi, 4)
    (0.6918, 0.877)
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(p1 - p2, lower, upper): Newcombe's hybrid score interval for a difference of proportions.

    Newcombe (1998), "Interval estimation for the difference between independent
    proportions", method 10: each proportion's Wilson interval, combined. Its
    worked example, 56/70 vs 48/80:

    >>> d, lo, hi = newcombe_interval(56, 70, 48, 80)
    >>> round(d, 4), round(lo, 4), round(hi, 4)
    (0.2, 0.0524, 0.3339)
    """
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    lower = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, lower), min(1.0, upper)


# --------------------------------------------------------------------------
# Money
# --------------------------------------------------------------------------


def to_eur(amount: float, currency: str) -> float | None:
    """`amount` in EUR by the fixed table, or None for a currency not in it.

    >>> to_eur(86.0, "GBP"), to_eur(10.0, "JPY")
    (100.0, None)
    """
    rate = FX_PER_EUR.get(currency)
    return None if rate is None else amount / rate


def offer_cost_eur(offer: Offer, total_eur: float, currency: str) -> float:
    """What redeeming `offer` on an order of `total_eur` gave away, in EUR.

    percent_off: value % of the order (the whole order: purchases do not say which
    items qualified); amount_off: value, in the order's currency; free_shipping:
    SHIPPING_COST_EUR; bundle N ("N for N-1"): one item in N, i.e. total / N.
    """
    if offer.kind == "percent_off":
        return total_eur * offer.value / 100
    if offer.kind == "amount_off":
        return to_eur(offer.value, currency) or 0.0
    if offer.kind == "free_shipping":
        return SHIPPING_COST_EUR
    if offer.kind == "bundle":
        return total_eur / offer.value
    raise ValueError(f"offer {offer.id}: unknown kind {offer.kind!r}")


# --------------------------------------------------------------------------
# The pure core
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Purchase:
    key: tuple[Any, ...]  # identity: the event id when known
    user_id: str
    ts: int
    total_eur: float
    currency: str
    offer_id: str


@dataclass(frozen=True, slots=True)
class _Send:
    key: str
    user_id: str
    rule: str
    variant: str
    campaign: str
    offer_id: str
    at: int


@dataclass(frozen=True, slots=True)
class _Exposure:
    """A holdout decision: the user the rule would have messaged, at `at`."""

    user_id: str
    at: int


@dataclass
class _Group:
    """Everything one row (a rule, a variant or the totals) is computed from."""

    decisions: set[tuple[str, str, str]] = field(default_factory=set)
    sends: dict[str, _Send] = field(default_factory=dict)
    delayed: set[str] = field(default_factory=set)
    suppressed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    holdout: dict[str, _Exposure] = field(default_factory=dict)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_EPOCH_MS else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dedupe_decisions(
    decisions: Iterable[Mapping[str, Any]], since_ms: int | None, rule: str | None, counts: Counter[str]
) -> list[Mapping[str, Any]]:
    seen: set[tuple[str, str, str]] = set()
    out: list[Mapping[str, Any]] = []
    for record in decisions:
        counts["decision_records"] += 1
        ids = (_str(record.get("decision_id")), _str(record.get("outcome")), _str(record.get("reason")))
        decided_at = _int(record.get("decided_at"))
        if (
            not all(
                (ids[0], _str(record.get("idempotency_key")), _str(record.get("user_id")), _str(record.get("rule")))
            )
            or ids[1] not in ("sent", "suppressed", "delayed")
            or decided_at is None
        ):
            counts["decisions_malformed"] += 1
            continue
        if ids in seen:
            counts["decisions_repeated"] += 1
            continue
        seen.add(ids)
        if since_ms is not None and decided_at < since_ms:
            continue
        if rule is not None and record["rule"] != rule:
            continue
        out.append(record)
    return out


def _groups(decisions: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str | None], _Group]:
    """Rows keyed (rule, None) for a rule and (rule, variant) for each of its variants."""
    groups: dict[tuple[str, str | None], _Group] = defaultdict(_Group)
    for r in decisions:
        rule, variant, key, outcome, reason = (
            r["rule"],
            _str(r.get("variant")),
            r["idempotency_key"],
            r["outcome"],
            r["reason"],
        )
        decided_at: int = r["decided_at"]
        send_at = _int(r.get("send_at"))
        for g in (groups[(rule, None)], groups[(rule, variant)]):
            g.decisions.add((r["decision_id"], outcome, reason))
            if outcome == "sent":
                at = decided_at if send_at is None else send_at
                known = g.sends.get(key)
                if known is None or at < known.at:
                    offer_id = _str(r.get("offer_id"))
                    g.sends[key] = _Send(key, r["user_id"], rule, variant, offer_id or rule, offer_id, at)
            elif outcome == "delayed":
                g.delayed.add(key)
            else:
                g.suppressed[reason or "unknown"].add(key)
                if reason == "holdout":
                    known_exposure = g.holdout.get(key)
                    if known_exposure is None or decided_at < known_exposure.at:
                        g.holdout[key] = _Exposure(r["user_id"], decided_at)
    return groups


def _purchases(records: Iterable[Mapping[str, Any]], counts: Counter[str]) -> dict[str, list[_Purchase]]:
    """Each user's purchases in time order, deduplicated, in EUR."""
    by_user: dict[str, list[_Purchase]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for p in records:
        user, ts, currency = _str(p.get("user_id")), _int(p.get("ts")), _str(p.get("currency"))
        total = p.get("total")
        if not user or ts is None or not isinstance(total, int | float) or isinstance(total, bool):
            counts["purchases_malformed"] += 1
            continue
        offer_id = _str(p.get("offer_id"))
        key: tuple[Any, ...] = (p["event_id"],) if p.get("event_id") else (user, ts, total, currency, offer_id)
        if key in seen:
            counts["purchases_repeated"] += 1
            continue
        seen.add(key)
        total_eur = to_eur(float(total), currency)
        if total_eur is None:
            counts["purchases_unknown_currency"] += 1
            continue
        counts["purchases"] += 1
        by_user[user].append(_Purchase(key, user, ts, total_eur, currency, offer_id))
    for purchases in by_user.values():
        purchases.sort(key=lambda x: x.ts)
    return by_user


def _attributed(purchases: Sequence[_Purchase], at: int, window_ms: int, offer_id: str = "") -> _Purchase | None:
    """The purchase an exposure at `at` earned: the first in (at, at + window], or the first carrying `offer_id`."""
    times = [p.ts for p in purchases]
    start, end = bisect.bisect_right(times, at), bisect.bisect_right(times, at + window_ms)
    inside = purchases[start:end]
    if not inside:
        return None
    if offer_id:
        redeemed = next((p for p in inside if p.offer_id == offer_id), None)
        if redeemed is not None:
            return redeemed
    return inside[0]


def _feedback(
    sends: Iterable[_Send], app_events: Iterable[Mapping[str, Any]], counts: Counter[str]
) -> dict[str, set[str]]:
    """Idempotency keys of the sends that were delivered, opened or clicked.

    An app event belongs to the latest send of the same campaign to the same user
    at or before it, so a later send never inherits an earlier message's feedback.
    """
    timeline: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for s in sends:
        timeline[(s.user_id, s.campaign)].append((s.at, s.key))
    for line in timeline.values():
        line.sort()
    got: dict[str, set[str]] = {name: set() for name in FEEDBACK_TYPES.values()}
    seen: set[tuple[Any, ...]] = set()
    for e in app_events:
        kind = _str(e.get("type"))
        if kind not in FEEDBACK_TYPES:
            continue
        user, ts, campaign = _str(e.get("user_id")), _int(e.get("ts")), _str(e.get("campaign_id"))
        key: tuple[Any, ...] = (e["event_id"],) if e.get("event_id") else (kind, user, ts, campaign)
        if key in seen:
            continue
        seen.add(key)
        counts["feedback_events"] += 1
        line = timeline.get((user, campaign), [])
        i = bisect.bisect_right(line, (ts if ts is not None else -1, "\uffff")) - 1
        if ts is None or i < 0:
            counts["feedback_unmatched"] += 1
            continue
        got[FEEDBACK_TYPES[kind]].add(line[i][1])
    return got


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _measure(
    g: _Group,
    holdout: Mapping[str, _Exposure],
    purchases: Mapping[str, Sequence[_Purchase]],
    feedback: Mapping[str, set[str]],
    offers: Mapping[str, Offer],
    window_ms: int,
    confidence: float,
    min_holdout_users: int,
) -> dict[str, Any]:
    """One row's figures; `holdout` is the rule's control group (shared by its variants)."""
    converted = 0
    revenue: dict[tuple[Any, ...], float] = {}
    cost: dict[tuple[Any, ...], float] = {}
    for s in g.sends.values():
        p = _attributed(purchases.get(s.user_id, ()), s.at, window_ms, s.offer_id)
        if p is None:
            continue
        converted += 1
        # A purchase claimed by two sends of one row is counted once in its money.
        revenue[p.key] = p.total_eur
        offer = offers.get(s.offer_id)
        if offer is not None and p.offer_id == s.offer_id:
            cost[p.key] = offer_cost_eur(offer, p.total_eur, p.currency)
    held_converted = 0
    held_revenue: dict[tuple[Any, ...], float] = {}
    for e in holdout.values():
        p = _attributed(purchases.get(e.user_id, ()), e.at, window_ms)
        if p is not None:
            held_converted += 1
            held_revenue[p.key] = p.total_eur
    sends, held = len(g.sends), len(holdout)
    held_users = len({e.user_id for e in holdout.values()})
    revenue_eur, cost_eur = sum(revenue.values(), 0.0), sum(cost.values(), 0.0)
    row: dict[str, Any] = {
        "decisions": len(g.decisions),
        "sends": sends,
        "delayed": len(g.delayed),
        "suppressed": {reason: len(keys) for reason, keys in sorted(g.suppressed.items())},
        **{name: len(keys & g.sends.keys()) for name, keys in feedback.items()},
        "conversions": converted,
        "conversion_rate": _rate(converted, sends),
        "holdout": {
            "decisions": held,
            "users": held_users,
            "conversions": held_converted,
            "conversion_rate": _rate(held_converted, held),
            "revenue_eur": sum(held_revenue.values(), 0.0),
        },
        "uplift": None,
        "uplift_ci": None,
        "revenue_eur": revenue_eur,
        "offer_cost_eur": cost_eur,
        "incremental_revenue_eur": None,
        "roi": None,
        "notes": [],
    }
    notes: list[str] = row["notes"]
    if not sends:
        notes.append("no sends")
    if not held:
        notes.append("no holdout: uplift and ROI need a control group")
    elif held_users < min_holdout_users:
        notes.append(f"holdout too small to say anything ({held_users} users < {min_holdout_users})")
    if sends and held:
        d, lo, hi = newcombe_interval(converted, sends, held_converted, held, confidence)
        row["uplift"], row["uplift_ci"] = d, [lo, hi]
        incremental = (revenue_eur / sends - row["holdout"]["revenue_eur"] / held) * sends
        row["incremental_revenue_eur"] = incremental
        row["roi"] = (incremental - cost_eur) / cost_eur if cost_eur > 0 else None
    return row


def build_report(
    decisions: Iterable[Mapping[str, Any]],
    purchases: Iterable[Mapping[str, Any]],
    app_events: Iterable[Mapping[str, Any]],
    offers: Iterable[Offer] | Mapping[str, Offer],
    attribution_window_ms: int,
    *,
    since_ms: int | None = None,
    rule: str | None = None,
    confidence: float = 0.95,
    min_holdout_users: int = MIN_HOLDOUT_USERS,
) -> dict[str, Any]:
    """Every campaign's figures from plain records (see the module docstring for the rules).

    decisions: `Decision.record()` dicts; purchases: dicts with user_id, ts (epoch ms),
    total, currency, optional offer_id and event_id; app_events: dicts with type,
    user_id, ts, campaign_id, optional event_id. `since_ms` keeps decisions made at
    or after it; `rule` keeps one rule. Returns a JSON-ready dict: `rules` (each
    with its `variants`), `totals` and `inputs` (what was read and skipped).
    """
    if attribution_window_ms <= 0:
        raise ValueError(f"attribution_window_ms must be > 0, got {attribution_window_ms}")
    catalog = dict(offers) if isinstance(offers, Mapping) else {o.id: o for o in offers}
    counts: Counter[str] = Counter()
    kept = _dedupe_decisions(decisions, since_ms, rule, counts)
    groups = _groups(kept)
    by_user = _purchases(purchases, counts)
    everything = _Group()
    for (_, variant), g in groups.items():
        if variant is None:
            everything.decisions |= g.decisions
            everything.sends.update(g.sends)
            everything.delayed |= g.delayed
            everything.holdout.update(g.holdout)
            for reason, keys in g.suppressed.items():
                everything.suppressed[reason] |= keys
    feedback = _feedback(everything.sends.values(), app_events, counts)
    args = (by_user, feedback, catalog, attribution_window_ms, confidence, min_holdout_users)
    rules: list[dict[str, Any]] = []
    for rule_id in sorted({r for r, _ in groups}):
        control = groups[(rule_id, None)].holdout
        row = {"rule": rule_id, **_measure(groups[(rule_id, None)], control, *args), "variants": []}
        for (r, variant), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if r == rule_id and variant is not None:
                row["variants"].append({"variant": variant, **_measure(g, control, *args)})
        rules.append(row)
    totals = _measure(everything, everything.holdout, *args)
    _stratify(totals, rules)
    unknown_offers = sorted({s.offer_id for s in everything.sends.values() if s.offer_id and s.offer_id not in catalog})
    return {
        "attribution_window_ms": attribution_window_ms,
        "since_ms": since_ms,
        "rule": rule,
        "confidence": confidence,
        "fx_per_eur": dict(FX_PER_EUR),
        "shipping_cost_eur": SHIPPING_COST_EUR,
        "min_holdout_users": min_holdout_users,
        "rules": rules,
        "totals": totals,
        "inputs": {
            "decision_records": counts["decision_records"],
            "decisions_repeated": counts["decisions_repeated"],
            "decisions_malformed": counts["decisions_malformed"],
            "purchases": counts["purchases"],
            "purchases_repeated": counts["purchases_repeated"],
            "purchases_malformed": counts["purchases_malformed"],
            "purchases_unknown_currency": counts["purchases_unknown_currency"],
            "feedback_events": counts["feedback_events"],
            "feedback_unmatched": counts["feedback_unmatched"],
            "offers_not_in_catalog": unknown_offers,
        },
    }


def _stratify(totals: dict[str, Any], rules: Sequence[Mapping[str, Any]]) -> None:
    """Totals' effect as the sum of each rule's own effect against its own holdout.

    Pooling every send against every holdout decision would mix rules with different
    holdout shares and base rates (Simpson's paradox), so the totals carry no pooled
    uplift; incremental conversions and revenue add up the rules that have a holdout.
    """
    measured = [r for r in rules if r["uplift"] is not None]
    totals["uplift"] = totals["uplift_ci"] = None
    totals["incremental_conversions"] = sum(r["uplift"] * r["sends"] for r in measured) if measured else None
    totals["incremental_revenue_eur"] = sum(r["incremental_revenue_eur"] for r in measured) if measured else None
    cost = sum(r["offer_cost_eur"] for r in measured)
    incremental = totals["incremental_revenue_eur"]
    totals["roi"] = (incremental - cost) / cost if incremental is not None and cost > 0 else None
    totals["rules_without_holdout"] = [r["rule"] for r in rules if r["holdout"]["decisions"] == 0]
    totals["notes"] = [n for n in totals["notes"] if not n.startswith(("no holdout", "holdout too small"))]


# --------------------------------------------------------------------------
# Text and chart
# --------------------------------------------------------------------------

_COLUMNS: Final = (
    ("variant", 12),
    ("decisions", 9),
    ("sends", 7),
    ("delayed", 7),
    ("delivered", 9),
    ("opened", 7),
    ("clicked", 7),
    ("conv", 6),
    ("conv rate", 9),
    ("hold rate", 9),
    ("uplift [95% CI]", 26),
    ("revenue €", 11),
    ("cost €", 9),
    ("ROI", 7),
)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f} %"


def _pp(value: float) -> str:
    return f"{value * 100:+.1f}"


def _uplift(row: Mapping[str, Any]) -> str:
    if row["uplift"] is None:
        return "-"
    lo, hi = row["uplift_ci"]
    return f"{_pp(row['uplift'])} pp [{_pp(lo)}, {_pp(hi)}]"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _line(label: str, row: Mapping[str, Any]) -> str:
    cells = (
        printable(label, limit=12),
        f"{row['decisions']:,}",
        f"{row['sends']:,}",
        f"{row['delayed']:,}",
        f"{row['deliveries']:,}",
        f"{row['opens']:,}",
        f"{row['clicks']:,}",
        f"{row['conversions']:,}",
        _pct(row["conversion_rate"]),
        _pct(row["holdout"]["conversion_rate"]),
        _uplift(row),
        _money(row["revenue_eur"]),
        _money(row["offer_cost_eur"]),
        "-" if row["roi"] is None else f"{row['roi']:.2f}",
    )
    first = f"  {cells[0]:<{_COLUMNS[0][1]}}"
    return first + "".join(f" {cell:>{width}}" for cell, (_, width) in zip(cells[1:], _COLUMNS[1:], strict=True))


def _suppressed(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{printable(reason)} {n:,}" for reason, n in row["suppressed"].items()) or "none"


def render_text(report: Mapping[str, Any]) -> str:
    """The report as a table per campaign, then a summary line."""
    header = f"  {_COLUMNS[0][0]:<{_COLUMNS[0][1]}}" + "".join(f" {name:>{w}}" for name, w in _COLUMNS[1:])
    window_h = report["attribution_window_ms"] / 3_600_000
    lines = [
        f"attribution window {window_h:g} h; money in EUR (GBP {FX_PER_EUR['GBP']}, USD {FX_PER_EUR['USD']} per EUR); "
        f"uplift in percentage points, treated minus holdout, {report['confidence']:.0%} Newcombe interval",
    ]
    for rule in report["rules"]:
        held = rule["holdout"]
        lines += [
            "",
            f"campaign {printable(rule['rule'])}  (holdout: {held['decisions']:,} decisions, {held['users']:,} users, "
            f"{held['conversions']:,} bought)",
            header,
            _line("(all)", rule),
        ]
        lines += [_line(v["variant"] or "(none)", v) for v in rule["variants"]]
        lines.append(f"  suppressed: {_suppressed(rule)}")
        lines += [f"  note: {note}" for note in rule["notes"]]
        lines += [
            f"  note ({printable(v['variant'])}): {note}"
            for v in rule["variants"]
            for note in v["notes"]
            if note not in rule["notes"]
        ]
    t = report["totals"]
    inputs = report["inputs"]
    roi = "-" if t["roi"] is None else f"{t['roi']:.2f}"
    incremental = "-" if t["incremental_revenue_eur"] is None else _money(t["incremental_revenue_eur"])
    lines += [
        "",
        f"total: {len(report['rules'])} campaigns, {t['decisions']:,} decisions, {t['sends']:,} sends, "
        f"{t['conversions']:,} conversions ({_pct(t['conversion_rate'])}), revenue {_money(t['revenue_eur'])} EUR, "
        f"offer cost {_money(t['offer_cost_eur'])} EUR, incremental revenue {incremental} EUR, ROI {roi}",
        f"read: {inputs['decision_records']:,} decision records ({inputs['decisions_repeated']:,} repeated, "
        f"{inputs['decisions_malformed']:,} malformed), {inputs['purchases']:,} purchases "
        f"({inputs['purchases_unknown_currency']:,} in other currencies left out), "
        f"{inputs['feedback_events']:,} message events ({inputs['feedback_unmatched']:,} matching no send)",
    ]
    if t["rules_without_holdout"]:
        lines.append("without a holdout: " + ", ".join(printable(r) for r in t["rules_without_holdout"]))
    return "\n".join(lines)


def write_chart(report: Mapping[str, Any], path: Path) -> None:
    """Uplift per campaign and variant with its interval; conversion rates treated vs holdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r["rule"], r) for r in report["rules"]]
    rows += [(f"{r['rule']}/{v['variant']}", v) for r in report["rules"] for v in r["variants"]]
    rows.sort(key=lambda item: item[0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 1.1 * len(rows) + 4), 5))
    labels = [label for label, _ in rows]
    x = list(range(len(rows)))
    uplift = [100 * row["uplift"] if row["uplift"] is not None else math.nan for _, row in rows]
    below = [
        u - 100 * row["uplift_ci"][0] if row["uplift_ci"] else 0.0 for u, (_, row) in zip(uplift, rows, strict=True)
    ]
    above = [
        100 * row["uplift_ci"][1] - u if row["uplift_ci"] else 0.0 for u, (_, row) in zip(uplift, rows, strict=True)
    ]
    colors = ["#bab0ac" if row["holdout"]["users"] < report["min_holdout_users"] else "#4c78a8" for _, row in rows]
    left.bar(x, uplift, yerr=[below, above], capsize=4, color=colors)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("uplift, percentage points (treated - holdout)")
    left.set_title(f"uplift with {report['confidence']:.0%} Newcombe interval (grey: holdout too small)")
    treated = [100 * (row["conversion_rate"] or 0.0) for _, row in rows]
    held = [100 * (row["holdout"]["conversion_rate"] or 0.0) for _, row in rows]
    right.bar([i - 0.2 for i in x], treated, width=0.4, label="treated (sends)", color="#f58518")
    right.bar([i + 0.2 for i in x], held, width=0.4, label="holdout", color="#72b7b2")
    right.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    right.set_ylabel("converted within the attribution window, %")
    right.set_title("conversion rate, treated vs holdout")
    right.legend(fontsize=8)
    if not rows:
        left.text(0.5, 0.5, "no campaigns", ha="center", transform=left.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# The shell: Kafka in, table/JSON/PNG out
# --------------------------------------------------------------------------


def _read_topic(settings: Settings, topic: str, bar: Any) -> Iterator[bytes | None]:
    """Every message value of `topic`, from the beginning to the end offsets seen at the start."""
    from kafka import KafkaConsumer, TopicPartition

    from nudge.kafka_clients import connect

    consumer = connect(
        KafkaConsumer,
        settings,
        client_id="nudge-report",
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise ConfigError(
                f"topic {topic} does not exist on {settings.kafka_bootstrap}; create it with `nudge topics`"
            )
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        start = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        bar.total = (bar.total or 0) + sum(end[tp] - start[tp] for tp in partitions)
        bar.refresh()
        waiting = {tp for tp in partitions if end[tp] > start[tp]}
        last_progress = time.monotonic()
        while waiting:
            batches = consumer.poll(timeout_ms=500)
            if batches:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > _STALL_S:
                raise DependencyUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} sent nothing for {_STALL_S:g} s while {topic} "
                    "was not read to its end"
                )
            for tp, messages in batches.items():
                for m in messages:
                    if m.offset < end[tp]:
                        bar.update(1)
                        yield m.value
            for tp in list(waiting):
                if consumer.position(tp) >= end[tp]:
                    waiting.discard(tp)
    finally:
        consumer.close()


def decision_record(raw: bytes | None) -> dict[str, Any]:
    """A decisions-topic message as a plain record; a non-object is {} (build_report counts it as malformed)."""
    try:
        record = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        record = None
    return record if isinstance(record, dict) else {}


def purchase_record(raw: bytes | None) -> dict[str, Any] | None:
    """A purchases-topic message as the record build_report reads, or None if it is not a valid purchase."""
    event = parse_event(raw)
    if not isinstance(event, PurchaseEvent):
        return None  # a Rejection, or another event type on the wrong topic
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "ts": event.ts_ms,
        "total": event.total,
        "currency": event.currency,
        "offer_id": event.offer_id or "",
    }


def feedback_record(raw: bytes | None) -> dict[str, Any] | None:
    """An app-events message about a message the user got (FEEDBACK_TYPES), or None for any other."""
    event = parse_event(raw)
    if not isinstance(event, AppEvent) or event.type not in FEEDBACK_TYPES:
        return None
    return {
        "event_id": event.event_id,
        "type": event.type,
        "user_id": event.user_id,
        "ts": event.ts_ms,
        "campaign_id": event.campaign_id or "",
    }


def read_topics(
    settings: Settings, rule: str | None, progress: bool = True
) -> tuple[list[Any], list[Any], list[Any], int]:
    """(decisions, purchases, app events, purchases rejected): the three topics as plain records.

    Decisions are read first, so that purchases and app events of users no campaign
    decided on are dropped as they stream by instead of held in memory.
    """
    from tqdm import tqdm

    decisions: list[Any] = []
    purchases: list[dict[str, Any]] = []
    app_events: list[dict[str, Any]] = []
    rejected = 0
    with tqdm(desc="report", unit="msg", unit_scale=True, file=sys.stderr, disable=None if progress else True) as bar:
        decisions.extend(decision_record(raw) for raw in _read_topic(settings, settings.topic_decisions, bar))
        users = {d.get("user_id") for d in decisions if rule is None or d.get("rule") == rule}
        for raw in _read_topic(settings, settings.topic_purchases, bar):
            purchase = purchase_record(raw)
            if purchase is None:
                rejected += 1
            elif purchase["user_id"] in users:
                purchases.append(purchase)
        for raw in _read_topic(settings, settings.topic_app_events, bar):
            feedback = feedback_record(raw)
            if feedback is not None and feedback["user_id"] in users:
                app_events.append(feedback)
    return decisions, purchases, app_events, rejected


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.offers import load_offers

    if args.serve:
        alone = [
            flag
            for flag, value in (
                ("--since", args.since),
                ("--rule", args.rule),
                ("--json", args.json),
                ("--png", args.png),
            )
            if value is not None
        ]
        if alone:
            raise UsageError(f"--serve exports every campaign live; it takes --hours and --every, not {alone[0]}")
    offers = load_offers(settings.offers_path)  # a broken catalog fails before Kafka is read
    if args.serve:
        from triggers.campaign_exporter import serve

        return serve(args, settings, {o.id: o for o in offers})
    since_ms: int | None = None
    if args.since is not None:
        since_ms = int(args.since.timestamp() * 1000)
    elif args.hours is not None:
        since_ms = int(time.time() * 1000 - args.hours * 3_600_000)
    decisions, purchases, app_events, rejected = read_topics(settings, args.rule)
    report = build_report(
        decisions, purchases, app_events, offers, settings.attribution_window_ms, since_ms=since_ms, rule=args.rule
    )
    report["inputs"]["purchases_rejected"] = rejected
    report["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(render_text(report))
    if rejected:
        print(f"(skipped {rejected:,} purchase messages that are not valid purchase events)")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.png is not None:
        write_chart(report, args.png)
    if not report["rules"]:
        scope = f" for rule {quoted(args.rule)}" if args.rule else ""
        print(f"nudge report: no decisions{scope} in {settings.topic_decisions}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------


def _rule_arg(text: str) -> str:
    problem = id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"rule id {quoted(text)} {problem}")
    return text


_EXAMPLES: Final = """\
examples:
  nudge report                                 every campaign since the topics began
  nudge report --hours 24                      decisions of the last 24 hours
  nudge report --since 2026-10-01T00:00:00Z --rule win_back
  nudge report --json report.json --png report.png
  nudge report --serve --every 15              keep the figures live at /metrics for Prometheus

columns: decisions and sends are counted once however often a record was delivered
(a delayed message later sent is one send); delivered/opened/clicked come from the
app's push_received/push_opened/sms_clicked of the message's campaign; conv counts
sends followed by a purchase within NUDGE_ATTRIBUTION_WINDOW_MS; holdout is the
conversion rate of the rule's holdout over the same window; uplift = conv rate -
holdout rate with a 95 % Newcombe interval; revenue is what converting purchases
paid (EUR at fixed rates), cost what redeemed offers gave away, and
ROI = (incremental revenue - cost) / cost. README.md "Reading `nudge report`" has more.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.args import instant, integer, number, output_file
    from nudge.cli import settings_epilog

    parser.description = (
        "What each campaign earned: per rule and per variant, the decisions, sends, suppressions by reason,\n"
        "deliveries, opens, clicks and conversions, the uplift against the rule's holdout with a 95 %\n"
        "confidence interval, attributed revenue, offer cost and ROI; then totals over all campaigns.\n"
        "Reads the decisions, purchases and app-events topics from the beginning (nothing is committed)."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--since",
        type=instant,
        metavar="ISO",
        help="only decisions made at or after this time (with offset), e.g. 2026-10-01T00:00:00Z",
    )
    when.add_argument(
        "--hours",
        type=number(0, 24 * 3660, low_open=True),
        metavar="H",
        help="only decisions of the last H hours (by the clock now; with --serve: event time before the newest "
        "decision, 168 by default)",
    )
    parser.add_argument("--rule", type=_rule_arg, metavar="RULE", help="only this rule (campaign), e.g. win_back")
    parser.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--png", type=output_file, metavar="FILE", help="also write a chart of uplift to FILE")
    serving = parser.add_argument_group("serving the figures to Prometheus (the Campaigns dashboard)")
    serving.add_argument(
        "--serve",
        action="store_true",
        help="keep reading the topics and export the figures at /metrics (NUDGE_REPORT_METRICS_PORT) until stopped",
    )
    serving.add_argument(
        "--every",
        type=number(0.5, 86_400),
        default=15.0,
        metavar="S",
        help="with --serve: rebuild the figures every S seconds (default 15)",
    )
    serving.add_argument(
        "--metrics-port", type=integer(1, 65535), metavar="PORT", help="with --serve: this port instead of the setting"
    )
    parser.epilog = (
        _EXAMPLES
        + "\n"
        + settings_epilog(
            "kafka_bootstrap",
            "topic_decisions",
            "topic_purchases",
            "topic_app_events",
            "attribution_window_ms",
            "offers_path",
            "report_metrics_port",
        )
    )
    parser.set_defaults(func=run)
