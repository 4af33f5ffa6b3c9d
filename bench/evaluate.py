"""`nudge eval`: how good the online models are, on a fixed protocol, against baselines.

The run is the whole loop, in one process and in event-time order: the
simulator's events (or a real dataset's) go through the worker's batch step
with its model stage (`streams.step`, `streams.model_stage`), the examples and
rewards it resolves go to the trainer's learning functions
(`models.bundle.learn_example` / `learn_reward`), and every
`--snapshot-every` records the trainer's bundle is sealed, verified and
handed to the stage as a new snapshot (`models.snapshot`), as between the
processes. What the step writes is kept per user as the feature store holds
it. Kafka and Redis are left out on purpose: the same pure code decides
everything, so a run is exactly repeatable from its seed and takes a minute,
not an hour (the processes and topics are exercised by the integration tests
and `nudge bench pipeline`).

The protocol (fixed, so models are compared on the same ground):

- once per simulated day D (00:00 UTC), for every user seen so far, read the
  user's `churn_score` and `clv_30d` as stored at that moment (scores are as
  of the worker's watermark, rescored at least daily);
- churn label: 1 if the user has no event of their own (a push we sent does
  not count) in the 14 days after D; `early` is the subset of users with an
  event in the 3 days before D: who is leaving before it shows;
- CLV label: the user's real spend in the 30 days after D;
- only days whose labels are complete count, after a warm-up of the first
  20 % of the run;
- baselines on the same observations: for churn the best single feature
  (recency; events in 7 and 30 days; purchases in 30 days) by AUC; for CLV
  the last 30 days' spend;
- next-best offer (simulator only): for every user and day, the true
  conversion probability (ground truth) of the offer the bandit stored, of a
  uniformly random offer, and of the user's best offer (the oracle).

Writes the report as JSON (`--out`: every figure, the per-day churn curves,
and which targets are met) and the churn learning curves (AUC per day of the
model and of the best single feature, all users and early) as a PNG beside it.
"""

from __future__ import annotations

import argparse
import bisect
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
from tqdm import tqdm

from features.definitions import DAY_MS
from features.state import UserState
from models.bundle import CHURN_BASELINES, ModelBundle, learn_example, learn_reward, new_bundle, next_version
from models.evaluation import auc
from models.inputs import model_inputs
from models.snapshot import open_snapshot, seal
from nudge.args import integer, output_file
from nudge.args import seed as seed_arg
from nudge.errors import ConfigError
from nudge.events import PurchaseEvent, Rejection, parse_event_obj
from nudge.settings import Settings
from nudge.topics import topic_for_event_type
from streams.model_stage import NOT_THE_USERS_DOING, ModelStage, model_stage_for
from streams.step import Message, StepConfig, expected_partition, step

__all__ = ["EvalRun", "Protocol", "configure", "evaluate", "run"]

TARGETS: Final = {
    "churn.auc": 0.95,
    "churn.early_auc": 0.90,
    "nbo.lift_over_random": 1.5,
    "nbo.share_of_oracle": 0.80,
}


@dataclass(frozen=True, slots=True)
class Protocol:
    """The evaluation's fixed rules (event-time milliseconds)."""

    churn_horizon_ms: int = 14 * DAY_MS
    early_ms: int = 3 * DAY_MS
    clv_window_ms: int = 30 * DAY_MS
    warmup_share: float = 0.2


@dataclass(slots=True)
class _Truth:
    """What really happened, per user: own-event times and purchases (for labels)."""

    times: dict[str, list[int]] = field(default_factory=dict)
    purchases: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def add(self, user_id: str, ts_ms: int, type_: str, spend: float) -> None:
        if type_ in NOT_THE_USERS_DOING:
            return
        self.times.setdefault(user_id, []).append(ts_ms)
        if spend:
            self.purchases.setdefault(user_id, []).append((ts_ms, spend))

    def active_between(self, user_id: str, after_ms: int, until_ms: int) -> bool:
        """An own event with after < t <= until."""
        times = self.times.get(user_id, [])
        i = bisect.bisect_right(times, after_ms)
        return i < len(times) and times[i] <= until_ms

    def spend_between(self, user_id: str, after_ms: int, until_ms: int) -> float:
        rows = self.purchases.get(user_id, [])
        i = bisect.bisect_right(rows, (after_ms, math.inf))
        total = 0.0
        while i < len(rows) and rows[i][0] <= until_ms:
            total += rows[i][1]
            i += 1
        return total


