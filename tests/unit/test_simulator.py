"""The traffic simulator: determinism, the event contract, and the behaviour it promises.

Most checks share one mid-sized run, analysed in a single pass (the events are
not kept, so memory stays small): every event validated, ordering, churn,
installs, carts, diurnal and weekly cycles, offer conversion vs ground truth.
"""

from __future__ import annotations

import doctest
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import yaml

from nudge import cli
from nudge.errors import ConfigError
from nudge.events import MAX_EPOCH_MS, TOPIC_OF_TYPE, Rejection, dump_event, parse_event_obj
from producers import simulator
from producers.simulator import (
    ATTRIBUTION_MS,
    COHORTS,
    DEFAULT_START,
    OFFERS,
    TRUE_CONVERSION,
    TokenBucket,
    generate,
    ground_truth,
    run_simulation,
)

USERS, DAYS, SEED = 600, 21, 11
OFFERS_YAML = Path(__file__).resolve().parents[2] / "deploy" / "config" / "offers.yaml"


@dataclass
class RunStats:
    """Everything the behaviour tests need, gathered in one pass over a run."""

    truth: dict[str, Any]
    start_ms: int
    end_ms: int
    events: int = 0
    problems: list[str] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    second_type: dict[str, str] = field(default_factory=dict)
    last_ts: dict[str, int] = field(default_factory=dict)
    installs: Counter[str] = field(default_factory=Counter)
    local_hour: Counter[int] = field(default_factory=Counter)
    opens_by_weekday: Counter[int] = field(default_factory=Counter)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)
    conversions: Counter[tuple[str, str]] = field(default_factory=Counter)
    basket_sizes: Counter[int] = field(default_factory=Counter)
    sessions_abandoned: int = 0
    sessions_bought: int = 0
    churner_early_late: list[int] = field(default_factory=lambda: [0, 0])
    profile_zones: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    currencies: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def _analyse(users: int, days: float, seed: int) -> RunStats:
    truth = ground_truth(users, days, seed)
    params = truth["params"]
    stats = RunStats(truth, params["start_ms"], params["end_ms"])
    zones = {u: ZoneInfo(v["timezone"]) for u, v in truth["users"].items()}
    seen_ids: set[str] = set()
    prev: tuple[int, str] | None = None
    cart_open: dict[str, bool] = {}
    exposed_at: dict[tuple[str, str], list[int]] = defaultdict(list)
    # Validate against "now" = the end of the run, so the future-ts guard never depends on the test date.
    now_ms = stats.end_ms
    for obj in generate(users, days, seed):
        stats.events += 1
        uid, ts, kind = obj["user_id"], obj["ts"], obj["type"]
        user = truth["users"][uid]
        cohort = user["cohort"]
        parsed = parse_event_obj(obj, now_ms=now_ms)
        if isinstance(parsed, Rejection):
            stats.problem(f"invalid {obj}: {parsed}")
        elif dump_event(parsed) != orjson.dumps(obj):
            stats.problem(f"not canonical: {obj}")
        if obj["event_id"] in seen_ids:
            stats.problem(f"duplicate id {obj['event_id']}")
        seen_ids.add(obj["event_id"])
        key = (ts, obj["event_id"])
        if prev is not None and key <= prev:
            stats.problem(f"out of order: {prev} then {key}")
        prev = key
        if not stats.start_ms <= ts < stats.end_ms:
            stats.problem(f"outside the window: {obj}")
        stats.by_type[kind] += 1
        if uid not in stats.first:
            stats.first[uid] = obj
        elif uid not in stats.second_type:
            stats.second_type[uid] = kind
        stats.last_ts[uid] = ts
        local = datetime.fromtimestamp(ts / 1000, zones[uid])
        stats.local_hour[local.hour] += 1
        if kind == "install":
            stats.installs[uid] += 1
        elif kind == "app_open":
            stats.opens_by_weekday[local.weekday()] += 1
            cart_open[uid] = False
        elif kind == "add_to_cart":
            cart_open[uid] = True
        elif kind == "app_close":
            if cart_open.get(uid):
                stats.sessions_abandoned += 1
            cart_open[uid] = False
        elif kind == "profile_update" and "timezone" in obj:
            stats.profile_zones[uid].add(obj["timezone"])
        elif kind == "push_received":
            stats.exposures[(cohort, obj["campaign_id"])] += 1
            exposed_at[(uid, obj["campaign_id"])].append(ts)
        elif kind == "purchase":
            _check_purchase(stats, obj, exposed_at)
            stats.currencies[uid].add(obj["currency"])
            stats.basket_sizes[len(obj["items"])] += 1
            if cart_open.get(uid):
                stats.sessions_bought += 1
                cart_open[uid] = False
            if "offer_id" in obj:
                stats.conversions[(cohort, obj["offer_id"])] += 1
        if cohort == "churner" and user["churned"]:
            middle = (stats.start_ms + user["churn_ts"]) // 2
            stats.churner_early_late[0 if ts < middle else 1] += 1
    return stats


