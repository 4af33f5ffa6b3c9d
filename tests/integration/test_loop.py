"""The closed loop on the real stack: simulator -> worker -> Redis -> triggers -> delivery -> mock providers ->
the simulated users react -> Kafka. A win-back campaign with an offer must earn a conversion rate measurably
above its holdout's (the 95 % interval of the uplift above zero), with every message delivered once.

The users react with the simulator's ground truth (producers/respond.py); the holdout buys only at its
organic rate. 3,500 users over 24 days at 9,000 events/s (about two minutes) give some 300 quiet users
to win back, half of them held out: enough for the interval to clear zero by a wide margin (measured
+7.0 to +16.0 points).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from bench.loop import LoopOptions, run_loop
from nudge.settings import Settings

RULES = """
version: 1
guardrails:
  holdout: 0.5
rules:
  - id: win_back
    when:
      - lifecycle: {in: [at_risk, dormant]}
    wait: {after: last_event_ts, for: 7d}
    once_per: [last_event_ts]
    cooldown: 7d
    channels: [push, sms]
    quiet_hours: delay
    offer: sitewide10
    message: {title: "We miss you", body: "{offer_name}: just for you."}
"""


@pytest.mark.timeout(600)
def test_win_back_with_an_offer_converts_above_its_holdout(settings: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    options = LoopOptions(users=3500, days=24, rate=9000, seed=42, models=False, rules_path=rules, progress=False)
    run = run_loop(options, settings, say=lambda _: None)
    assert all(status == 0 for status in run.statuses.values()), run.statuses
    (win_back,) = run.report["rules"]
    assert win_back["rule"] == "win_back"
    assert win_back["sends"] >= 150 and win_back["holdout"]["users"] >= 100, win_back
    assert win_back["deliveries"] >= 0.9 * win_back["sends"]
    low, high = win_back["uplift_ci"]
    assert 0 < low <= win_back["uplift"] <= high, win_back
    assert win_back["conversion_rate"] > win_back["holdout"]["conversion_rate"]
    # every delivered message reached its device once, and each reaction's purchase carries the offer
    lines = Path(settings.data_dir, f"loop-{run.tag}", "mock-provider", "deliveries.jsonl").read_text().splitlines()
    keys = collections.Counter(json.loads(line)["idempotency_key"] for line in lines)
    assert keys and max(keys.values()) == 1
    # users bought because of the messages (a send's conversion may also be an organic purchase)
    assert run.reactions["purchases"] > 0 and win_back["conversions"] > 0
