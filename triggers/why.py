"""`nudge why USER_ID`: a user's recent trigger decisions, explained in plain words.

Reads the user's decision log (the last N decisions the trigger service
recorded, newest first; `NUDGE_DECISIONS_KEPT`) and says, per decision,
what happened and why, with the time in the user's own time zone and the
state fields the rule read. `explain(record)` is the pure part.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from nudge.errors import ConfigError, DependencyUnavailable
from nudge.settings import Settings
from nudge.text import printable
from triggers.guardrails import user_zone

__all__ = ["configure", "explain", "run"]

_REASONS = {
    "consent": "the user has not opted in to any of the rule's channels with a token or phone on file",
    "holdout": "the user is in the holdout group, kept out to measure the campaign's effect",
    "dedupe": "the rule already messaged this user within its cool-down",
    "quiet_hours": "it was quiet hours on the user's clock and the rule drops rather than delays",
}


def _when(epoch_ms: Any, zone_name: str) -> str:
    if not isinstance(epoch_ms, int):
        return "?"
    at = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    local = at.astimezone(user_zone(zone_name))
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({local:%H:%M} {zone_name or 'UTC'})"


def explain(record: Mapping[str, Any]) -> str:
    """One decision record in plain words (a few lines).

    >>> print(explain({"rule": "win_back", "variant": "default", "outcome": "suppressed", "reason": "cap:push:day",
    ...     "channel": "push", "decided_at": 0, "send_at": 0, "user_timezone": "UTC", "state": {"churn_score": "0.9"}}))
    1970-01-01 00:00:00 UTC (00:00 UTC)  win_back (variant default): NOT sent
      why: the user already had as many push messages as allowed per day
      it read: churn_score=0.9
    """
    zone = str(record.get("user_timezone", ""))
    rule = printable(str(record.get("rule", "?")))
    head = f"{_when(record.get('decided_at'), zone)}  {rule} (variant {printable(str(record.get('variant', '')))}): "
    outcome, reason, channel = record.get("outcome"), str(record.get("reason", "")), record.get("channel") or "-"
    offer = f", offer {record['offer_id']}" if record.get("offer_id") else ""
    if outcome == "sent":
        lines = [head + f"sent by {channel}{offer}"]
        if reason == "after_quiet_hours" or record.get("send_at", 0) != record.get("decided_at", 0):
            lines.append(f"  held for quiet hours, sent at {_when(record.get('send_at'), zone)}")
    elif outcome == "delayed":
        lines = [
            head + f"delayed{offer}",
            f"  why: quiet hours; to be sent by {channel} at {_when(record.get('send_at'), zone)}",
        ]
    else:
        lines = [head + "NOT sent", f"  why: {_reason(reason)}"]
    if record.get("title") or record.get("body"):
        lines.append(
            f"  message: {printable(str(record.get('title', '')))!s} / {printable(str(record.get('body', '')))}"
        )
    state = record.get("state") or {}
    if isinstance(state, Mapping) and state:
        read = ", ".join(f"{k}={printable(str(v))}" for k, v in state.items() if v not in ("", None))
        lines.append(f"  it read: {read}")
    return "\n".join(line for line in lines if not line.startswith("  message: ") or outcome != "suppressed")


def _reason(reason: str) -> str:
    if reason.startswith("cap:"):
        scope, _, period = reason[4:].partition(":")
        what = "messages on any channel" if scope == "all" else f"{scope} messages"
        return f"the user already had as many {what} as allowed per {period or 'period'}"
    return _REASONS.get(reason, reason or "no reason recorded")


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.args import integer, user_id_arg
    from nudge.cli import settings_epilog

    parser.description = (
        "Explain a user's recent trigger decisions in plain words: what was sent, delayed or held back,\n"
        "by which rule and why (consent, holdout, cool-down, caps, quiet hours), on the user's clock,\n"
        "and the state each rule read. Newest first; the service keeps the last NUDGE_DECISIONS_KEPT."
    )
    parser.add_argument("user_id", type=user_id_arg, metavar="USER_ID", help="the user's id, e.g. u00042")
    parser.add_argument("--json", action="store_true", help="print the decision records as JSON lines")
    parser.add_argument(
        "--limit", type=integer(1, 10_000), default=10, metavar="N", help="decisions to show, 1..10000 [10]"
    )
    parser.epilog = settings_epilog("redis_url", "triggers_key_prefix", "decisions_kept")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    records = read_decisions(settings, args.user_id)[: args.limit]
    if not records:
        print(f"no decisions recorded for user {printable(args.user_id)}", file=sys.stderr)
        return 1
    for record in records:
        print(orjson.dumps(record).decode() if args.json else explain(record))
    return 0


def read_decisions(settings: Settings, user_id: str) -> list[dict[str, Any]]:
    from redis.exceptions import RedisClusterException, RedisError

    from nudge.redis_client import sync_client, unreachable
    from triggers.store import TriggerStore

    if settings.redis_url.startswith("memory://"):
        raise ConfigError("NUDGE_REDIS_URL=memory:// has no decisions; point it at the trigger service's Redis")
    try:
        client = sync_client(settings, socket_connect_timeout=2, socket_timeout=5)
        store = TriggerStore(client, prefix=settings.triggers_key_prefix)
        return store.decisions(user_id)
    except (RedisError, RedisClusterException, OSError) as exc:
        raise DependencyUnavailable(unreachable(settings, exc)) from None