def _check_purchase(stats: RunStats, obj: dict[str, Any], exposed_at: dict[tuple[str, str], list[int]]) -> None:
    items = obj["items"]
    cents = sum(round(i["price"] * 100) * i["quantity"] for i in items)
    if abs(obj["total"] - sum(i["price"] * i["quantity"] for i in items)) > 0.005 or round(obj["total"] * 100) != cents:
        stats.problem(f"total != sum(price*qty): {obj}")
    if not 1 <= len(items) <= 5:
        stats.problem(f"basket of {len(items)} items: {obj}")
    offer_id = obj.get("offer_id")
    if offer_id is None:
        return
    offer = next(o for o in OFFERS if o.id == offer_id)
    if offer.category is not None and all(i["category"] != offer.category for i in items):
        stats.problem(f"offer purchase without an item of {offer.category}: {obj}")
    sent = exposed_at.get((obj["user_id"], offer_id), [])
    if not any(0 < obj["ts"] - t <= ATTRIBUTION_MS for t in sent):
        stats.problem(f"offer purchase with no push of {offer_id} in the 72 h before: {obj}")


@pytest.fixture(scope="module")
def run_stats() -> RunStats:
    return _analyse(USERS, DAYS, SEED)


# --- determinism -------------------------------------------------------------


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / f"{name}.jsonl"
        summary = run_simulation(120, 4, seed, out=out)
        assert summary.truth_path == str(tmp_path / f"{name}.jsonl.truth.json")
        outputs.append((out.read_bytes(), Path(summary.truth_path).read_bytes()))
    assert outputs[0][0] and outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]

    # Not just other ids: other users, times and behaviour.
    def content(data: bytes) -> list[tuple[str, int, str]]:
        return [(e["user_id"], e["ts"], e["type"]) for e in map(orjson.loads, data.splitlines())]

    assert content(outputs[0][0]) != content(outputs[2][0])
    cohorts = [[u["cohort"] for u in orjson.loads(out[1])["users"].values()] for out in outputs]
    assert cohorts[0] != cohorts[2]
    params = orjson.loads(outputs[0][1])["params"]
    assert {k: params[k] for k in ("seed", "users", "days", "start")} == {
        "seed": 5,
        "users": 120,
        "days": 4.0,
        "start": "2026-10-01T00:00:00Z",
    }


def test_gzip_output_is_deterministic_too(tmp_path: Path) -> None:
    first, second = tmp_path / "x.jsonl.gz", tmp_path / "y.jsonl.gz"
    run_simulation(30, 2, 1, out=first, truth=tmp_path / "t1.json")
    run_simulation(30, 2, 1, out=second, truth=tmp_path / "t2.json")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:2] == b"\x1f\x8b"


def test_users_do_not_depend_on_how_many_there_are() -> None:
    small = list(generate(8, 3, 4))
    large = [e for e in generate(20, 3, 4) if int(e["user_id"][1:]) < 8]
    assert small == large


