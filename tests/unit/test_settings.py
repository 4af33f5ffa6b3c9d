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
    for env in ("NUDGE_PARTITIONS", "NUDGE_REPLICATION"):
        with pytest.raises(ConfigError, match=env):
            Settings.from_env({env: "0"})


def test_connection_strings_follow_the_ports() -> None:
    default = Settings.from_env({})
    assert default.kafka_bootstrap == "127.0.0.1:9092"
    assert default.redis_url == "redis://127.0.0.1:6379/0"
    moved = Settings.from_env({"NUDGE_KAFKA_PORT": "19092", "NUDGE_REDIS_PORT": "16379"})
    assert moved.kafka_bootstrap == "127.0.0.1:19092"
    assert moved.redis_url == "redis://127.0.0.1:16379/0"


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
    secret = next(d for d in Settings.declarations() if d.secret)
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
    secret = next(d for d in Settings.declarations() if d.secret)
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
