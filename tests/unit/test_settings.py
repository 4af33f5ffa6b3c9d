"""Settings parsing and validation, `nudge settings`, and deploy/env.example staying in sync."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.cli import main
from nudge.errors import ConfigError
from nudge.settings import Settings
from nudge.settings_cli import env_example

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
PORTS = ["NUDGE_KAFKA_PORT", "NUDGE_KAFKA_CONTROLLER_PORT", "NUDGE_REDIS_PORT", "NUDGE_COLLECTOR_PORT"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The CLI reads os.environ: a developer's exported NUDGE_* must not leak into these tests.
    for name in list(os.environ):
        if name.startswith("NUDGE_"):
            monkeypatch.delenv(name)
    # main() installs its own root log handler; later tests must not inherit it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = "".join(shlex.split(value)) if value else ""
    return env


# --- Settings.from_env -------------------------------------------------------


def test_from_env_parses_typed_values() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_PORT": "19092", "NUDGE_PARTITIONS": "12", "NUDGE_DATA_DIR": "/tmp/x"})
    assert s.kafka_port == 19092 and type(s.kafka_port) is int
    assert s.partitions == 12
    assert s.data_dir == Path("/tmp/x") and isinstance(s.data_dir, Path)


def test_from_env_ignores_unrelated_and_empty_values() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_PORT": "", "KAFKA_PORT": "1", "HOME": "/root"})
    assert s == Settings()


def test_keyword_overrides_win_over_env() -> None:
    s = Settings.from_env({"NUDGE_PARTITIONS": "12"}, partitions=3)
    assert s.partitions == 3


@pytest.mark.parametrize("env", PORTS)
def test_non_integer_port_names_the_variable(env: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: "abc"})
    assert env in str(info.value) and "'abc'" in str(info.value)


@pytest.mark.parametrize("env", PORTS)
@pytest.mark.parametrize("value", ["0", "-1", "65536", "100000"])
def test_out_of_range_port_is_rejected(env: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: value})
    assert env in str(info.value) and value in str(info.value)


@pytest.mark.parametrize("value", ["1", "65535"])
def test_port_range_bounds_are_accepted(value: str) -> None:
    assert Settings.from_env({"NUDGE_REDIS_PORT": value}).redis_port == int(value)


def test_partitions_and_replication_must_be_positive() -> None:
    for env, value in (("NUDGE_PARTITIONS", "0"), ("NUDGE_PARTITIONS", "-1"), ("NUDGE_REPLICATION", "-1")):
        with pytest.raises(ConfigError, match=env):
            Settings.from_env({env: value})


def test_connection_strings_follow_the_ports() -> None:
    default = Settings.from_env({})
    assert default.kafka_bootstrap == "127.0.0.1:9092"
    assert default.redis_url == "redis://127.0.0.1:6379/0"
    moved = Settings.from_env({"NUDGE_KAFKA_PORT": "19092", "NUDGE_REDIS_PORT": "16379"})
    assert moved.kafka_bootstrap == "127.0.0.1:19092"
    assert moved.redis_url == "redis://127.0.0.1:16379/0"


def test_bootstrap_lists_every_local_broker() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": "3", "NUDGE_KAFKA_PORT": "19092"})
    assert s.kafka_bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert s.kafka_ports == (19092, 19093, 19094)
    assert s.kafka_controller_ports == (9192, 9193, 9194)


# --- brokers, replication, Redis Cluster -----------------------------------------


@pytest.mark.parametrize(
    ("brokers", "replication", "min_isr"), [("1", 1, 1), ("2", 2, 1), ("3", 3, 2), ("5", 3, 2), ("9", 3, 2)]
)
def test_replication_and_min_isr_derive_from_the_broker_count(brokers: str, replication: int, min_isr: int) -> None:
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": brokers})
    assert (s.kafka_brokers, s.replication, s.min_insync_replicas) == (int(brokers), replication, min_isr)


def test_explicit_replication_derives_its_min_isr() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": "5", "NUDGE_REPLICATION": "2"})
    assert (s.replication, s.min_insync_replicas) == (2, 1)
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": "5", "NUDGE_REPLICATION": "5", "NUDGE_MIN_INSYNC_REPLICAS": "3"})
    assert (s.replication, s.min_insync_replicas) == (5, 3)


def test_derived_values_survive_a_round_trip_through_the_env() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": "3", "NUDGE_REDIS_CLUSTER": "1"})
    assert Settings.from_env(s.to_env()) == s


def _one_line_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("value", ["0", "10", "-1"])
def test_broker_count_is_1_to_9(value: str) -> None:
    assert "NUDGE_KAFKA_BROKERS" in _one_line_error({"NUDGE_KAFKA_BROKERS": value})


@pytest.mark.parametrize("value", ["2", "10"])
def test_redis_cluster_nodes_are_3_to_9(value: str) -> None:
    assert "NUDGE_REDIS_CLUSTER_NODES" in _one_line_error({"NUDGE_REDIS_CLUSTER_NODES": value})


def test_min_isr_cannot_exceed_replication() -> None:
    message = _one_line_error({"NUDGE_KAFKA_BROKERS": "3", "NUDGE_REPLICATION": "2", "NUDGE_MIN_INSYNC_REPLICAS": "3"})
    assert "NUDGE_MIN_INSYNC_REPLICAS=3" in message and "NUDGE_REPLICATION" in message
    assert "NUDGE_MIN_INSYNC_REPLICAS" in _one_line_error({"NUDGE_MIN_INSYNC_REPLICAS": "-1"})


def test_replication_cannot_exceed_the_local_brokers() -> None:
    message = _one_line_error({"NUDGE_KAFKA_BROKERS": "2", "NUDGE_REPLICATION": "3"})
    assert "NUDGE_REPLICATION=3" in message and "NUDGE_KAFKA_BROKERS=2" in message
    # Another cluster's brokers: their count is not ours to know.
    remote = Settings.from_env({"NUDGE_KAFKA_BOOTSTRAP": "kafka:9092", "NUDGE_REPLICATION": "3"})
    assert (remote.replication, remote.min_insync_replicas) == (3, 2)


def test_redis_cluster_flag_parses_as_a_bool() -> None:
    assert Settings.from_env({"NUDGE_REDIS_CLUSTER": "1"}).redis_cluster is True
    assert Settings.from_env({"NUDGE_REDIS_CLUSTER": "false"}).redis_cluster is False
    assert "NUDGE_REDIS_CLUSTER" in _one_line_error({"NUDGE_REDIS_CLUSTER": "maybe"})
    s = Settings.from_env({"NUDGE_REDIS_CLUSTER": "yes", "NUDGE_REDIS_CLUSTER_NODES": "5", "NUDGE_REDIS_PORT": "7000"})
    assert s.redis_ports == (7000, 7001, 7002, 7003, 7004)
    assert Settings().redis_ports == (6379,)


# --- port ranges ----------------------------------------------------------------------


def test_default_port_ranges_are_disjoint_up_to_nine_brokers_and_nodes() -> None:
    s = Settings.from_env({"NUDGE_KAFKA_BROKERS": "9", "NUDGE_REDIS_CLUSTER": "1", "NUDGE_REDIS_CLUSTER_NODES": "9"})
    assert s.kafka_ports[-1] < s.kafka_controller_ports[0]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        # the old controller default (broker port + 1) collides with broker 2
        (
            {"NUDGE_KAFKA_BROKERS": "3", "NUDGE_KAFKA_CONTROLLER_PORT": "9093"},
            ("NUDGE_KAFKA_PORT", "NUDGE_KAFKA_CONTROLLER_PORT"),
        ),
        ({"NUDGE_KAFKA_PORT": "9192"}, ("NUDGE_KAFKA_PORT", "NUDGE_KAFKA_CONTROLLER_PORT")),
        (
            {"NUDGE_KAFKA_BROKERS": "3", "NUDGE_KAFKA_CONTROLLER_PORT": "9090"},
            ("NUDGE_KAFKA_PORT", "NUDGE_KAFKA_CONTROLLER_PORT"),
        ),
        ({"NUDGE_REDIS_PORT": "9092"}, ("NUDGE_KAFKA_PORT", "NUDGE_REDIS_PORT")),
        ({"NUDGE_REDIS_CLUSTER": "1", "NUDGE_REDIS_PORT": "9190"}, ("NUDGE_KAFKA_CONTROLLER_PORT", "NUDGE_REDIS_PORT")),
        # Redis Cluster's bus: port + 10000
        (
            {"NUDGE_REDIS_CLUSTER": "1", "NUDGE_REDIS_PORT": "7000", "NUDGE_KAFKA_PORT": "17001"},
            ("NUDGE_KAFKA_PORT", "NUDGE_REDIS_PORT"),
        ),
    ],
)
def test_overlapping_port_ranges_name_both_variables(env: dict[str, str], names: tuple[str, str]) -> None:
    message = _one_line_error(env)
    assert "overlap" in message and all(name in message for name in names), message


def test_a_single_broker_may_keep_the_old_controller_port() -> None:
    assert Settings.from_env({"NUDGE_KAFKA_CONTROLLER_PORT": "9093"}).kafka_controller_ports == (9093,)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"NUDGE_KAFKA_BROKERS": "3", "NUDGE_KAFKA_PORT": "65534"}, "NUDGE_KAFKA_PORT"),
        ({"NUDGE_KAFKA_BROKERS": "2", "NUDGE_KAFKA_CONTROLLER_PORT": "65535"}, "NUDGE_KAFKA_CONTROLLER_PORT"),
        ({"NUDGE_REDIS_CLUSTER": "1", "NUDGE_REDIS_PORT": "60000"}, "NUDGE_REDIS_PORT"),
    ],
)
def test_port_ranges_must_end_by_65535(env: dict[str, str], name: str) -> None:
    message = _one_line_error(env)
    assert name in message and "65535" in message


def test_settings_command_reports_a_bad_broker_count_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_KAFKA_BROKERS", "3")
    monkeypatch.setenv("NUDGE_KAFKA_CONTROLLER_PORT", "9093")
    assert main(["settings"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NUDGE_KAFKA_CONTROLLER_PORT" in err


def test_explicit_connection_strings_win_over_the_ports() -> None:
    s = Settings.from_env(
        {"NUDGE_KAFKA_PORT": "19092", "NUDGE_KAFKA_BOOTSTRAP": "kafka:19092", "NUDGE_REDIS_URL": "redis://redis:6379/1"}
    )
    assert s.kafka_bootstrap == "kafka:19092"
    assert s.redis_url == "redis://redis:6379/1"


def test_declarations_are_complete_and_unique() -> None:
    decls = list(Settings.declarations())
    envs = [d.env for d in decls]
    assert len(set(envs)) == len(envs)
    for d in decls:
        assert d.env.startswith("NUDGE_") and d.env == d.env.upper(), d.env
        assert d.help.strip(), f"{d.env} has no help"


def test_redacted_masks_secrets_only_when_set() -> None:
    secret = next(d for d in Settings.declarations() if d.env == "NUDGE_COLLECTOR_API_KEY")  # one that stands alone
    assert Settings.from_env({}).redacted()[secret.env] == ""
    shown = Settings.from_env({secret.env: "s3cret-value"}).redacted()
    assert shown[secret.env] == "***"
    assert "s3cret-value" not in "".join(shown.values())


# --- deploy/env.example --------------------------------------------------------


def test_env_example_is_in_sync_with_the_declarations() -> None:
    assert ENV_EXAMPLE.read_text(encoding="utf-8") == env_example(), (
        "regenerate with: nudge settings --env-example > deploy/env.example"
    )


def test_env_example_lists_every_variable_with_its_help_and_no_secret() -> None:
    text = env_example()
    env = _parse_env_file(text)
    assert list(env) == [d.env for d in Settings.declarations()]
    lines = text.splitlines()
    for d in Settings.declarations():
        line = lines.index(next(line for line in lines if line.startswith(f"{d.env}=")))
        assert lines[line - 1].startswith(f"# {d.help}"), d.env
        if d.secret:
            assert env[d.env] == "", f"{d.env} is a secret: no value in the example"


def test_env_example_values_parse_back_to_the_defaults() -> None:
    assert Settings.from_env(_parse_env_file(env_example())) == Settings()


# --- `nudge settings` ----------------------------------------------------------


def test_settings_command_shows_every_variable_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = next(d for d in Settings.declarations() if d.env == "NUDGE_COLLECTOR_API_KEY")  # one that stands alone
    monkeypatch.setenv(secret.env, "s3cret-value")
    monkeypatch.setenv("NUDGE_KAFKA_PORT", "19092")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-value" not in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {d.env for d in Settings.declarations()}
    assert rows[secret.env].split()[1] == "***"
    assert rows["NUDGE_KAFKA_PORT"].split()[1] == "19092"
    assert rows["NUDGE_KAFKA_BOOTSTRAP"].split()[1] == "127.0.0.1:19092"
    assert "local broker's client port" in rows["NUDGE_KAFKA_PORT"]


def test_settings_command_prints_the_env_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "--env-example"]) == 0
    assert capsys.readouterr().out == env_example()


def test_settings_command_reports_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_REDIS_PORT", "abc")
    assert main(["settings"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nudge settings: error:") and "NUDGE_REDIS_PORT" in err


# --- every setting is checked when Settings is built -------------------------------


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("NUDGE_STORE", "bogus", "expected memory:// or rocksdb://"),
        ("NUDGE_COLLECTOR_MAX_BODY_BYTES", "-5", "out of range"),
        ("NUDGE_COLLECTOR_MAX_BATCH", "0", "out of range"),
        ("NUDGE_COLLECTOR_IDLE_TIMEOUT_S", "inf", "not a finite number"),
        ("NUDGE_GC_FULL_EVERY_S", "nan", "not a finite number"),
        ("NUDGE_CHANGELOG_FLUSH_S", "-0.5", "out of range"),
        ("NUDGE_BATCH_MAX", "0", "out of range"),
        ("NUDGE_STATE_TTL_S", "0", "out of range"),  # EXPIRE 0 deletes the hash as it is written
        ("NUDGE_DEDUP_MAX_IDS", "-1", "out of range"),
        ("NUDGE_MAX_FUTURE_MS", "99999999999999999", "out of range"),
        ("NUDGE_PARTITIONS", "100000", "out of range"),
        ("NUDGE_TOPIC_CLICKS", "my clicks", "Kafka does not allow"),
        ("NUDGE_TOPIC_DLQ", "..", "Kafka topic name"),
        ("NUDGE_TOPIC_PURCHASES", "p" * 250, "not 1..249"),
        ("NUDGE_APP_ID", "nudge/worker", "Kafka does not allow"),
        ("NUDGE_KAFKA_BOOTSTRAP", "localhost", "not host:port"),
        ("NUDGE_KAFKA_BOOTSTRAP", "kafka:9092,kafka2:99999", "not 1..65535"),
        ("NUDGE_REDIS_URL", "http://cache:6379", "scheme 'http'"),
        ("NUDGE_REDIS_URL", "redis://cache:99999/0", "does not parse"),
        ("NUDGE_USER_KEY_PREFIX", "user {x}:", "no spaces or braces"),
        ("NUDGE_CHANGES_STREAM", "\x1b[2J", "control character"),
        ("NUDGE_KAFKA_HEAP", "lots", "JVM size"),
        ("NUDGE_COLLECTOR_HOST", "0.0.0.0 evil", "host name"),
        ("NUDGE_DATA_DIR", "data\udcff", "undecodable byte"),
        ("NUDGE_MAX_EVENT_BYTES", str(8 * 1024 * 1024), "must fit in a Kafka message"),
    ],
)
def test_every_setting_has_a_range_named_in_one_line(env: str, value: str, expected: str) -> None:
    message = _one_line_error({env: value})
    assert message.startswith(env) and expected in message
    assert "\x1b" not in message and "\udcff" not in message


def test_a_bad_secret_or_url_password_is_never_echoed() -> None:
    assert "top secret" not in _one_line_error({"NUDGE_COLLECTOR_API_KEY": "top secret"})
    message = _one_line_error({"NUDGE_REDIS_URL": "redis://:hunter2@cache:99999/0"})
    assert "hunter2" not in message and "***@cache" in message


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="NUDGE_STORE"):
        Settings(store="bogus")
    with pytest.raises(ConfigError, match="NUDGE_PARTITIONS: expected an integer"):
        Settings(partitions="6")  # type: ignore[arg-type]


def test_every_declaration_says_what_it_allows() -> None:
    for decl in Settings.declarations():
        assert decl.allowed, decl.env
    # ...and the defaults obey their own rules (Settings() would raise otherwise).
    assert Settings().store == "memory://"


def test_redis_password_is_masked_in_settings_but_reaches_child_processes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "redis://:hunter2@cache:6379/0"
    monkeypatch.setenv("NUDGE_REDIS_URL", url)
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "redis://***@cache:6379/0" in out
    assert Settings.from_env().redacted()["NUDGE_REDIS_URL"] == "redis://***@cache:6379/0"
    assert Settings.from_env().to_env()["NUDGE_REDIS_URL"] == url
