"""`nudge models`: what the models know right now, from the newest valid snapshot.

Reads the snapshot topic back from its end until a record verifies
(`models.snapshot`: the signature before anything is unpickled), and prints
its version and age, the examples and rewards learned, and each model's live
quality beside its baseline: churn AUC (exact, rolling, on examples the model
had not seen) against the best single feature, CLV mean absolute error
against "the last 30 days' spend", the bandit's reward rate. Newer records
that were refused are listed with their reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
from kafka import KafkaConsumer

from models.bundle import ModelBundle
from models.snapshot import Snapshot
from nudge.cli import settings_epilog
from nudge.errors import ConfigError
from nudge.kafka_clients import connect
from nudge.settings import Settings
from streams.trainer import Refusal, newest_valid, snapshot_records_newest_first

__all__ = ["configure", "report", "run"]

# (label, quality key, baseline key, "higher" or "lower" is better)
_ROWS = (
    ("churn AUC", "churn_auc", "churn_baseline_auc", "higher"),
    ("churn log loss", "churn_log_loss", None, "lower"),
    ("CLV 30d MAE", "clv_mae", "clv_baseline_mae", "lower"),
    ("offer reward rate", "nbo_reward_rate", None, "higher"),
)


def report(snapshot: Snapshot, bundle: ModelBundle, refusals: list[Refusal], now_ms: int) -> dict[str, Any]:
    """The figures `nudge models` prints (pure: `now_ms` gives the snapshot's age)."""
    created = snapshot.created_at if isinstance(snapshot.created_at, int) else None
    return {
        "version": snapshot.version,
        "created_at": created,
        "age_s": None if created is None else round((now_ms - created) / 1000, 1),
        "learned": dict(bundle.learned),
        "quality": dict(bundle.quality),
        "churn_baseline_feature": bundle.churn_baseline_feature,
        "rfm_cuts": bundle.cuts is not None,
        "refused_newer": [{"offset": r.offset, "reason": r.reason} for r in refusals],
    }


def _text(figures: dict[str, Any]) -> str:
    age = figures["age_s"]
    lines = [
        f"model snapshot v{figures['version']}" + (f", {age:.0f} s old" if age is not None else ""),
        "learned: " + ", ".join(f"{k} {v:,}" for k, v in sorted(figures["learned"].items())),
        "",
        f"{'':20} {'model':>10} {'baseline':>10}  better",
    ]
    quality = figures["quality"]
    for label, key, base, better in _ROWS:
        value = quality.get(key)
        baseline = quality.get(base) if base else None
        shown = f"{value:10.4f}" if value is not None else f"{'-':>10}"
        base_shown = f"{baseline:10.4f}" if baseline is not None else f"{'-':>10}"
        lines.append(f"{label:20} {shown} {base_shown}  {better}")
    if figures["churn_baseline_feature"]:
        lines.append(f"(churn baseline: the single feature {figures['churn_baseline_feature']})")
    for r in figures["refused_newer"]:
        lines.append(f"refused newer snapshot at offset {r['offset']}: {r['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.model_key:
        raise ConfigError("NUDGE_MODEL_KEY is not set: snapshots cannot be verified without the key that signed them")
    topic = settings.topic_model_snapshots
    consumer = connect(KafkaConsumer, settings, client_id="nudge-models", enable_auto_commit=False)
    try:
        snapshot, bundle, refusals = newest_valid(
            snapshot_records_newest_first(consumer, topic), settings.model_key.encode()
        )
    finally:
        consumer.close()
    if snapshot is None or bundle is None:
        print(
            f"nudge models: no valid model snapshot in {topic} yet ({len(refusals)} refused); "
            "run `nudge trainer` with the same NUDGE_MODEL_KEY",
            file=sys.stderr,
        )
        return 1
    figures = report(snapshot, bundle, refusals, int(time.time() * 1000))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else _text(figures))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.epilog = (
        "\n\n".join((__doc__ or "").split("\n\n")[1:])
        + "\n"
        + settings_epilog("topic_model_snapshots", "model_key", "kafka_bootstrap")
    )
    parser.set_defaults(func=run)