@dataclass(slots=True)
class _Day:
    """One evaluation day's observations (parallel lists)."""

    at_ms: int
    users: list[str] = field(default_factory=list)
    churn: list[float] = field(default_factory=list)
    clv: list[float] = field(default_factory=list)
    offer: list[str] = field(default_factory=list)
    features: dict[str, list[float]] = field(default_factory=dict)
    spend_30d: list[float] = field(default_factory=list)
    label: list[bool] = field(default_factory=list)
    early: list[bool] = field(default_factory=list)
    future_spend: list[float] = field(default_factory=list)


@dataclass(slots=True)
class EvalRun:
    """Everything a run produced: the per-day observations and the trainer's final bundle."""

    source: str
    params: dict[str, Any]
    protocol: Protocol
    days: list[_Day]
    bundle: ModelBundle
    start_ms: int
    end_ms: int
    events: int
    examples: int
    rewards: int
    snapshots: int
    seconds: float
    truth: Mapping[str, Any] | None = None


def _messages(events: Iterable[dict[str, Any]], settings: Settings, truth: _Truth) -> Iterator[tuple[int, Message]]:
    for offset, d in enumerate(events):
        parsed = parse_event_obj(d)
        ts = 0  # a rejected event: the step dead-letters it, the truth ignores it
        if not isinstance(parsed, Rejection):
            spend = float(parsed.total) if isinstance(parsed, PurchaseEvent) else 0.0
            truth.add(parsed.user_id, parsed.ts_ms, d["type"], spend)
            ts = parsed.ts_ms
        key = str(d.get("user_id", "")).encode()
        topic = topic_for_event_type(settings, str(d.get("type"))) or settings.topic_app_events
        yield ts, Message(topic, expected_partition(key, settings.partitions), offset, key, orjson.dumps(d))


