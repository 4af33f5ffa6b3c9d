"""The alert rules (deploy/prometheus/alerts.yml): valid for promtool, each one tested to fire and
resolve (alerts.test.yml), each with a runbook, and none naming a metric no nudge process exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
TESTS = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]
# Where every nudge process declares its metrics.
REGISTRIES = [
    ROOT / "streams" / "metrics.py",
    ROOT / "streams" / "trainer_metrics.py",
    ROOT / "triggers" / "service.py",
    ROOT / "delivery" / "metrics.py",
    ROOT / "triggers" / "campaign_exporter.py",
    ROOT / "producers" / "collector.py",
]


def exported() -> set[str]:
    names: set[str] = set()
    for path in REGISTRIES:
        names |= set(re.findall(r'"(nudge_[a-z0-9_]+)"', path.read_text()))
    return names


def test_promtool_checks_and_runs_the_alert_unit_tests() -> None:
    # A missing promtool is a failure, not a skip: `make system-deps` / .ci/run install it.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_every_alert_has_a_runbook_and_is_tested_to_fire_and_resolve(rule: dict[str, object]) -> None:
    annotations = rule["annotations"]
    assert isinstance(annotations, dict) and annotations.get("summary") and len(str(annotations.get("runbook"))) > 40
    checks = [t for test in TESTS["tests"] for t in test["alert_rule_test"] if t["alertname"] == rule["alert"]]
    fired = [t for t in checks if t.get("exp_alerts")]
    quiet = [t for t in checks if not t.get("exp_alerts")]
    assert fired, f"{rule['alert']}: no test expects it to fire"
    assert any(_minutes(q["eval_time"]) > min(_minutes(f["eval_time"]) for f in fired) for q in quiet), (
        f"{rule['alert']}: no test expects it to resolve"
    )


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_alerts_name_only_metrics_a_process_exports(rule: dict[str, object]) -> None:
    names = set(re.findall(r"\bnudge_[a-z0-9_]+", str(rule["expr"])))
    # An alert names nudge's metrics, or Prometheus's own `up` of nudge's scrape jobs.
    assert names or 'up{job=~"nudge-' in str(rule["expr"]), rule["expr"]
    series = {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}
    assert series <= exported(), f"{rule['alert']}: {sorted(series - exported())} exported by no process"


def _minutes(duration: str) -> float:
    value, unit = float(duration[:-1]), duration[-1]
    return value * {"s": 1 / 60, "m": 1, "h": 60}[unit]
