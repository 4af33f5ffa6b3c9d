"""Every `nudge` command under hostile arguments and settings: one line on stderr, a
non-zero status (2 for a bad argument, 1 for a bad setting or input), no traceback,
and nothing done first.

Each row is (argv, env overrides, exit status, a piece of the one line). Paths may
use {tmp}, the test's own directory (also NUDGE_DATA_DIR and the working
directory). Kafka and Redis point at closed ports: a row that reached either would
fail differently (or slowly), so each row also proves the check comes first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import demo
from nudge.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLOSED_KAFKA = "127.0.0.1:1"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


def case(argv: list[str], code: int, says: str, env: dict[str, str] | None = None) -> object:
    return pytest.param(argv, env or {}, code, says, id=" ".join(argv)[:70] + (f" {env}" if env else ""))


CASES = [
    # --- the command itself ----------------------------------------------------------------------
    case([], 2, "the following arguments are required: COMMAND"),
    case(["bogus"], 2, "invalid choice: 'bogus'"),
    case(["\udcff"], 2, "invalid choice: '\\udcff'"),  # argv byte 0xff
    case(["\x1b[2Jclear"], 2, "invalid choice: '\\x1b[2Jclear'"),
    # --- stack -------------------------------------------------------------------------------------
    case(["stack"], 2, "the following arguments are required: action"),
    case(["stack", "explode"], 2, "invalid choice: 'explode'"),
    case(["stack", "up"], 1, "NUDGE_DATA_DIR=/proc/version: /proc/version is not a directory",
         {"NUDGE_DATA_DIR": "/proc/version", "NUDGE_KAFKA_PORT": "19992", "NUDGE_REDIS_PORT": "16999"}),
    case(["stack", "status"], 1, "NUDGE_KAFKA_BROKERS=10 is out of range: expected 1..9", {"NUDGE_KAFKA_BROKERS": "10"}),
    # --- topics ------------------------------------------------------------------------------------
    case(["topics", "extra"], 2, "unrecognized arguments: extra"),
    case(["topics"], 1, "NUDGE_TOPIC_CLICKS='my clicks' holds characters Kafka does not allow (' ')",
         {"NUDGE_TOPIC_CLICKS": "my clicks"}),
    case(["topics"], 1, "NUDGE_TOPIC_DLQ='..' is a name Kafka reserves", {"NUDGE_TOPIC_DLQ": ".."}),
    case(["topics"], 1, "NUDGE_PARTITIONS=0 is out of range: expected 1..1024", {"NUDGE_PARTITIONS": "0"}),
    case(["topics"], 1, "NUDGE_KAFKA_BOOTSTRAP='kafka' has 'kafka', not host:port", {"NUDGE_KAFKA_BOOTSTRAP": "kafka"}),
    case(["topics"], 1, "has port 99999, not 1..65535", {"NUDGE_KAFKA_BOOTSTRAP": "a:9092,b:99999"}),
    # --- settings: every setting checked when Settings is built ------------------------------------
    case(["settings", "--bogus"], 2, "unrecognized arguments: --bogus"),
    case(["settings"], 1, "NUDGE_STORE='bogus' is not allowed: expected memory:// or rocksdb://",
         {"NUDGE_STORE": "bogus"}),
    case(["settings"], 1, "NUDGE_COLLECTOR_MAX_BODY_BYTES=-5 is out of range",
         {"NUDGE_COLLECTOR_MAX_BODY_BYTES": "-5"}),
    case(["settings"], 1, "NUDGE_REDIS_URL='redis://***@cache:99999/0' does not parse",
         {"NUDGE_REDIS_URL": "redis://:hunter2@cache:99999/0"}),
    case(["settings"], 1, "NUDGE_REDIS_URL='http://cache/0' has scheme 'http'", {"NUDGE_REDIS_URL": "http://cache/0"}),
    case(["settings"], 1, "NUDGE_REDIS_CLUSTER='maybe' is not true or false", {"NUDGE_REDIS_CLUSTER": "maybe"}),
    case(["settings"], 1, "NUDGE_GC_FULL_EVERY_S=nan is not a finite number", {"NUDGE_GC_FULL_EVERY_S": "nan"}),
    case(["settings"], 1, "NUDGE_BATCH_WITHIN_S=inf is not a finite number", {"NUDGE_BATCH_WITHIN_S": "inf"}),
    case(["settings"], 1, "NUDGE_MAX_FUTURE_MS='1e3' is not an integer", {"NUDGE_MAX_FUTURE_MS": "1e3"}),
    case(["settings"], 1, "NUDGE_APP_ID='..' is a name Kafka reserves", {"NUDGE_APP_ID": ".."}),
    case(["settings"], 1, "NUDGE_USER_KEY_PREFIX='\\x1b[31m' holds a control character",
         {"NUDGE_USER_KEY_PREFIX": "\x1b[31m"}),
    case(["settings"], 1, "NUDGE_KAFKA_HEAP='9 GB' is not allowed: expected a JVM size", {"NUDGE_KAFKA_HEAP": "9 GB"}),
    case(["settings"], 1, "NUDGE_STATE_TTL_S=0 is out of range", {"NUDGE_STATE_TTL_S": "0"}),
    case(["settings"], 1, "NUDGE_CHANGES_SHARDS=5000 is out of range", {"NUDGE_CHANGES_SHARDS": "5000"}),
    case(["settings"], 1, "NUDGE_DATA_DIR='data\\udcff' holds a control character or undecodable byte",
         {"NUDGE_DATA_DIR": "data\udcff"}),
    case(["settings"], 1, "NUDGE_COLLECTOR_API_KEY=*** holds a control character",
         {"NUDGE_COLLECTOR_API_KEY": "secret\nkey"}),
    # --- simulate ----------------------------------------------------------------------------------
    case(["simulate", "--start", "9999-12-31T23:59:59Z"], 2, "--start: event time must be 1970-01-01T00:00:00Z .. 5138"),
    case(["simulate", "--start", "1969-12-31T00:00:00Z"], 2, "--start: event time must be 1970-01-01T00:00:00Z"),
    case(["simulate", "--start", "5138-11-10T00:00:00Z", "--out", "{tmp}/x.jsonl"], 2,
         "ends at 5138-11-17T00:00:00Z, past the event contract's last time"),
    case(["simulate", "--start", "2099-01-01T00:00:00Z"], 2, "after now + NUDGE_MAX_FUTURE_MS"),
    case(["simulate", "--start", "yesterday"], 2, "not an ISO 8601 date-time: 'yesterday'"),
    case(["simulate", "--users", "1000000000000"], 2, "expected an integer 1..100000, got '1000000000000'"),
    case(["simulate", "--users", "0"], 2, "--users: expected an integer 1..100000"),
    case(["simulate", "--users", "9" * 5000], 2, "--users: expected an integer 1..100000, got '999"),
    case(["simulate", "--days", "nan"], 2, "--days: expected a number > 0 and <= 3660, got 'nan'"),
    case(["simulate", "--days", "inf"], 2, "--days: expected a number > 0 and <= 3660"),
    case(["simulate", "--days", "0"], 2, "--days: expected a number > 0"),
    case(["simulate", "--rate", "1e-300"], 2, "--rate: expected a number >= 0.1"),
    case(["simulate", "--rate", "inf"], 2, "--rate: expected a number >= 0.1"),
    case(["simulate", "--seed", "1.5"], 2, "--seed: expected an integer"),
    case(["simulate", "--seed", "99999999999999999999999", "--out", "{tmp}/s.jsonl"], 2,
         "--seed: expected an integer -9223372036854775808..9223372036854775807"),
    case(["bench", "produce", "--seed", "-99999999999999999999999"], 2, "--seed: expected an integer"),
    case(["simulate", "--out", "/proc/version"], 2, "cannot write /proc/version: /proc does not allow creating files"),
    case(["simulate", "--out", "{tmp}"], 2, "is a directory, expected a file"),
    case(["simulate", "--out", "/nonexistent/x.jsonl"], 2, "directory /nonexistent does not exist"),
    case(["simulate", "--out", "/proc/version/x.jsonl"], 2, "/proc/version is not a directory"),
    case(["simulate", "--out", ""], 2, "--out: expected a path, got ''"),
    case(["simulate", "--out", "{tmp}/a\x1b[2J.jsonl"], 2, "\\x1b[2J.jsonl' holds a control character"),
    case(["simulate", "--out", "{tmp}/x\udcff.jsonl"], 2, "x\\xff.jsonl' holds a control character or undecodable"),
    case(["simulate", "--out", "-", "--truth", "/proc/version/t.json"], 2, "--truth: cannot write"),
    # --- record ------------------------------------------------------------------------------------
    case(["record"], 2, "the following arguments are required: --out"),
    case(["record", "--out", "/proc/version"], 2, "/proc does not allow creating files"),
    case(["record", "--out", "{tmp}"], 2, "is a directory, expected a file"),
    case(["record", "--out", "{tmp}/r.gz", "--until-idle", "0"], 2, "--until-idle: expected a number > 0"),
    case(["record", "--out", "{tmp}/r.gz", "--until-idle", "nan"], 2, "--until-idle: expected a number > 0"),
    case(["record", "--out", "{tmp}/r.gz", "--until-idle", "1e300"], 2, "--until-idle: expected a number > 0"),
    case(["record", "--out", "{tmp}/r.gz", "--max-messages", "0"], 2, "--max-messages: expected an integer 1.."),
    case(["record", "--out", "{tmp}/r.gz", "--topics", ",,"], 2, "--topics: expected comma-separated topic names"),
    case(["record", "--out", "{tmp}/r.gz", "--topics", "clicks,my topic"], 2,
         "topic name 'my topic' holds characters Kafka does not allow"),
    case(["record", "--out", "{tmp}/r.gz", "--topics", ".."], 2, "topic name '..' is a name Kafka reserves"),
    # --- replay (producers/replay.py) ----------------------------------------------------------------
    case(["replay"], 2, "the following arguments are required: file"),
    case(["replay", "/nonexistent.jsonl"], 2, "/nonexistent.jsonl does not exist"),
    case(["replay", "{tmp}"], 2, "is a directory"),
    case(["replay", "{tmp}/events.jsonl", "--speed", "1e-300"], 2, "--speed"),
    case(["replay", "{tmp}/events.jsonl", "--speed", "nan"], 2, "--speed"),
    case(["replay", "{tmp}/events.jsonl", "--speed", "-1"], 2, "--speed"),
    case(["replay", "{tmp}/events.jsonl", "--limit", "-1"], 2, "--limit"),
    case(["replay", "{tmp}/events.jsonl", "--topic-map", "clicks"], 2, "--topic-map"),
    case(["replay", "{tmp}/events.jsonl", "--topic-map", "clicks=bad topic"], 2, "--topic-map"),
    # --- collect (producers/collector.py) ----------------------------------------------------------
    case(["collect", "--port", "0"], 2, "--port: 0 is not in 1..65535"),
    case(["collect", "--port", "70000"], 2, "--port"),
    case(["collect", "--port", "http"], 2, "--port"),
    case(["collect", "--ack-timeout", "nan"], 2, "--ack-timeout"),
    case(["collect", "--ack-timeout", "-1"], 2, "--ack-timeout"),
    case(["collect"], 1, "NUDGE_COLLECTOR_MAX_BODY_BYTES=-5 is out of range", {"NUDGE_COLLECTOR_MAX_BODY_BYTES": "-5"}),
    case(["collect"], 1, "NUDGE_COLLECTOR_HOST='0.0.0.0 evil' is not allowed", {"NUDGE_COLLECTOR_HOST": "0.0.0.0 evil"}),
    # --- import-dataset ----------------------------------------------------------------------------
    case(["import-dataset"], 2, "the following arguments are required: name, --out"),
    case(["import-dataset", "bogus", "--out", "{tmp}/o.jsonl"], 2, "invalid choice: 'bogus'"),
    case(["import-dataset", "uci-online-retail", "--out", "/proc/version"], 2, "/proc does not allow creating files"),
    case(["import-dataset", "uci-online-retail", "--out", "{tmp}/o.jsonl", "--data-dir", "/nonexistent"], 2,
         "--data-dir: /nonexistent does not exist"),
    case(["import-dataset", "uci-online-retail", "--out", "{tmp}/o.jsonl", "--data-dir", "/etc/hostname"], 2,
         "--data-dir: /etc/hostname is not a directory"),
    case(["import-dataset", "uci-online-retail", "--out", "{tmp}/o.jsonl", "--data-dir", "{tmp}"], 1,
         "uci_online_retail_2010-12.csv does not exist (use --data-dir)"),
    case(["import-dataset", "uci-online-retail", "--out", "{tmp}/o.jsonl", "--data-dir", "{tmp}/binary"], 1,
         "uci_online_retail_2010-12.csv: not UTF-8 text"),
    # --- worker ------------------------------------------------------------------------------------
    case(["worker"], 1, "NUDGE_STORE='bogus' is not allowed: expected memory:// or rocksdb://", {"NUDGE_STORE": "bogus"}),
    case(["worker"], 1, "NUDGE_BATCH_MAX=0 is out of range", {"NUDGE_BATCH_MAX": "0"}),
    case(["worker"], 1, "NUDGE_REDIS_URL='ftp://***@x/0' has scheme 'ftp'", {"NUDGE_REDIS_URL": "ftp://u:pw@x/0"}),
    case(["worker", "--web-port", "0"], 2, "--web-port: expected an integer 1..65535"),
    case(["worker", "--web-port", "70000"], 2, "--web-port: expected an integer 1..65535"),
    case(["worker", "--store", "bogus"], 2, "--store: invalid choice: 'bogus'"),
    case(["worker", "--loglevel", "loud"], 2, "--loglevel: invalid choice: 'loud'"),
    # --- state -------------------------------------------------------------------------------------
    case(["state"], 2, "the following arguments are required: USER_ID"),
    case(["state", ""], 2, "USER_ID: '' is empty"),
    case(["state", "probe-\udcff"], 2, "USER_ID: 'probe-\\xff' holds a control character or undecodable byte"),
    case(["state", "u1\x1b[2J"], 2, "USER_ID: 'u1\\x1b[2J' holds a control character"),
    case(["state", "x" * 129], 2, "has 129 characters, more than 128"),
    case(["state", "u1"], 1, "cannot reach Redis at redis://***@127.0.0.1:1/0",
         {"NUDGE_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}),
    case(["state", "u1"], 1, "NUDGE_USER_KEY_PREFIX='a b' is not allowed", {"NUDGE_USER_KEY_PREFIX": "a b"}),
    # --- report (triggers/report.py) ----------------------------------------------------------------
    case(["report", "--hours", "0"], 2, "--hours: expected a number > 0"),
    case(["report", "--hours", "nan"], 2, "--hours: expected a number > 0"),
    case(["report", "--since", "yesterday"], 2, "--since: not an ISO 8601 date-time: 'yesterday'"),
    case(["report", "--since", "2026-10-01T00:00:00"], 2, "--since: needs a UTC offset"),
    case(["report", "--since", "2026-10-01T00:00:00Z", "--hours", "1"], 2, "--hours: not allowed with argument --since"),
    case(["report", "--serve", "--rule", "win_back"], 2, "--serve exports every campaign live; it takes --hours and --every, not --rule"),
    case(["report", "--serve", "--every", "0.1"], 2, "--every: expected a number >= 0.5 and <= 86400"),
    case(["report", "--serve", "--metrics-port", "0"], 2, "--metrics-port"),
    case(["report", "--rule", ""], 2, "--rule: rule id '' is empty"),
    case(["report", "--rule", "a\x1b[2J"], 2, "--rule: rule id 'a\\x1b[2J' holds a control character"),
    case(["report", "--json", "/proc/version"], 2, "--json: cannot write /proc/version: /proc does not allow"),
    case(["report", "--png", "{tmp}"], 2, "--png: cannot write {tmp}: {tmp} is a directory, expected a file"),
    case(["report"], 1, "Kafka is not reachable at 127.0.0.1:1",
         {"NUDGE_OFFERS_PATH": str(ROOT / "deploy" / "config" / "offers.yaml")}),
    case(["report"], 1, "none.yaml: cannot read the offer catalog", {"NUDGE_OFFERS_PATH": "none.yaml"}),
    # --- top (ops/top.py) ----------------------------------------------------------------------------
    case(["top", "--interval", "0"], 2, "--interval: expected a number >= 0.1 and <= 3600 s, got '0'"),
    case(["top", "--interval", "nan"], 2, "--interval: expected a number >= 0.1"),
    case(["top", "--target", "foo"], 2, "--target: expected NAME=URL (e.g. worker=http://127.0.0.1:6066/metrics"),
    case(["top", "--target", "Worker=http://127.0.0.1:6066/metrics"], 2, "--target: expected NAME=URL"),
    case(["top", "--target", "worker=127.0.0.1:6066"], 2, "--target: worker: expected an http:// or https:// URL"),
    case(["top", "--target", "worker=http://:6066/metrics"], 2, "with a host"),
    case(["top", "--target", "worker=http://127.0.0.1:99999/metrics"], 2, "has a bad port (1..65535)"),
    case(["top", "--target", "worker=http://h/\x1b[2J"], 2, "'http://h/\\x1b[2J' holds a space or a control character"),
    case(["top", "--only", "pipeline,graphs"], 2, "--only: expected a comma-separated list of pipeline, models, campaigns"),
    case(["top", "--once", "--interval", "0.1", "--target", "worker=http://127.0.0.1:1/metrics"], 1,
         "no process answered; tried worker http://127.0.0.1:1/metrics (connection refused)",
         {"NUDGE_COLLECTOR_PORT": "1", "NUDGE_TRAINER_METRICS_PORT": "1", "NUDGE_TRIGGERS_METRICS_PORT": "1",
          "NUDGE_DELIVERY_METRICS_PORT": "1", "NUDGE_REPORT_METRICS_PORT": "1"}),
    # --- deliver, mock-providers --------------------------------------------------------------------
    case(["deliver", "--metrics-port", "x"], 2, "--metrics-port: expected an integer 0..65535, got 'x'"),
    case(["deliver", "--metrics-port", "70000"], 2, "--metrics-port: expected an integer 0..65535"),
    case(["deliver"], 1, "no channel configured: set NUDGE_FCM_PROJECT_ID (push)"),
    case(["deliver"], 1, "NUDGE_FCM_PROJECT_ID is set but NUDGE_FCM_CREDENTIALS_PATH is empty",
         {"NUDGE_FCM_PROJECT_ID": "p1"}),
    case(["deliver"], 1, "NUDGE_FCM_CREDENTIALS_PATH=none.json: no such file",
         {"NUDGE_FCM_PROJECT_ID": "p1", "NUDGE_FCM_CREDENTIALS_PATH": "none.json"}),
    case(["deliver"], 1, "NUDGE_FCM_CREDENTIALS_PATH=events.jsonl: not a readable service-account JSON file",
         {"NUDGE_FCM_PROJECT_ID": "p1", "NUDGE_FCM_CREDENTIALS_PATH": "events.jsonl"}),
    case(["deliver"], 1, "NUDGE_WEBHOOK_URL is set but NUDGE_WEBHOOK_SECRET is empty", {"NUDGE_WEBHOOK_URL": "http://h/w"}),
    case(["deliver"], 1, "NUDGE_TWILIO_AUTH_TOKEN and NUDGE_TWILIO_FROM are needed too",
         {"NUDGE_TWILIO_ACCOUNT_SID": "AC1"}),
    case(["deliver"], 1, "NUDGE_DELIVERY_CLAIM_LEASE_S=10 must exceed 4 x NUDGE_DELIVERY_HTTP_TIMEOUT_S",
         {"NUDGE_DELIVERY_CLAIM_LEASE_S": "10", "NUDGE_WEBHOOK_URL": "http://h/w", "NUDGE_WEBHOOK_SECRET": "s"}),
    case(["deliver"], 1, "NUDGE_DELIVERY_MAX_ATTEMPTS=0 is out of range", {"NUDGE_DELIVERY_MAX_ATTEMPTS": "0"}),
    case(["deliver"], 1, "Kafka is not reachable at 127.0.0.1:1",
         {"NUDGE_WEBHOOK_URL": "http://h/w", "NUDGE_WEBHOOK_SECRET": "s"}),
    case(["mock-providers", "--port", "0"], 2, "--port: expected an integer 1..65535, got '0'"),
    case(["mock-providers", "--fail-rate", "1.5"], 2, "--fail-rate: expected a number >= 0 and <= 1"),
    case(["mock-providers", "--fail-rate", "nan"], 2, "--fail-rate: expected a number >= 0 and <= 1"),
    case(["mock-providers", "--seed", "x"], 2, "--seed: expected an integer"),
    case(["mock-providers", "--credentials", "{tmp}/missing.json"], 2, "--credentials: {tmp}/missing.json does not exist"),
    case(["mock-providers", "--credentials", "{tmp}/events.jsonl"], 2,
         "--credentials {tmp}/events.jsonl: not a service-account JSON with a private_key"),
    case(["mock-providers", "--make-credentials", "{tmp}/missing/sa.json"], 2, "directory {tmp}/missing does not exist"),
    case(["mock-providers", "--project", "X"], 2, "--project: expected a Google project id"),
    # --- bench -------------------------------------------------------------------------------------
    case(["models"], 1, "NUDGE_MODEL_KEY is not set"),
    case(["models", "--jsn"], 2, "unrecognized arguments: --jsn"),
    # --- eval ----------------------------------------------------------------------------------------
    case(["eval", "--users", "5"], 2, "--users: expected an integer 10..100000, got '5'"),
    case(["eval", "--days", "7"], 2, "--days: expected an integer 20..365, got '7'"),
    case(["eval", "--dataset", "uci"], 2, "--dataset: invalid choice: 'uci'"),
    case(["eval", "--churn-model", "svm"], 2, "--churn-model: invalid choice: 'svm'"),
    case(["eval", "--out", "{tmp}/missing/r.json"], 2, "directory {tmp}/missing does not exist"),
    case(["bench"], 2, "the following arguments are required: NAME"),
    case(["bench", "nope"], 2, "invalid choice: 'nope'"),
    case(["bench", "produce", "--out-dir", "/proc/version"], 2, "--out-dir: cannot write into /proc/version: "
         "/proc/version is not a directory"),
    case(["bench", "produce", "--out-dir", "/proc/version/x"], 2, "/proc/version is not a directory"),
    case(["bench", "collect", "--out-dir", "/proc/version"], 2, "--out-dir: cannot write into /proc/version"),
    case(["bench", "collect", "--batch-sizes", "5,0"], 2, "--batch-sizes: expected an integer 1..500, got '0'"),
    case(["bench", "collect", "--concurrency", ","], 2, "--concurrency: expected at least one number"),
    case(["bench", "collect", "--paced-fraction", "nan"], 2, "--paced-fraction: expected a number"),
    case(["bench", "produce", "--out-dir", "/proc/nudge"], 2, "/proc does not allow creating files"),
    case(["bench", "produce", "--events", "0"], 2, "--events: expected an integer 1..1000000"),
    case(["bench", "produce", "--events", "1e6"], 2, "--events: expected an integer"),
    case(["bench", "produce", "--events", "100000000"], 2, "every message is held in memory"),
    case(["bench", "produce", "--repeat", "0"], 2, "--repeat: expected an integer 1..100"),
    case(["bench", "pipeline", "--freshness-seconds", "-1"], 2, "--freshness-seconds: expected a number >= 1"),
    case(["bench", "pipeline", "--freshness-seconds", "nan"], 2, "--freshness-seconds: expected a number >= 1"),
    case(["bench", "pipeline", "--events", "10"], 2, "--events: expected an integer 1000..2000000"),
    case(["bench", "pipeline", "--events", "999999999999"], 2, "every message is held in memory"),
    case(["bench", "pipeline", "--users", "0"], 2, "--users: expected an integer 1..100000"),
    case(["bench", "pipeline", "--web-port", "80"], 2, "--web-port: expected an integer 1024..65533"),
    case(["bench", "pipeline", "--out-dir", "/proc/version"], 2, "/proc/version is not a directory"),
    case(["bench", "triggers", "--changes", "10"], 2, "--changes: expected an integer 1000..1000000, got '10'"),
    case(["bench", "triggers", "--changes", "9999999999"], 2, "the backlog is written to Redis first"),
    case(["bench", "triggers", "--users", "0"], 2, "--users: expected an integer 1..1000000, got '0'"),
    case(["bench", "triggers", "--rate", "nan"], 2, "--rate: expected a number >= 10 and <= 20000 events/s"),
    case(["bench", "triggers", "--rate", "1"], 2, "--rate: expected a number >= 10"),
    case(["bench", "triggers", "--seconds", "-3"], 2, "--seconds: expected a number >= 5 and <= 600 s"),
    case(["bench", "triggers", "--out", "/proc/version"], 2, "--out: cannot write into /proc/version"),
    case(["bench", "triggers", "--bogus"], 2, "unrecognized arguments: --bogus"),
    case(["bench", "soak", "--minutes", "0"], 2, "--minutes: expected a number >= 1 and <= 1440 min, got '0'"),
    case(["bench", "soak", "--minutes", "nan"], 2, "--minutes: expected a number >= 1 and <= 1440 min"),
    case(["bench", "soak", "--every", "0.5"], 2, "--every: expected a number >= 1 and <= 300 s"),
    case(["bench", "soak", "--warmup", "-1"], 2, "--warmup: expected a number >= 0"),
    case(["bench", "soak", "--minutes", "2", "--warmup", "110"], 2,
         "--warmup 110 s leaves fewer than 3 samples (--every 10 s) of the 2-minute soak"),
    case(["bench", "soak", "--load", "2"], 2, "--load: expected a number >= 0.05 and <= 1 of the max rate"),
    case(["bench", "soak", "--calibrate", "5"], 2, "--calibrate: expected a number >= 20 and <= 600 s"),
    case(["bench", "soak", "--users", "5"], 2, "--users: expected an integer 100..20000, got '5'"),
    case(["bench", "soak", "--out-dir", "/proc/version"], 2, "/proc/version is not a directory"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NUDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NUDGE_KAFKA_BOOTSTRAP", CLOSED_KAFKA)
    monkeypatch.setenv("NUDGE_REDIS_URL", CLOSED_REDIS)
    monkeypatch.setenv("NUDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.jsonl").write_bytes(b"")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "uci_online_retail_2010-12.csv").write_bytes(b"Invoice,\xff\xfe\n1,2\n")
    # main() installs its own root log handler; later tests must not inherit it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _status(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(("argv", "env", "code", "says"), CASES)
def test_bad_input_is_one_line_and_a_non_zero_status(
    argv: list[str],
    env: dict[str, str],
    code: int,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = _status([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    err = capsys.readouterr().err.replace(str(tmp_path), "{tmp}")
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert says in lines[0]
    assert status == code, lines[0]
    assert "hunter2" not in err and "\x1b" not in err


def test_module_doctests() -> None:
    import doctest

    from nudge import args, text

    for module in (args, text):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_no_probe_file_is_left_behind(tmp_path: Path) -> None:
    assert _status(["simulate", "--out", str(tmp_path / "x.jsonl"), "--start", "9999-01-01T00:00:00Z"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary", "events.jsonl"]


# --- bench.demo (python -m bench.demo, `make demo`) ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--users", "1000000"], "--users: expected an integer 1..10000"),
        (["--rate", "100000", "--seconds", "600"], "more than 2000000 (held in memory)"),
        (["--seconds", "nan"], "--seconds: expected a number > 0 and <= 600"),
        (["--rate", "0"], "--rate: expected a number > 0"),
    ],
)
def test_demo_arguments(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and says in lines[0]


# --- the whole path, in a real process ------------------------------------------------------------


def _nudge(args: list[bytes], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    clean.update(NUDGE_KAFKA_BOOTSTRAP=CLOSED_KAFKA, NUDGE_DATA_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "-m", "nudge", *args], env=clean, cwd=tmp_path, capture_output=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (
            [b"worker"],
            {"NUDGE_STORE": "bogus"},
            1,
            b"NUDGE_STORE='bogus' is not allowed: expected memory:// or rocksdb://",
        ),
        (
            [b"settings"],
            {"NUDGE_COLLECTOR_MAX_BODY_BYTES": "-5"},
            1,
            b"NUDGE_COLLECTOR_MAX_BODY_BYTES=-5 is out of range",
        ),
        ([b"state", b"probe-\xff"], {}, 2, b"USER_ID: 'probe-\\xff' holds a control character or undecodable byte"),
        ([b"simulate", b"--start", b"9999-12-31T23:59:59Z"], {}, 2, b"--start: event time must be"),
        ([b"bench", b"produce", b"--out-dir", b"/proc/version"], {}, 2, b"/proc/version is not a directory"),
    ],
    ids=["bad store", "negative body limit", "undecodable user id", "far future start", "unwritable out dir"],
)
def test_whole_path_in_a_process(
    args: list[bytes], env: dict[str, str], code: int, says: bytes, tmp_path: Path
) -> None:
    done = _nudge(args, env, tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.count(b"\n") == 1 and says in done.stderr, done.stderr
    assert done.stdout == b""


def test_settings_never_print_a_redis_password(tmp_path: Path) -> None:
    done = _nudge([b"settings"], {"NUDGE_REDIS_URL": "redis://:hunter2@cache:6379/0"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"hunter2" not in done.stdout and b"redis://***@cache:6379/0" in done.stdout
