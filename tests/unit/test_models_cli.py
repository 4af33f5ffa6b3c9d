"""`nudge models` prints the newest snapshot's figures: quality beside baselines, age, refusals."""

from __future__ import annotations

from models.bundle import new_bundle
from models.snapshot import open_snapshot, seal
from streams.models_cli import _text, report
from streams.trainer import Refusal

KEY = b"k" * 40


def test_the_report_shows_quality_beside_its_baseline_age_and_refused_newer_snapshots() -> None:
    bundle = new_bundle(["welcome15", "sitewide10"])
    bundle.version = 7
    bundle.quality.update(churn_auc=0.91, churn_baseline_auc=0.87, clv_mae=12.5, clv_baseline_mae=15.0)
    bundle.learned.update(churn=1200, clv_30d=800)
    snapshot = open_snapshot(seal(bundle, key=KEY, version=7, meta={"created_at": 1_000}), key=KEY)
    figures = report(snapshot, bundle, [Refusal(42, "bad_signature", "")], now_ms=61_000)
    assert figures["version"] == 7 and figures["age_s"] == 60.0
    assert figures["learned"]["churn"] == 1200
    text = _text(figures)
    churn_line = next(line for line in text.splitlines() if line.startswith("churn AUC"))
    assert "0.9100" in churn_line and "0.8700" in churn_line
    assert "60 s old" in text and "offset 42: bad_signature" in text