def evaluate(
    events: Iterable[dict[str, Any]],
    settings: Settings,
    *,
    source: str,
    params: Mapping[str, Any],
    start_ms: int,
    end_ms: int,
    offer_ids: Sequence[str],
    churn_kind: str = "logistic",
    clv_kind: str = "linear",
    batch: int = 500,
    snapshot_every: int = 5_000,
    protocol: Protocol = Protocol(),
    truth: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EvalRun:
    """Run the loop over `events` (sorted by event time) and collect the daily observations."""
    started = time.perf_counter()
    key = secrets.token_bytes(32)  # this run's own snapshot key: nothing outside it can be loaded
    config = StepConfig.from_settings(settings)
    stage: ModelStage = model_stage_for(settings)
    trainer = new_bundle(list(offer_ids), churn_kind=churn_kind, clv_kind=clv_kind)
    stage.use(_ship(trainer, key, 0))
    states: dict[str, UserState] = {}
    stored: dict[str, dict[str, str]] = {}
    real = _Truth()
    days: list[_Day] = []
    next_day = (start_ms // DAY_MS + 1) * DAY_MS
    counts = {"events": 0, "examples": 0, "rewards": 0, "snapshots": 1}
    since_snapshot = 0
    pending: list[Message] = []

    def flush(now_ms: int) -> None:
        nonlocal since_snapshot
        if not pending:
            return
        result = step(states, pending, config, now_ms, models=stage)
        states.update(result.states)
        for w in result.writes:
            stored.setdefault(w.user_id, {}).update(w.fields)
        for example in result.examples:
            learn_example(trainer, example)
        for reward in result.rewards:
            learn_reward(trainer, reward)
        learned = len(result.examples) + len(result.rewards)
        counts["examples"] += len(result.examples)
        counts["rewards"] += len(result.rewards)
        since_snapshot += learned
        if since_snapshot >= snapshot_every:
            stage.use(_ship(trainer, key, next_version(trainer)))
            counts["snapshots"] += 1
            since_snapshot = 0
        pending.clear()

    bar = tqdm(total=None, unit=" events", disable=not progress, desc=f"eval {source}", mininterval=0.5)
    last_ts = start_ms
    for ts, message in _messages(events, settings, real):
        while ts > next_day and next_day < end_ms:
            flush(last_ts)
            days.append(_observe_day(next_day, states, stored))
            next_day += DAY_MS
        pending.append(message)
        last_ts = max(last_ts, ts)
        counts["events"] += 1
        if len(pending) >= batch:
            flush(last_ts)
            bar.update(batch)
    flush(last_ts)
    bar.close()
    for day in days:
        _label_day(day, real, protocol, end_ms)
    return EvalRun(
        source=source,
        params=dict(params),
        protocol=protocol,
        days=days,
        bundle=trainer,
        start_ms=start_ms,
        end_ms=end_ms,
        events=counts["events"],
        examples=counts["examples"],
        rewards=counts["rewards"],
        snapshots=counts["snapshots"],
        seconds=time.perf_counter() - started,
        truth=truth,
    )


def _ship(bundle: ModelBundle, key: bytes, version: int) -> ModelBundle:
    """The trainer -> worker hop: seal, verify, unpickle (a copy, as a worker holds)."""
    blob = seal(bundle, key=key, version=version, meta={"created_at": 0})
    shipped = open_snapshot(blob, key=key).models
    assert isinstance(shipped, ModelBundle)
    return shipped


def _observe_day(at_ms: int, states: Mapping[str, UserState], stored: Mapping[str, Mapping[str, str]]) -> _Day:
    day = _Day(at_ms, features={name: [] for name in CHURN_BASELINES})
    for uid, state in states.items():
        fields = stored.get(uid, {})
        if state.first_seen is None or state.first_seen > at_ms or "churn_score" not in fields:
            continue
        inputs = model_inputs(state, at_ms)
        day.users.append(uid)
        day.churn.append(float(fields["churn_score"]))
        day.clv.append(float(fields.get("clv_30d", "0") or 0))
        day.offer.append(fields.get("nbo_offer", ""))
        for name in CHURN_BASELINES:
            day.features[name].append(float(inputs.get(name, math.inf if name == "recency_days" else 0.0)))
        day.spend_30d.append(float(inputs.get("spend_30d", 0.0)))
    return day


def _label_day(day: _Day, real: _Truth, protocol: Protocol, end_ms: int) -> None:
    at = day.at_ms
    for uid in day.users:
        day.label.append(not real.active_between(uid, at, at + protocol.churn_horizon_ms))
        day.early.append(real.active_between(uid, at - protocol.early_ms, at))
        day.future_spend.append(real.spend_between(uid, at, at + protocol.clv_window_ms))


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def _best_baseline(features: Mapping[str, np.ndarray], labels: np.ndarray) -> tuple[str, float | None]:
    best: tuple[str, float | None] = ("", None)
    for name, sign in CHURN_BASELINES.items():
        values = features[name]
        values = np.where(np.isfinite(values), values, np.nanmax(np.where(np.isfinite(values), values, np.nan)) + 1)
        a = auc(sign * values, labels)
        if a is not None and (best[1] is None or a > best[1]):
            best = (name, a)
    return best


def _churn_figures(days: Sequence[_Day], subset: Callable[[_Day], np.ndarray]) -> dict[str, Any]:
    scores, labels = [], []
    features: dict[str, list[np.ndarray]] = {name: [] for name in CHURN_BASELINES}
    for day in days:
        mask = subset(day)
        scores.append(np.asarray(day.churn)[mask])
        labels.append(np.asarray(day.label, dtype=bool)[mask])
        for name in CHURN_BASELINES:
            features[name].append(np.asarray(day.features[name])[mask])
    s = np.concatenate(scores) if scores else np.zeros(0)
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
    joined = {name: np.concatenate(v) if v else np.zeros(0) for name, v in features.items()}
    name, baseline = _best_baseline(joined, y)
    clipped = np.clip(s, 1e-6, 1 - 1e-6)
    log_loss = float(-np.mean(np.where(y, np.log(clipped), np.log(1 - clipped)))) if len(y) else None
    return {
        "auc": auc(s, y),
        "baseline_auc": baseline,
        "baseline_feature": name,
        "log_loss": log_loss,
        "observations": len(y),
        "churn_rate": float(y.mean()) if len(y) else None,
    }


def report(result: EvalRun) -> dict[str, Any]:
    """The figures of a run, after its warm-up, with the targets and whether each is met."""
    p = result.protocol
    span = result.end_ms - result.start_ms
    warm = result.start_ms + p.warmup_share * span
    churn_days = [d for d in result.days if d.at_ms >= warm and d.at_ms + p.churn_horizon_ms <= result.end_ms]
    clv_days = [d for d in result.days if d.at_ms >= warm and d.at_ms + p.clv_window_ms <= result.end_ms]
    every = _churn_figures(churn_days, lambda d: np.ones(len(d.users), dtype=bool))
    early = _churn_figures(churn_days, lambda d: np.asarray(d.early, dtype=bool))
    clv_pred = np.concatenate([d.clv for d in clv_days]) if clv_days else np.zeros(0)
    clv_real = np.concatenate([d.future_spend for d in clv_days]) if clv_days else np.zeros(0)
    clv_base = np.concatenate([d.spend_30d for d in clv_days]) if clv_days else np.zeros(0)
    out: dict[str, Any] = {
        "source": result.source,
        "params": result.params,
        "protocol": {
            "churn_horizon_days": p.churn_horizon_ms / DAY_MS,
            "early_days": p.early_ms / DAY_MS,
            "clv_window_days": p.clv_window_ms / DAY_MS,
            "warmup_share": p.warmup_share,
            "evaluated_days": len(churn_days),
        },
        "run": {
            "events": result.events,
            "examples": result.examples,
            "rewards": result.rewards,
            "snapshots": result.snapshots,
            "seconds": round(result.seconds, 1),
            "events_per_s": round(result.events / result.seconds) if result.seconds else None,
            "learned": dict(result.bundle.learned),
            "models": {
                "churn": _model_name(result.bundle.churn.model),
                "clv": _model_name(result.bundle.clv.model),
            },
        },
        "churn": {
            "auc": every["auc"],
            "baseline_auc": every["baseline_auc"],
            "baseline_feature": every["baseline_feature"],
            "early_auc": early["auc"],
            "early_baseline_auc": early["baseline_auc"],
            "early_baseline_feature": early["baseline_feature"],
            "log_loss": every["log_loss"],
            "observations": every["observations"],
            "early_observations": early["observations"],
            "churn_rate": every["churn_rate"],
        },
        "clv": {
            "mae": float(np.mean(np.abs(clv_pred - clv_real))) if len(clv_real) else None,
            "baseline_mae": float(np.mean(np.abs(clv_base - clv_real))) if len(clv_real) else None,
            "observations": len(clv_real),
        },
        "nbo": _nbo(churn_days or clv_days or result.days[-1:], result.truth),
        "curves": _curves(result),
    }
    out["targets"] = _targets(out)
    return out


def _model_name(model: Any) -> str:
    """A River model's name; a pipeline's as its steps joined by " | "."""
    steps = getattr(model, "steps", None)
    if steps:
        return " | ".join(type(step).__name__ for step in steps.values())
    return type(model).__name__


def _nbo(days: Sequence[_Day], truth: Mapping[str, Any] | None) -> dict[str, Any]:
    if truth is None:
        return {"conversion": None, "why": "the dataset has no offers and no ground truth of their effect"}
    users = truth["users"]
    chosen, random_, oracle, n = 0.0, 0.0, 0.0, 0
    for day in days:
        for uid, offer in zip(day.users, day.offer, strict=True):
            probs = users.get(uid, {}).get("offer_probs")
            if not probs or offer not in probs:
                continue
            chosen += probs[offer]
            random_ += sum(probs.values()) / len(probs)
            oracle += max(probs.values())
            n += 1
    if n == 0:
        return {"conversion": None, "why": "no user had an offer stored"}
    return {
        "conversion": chosen / n,
        "random_conversion": random_ / n,
        "oracle_conversion": oracle / n,
        "lift_over_random": chosen / random_ if random_ else None,
        "share_of_oracle": chosen / oracle if oracle else None,
        "observations": n,
    }


def _curves(result: EvalRun) -> dict[str, list[Any]]:
    p = result.protocol
    curves: dict[str, list[Any]] = {"day": [], "auc": [], "baseline_auc": [], "early_auc": [], "early_baseline_auc": []}
    for day in result.days:
        if day.at_ms + p.churn_horizon_ms > result.end_ms or not day.users:
            continue
        every = _churn_figures([day], lambda d: np.ones(len(d.users), dtype=bool))
        early = _churn_figures([day], lambda d: np.asarray(d.early, dtype=bool))
        curves["day"].append(round((day.at_ms - result.start_ms) / DAY_MS, 2))
        curves["auc"].append(every["auc"])
        curves["baseline_auc"].append(every["baseline_auc"])
        curves["early_auc"].append(early["auc"])
        curves["early_baseline_auc"].append(early["baseline_auc"])
    return curves


def _targets(out: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    churn, clv, nbo = out["churn"], out["clv"], out["nbo"]

    def check(value: float | None, bar: float | None, more_is_better: bool = True) -> dict[str, Any]:
        met = None if value is None or bar is None else (value >= bar if more_is_better else value < bar)
        return {"value": value, "bar": bar, "met": met}

    targets = {
        "churn.auc > churn.baseline_auc": check(churn["auc"], _above(churn["baseline_auc"])),
        "churn.early_auc > churn.early_baseline_auc": check(churn["early_auc"], _above(churn["early_baseline_auc"])),
        "clv.mae < clv.baseline_mae": check(clv["mae"], clv["baseline_mae"], more_is_better=False),
    }
    if out["source"] == "simulator":
        # The absolute bars are the simulator's: on real data the bar is the best single feature.
        targets = {
            "churn.auc >= 0.95": check(churn["auc"], TARGETS["churn.auc"]),
            "churn.early_auc >= 0.90": check(churn["early_auc"], TARGETS["churn.early_auc"]),
            **targets,
        }
    if nbo.get("conversion") is not None:
        targets["nbo.conversion >= 1.5 x random"] = check(nbo["lift_over_random"], TARGETS["nbo.lift_over_random"])
        targets["nbo.conversion >= 80 % of oracle"] = check(nbo["share_of_oracle"], TARGETS["nbo.share_of_oracle"])
    return targets


def _above(value: float | None) -> float | None:
    return None if value is None else math.nextafter(value, math.inf)


def chart(out: Mapping[str, Any], path: Path) -> None:
    """The learning curves: churn AUC per evaluation day (model vs baseline, all and early)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = out["curves"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(curves["day"], curves["auc"], label="churn model, all users", color="tab:blue")
    ax.plot(curves["day"], curves["baseline_auc"], label="best single feature, all", color="tab:blue", ls="--")
    ax.plot(curves["day"], curves["early_auc"], label="churn model, active in last 3 days", color="tab:orange")
    ax.plot(
        curves["day"], curves["early_baseline_auc"], label="best single feature, early", color="tab:orange", ls="--"
    )
    warm = out["protocol"]["warmup_share"] * out["params"].get("days", 0)
    if warm:
        ax.axvspan(0, warm, color="0.9", label="warm-up")
    ax.set_xlabel("day of the run (event time)")
    ax.set_ylabel("ROC AUC of the stored churn score")
    ax.set_title(f"nudge eval ({out['source']}): churn AUC per day, 14-day labels")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate the online models on a fixed protocol: simulator (or a real dataset) -> worker step -> "
        "trainer, in event-time order in one process. Once per simulated day every user's stored churn "
        "score is judged against whether they really came back within 14 days (and their CLV against "
        "the next 30 days' spend), after a 20 % warm-up, next to the best single-feature baselines. "
        "Writes the report (JSON) and its learning curves (PNG beside it) and says which targets are met."
    )
    parser.epilog = (
        "example: nudge eval --users 2000 --days 60 --out eval.json   (about 3 minutes)\n"
        "targets checked: churn AUC >= 0.95 and above the best single feature (all users and the early\n"
        "subset >= 0.90), CLV MAE below last month's spend, offers >= 1.5x random and >= 80 % of the oracle.\n"
        "On a real dataset (--dataset) the bars are the baselines only: above the best single feature, below\n"
        "last month's spend.\n"
        "CLV needs runs past 30 days after the warm-up to have any value label to learn from."
    )
    parser.add_argument(
        "--users",
        type=integer(10, 100_000),
        default=2_000,
        metavar="N",
        help="simulated users, 10..100000 [%(default)s]",
    )
    parser.add_argument(
        "--days", type=integer(20, 365), default=60, metavar="D", help="simulated days, 20..365 [%(default)s]"
    )
    parser.add_argument("--seed", type=seed_arg, default=42, metavar="S", help="simulator seed [%(default)s]")
    parser.add_argument(
        "--dataset",
        choices=["completejourney"],
        default=None,
        help="evaluate churn and CLV on a real dataset from shared/data instead of the simulator",
    )
    parser.add_argument(
        "--churn-model",
        choices=["logistic", "forest", "adaptive_tree"],
        default="logistic",
        help="the churn learner to evaluate [%(default)s]",
    )
    parser.add_argument(
        "--clv-model", choices=["linear", "tree"], default="linear", help="the CLV learner [%(default)s]"
    )
    parser.add_argument(
        "--snapshot-every",
        type=integer(100, 1_000_000),
        default=5_000,
        metavar="N",
        help="records the trainer learns between snapshots, 100..1000000 [%(default)s]",
    )
    parser.add_argument(
        "--out",
        type=output_file,
        default=Path("eval-report.json"),
        metavar="FILE",
        help="report file [%(default)s]; the PNG goes beside it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from producers.simulator import DEFAULT_START, OFFERS, generate, ground_truth

    if args.dataset is not None:
        from producers.datasets import dataset_events

        events, _stats = dataset_events(args.dataset)
        if not events:
            raise ConfigError(f"dataset {args.dataset} has no events")
        first = parse_event_obj(events[0])
        last = parse_event_obj(events[-1])
        start_ms = first.ts_ms // DAY_MS * DAY_MS  # type: ignore[union-attr]
        end_ms = last.ts_ms + 1  # type: ignore[union-attr]
        params: dict[str, Any] = {"dataset": args.dataset, "days": round((end_ms - start_ms) / DAY_MS, 1)}
        source, truth, stream = args.dataset, None, iter(events)
    else:
        start_ms = int(DEFAULT_START.timestamp() * 1000)
        end_ms = start_ms + args.days * DAY_MS
        params = {"users": args.users, "days": args.days, "seed": args.seed}
        source = "simulator"
        truth = ground_truth(args.users, args.days, args.seed)
        stream = generate(args.users, args.days, args.seed)
    result = evaluate(
        stream,
        settings,
        source=source,
        params=params,
        start_ms=start_ms,
        end_ms=end_ms,
        offer_ids=[o.id for o in OFFERS],
        churn_kind=args.churn_model,
        clv_kind=args.clv_model,
        snapshot_every=args.snapshot_every,
        truth=truth,
        progress=not args.quiet,
    )
    out = report(result)
    out_path: Path = args.out
    out_path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    png = out_path.with_suffix(".png")
    chart(out, png)
    _print(out, out_path, png)
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print(out: Mapping[str, Any], path: Path, png: Path) -> None:
    run_ = out["run"]
    print(
        f"{out['source']}: {run_['events']:,} events, {run_['examples']:,} examples, {run_['rewards']:,} rewards, "
        f"{run_['snapshots']} snapshots in {run_['seconds']} s; {out['protocol']['evaluated_days']} days evaluated"
    )
    c, v, n = out["churn"], out["clv"], out["nbo"]
    print(f"  churn  AUC {_fmt(c['auc'])} vs baseline {_fmt(c['baseline_auc'])} ({c['baseline_feature']})")
    print(
        f"         early AUC {_fmt(c['early_auc'])} vs {_fmt(c['early_baseline_auc'])} "
        f"({c['early_baseline_feature']}), log loss {_fmt(c['log_loss'])}"
    )
    print(f"  clv    MAE {_fmt(v['mae'])} vs baseline {_fmt(v['baseline_mae'])}")
    if n.get("conversion") is not None:
        print(
            f"  nbo    conversion {_fmt(n['conversion'])} vs random {_fmt(n['random_conversion'])} "
            f"vs oracle {_fmt(n['oracle_conversion'])}"
        )
    for name, t in out["targets"].items():
        mark = "met" if t["met"] else "NOT met" if t["met"] is False else "n/a"
        print(f"  target {name:44} {mark}")
    print(f"report: {path}  curves: {png}")
