"""Kafka security for every client: SASL (PLAIN, SCRAM) and TLS, from settings, once per client library.

Every Kafka client nudge builds gets its security options here, never a copy:

- `client_config(settings)`: the keyword arguments of a kafka-python or an
  aiokafka client, which name them alike (`nudge.kafka_clients.connect` adds
  them to every kafka-python client it builds); one `ssl_context(settings)`,
  made from NUDGE_KAFKA_SSL_CAFILE (aiokafka takes no CA file, only a context),
  checks the broker's certificate and host name;
- `faust_credentials(settings)`: Faust's `broker_credentials` (Faust hands
  them to the aiokafka consumers and producers of its transport).

The dicts hold the password: pass them to the client, never to a log line.

`explain(settings, error)` turns what a client reports on a failed connection
into one line naming the address when the cause is the configuration (a wrong
password, a CA that did not sign the broker's certificate, TLS against a plain
port), or None when it is not (the broker is down: the caller's message says so).
`probe(settings)` connects once with aiokafka to find that out when a client's
own error does not say (aiokafka's start-up error never does; kafka-python's
often does not for a refused SASL login).

>>> s = Settings()
>>> client_config(s)
{'security_protocol': 'PLAINTEXT'}
>>> explain(s, "Connection failed: SaslAuthenticationFailedError: Authentication failed during authentication")
'Kafka at 127.0.0.1:9092: authentication failed (SASL SCRAM-SHA-512, no user): check NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD'
>>> explain(s, "KafkaConnectionError: 111 ECONNREFUSED") is None
True
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

from nudge.errors import ConfigError
from nudge.settings import Settings

__all__ = [
    "client_config",
    "explain",
    "faust_credentials",
    "misconfiguration",
    "probe",
    "ssl_context",
]

# What the client libraries (and Python's ssl module under them) say for each kind of misconfiguration.
_AUTH = re.compile(
    r"SaslAuthenticationFailed|Authentication failed|Invalid username or password|"
    r"UnsupportedSaslMechanism|IllegalSaslState|SaslAuthentication",
    re.IGNORECASE,
)
_CERTIFICATE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|Hostname mismatch", re.IGNORECASE)
_NOT_TLS = re.compile(
    r"WRONG_VERSION_NUMBER|wrong version number|record layer failure|unknown protocol|"
    r"UNEXPECTED_EOF_WHILE_READING|EOF occurred in violation of protocol",
    re.IGNORECASE,
)


def _uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of an SSL/SASL_SSL protocol (verifying the broker's certificate and host name), else None."""
    if not _uses_tls(settings):
        return None
    from aiokafka.helpers import create_ssl_context

    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"NUDGE_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}: not a PEM CA certificate ({exc})"
        ) from None
    return context


def client_config(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments of a Kafka client: kafka-python's and aiokafka's share their names.

    One TLS context for both (so a CA file that is not PEM is refused here, in
    one line, not at the first connection)."""
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    if _uses_sasl(settings):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password
    return config


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials`: SASLCredentials (with the TLS context for SASL_SSL), SSLCredentials, or None."""
    import faust

    context = ssl_context(settings)
    if _uses_sasl(settings):
        # Faust picks SASL_SSL when the credentials carry a context, SASL_PLAINTEXT when not.
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def misconfiguration(text: str) -> bool:
    """Whether a client's error text says the security settings are wrong (see `explain`)."""
    return any(p.search(text) for p in (_CERTIFICATE, _NOT_TLS, _AUTH))


def explain(settings: Settings, error: BaseException | str) -> str | None:
    """One line naming the address when `error` (an exception or a client's log line) says the
    security settings are wrong; None when it says something else (unreachable, timed out)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    where = f"Kafka at {settings.kafka_bootstrap}"
    if _CERTIFICATE.search(text):
        ca = settings.kafka_ssl_cafile or "the system's CAs"
        detail = _ssl_detail(text)
        return (
            f"{where}: TLS certificate verify failed{detail}: the broker's certificate is not signed by {ca} "
            "or does not name this host; check NUDGE_KAFKA_SSL_CAFILE and NUDGE_KAFKA_BOOTSTRAP"
        )
    if _NOT_TLS.search(text):
        return (
            f"{where}: TLS handshake failed (the port does not speak TLS): check NUDGE_KAFKA_SECURITY_PROTOCOL="
            f"{settings.kafka_security_protocol} and NUDGE_KAFKA_BOOTSTRAP"
        )
    if _AUTH.search(text):
        user = f"user {settings.kafka_sasl_username}" if settings.kafka_sasl_username else "no user"
        return (
            f"{where}: authentication failed (SASL {settings.kafka_sasl_mechanism}, {user}): "
            "check NUDGE_KAFKA_SASL_USERNAME and NUDGE_KAFKA_SASL_PASSWORD"
        )
    return None


class _Capture(logging.Filter):
    """Keeps (and drops) what aiokafka logs while a probe runs: its connection errors say why."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.lines.append(record.getMessage())
        return False


def probe(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """Connect once with aiokafka and `explain` why that failed; None when it connected or the cause is not
    the security settings.

    For kafka-python's failures: when a broker refuses a SASL login it sends the
    error and closes the connection at once, and kafka-python 3.0 (its
    kafka/net/transport.py) drops bytes that arrive together with the close, so
    it often reports only "socket disconnected". aiokafka reads the error first.
    Runs in a thread of its own, so callers inside an event loop can use it too.
    With PLAINTEXT there is nothing to explain: None at once."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    import asyncio
    import concurrent.futures

    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    async def bootstrap() -> None:
        client = AIOKafkaClient(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            client_id="nudge-probe",
            **client_config(settings),
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
        finally:
            await client.close()

    capture = _Capture()
    logger = logging.getLogger("aiokafka")
    logger.addFilter(capture)
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-probe") as pool:
            pool.submit(asyncio.run, bootstrap()).result()
    except (KafkaError, OSError, TimeoutError) as exc:
        capture.lines.append(f"{type(exc).__name__}: {exc}")
    else:
        return None
    finally:
        logger.removeFilter(capture)
    return next((line for line in (explain(settings, text) for text in capture.lines) if line), None)


def _ssl_detail(text: str) -> str:
    """`(self-signed certificate in certificate chain)` from an ssl error text, or ''."""
    match = re.search(r"certificate verify failed: ([^()\]]+)", text, re.IGNORECASE)
    return f" ({match.group(1).strip()})" if match else ""
