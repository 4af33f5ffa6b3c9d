"""Secured connections against a real, secured stack of its own (`nudge stack up --secure`):
Kafka SASL_SSL (SCRAM and PLAIN) with a local CA, Redis TLS with an ACL user.

The stack runs in its own data dir and on free ports (never the shared stack's);
clients are configured exactly as a user would: from the env file `up` writes,
which names the password files and the CA. The checks:

- the worker's parity replay over SASL_SSL (SCRAM-SHA-512) and Redis TLS: every
  user's hash equals the batch reference, every offset committed;
- PLAIN and SCRAM-SHA-256 log in too;
- a wrong password or a wrong CA, for Kafka and for Redis, is one line on stderr
  naming the address (no traceback, no secret), from the CLI and from the worker;
- no password reaches a log (the broker's, Redis's, the worker's).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nudge import stack, stack_secure
from nudge.settings import Settings
from nudge.topics import admin_client
from producers.simulator import generate
from streams.process import WorkerProcess
from tests.integration.conftest import _share_kafka_classpath, free_port_block, unique_scope
from tests.integration.test_worker import free_port, produce, reference_of, wait_for_parity

USERS, DAYS, SEED = 600, 1.0, 41  # about 9k events of 450 users: the point is the wire, not the volume


@dataclasses.dataclass(frozen=True)
class SecureStack:
    plain: Settings  # how the stack was started (its plain listeners stay on for its own tooling)
    secured: Settings  # a client of the secured listeners, as configured from the env file
    material: stack_secure.SecureMaterial
    up_lines: list[str]


@pytest.fixture(scope="module")
def secure_stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    data_dir = tmp_path_factory.mktemp("secure-stack")
    _share_kafka_classpath(settings, data_dir)
    port = free_port_block(5, 24_000, 25_000)
    ports = {
        "kafka_port": port,
        "kafka_controller_port": port + 1,
        "kafka_secure_port": port + 2,
        "redis_port": port + 3,
        "redis_tls_port": port + 4,
    }
    plain = Settings(data_dir=data_dir, kafka_heap=settings.kafka_heap, stack_secure=True, **ports)
    try:
        lines = stack.up(plain)
        material = stack_secure.SecureMaterial(data_dir.resolve())
        secured = Settings.from_env(_env_file(material.env_file), data_dir=data_dir, **ports)
        yield SecureStack(plain, secured, material, lines)
    finally:
        down = stack.down(plain)
    assert any(line.startswith("kafka") and "stopped" in line for line in down), down
    assert any(line.startswith("redis") and "stopped" in line for line in down), down


def _env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _secrets(stack_: SecureStack) -> list[str]:
    return [stack_.material.kafka_password(), stack_.material.redis_password()]


def _nudge(settings: Settings, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`nudge ARGV` with `settings` as its env (then `env` on top), as a user would run it."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")} | settings.to_env() | env
    return subprocess.run([sys.executable, "-m", "nudge", *argv], env=full, capture_output=True, text=True, timeout=120)


def _one_line(result: subprocess.CompletedProcess[str], command: str, starts: str) -> str:
    err = result.stderr
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"nudge {command}: error: {starts}"), err
    return err


def test_up_secure_prints_file_paths_never_secrets_and_is_idempotent(secure_stack: SecureStack) -> None:
    text = "\n".join(secure_stack.up_lines)
    assert f"NUDGE_KAFKA_SASL_PASSWORD_FILE={secure_stack.material.kafka_password_file}" in text
    assert f"NUDGE_REDIS_URL=rediss://127.0.0.1:{secure_stack.plain.redis_tls_port}/0" in text
    assert not any(secret in text for secret in _secrets(secure_stack))
    again = stack.up(secure_stack.plain)
    assert any(line.startswith("kafka  already running") for line in again), again
    services = {s.name: s for s in stack.status(secure_stack.plain)}
    assert f"SASL_SSL 127.0.0.1:{secure_stack.plain.kafka_secure_port}" in services["kafka"].address
    assert f"TLS 127.0.0.1:{secure_stack.plain.redis_tls_port}" in services["redis"].address


def test_parity_over_sasl_ssl_and_redis_tls(secure_stack: SecureStack, tmp_path: Path) -> None:
    secured = secure_stack.secured
    assert (secured.kafka_security_protocol, secured.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert secured.kafka_bootstrap == f"127.0.0.1:{secure_stack.plain.kafka_secure_port}"
    assert secured.redis_url.startswith("rediss://") and secured.redis_username == stack_secure.USER
    events: list[dict[str, Any]] = list(generate(USERS, DAYS, SEED))
    reference = reference_of(events)
    log = tmp_path / "worker.log"
    with unique_scope(secured) as scoped:
        produce(scoped, events)
        with WorkerProcess(scoped, web_port=free_port(), log_path=log) as worker:
            worker.wait_processed(len(events), timeout=120)
            wait_for_parity(scoped, reference, [worker], timeout=60)
    assert worker.proc is not None and worker.proc.returncode == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert not any(secret in text for secret in _secrets(secure_stack))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_the_other_mechanisms_log_in(secure_stack: SecureStack, mechanism: str) -> None:
    admin = admin_client(dataclasses.replace(secure_stack.secured, kafka_sasl_mechanism=mechanism))
    try:
        assert secure_stack.secured.topic_clicks in admin.list_topics()
    finally:
        admin.close()


def test_a_wrong_kafka_password_or_ca_is_one_line_naming_the_address(secure_stack: SecureStack, tmp_path: Path) -> None:
    secured = secure_stack.secured
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    result = _nudge(secured, "topics", NUDGE_KAFKA_SASL_PASSWORD="", NUDGE_KAFKA_SASL_PASSWORD_FILE=str(wrong))
    err = _one_line(result, "topics", f"Kafka at {secured.kafka_bootstrap}: authentication failed")
    assert "NUDGE_KAFKA_SASL_PASSWORD" in err and "not-the-password" not in err

    other_ca, _ = stack_secure.make_ca(tmp_path / "other-ca", "some other CA")
    result = _nudge(secured, "topics", NUDGE_KAFKA_SSL_CAFILE=str(other_ca))
    err = _one_line(result, "topics", f"Kafka at {secured.kafka_bootstrap}: TLS certificate verify failed")
    assert str(other_ca) in err and "NUDGE_KAFKA_SSL_CAFILE" in err


def test_a_wrong_redis_password_or_ca_is_one_line_naming_the_address(secure_stack: SecureStack, tmp_path: Path) -> None:
    secured = secure_stack.secured
    address = f"Redis at {secured.redis_url}"
    result = _nudge(secured, "state", "u1", NUDGE_REDIS_PASSWORD="not-the-password")
    err = _one_line(result, "state", f"reading {secured.user_key_prefix}u1: {address}: authentication failed")
    assert "not-the-password" not in err

    other_ca, _ = stack_secure.make_ca(tmp_path / "other-ca", "some other CA")
    result = _nudge(secured, "state", "u1", NUDGE_REDIS_SSL_CA_PATH=str(other_ca))
    _one_line(result, "state", f"reading {secured.user_key_prefix}u1: {address}: TLS certificate verify failed")

    # The worker waits for a Redis that is down, but not for a wrong password: one line, exit 1.
    result = _nudge(secured, "worker", "--web-port", str(free_port()), NUDGE_REDIS_PASSWORD="not-the-password")
    _one_line(result, "worker", f"{address}: authentication failed")


def test_no_password_reaches_the_servers_logs(secure_stack: SecureStack) -> None:
    logs = [p for p in secure_stack.plain.data_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in _secrets(secure_stack)), path
