"""The secured local stack (`nudge stack up --secure`, NUDGE_STACK_SECURE): its certificates, passwords and configs.

Beside its plain listeners, the stack then serves Kafka SASL_SSL (PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512) on NUDGE_KAFKA_SECURE_PORT and Redis TLS on
NUDGE_REDIS_TLS_PORT, Redis with an ACL user and no default user. Everything
is made once, locally, and kept under the data dir:

    .nudge/tls/          (0700) ca.pem, ca.key: a local CA; server.pem, server.key:
                         its certificate for localhost and 127.0.0.1; server-keystore.pem:
                         key and chain for Kafka (ssl.keystore.type=PEM, no keytool)
    .nudge/secrets/      (0700) kafka-password, redis-password: generated, 0600
    .nudge/secure.env    the env vars clients use: NUDGE_..._FILE paths, never a secret

Keys are made by openssl. Kafka's PLAIN user is in its server.properties (0600),
its SCRAM credentials are stored in the cluster by the admin API over the plain
listener after every start (an upsert: idempotent); Redis's user is in a 0600
config file, so no password ever appears on a command line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nudge.errors import StackError
from nudge.settings import Settings

__all__ = [
    "SASL_MECHANISMS",
    "USER",
    "SecureMaterial",
    "client_env",
    "ensure_material",
    "kafka_properties",
    "make_ca",
    "redis_config",
    "store_scram_credentials",
    "write_env_file",
    "write_private",
]

USER = "nudge"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
CA_DAYS = 3650
SERVER_DAYS = 825
_LISTENER = "SASL_SSL"


@dataclass(frozen=True, slots=True)
class SecureMaterial:
    """Where the secured stack's files are (see the module doc)."""

    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.tls / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.tls / "server.key"

    @property
    def keystore(self) -> Path:
        return self.tls / "server-keystore.pem"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def kafka_password_file(self) -> Path:
        return self.secrets / "kafka-password"

    @property
    def redis_password_file(self) -> Path:
        return self.secrets / "redis-password"

    @property
    def env_file(self) -> Path:
        return self.root / "secure.env"

    def kafka_password(self) -> str:
        return self.kafka_password_file.read_text().strip()

    def redis_password(self) -> str:
        return self.redis_password_file.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600 before a byte is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the file may have existed with other permissions
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise StackError("openssl not found: install it with `sudo apt-get install openssl`")
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {result.stderr.strip()[-1000:]}")


def make_ca(directory: Path, name: str = "nudge local CA") -> tuple[Path, Path]:
    """A new self-signed CA in `directory`: (ca.pem, ca.key), the key 0600."""
    _private_dir(directory)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(CA_DAYS),
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def _server_certificate(material: SecureMaterial, ca_key: Path) -> None:
    """A key and a certificate for localhost and 127.0.0.1 signed by the CA; and Kafka's PEM keystore."""
    tls = material.tls
    csr, ext = tls / "server.csr", tls / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(material.server_key), "-out", str(csr),
    )  # fmt: skip
    material.server_key.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(material.ca), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", str(SERVER_DAYS), "-sha256",
        "-extfile", str(ext), "-out", str(material.server_cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    # Kafka's PEM keystore: the (unencrypted PKCS#8) key, then the certificate chain.
    chain = material.server_key.read_text() + material.server_cert.read_text() + material.ca.read_text()
    write_private(material.keystore, chain)


def _password(path: Path) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")


def ensure_material(settings: Settings) -> SecureMaterial:
    """The CA, the server's certificate and the passwords, made on the first secured start and kept."""
    material = SecureMaterial(settings.data_dir.resolve())
    _private_dir(material.tls)
    _private_dir(material.secrets)
    if not (material.ca.exists() and (material.tls / "ca.key").exists()):
        make_ca(material.tls)
        material.server_cert.unlink(missing_ok=True)
    if not (material.server_cert.exists() and material.keystore.exists()):
        _server_certificate(material, material.tls / "ca.key")
    _password(material.kafka_password_file)
    _password(material.redis_password_file)
    return material


def kafka_properties(material: SecureMaterial, secure_port: int) -> list[str]:
    """server.properties lines of the SASL_SSL listener (the listeners themselves are the caller's)."""
    prefix = f"listener.name.{_LISTENER.lower()}"
    plain = (
        f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{material.kafka_password()}";'
    )
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return [
        f"{prefix}.sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        f"{prefix}.plain.sasl.jaas.config={plain}",
        *(f"{prefix}.{mechanism.lower()}.sasl.jaas.config={scram}" for mechanism in _SCRAM),
        f"{prefix}.ssl.keystore.type=PEM",
        f"{prefix}.ssl.keystore.location={material.keystore}",
        f"{prefix}.ssl.client.auth=none",
    ]


def store_scram_credentials(settings: Settings, material: SecureMaterial) -> None:
    """Upsert the SCRAM credentials of USER, through the local brokers' plain listener."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialUpsertion
    from kafka.errors import KafkaError

    bootstrap = ",".join(f"127.0.0.1:{port}" for port in settings.kafka_ports)
    password = material.kafka_password()
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
        try:
            # One alteration per user and request: one request per mechanism.
            errors = {}
            for mechanism in _SCRAM:
                result = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(USER, mechanism, password)])
                errors.update({f"{user} {mechanism}": error for user, error in result.items()})
        finally:
            admin.close()
    except KafkaError as exc:
        raise StackError(f"storing the SCRAM credentials of {USER} in Kafka at {bootstrap} failed: {exc}") from None
    failed = {user: error for user, error in errors.items() if error}
    if failed:
        raise StackError(f"Kafka refused the SCRAM credentials of {USER}: {failed}")


def redis_config(material: SecureMaterial, tls_port: int) -> str:
    """A redis.conf fragment: TLS on `tls_port` with the local certificate, USER with the password, no default user."""
    return "\n".join(
        [
            "# Written by `nudge stack up --secure`; holds a password: 0600.",
            f"tls-port {tls_port}",
            f"tls-cert-file {material.server_cert}",
            f"tls-key-file {material.server_key}",
            f"tls-ca-cert-file {material.ca}",
            "tls-auth-clients no",
            "user default off",
            f"user {USER} on >{material.redis_password()} ~* &* +@all",
            "",
        ]
    )


def client_env(settings: Settings, material: SecureMaterial) -> dict[str, str]:
    """The env vars that point clients at the secured listeners: file paths, never a secret."""
    return {
        "NUDGE_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{port}" for port in settings.kafka_secure_ports),
        "NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "NUDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "NUDGE_KAFKA_SASL_USERNAME": USER,
        "NUDGE_KAFKA_SASL_PASSWORD_FILE": str(material.kafka_password_file),
        "NUDGE_KAFKA_SSL_CAFILE": str(material.ca),
        "NUDGE_REDIS_URL": f"rediss://127.0.0.1:{settings.redis_tls_port}/0",
        "NUDGE_REDIS_USERNAME": USER,
        "NUDGE_REDIS_PASSWORD_FILE": str(material.redis_password_file),
        "NUDGE_REDIS_SSL_CA_PATH": str(material.ca),
    }


def write_env_file(settings: Settings, material: SecureMaterial) -> Path:
    """`client_env` as a shell/compose env file under the data dir."""
    lines = [
        "# Written by `nudge stack up --secure`: the secured listeners of this stack.",
        "# Load it with: set -a; . <this file>; set +a   (it names files; it holds no secret)",
        *(f"{name}={value}" for name, value in client_env(settings, material).items()),
        "",
    ]
    material.env_file.write_text("\n".join(lines))
    return material.env_file
