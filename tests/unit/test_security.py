"""Secured connections without a broker: the security settings and their cross-checks, secrets from
`_FILE`s, masking, the options every client library gets, the one-line diagnoses, and the secured
stack's files (the real thing runs in tests/integration/test_secure_stack.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nudge import stack, stack_secure
from nudge.cli import main
from nudge.errors import ConfigError, DependencyUnavailable
from nudge.kafka_clients import QuietKafkaLogs, connect
from nudge.kafka_security import client_config, explain, faust_credentials, ssl_context
from nudge.redis_client import misconfigured, security_options, sync_client, unreachable
from nudge.settings import Settings

PASSWORD = "s3cret-Pa55word"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NUDGE_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> stack_secure.SecureMaterial:
    """The secured stack's CA, certificate and passwords, made once (openssl) for the module."""
    return stack_secure.ensure_material(Settings(data_dir=tmp_path_factory.mktemp("secure")))


def _secret_file(tmp_path: Path, text: str = PASSWORD + "\n", name: str = "password") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _sasl(material: stack_secure.SecureMaterial, **extra: str) -> dict[str, str]:
    return {
        "NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "NUDGE_KAFKA_SASL_USERNAME": "nudge",
        "NUDGE_KAFKA_SASL_PASSWORD": PASSWORD,
        "NUDGE_KAFKA_SSL_CAFILE": str(material.ca),
        **extra,
    }


