"""The local stack without Docker: a real Kafka broker (KRaft) and Redis.

`nudge stack up|down|status|reset`. Kafka's jars come from Maven Central
through deploy/kafka/pom.xml (resolved once, the classpath cached under the
data dir, so the next start needs no network); the broker runs on the
machine's JDK as one combined broker+controller. Redis is Debian's
redis-server with AOF on. Everything lives under `data_dir` (.nudge/):

    .nudge/kafka/data      broker log dirs (formatted on first start)
    .nudge/redis           AOF and RDB files
    .nudge/logs            kafka.log (log4j), kafka.out, redis.log
    .nudge/run             pid files; `down` stops only these processes
    .nudge/kafka/classpath.txt   the resolved jars
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nudge.errors import StackError
from nudge.settings import Settings

__all__ = ["ServiceStatus", "configure", "down", "reset", "status", "up"]

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    since: datetime | None

    def line(self) -> str:
        if not self.running:
            return f"{self.name:6} stopped  {self.address}"
        age = "" if self.since is None else f" since {self.since:%Y-%m-%d %H:%M:%S %Z}"
        return f"{self.name:6} running  {self.address}  pid {self.pid}{age}"


class _Paths:
    def __init__(self, settings: Settings) -> None:
        root = settings.data_dir.resolve()
        self.root = root
        self.kafka = root / "kafka"
        self.kafka_data = root / "kafka" / "data"
        self.classpath = root / "kafka" / "classpath.txt"
        self.server_properties = root / "kafka" / "server.properties"
        self.log4j = root / "kafka" / "log4j2.properties"
        self.redis = root / "redis"
        self.logs = root / "logs"
        self.run = root / "run"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"


# --- processes ---------------------------------------------------------------


def _read_pid(path: Path, marker: str) -> int | None:
    """The pid in `path` if that process is alive and is ours (cmdline has marker)."""
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker.encode() in cmdline else None


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _spawn(argv: list[str], log: Path, pidfile: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A new session: the stack outlives the CLI and ignores its Ctrl-C.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def _stop(pidfile: Path, marker: str, name: str) -> bool:
    pid = _read_pid(pidfile, marker)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _read_pid(pidfile, marker) is not None:
        _reap(pid)
        time.sleep(0.2)
    if _read_pid(pidfile, marker) is not None:
        print(f"{name} (pid {pid}) did not stop in {STOP_TIMEOUT_S:.0f}s: killing it", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)
        while _read_pid(pidfile, marker) is not None:
            _reap(pid)
            time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    # When the stack was started by this very process, collect the zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Kafka -------------------------------------------------------------------


def _require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} with apt-get ...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which(binary)
        if found:
            return found
    raise StackError(f"{binary} not found: install it with `sudo apt-get install {package}`")


def _kafka_classpath(paths: _Paths) -> str:
    if paths.classpath.exists():
        classpath = paths.classpath.read_text().strip()
        if classpath and all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = _require("mvn", "maven")
    paths.kafka.mkdir(parents=True, exist_ok=True)
    print("resolving Kafka from Maven Central (first start only) ...", file=sys.stderr)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={paths.classpath}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not paths.classpath.exists():
        raise StackError(f"mvn could not resolve Kafka from {POM}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return paths.classpath.read_text().strip()


def _write_kafka_config(settings: Settings, paths: _Paths) -> None:
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    port, cport = settings.kafka_port, settings.kafka_controller_port
    paths.server_properties.write_text(
        "\n".join(
            [
                "# Written by `nudge stack up` from settings; edits are overwritten.",
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{cport}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={paths.kafka_data}",
                f"num.partitions={settings.partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Oversized input must still reach the DLQ, so the broker takes it.
                f"message.max.bytes={settings.max_message_bytes}",
                f"replica.fetch.max.bytes={settings.max_message_bytes}",
                "auto.create.topics.enable=false",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    paths.log4j.write_text(
        "\n".join(
            [
                "rootLogger.level=INFO",
                "rootLogger.appenderRef.file.ref=FILE",
                "appender.file.type=RollingFile",
                "appender.file.name=FILE",
                f"appender.file.fileName={paths.logs / 'kafka.log'}",
                f"appender.file.filePattern={paths.logs / 'kafka.log.%i'}",
                "appender.file.layout.type=PatternLayout",
                "appender.file.layout.pattern=[%d] %p %m (%c)%n",
                "appender.file.policies.type=Policies",
                "appender.file.policies.size.type=SizeBasedTriggeringPolicy",
                "appender.file.policies.size.size=50MB",
                "appender.file.strategy.type=DefaultRolloverStrategy",
                "appender.file.strategy.max=3",
                "",
            ]
        )
    )


def _java(settings: Settings, paths: _Paths, classpath: str, main: str, *args: str) -> list[str]:
    java = _require("java", "default-jre-headless")
    return [
        java,
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.log4j}",
        f"-Dkafka.logs.dir={paths.logs}",
        "-cp",
        classpath,
        main,
        *args,
    ]


def _start_kafka(settings: Settings, paths: _Paths) -> str:
    pidfile = paths.pidfile("kafka")
    address = f"127.0.0.1:{settings.kafka_port}"
    if _read_pid(pidfile, "kafka.Kafka") is not None:
        return f"kafka  already running at {address}"
    for port in (settings.kafka_port, settings.kafka_controller_port):
        if _port_open(port):
            raise StackError(
                f"port {port} is already in use by another process: set NUDGE_KAFKA_PORT/NUDGE_KAFKA_CONTROLLER_PORT"
            )
    classpath = _kafka_classpath(paths)
    _write_kafka_config(settings, paths)
    if not (paths.kafka_data / "meta.properties").exists():
        cluster_id = uuid.uuid4().hex[:22]
        fmt = _java(
            settings,
            paths,
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(paths.server_properties),
        )
        result = subprocess.run(fmt, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
    started = time.monotonic()
    proc = _spawn(
        _java(settings, paths, classpath, "kafka.Kafka", str(paths.server_properties)),
        paths.logs / "kafka.out",
        pidfile,
    )
    _wait_kafka_ready(settings, proc, paths)
    return f"kafka  started at {address} (pid {proc.pid}, ready in {time.monotonic() - started:.1f}s)"


def _wait_kafka_ready(settings: Settings, proc: subprocess.Popen[bytes], paths: _Paths) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"Kafka exited with {proc.returncode}; last log lines:\n{_tail(paths.logs / 'kafka.out')}")
        if _port_open(settings.kafka_port):
            try:
                admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
                try:
                    admin.list_topics()  # a metadata request: the broker answers
                    return
                finally:
                    admin.close()
            except KafkaError as exc:
                last = exc
        time.sleep(0.5)
    raise StackError(f"Kafka not ready after {READY_TIMEOUT_S:.0f}s ({last}); see {paths.logs / 'kafka.log'}")


# --- Redis -------------------------------------------------------------------


def _start_redis(settings: Settings, paths: _Paths) -> str:
    pidfile = paths.pidfile("redis")
    address = f"127.0.0.1:{settings.redis_port}"
    if _read_pid(pidfile, "redis-server") is not None:
        return f"redis  already running at {address}"
    if _port_open(settings.redis_port):
        raise StackError(f"port {settings.redis_port} is already in use by another process: set NUDGE_REDIS_PORT")
    binary = _require("redis-server", "redis-server")
    paths.redis.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port", str(settings.redis_port),
        "--bind", "127.0.0.1",
        "--dir", str(paths.redis),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--save", "",
        "--logfile", str(paths.logs / "redis.log"),
    ]  # fmt: skip
    started = time.monotonic()
    proc = _spawn(argv, paths.logs / "redis.out", pidfile)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited with {proc.returncode}:\n{_tail(paths.logs / 'redis.log')}")
        if _redis_ping(settings):
            return f"redis  started at {address} (pid {proc.pid}, ready in {time.monotonic() - started:.1f}s)"
        time.sleep(0.1)
    raise StackError(f"Redis not ready after 20s; see {paths.logs / 'redis.log'}")


def _redis_ping(settings: Settings) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


# --- commands ----------------------------------------------------------------


def up(settings: Settings) -> list[str]:
    """Start Redis and Kafka (idempotent) and create the topics."""
    from nudge.topics import ensure_topics

    paths = _Paths(settings)
    lines = [_start_redis(settings, paths), _start_kafka(settings, paths)]
    created = ensure_topics(settings)
    if created:
        lines.append(f"topics created: {', '.join(created)} ({settings.partitions} partitions)")
    return lines


def down(settings: Settings) -> list[str]:
    """Stop the processes this stack started (pid files), waiting for each."""
    paths = _Paths(settings)
    lines = []
    for name, marker in (("kafka", "kafka.Kafka"), ("redis", "redis-server")):
        stopped = _stop(paths.pidfile(name), marker, name)
        lines.append(f"{name:6} {'stopped' if stopped else 'was not running'}")
    return lines


def status(settings: Settings) -> list[ServiceStatus]:
    paths = _Paths(settings)
    out = []
    for name, marker, port in (
        ("kafka", "kafka.Kafka", settings.kafka_port),
        ("redis", "redis-server", settings.redis_port),
    ):
        pidfile = paths.pidfile(name)
        pid = _read_pid(pidfile, marker)
        since = datetime.fromtimestamp(pidfile.stat().st_mtime, UTC) if pid is not None else None
        out.append(ServiceStatus(name, pid is not None, pid, f"127.0.0.1:{port}", since))
    return out


def reset(settings: Settings) -> list[str]:
    """Stop the stack and wipe its data (keeps the resolved Kafka classpath)."""
    lines = down(settings)
    paths = _Paths(settings)
    for path in (paths.kafka_data, paths.redis, paths.logs):
        shutil.rmtree(path, ignore_errors=True)
    lines.append(f"wiped {paths.kafka_data}, {paths.redis} and {paths.logs}")
    return lines


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.add_argument("action", choices=("up", "down", "status", "reset"), help="what to do with the stack")
    parser.epilog = settings_epilog(
        "data_dir", "kafka_port", "kafka_controller_port", "kafka_heap", "redis_port", "partitions"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "status":
        services = status(settings)
        for service in services:
            print(service.line())
        print(f"data   {settings.data_dir.resolve()}")
        return 0 if all(s.running for s in services) else 3
    action = {"up": up, "down": down, "reset": reset}[args.action]
    for line in action(settings):
        print(line)
    return 0