def test_generation_is_lazy_over_time() -> None:
    # Ten years of 50 users would take long to build up front; the first event must not wait for it.
    began = time.perf_counter()
    first = next(generate(50, 3650, 1))
    assert time.perf_counter() - began < 2.0
    assert first["ts"] >= int(DEFAULT_START.timestamp() * 1000)


def test_start_moves_the_window() -> None:
    start = datetime(2025, 3, 1, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    events = list(generate(20, 1.5, 3, start))
    lo = int(start.timestamp() * 1000)
    assert events and all(lo <= e["ts"] < lo + int(1.5 * 86_400_000) for e in events)


@pytest.mark.parametrize(
    ("users", "days", "start"),
    [(0, 1, DEFAULT_START), (5, 0, DEFAULT_START), (5, -1, DEFAULT_START), (5, math.nan, DEFAULT_START),
     (5, 1, datetime(2026, 10, 1)),
     # The event contract's time range: 1970 .. epoch ms 10^14 (a year-9999 start was a traceback).
     (5, 1, datetime(1969, 12, 31, tzinfo=UTC)), (5, 1, datetime(9999, 12, 31, 23, 59, tzinfo=UTC)),
     (5, 2, datetime.fromtimestamp((MAX_EPOCH_MS - 86_400_000) / 1000, UTC))],
)  # fmt: skip
def test_library_rejects_bad_parameters(users: int, days: float, start: datetime) -> None:
    with pytest.raises(ConfigError, match="simulate"):
        generate(users, days, 1, start)


@pytest.mark.parametrize(
    "start", [datetime(1970, 1, 1, tzinfo=UTC), datetime.fromtimestamp((MAX_EPOCH_MS - 86_400_000) / 1000, UTC)]
)
def test_every_event_is_valid_at_the_edges_of_the_time_range(start: datetime) -> None:
    events = list(generate(20, 1, 3, start))
    verdicts = [parse_event_obj(e, now_ms=MAX_EPOCH_MS, max_future_ms=0) for e in events]
    assert events and not [v for v in verdicts if isinstance(v, Rejection)]


def test_kafka_runs_must_end_before_now_plus_max_future(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[object] = []
    monkeypatch.setattr(simulator, "send_events", lambda *a, **k: sent.append(a))
    monkeypatch.setenv("NUDGE_MAX_FUTURE_MS", str(86_400_000))
    start = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cli.main(["simulate", "--users", "2", "--days", "1", "--start", start]) == 2
    assert "after now + NUDGE_MAX_FUTURE_MS" in capsys.readouterr().err and not sent


# --- the contract --------------------------------------------------------------


def test_every_event_validates_and_is_canonical_ordered_unique(run_stats: RunStats) -> None:
    assert run_stats.events > 100_000
    assert run_stats.problems == []
    # Every kind of event the contract knows is produced, except feedback we do not simulate on our own
    # (an SMS click, with --respond only) and nudge's own record of a send (written by `nudge deliver`).
    assert set(TOPIC_OF_TYPE) - set(run_stats.by_type) == {"sms_clicked", "message_sent"}


def test_ground_truth_is_consistent() -> None:
    truth = ground_truth(300, 10, 2)
    params = truth["params"]
    assert params["end_ms"] - params["start_ms"] == 10 * 86_400_000
    for uid, user in truth["users"].items():
        probs = TRUE_CONVERSION[user["cohort"]]
        assert user["offer_probs"] == probs
        assert user["best_offer"] == max(probs, key=probs.__getitem__)
        assert user["churned"] == (user["churn_ts"] is not None), uid
        if user["churned"]:
            assert params["start_ms"] < user["churn_ts"] < params["end_ms"]
        assert (user["install_ts"] is not None) == (user["cohort"] == "new")
    assert {c: v["best_offer"] for c, v in truth["cohorts"].items()} == {
        "loyal": "freeship",
        "bargain": "fashion30",
        "browser": "electronics15",
        "new": "welcome15",
        "churner": "sitewide10",
    }


def test_offers_yaml_matches_the_simulator() -> None:
    doc = yaml.safe_load(OFFERS_YAML.read_text())
    offers = doc["offers"]
    assert [(o["id"], o["category"], o["kind"], o["value"]) for o in offers] == [
        (o.id, o.category, o.kind, o.value) for o in OFFERS
    ]
    categories = {c.name for c in simulator.CATEGORIES}
    for offer in offers:
        assert set(offer) == {"id", "name", "category", "kind", "value", "channel"}
        assert offer["category"] is None or offer["category"] in categories
        assert offer["channel"] in ("push", "sms")
    for cohort in COHORTS:
        assert set(TRUE_CONVERSION[cohort.name]) == {o["id"] for o in offers}


# --- behaviour -----------------------------------------------------------------


def test_cohort_shares_are_as_documented() -> None:
    users = ground_truth(5000, 7, 3)["users"]
    counts = Counter(u["cohort"] for u in users.values())
    assert math.isclose(sum(c.share for c in COHORTS), 1.0)
    for cohort in COHORTS:
        assert abs(counts[cohort.name] / 5000 - cohort.share) < 0.025, (cohort.name, counts)


def test_users_live_in_many_time_zones_and_report_their_own(run_stats: RunStats) -> None:
    users = run_stats.truth["users"]
    assert len({u["timezone"] for u in users.values()}) >= 6
    assert run_stats.profile_zones, "no profile_update carried a timezone"
    for uid, zones in run_stats.profile_zones.items():
        assert zones == {users[uid]["timezone"]}
    for uid, currencies in run_stats.currencies.items():
        assert currencies == {users[uid]["currency"]}


def test_churned_users_go_quiet_after_fading(run_stats: RunStats) -> None:
    churned = {uid: u for uid, u in run_stats.truth["users"].items() if u["churned"]}
    assert sum(u["cohort"] == "churner" for u in churned.values()) > 50
    for uid, user in churned.items():
        assert run_stats.last_ts.get(uid, 0) < user["churn_ts"], uid
    # Activity decays before it stops: the first half of the active time is busier.
    early, late = run_stats.churner_early_late
    assert early > 1.4 * late


def test_new_users_start_with_install_then_app_open(run_stats: RunStats) -> None:
    users = run_stats.truth["users"]
    new = [uid for uid, u in users.items() if u["cohort"] == "new"]
    assert len(new) > 50
    for uid in new:
        first = run_stats.first[uid]
        assert first["type"] == "install" and first["ts"] == users[uid]["install_ts"], first
        assert run_stats.start_ms <= first["ts"] < run_stats.end_ms
        assert run_stats.second_type[uid] == "app_open"
        assert run_stats.installs[uid] == 1
    assert set(run_stats.installs) == set(new)


def test_sessions_carts_and_baskets_look_real(run_stats: RunStats) -> None:
    by_type = run_stats.by_type
    # A session cut by churn or the window's end has no app_close: at most one per user.
    assert 0 <= by_type["app_open"] - by_type["app_close"] <= len(run_stats.truth["users"])
    assert by_type["product_view"] > by_type["add_to_cart"] > by_type["purchase"] > 0
    assert by_type["remove_from_cart"] > 0
    assert run_stats.sessions_abandoned > 0.2 * run_stats.sessions_bought > 0
    assert min(run_stats.basket_sizes) == 1 and max(run_stats.basket_sizes) == 5
    assert run_stats.basket_sizes[1] > run_stats.basket_sizes[5]
    assert by_type["opt_in"] > 0 and by_type["opt_out"] > 0 and by_type["location"] > 0


def test_activity_follows_the_local_day_and_week(run_stats: RunStats) -> None:
    night = sum(run_stats.local_hour[h] for h in range(1, 5))
    evening = sum(run_stats.local_hour[h] for h in range(18, 22))
    assert night < 0.2 * evening
    opens = run_stats.opens_by_weekday
    assert opens[5] + opens[6] > 1.2 * (opens[0] + opens[1])


def test_offer_conversion_matches_the_ground_truth(run_stats: RunStats) -> None:
    chi2, cells = 0.0, 0
    for cohort in COHORTS:
        probs = TRUE_CONVERSION[cohort.name]
        sent = sum(run_stats.exposures[(cohort.name, o.id)] for o in OFFERS)
        bought = sum(run_stats.conversions[(cohort.name, o.id)] for o in OFFERS)
        expected = sum(run_stats.exposures[(cohort.name, o.id)] * probs[o.id] for o in OFFERS)
        # Pooled over offers, per cohort: within 4 standard errors.
        var = sum(run_stats.exposures[(cohort.name, o.id)] * probs[o.id] * (1 - probs[o.id]) for o in OFFERS)
        assert sent > 200, cohort.name  # enough exposures for the check to mean something
        assert abs(bought - expected) < 4 * math.sqrt(var), (cohort.name, bought, expected)
        for offer in OFFERS:
            n, p = run_stats.exposures[(cohort.name, offer.id)], probs[offer.id]
            chi2 += (run_stats.conversions[(cohort.name, offer.id)] - n * p) ** 2 / (n * p * (1 - p))
            cells += 1
    # Per cohort x offer cell the counts are small; together they must still fit (p ~ 0.001).
    assert chi2 < cells + 4.5 * math.sqrt(2 * cells), chi2


# --- pacing ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps += 1
        self.now += seconds


@pytest.mark.parametrize("rate", [50.0, 2_000.0, 100_000.0])
def test_token_bucket_holds_the_rate_with_few_sleeps(rate: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    n = int(rate * 10)
    for _ in range(n):
        bucket.take()
    elapsed = clock.now - 100.0
    # Within one burst of the ideal n/rate, never faster.
    assert (n - bucket.capacity) / rate <= elapsed <= n / rate + 0.01
    assert clock.sleeps <= n / 2


def test_token_bucket_does_not_bank_idle_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    clock.now += 60.0  # a long stall must not buy a 6000-event burst
    for _ in range(200):
        bucket.take()
    assert clock.now - 160.0 >= (200 - bucket.capacity) / 100.0


# --- the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--users", "0"], "--users"),
        (["--users", "ten"], "--users"),
        (["--days", "0"], "--days"),
        (["--days", "-2"], "--days"),
        (["--start", "2026-13-01T00:00:00Z"], "--start"),
        (["--start", "2026-10-01T00:00:00"], "--start"),
        (["--rate", "10", "--max"], "--rate"),
        (["--rate", "0"], "--rate"),
        (["--rate", "-5"], "--rate"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nudge simulate: error:") and mentions in lines[0]
    assert captured.out == ""


def test_cli_writes_file_truth_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "events.jsonl"
    argv = ["simulate", "--users", "25", "--days", "2", "--seed", "9", "--start", "2026-06-01T00:00:00+02:00"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    lines = out.read_bytes().splitlines()
    assert f"events:    {len(lines)} in" in summary and "by cohort:" in summary and "by topic:" in summary
    truth = orjson.loads((tmp_path / "events.jsonl.truth.json").read_bytes())
    assert truth["params"]["start"] == "2026-05-31T22:00:00Z" and len(truth["users"]) == 25
    assert lines == [orjson.dumps(e) for e in generate(25, 2, 9, datetime(2026, 5, 31, 22, tzinfo=UTC))]


def test_cli_stdout_keeps_events_and_summary_apart(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert cli.main(["simulate", "--users", "5", "--days", "1", "--out", "-"]) == 0
    captured = capsysbinary.readouterr()
    events = [orjson.loads(line) for line in captured.out.splitlines()]
    assert events == list(generate(5, 1, 42))
    assert b"-> stdout" in captured.err


def test_module_doctests() -> None:
    assert doctest.testmod(simulator).failed == 0