def _one_line(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- settings and their cross-checks -------------------------------------------------


def test_the_defaults_are_plaintext_and_no_credentials() -> None:
    s = Settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_username, s.kafka_ssl_cafile) == ("PLAINTEXT", "", "")
    assert (s.redis_username, s.redis_password, s.stack_secure) == ("", "", False)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "needs NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD",
        ),
        (
            {"NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "NUDGE_KAFKA_SASL_USERNAME": "nudge"},
            "needs NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD",
        ),
        ({"NUDGE_KAFKA_SASL_USERNAME": "nudge"}, "PLAINTEXT sends no SASL credentials"),
        ({"NUDGE_KAFKA_SASL_PASSWORD": PASSWORD}, "PLAINTEXT sends no SASL credentials"),
        ({"NUDGE_KAFKA_SSL_CAFILE": "/etc/hostname"}, "does not use TLS"),
        ({"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "NUDGE_KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "cannot read it"),
        ({"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "NUDGE_KAFKA_SSL_CAFILE": "/tmp"}, "not a file"),
        ({"NUDGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected PLAINTEXT or SSL or SASL_PLAINTEXT or SASL_SSL"),
        ({"NUDGE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "expected PLAIN or SCRAM-SHA-256 or SCRAM-SHA-512"),
        (
            {"NUDGE_REDIS_URL": "rediss://cache:6380/0", "NUDGE_REDIS_SSL_CA_PATH": "/no/such/ca.pem"},
            "NUDGE_REDIS_SSL_CA_PATH=/no/such/ca.pem: cannot read it",
        ),
        ({"NUDGE_REDIS_SSL_CA_PATH": "/etc/hostname"}, "is not rediss:// (TLS)"),
        ({"NUDGE_REDIS_USERNAME": "nudge"}, "NUDGE_REDIS_USERNAME needs NUDGE_REDIS_PASSWORD"),
        (
            {"NUDGE_REDIS_URL": "redis://:inline@cache:6379/0", "NUDGE_REDIS_PASSWORD": PASSWORD},
            "holds credentials and NUDGE_REDIS_PASSWORD is set",
        ),
        ({"NUDGE_STACK_SECURE": "1", "NUDGE_REDIS_CLUSTER": "1"}, "not a Redis Cluster"),
        (
            {"NUDGE_STACK_SECURE": "1", "NUDGE_KAFKA_BROKERS": "3", "NUDGE_KAFKA_SECURE_PORT": "9094"},
            "broker client ports 9092..9094 overlap broker SASL_SSL ports 9094..9096",
        ),
    ],
)
def test_settings_that_do_not_fit_together_are_refused_in_one_line(environ: dict[str, str], expected: str) -> None:
    message = _one_line(environ)
    assert expected in message, message
    assert PASSWORD not in message and "inline" not in message


def test_a_consistent_secured_configuration_is_accepted(material: stack_secure.SecureMaterial) -> None:
    s = Settings.from_env(
        {
            **_sasl(material, NUDGE_KAFKA_BOOTSTRAP="127.0.0.1:9292"),
            "NUDGE_REDIS_URL": "rediss://127.0.0.1:6380/0",
            "NUDGE_REDIS_USERNAME": "nudge",
            "NUDGE_REDIS_PASSWORD": PASSWORD,
            "NUDGE_REDIS_SSL_CA_PATH": str(material.ca),
        }
    )
    assert s.kafka_sasl_password == PASSWORD and s.redis_password == PASSWORD
    # The local stack's SASL_SSL listener counts as the local cluster (replication checked against it).
    with pytest.raises(ConfigError, match="exceeds NUDGE_KAFKA_BROKERS"):
        dataclasses.replace(s, replication=2)


# --- secrets from files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ("NUDGE_REDIS_PASSWORD", "redis_password"),
        ("NUDGE_COLLECTOR_API_KEY", "collector_api_key"),
        ("NUDGE_TWILIO_AUTH_TOKEN", "twilio_auth_token"),
        ("NUDGE_WEBHOOK_SECRET", "webhook_secret"),
    ],
)
def test_every_secret_can_come_from_a_file(tmp_path: Path, env: str, field: str) -> None:
    s = Settings.from_env({f"{env}_FILE": str(_secret_file(tmp_path))})
    assert getattr(s, field) == PASSWORD  # one trailing line break dropped


def test_a_secret_file_is_read_for_every_declared_secret(tmp_path: Path) -> None:
    secrets = [d for d in Settings.declarations() if d.secret]
    assert {d.env for d in secrets} >= {"NUDGE_KAFKA_SASL_PASSWORD", "NUDGE_REDIS_PASSWORD", "NUDGE_MODEL_KEY"}
    key = "k" * 40
    s = Settings.from_env(
        {
            "NUDGE_MODEL_KEY_FILE": str(_secret_file(tmp_path, key + "\r\n", name="model-key")),
            "NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "NUDGE_KAFKA_SASL_USERNAME": "nudge",
            "NUDGE_KAFKA_SASL_PASSWORD_FILE": str(_secret_file(tmp_path)),
        }
    )
    assert s.model_key == key and s.kafka_sasl_password == PASSWORD


def test_a_secret_given_twice_or_unreadable_is_one_line_without_the_secret(tmp_path: Path) -> None:
    both = _one_line({"NUDGE_REDIS_PASSWORD": PASSWORD, "NUDGE_REDIS_PASSWORD_FILE": str(_secret_file(tmp_path))})
    assert "NUDGE_REDIS_PASSWORD and NUDGE_REDIS_PASSWORD_FILE are both set" in both
    missing = _one_line({"NUDGE_REDIS_PASSWORD_FILE": str(tmp_path / "nope")})
    assert missing.startswith("NUDGE_REDIS_PASSWORD_FILE=") and "cannot read it" in missing
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in _one_line({"NUDGE_REDIS_PASSWORD_FILE": str(binary)})
    # A bad secret read from a file is refused without showing it.
    bad = _one_line({"NUDGE_REDIS_PASSWORD_FILE": str(_secret_file(tmp_path, "has space " + PASSWORD))})
    assert bad.startswith("NUDGE_REDIS_PASSWORD=***") and PASSWORD not in bad


def test_a_file_variable_exists_only_for_secrets(tmp_path: Path) -> None:
    s = Settings.from_env({"NUDGE_REDIS_USERNAME_FILE": str(_secret_file(tmp_path))})
    assert s.redis_username == ""


def test_child_processes_get_the_value_and_an_empty_file_variable(tmp_path: Path) -> None:
    parent = {"NUDGE_REDIS_PASSWORD_FILE": str(_secret_file(tmp_path))}
    s = Settings.from_env(parent)
    env = s.to_env()
    assert env["NUDGE_REDIS_PASSWORD"] == PASSWORD and env["NUDGE_REDIS_PASSWORD_FILE"] == ""
    # What a child sees: the parent's env overridden by to_env() (streams/process.py does this).
    assert Settings.from_env({**parent, **env}) == s


def test_nudge_settings_masks_secrets_from_files_and_url_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_REDIS_USERNAME", "nudge")
    monkeypatch.setenv("NUDGE_REDIS_PASSWORD_FILE", str(_secret_file(tmp_path)))
    monkeypatch.setenv("NUDGE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("NUDGE_KAFKA_SASL_USERNAME", "nudge")
    monkeypatch.setenv("NUDGE_KAFKA_SASL_PASSWORD", "kafka-" + PASSWORD)
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows["NUDGE_REDIS_PASSWORD"] == rows["NUDGE_KAFKA_SASL_PASSWORD"] == "***"
    assert rows["NUDGE_REDIS_USERNAME"] == "nudge"


# --- what each client library gets ----------------------------------------------------


def test_plaintext_clients_get_no_security_options() -> None:
    s = Settings()
    assert client_config(s) == {"security_protocol": "PLAINTEXT"}
    assert client_config(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None and ssl_context(s) is None
    assert security_options(s) == {}


def test_sasl_ssl_options_for_kafka_python_aiokafka_and_faust(material: stack_secure.SecureMaterial) -> None:
    s = Settings.from_env(_sasl(material))
    config = client_config(s)  # kafka-python and aiokafka take the same keywords
    context = config.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "nudge local CA"),),)
    assert config == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "nudge",
        "sasl_plain_password": PASSWORD,
    }
    credentials = faust_credentials(s)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("nudge", PASSWORD)
    assert PASSWORD not in repr(credentials)
    # SSL alone: Faust's SSLCredentials; SASL_PLAINTEXT: no TLS context.
    tls_only = Settings.from_env({"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "NUDGE_KAFKA_SSL_CAFILE": str(material.ca)})
    assert faust_credentials(tls_only).protocol.value == "SSL"
    assert "sasl_mechanism" not in client_config(tls_only)
    plain = dataclasses.replace(s, kafka_security_protocol="SASL_PLAINTEXT", kafka_ssl_cafile="")
    assert faust_credentials(plain).protocol.value == "SASL_PLAINTEXT"
    assert "ssl_context" not in client_config(plain)


def test_a_ca_file_that_is_not_pem_is_one_line(tmp_path: Path) -> None:
    bogus = _secret_file(tmp_path, "not a certificate\n")
    s = Settings.from_env({"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "NUDGE_KAFKA_SSL_CAFILE": str(bogus)})
    for build in (client_config, faust_credentials):
        with pytest.raises(ConfigError, match=r"NUDGE_KAFKA_SSL_CAFILE=.*not a PEM CA certificate"):
            build(s)


def test_every_redis_client_gets_the_user_password_and_ca(material: stack_secure.SecureMaterial) -> None:
    s = Settings(
        redis_url="rediss://127.0.0.1:6380/0",
        redis_username="nudge",
        redis_password=PASSWORD,
        redis_ssl_ca_path=str(material.ca),
    )
    assert security_options(s) == {"username": "nudge", "password": PASSWORD, "ssl_ca_certs": str(material.ca)}
    client = sync_client(s)  # no connection until the first command
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["ssl_ca_certs"]) == ("nudge", PASSWORD, str(material.ca))
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert "ssl_ca_certs" not in security_options(
        dataclasses.replace(s, redis_url="redis://h:1/0", redis_ssl_ca_path="")
    )


# --- one line for a wrong password or CA ------------------------------------------------


def test_kafka_failures_name_the_address_and_what_to_check() -> None:
    s = Settings(
        kafka_bootstrap="broker:9292",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="nudge",
        kafka_sasl_password=PASSWORD,
    )
    auth = explain(s, 'Unable connect to "broker:9292": [Error 58] SaslAuthenticationFailed: Authentication failed')
    assert auth == (
        "Kafka at broker:9292: authentication failed (SASL SCRAM-SHA-512, user nudge): "
        "check NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD"
    )
    tls = explain(
        s, "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    assert tls is not None and tls.startswith("Kafka at broker:9292: TLS certificate verify failed (self-signed")
    assert "NUDGE_KAFKA_SSL_CAFILE" in tls
    not_tls = explain(s, "Handshake failed: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol")
    assert not_tls is not None and "does not speak TLS" in not_tls
    assert explain(s, "KafkaConnectionError: 111 ECONNREFUSED") is None
    assert all(PASSWORD not in line for line in (auth, tls, not_tls))


def test_a_refused_login_survives_the_retries_that_follow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    quiet = QuietKafkaLogs()
    for message in (
        "<KafkaSSLTransport [127.0.0.1:9292<-1]>: Abort ([Error 58] SaslAuthenticationFailedError: "
        "Authentication failed: Invalid username or password)",
        "<KafkaSSLTransport [127.0.0.1:9292<-2]>: socket disconnected",
        "Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: socket disconnected (backoff 0.05 secs)",
    ):
        assert (
            quiet.filter(logging.LogRecord("kafka.net.transport", logging.ERROR, __file__, 1, message, None, None))
            is False
        )
    assert "Invalid username or password" in quiet.security


def test_redis_failures_name_the_address_and_what_to_check() -> None:
    s = Settings(redis_url="rediss://:x@cache:6380/0", redis_ssl_ca_path="")
    wrong = misconfigured(s, redis.AuthenticationError("WRONGPASS invalid username-password pair or user is disabled."))
    assert wrong == (
        "Redis at rediss://***@cache:6380/0: authentication failed (the default user): "
        "check NUDGE_REDIS_USERNAME and NUDGE_REDIS_PASSWORD"
    )
    ca = misconfigured(s, redis.ConnectionError("Error 1 connecting to cache:6380. [SSL: CERTIFICATE_VERIFY_FAILED] x"))
    assert ca is not None and "TLS certificate verify failed" in ca and "NUDGE_REDIS_SSL_CA_PATH" in ca
    refused = redis.ConnectionError("Error 111 connecting to cache:6380. Connection refused.")
    assert misconfigured(s, refused) is None
    assert unreachable(s, refused) == (
        "cannot reach Redis at rediss://***@cache:6380/0: Error 111 connecting to cache:6380. Connection refused."
    )


# --- secrets never logged ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_configs_never_reach_the_log_even_at_debug(
    material: stack_secure.SecureMaterial, capsys: pytest.CaptureFixture[str]
) -> None:
    """kafka-python logs its whole configuration at DEBUG: the handler's redaction masks the password."""
    from kafka import KafkaAdminClient

    from nudge.logs import setup_logging

    setup_logging(2)
    s = Settings.from_env(_sasl(material, NUDGE_KAFKA_BOOTSTRAP=f"127.0.0.1:{_closed_port()}"))
    client_config(s), client_config(s), faust_credentials(s)
    with pytest.raises(DependencyUnavailable) as info:
        connect(KafkaAdminClient, s, bootstrap_timeout_ms=300)
    err = capsys.readouterr().err
    assert "sasl_plain_password" in err, "kafka-python no longer logs its configuration: drop this test's premise"
    assert PASSWORD not in err and PASSWORD not in str(info.value)
    assert str(info.value).startswith(f"Kafka is not reachable at {s.kafka_bootstrap}")


# --- the secured stack's files ---------------------------------------------------------------


def test_the_secured_stack_makes_its_ca_certificate_and_passwords_once(material: stack_secure.SecureMaterial) -> None:
    for private in (material.tls, material.secrets):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for key in (material.tls / "ca.key", material.server_key, material.keystore, material.kafka_password_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    context = ssl.create_default_context(cafile=str(material.ca))
    assert context.load_cert_chain(str(material.server_cert), str(material.server_key)) is None
    keystore = material.keystore.read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----") and keystore.count("BEGIN CERTIFICATE") == 2
    before = (material.ca.read_bytes(), material.kafka_password())
    again = stack_secure.ensure_material(Settings(data_dir=material.root))
    assert (again.ca.read_bytes(), again.kafka_password()) == before
    assert material.kafka_password() != material.redis_password()


def test_the_secured_broker_and_redis_configs(material: stack_secure.SecureMaterial) -> None:
    s = Settings(data_dir=material.root, stack_secure=True, kafka_secure_port=29292, redis_tls_port=26380)
    paths = stack._Paths(s)
    (node,) = paths.kafka_nodes()
    stack._write_kafka_config(s, paths, node)
    props = dict(
        line.split("=", 1) for line in node.server_properties.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    assert props["listeners"].endswith(",SASL_SSL://127.0.0.1:29292")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:29292"
    assert props["listener.security.protocol.map"].endswith(",SASL_SSL:SASL_SSL")
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert props["listener.name.sasl_ssl.ssl.keystore.location"] == str(material.keystore)
    # The PLAIN user's password is in the file, so the file is 0600.
    assert material.kafka_password() in props["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert stat.S_IMODE(node.server_properties.stat().st_mode) == 0o600
    (redis_node,) = paths.redis_nodes()
    argv = stack._redis_argv("redis-server", redis_node, secure=True)
    assert argv[1] == str(redis_node.dir / "secure.conf")
    assert not any(material.redis_password() in arg for arg in argv), "no password on a command line"
    conf = stack_secure.redis_config(material, 26380)
    assert "tls-port 26380" in conf and "user default off" in conf
    assert f"user nudge on >{material.redis_password()} " in conf


def test_the_printed_env_names_files_never_secrets(material: stack_secure.SecureMaterial) -> None:
    s = Settings(data_dir=material.root, stack_secure=True, kafka_brokers=2, kafka_secure_port=29292)
    env = stack_secure.client_env(s, material)
    assert env["NUDGE_KAFKA_BOOTSTRAP"] == "127.0.0.1:29292,127.0.0.1:29293"
    assert env["NUDGE_KAFKA_SASL_PASSWORD_FILE"] == str(material.kafka_password_file)
    text = stack_secure.write_env_file(s, material).read_text()
    assert material.kafka_password() not in text and material.redis_password() not in text
    # The file is what a client loads: its settings parse.
    parsed = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert Settings.from_env(parsed).kafka_sasl_password == material.kafka_password()


def test_stack_up_secure_sets_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(stack, "up", lambda settings: seen.append(settings) or [])
    assert main(["stack", "up", "--secure"]) == 0
    assert seen[0].stack_secure is True
