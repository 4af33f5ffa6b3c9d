"""The local stack without Docker: real Kafka brokers (KRaft) and Redis.

`nudge stack up|down|status|reset`. Kafka's jars come from Maven Central
through deploy/kafka/pom.xml (resolved once, the classpath cached under the
data dir, so the next start needs no network); each broker runs on the
machine's JDK as one combined broker+controller (`process.roles=broker,controller`).
Redis is Debian's redis-server with AOF on. Everything lives under `data_dir`
(.nudge/):

    .nudge/kafka/classpath.txt   the resolved jars
    .nudge/run                   pid files; `down` stops only these processes
    .nudge/logs                  logs of the single broker and the single Redis

One broker (NUDGE_KAFKA_BROKERS=1, the default) keeps the original layout:

    .nudge/kafka/data            log dirs (formatted on first start)
    .nudge/kafka/server.properties, log4j2.properties
    .nudge/logs/kafka.log        (log4j), kafka.out; .nudge/run/kafka.pid

NUDGE_KAFKA_BROKERS=N (2..9) runs N nodes, ids 1..N, node i on client port
kafka_port+i-1 and controller port kafka_controller_port+i-1, an N-voter
static quorum (`controller.quorum.voters`), every node formatted with the same
cluster id; internal topics get replication min(3, N), the brokers' default
`min.insync.replicas` and `default.replication.factor` are the settings':

    .nudge/kafka/node-<i>/       data/, server.properties, log4j2.properties,
                                 kafka.log, kafka.out, kafka.pid
    .nudge/kafka/nodes.properties  cluster id and node count (size is fixed
                                 until `nudge stack reset`)

Redis: one server (`.nudge/redis`, `.nudge/logs/redis.log`, `.nudge/run/redis.pid`),
or with NUDGE_REDIS_CLUSTER=1 a Redis Cluster of NUDGE_REDIS_CLUSTER_NODES
masters on ports redis_port.. (no replicas, `cluster-node-timeout` 2 s), each
in `.nudge/redis/node-<port>/` (AOF, nodes.conf, redis.log, redis.pid), joined
with `redis-cli --cluster create` on the first start only.

`up --secure` (NUDGE_STACK_SECURE) adds a SASL_SSL listener to every broker
and TLS plus an ACL user to the single Redis, beside the plain ports (which the
stack's own tooling keeps using); nudge/stack_secure.py makes the CA, the
certificates and the passwords, and says which env vars point clients at them.

Tests (and anyone) can stop and start one node of a running stack:
`kafka_node_pids` / `stop_kafka_node(settings, node_id, kill=True)` /
`start_kafka_node(settings, node_id)` for a broker, and `redis_node_pids` /
`stop_redis_node(settings, port, kill=True)` / `start_redis_node(settings, port)`
for a Redis Cluster node. `kill=True` is a `kill -9`; the start functions wait
until the node is back in its cluster (registered broker; cluster_state:ok).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nudge import stack_secure
from nudge.args import output_problem
from nudge.errors import ConfigError, StackError
from nudge.settings import Settings

__all__ = [
    "ServiceStatus",
    "configure",
    "down",
    "kafka_node_pids",
    "redis_cluster_info",
    "redis_node_pids",
    "reset",
    "start_kafka_node",
    "start_redis_node",
    "status",
    "stop_kafka_node",
    "stop_redis_node",
    "up",
    "wait_kafka_brokers",
    "wait_redis_cluster_ok",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
QUORUM_GRACE_S = 5.0
REDIS_READY_TIMEOUT_S = 20.0
REDIS_CLUSTER_TIMEOUT_S = 30.0
# Small, so a killed node is noticed (and a restarted one readmitted) quickly.
REDIS_CLUSTER_NODE_TIMEOUT_MS = 2000
REDIS_CLUSTER_SLOTS = 16384


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    since: datetime | None

    def line(self, width: int = 6) -> str:
        if not self.running:
            return f"{self.name:{width}} stopped  {self.address}"
        age = "" if self.since is None else f" since {self.since:%Y-%m-%d %H:%M:%S %Z}"
        return f"{self.name:{width}} running  {self.address}  pid {self.pid}{age}"


@dataclass(frozen=True, slots=True)
class _KafkaNode:
    """Where one broker keeps its files, and its ports."""

    node_id: int
    name: str
    port: int
    controller_port: int
    data: Path
    server_properties: Path
    log4j: Path
    log: Path
    out: Path
    pidfile: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class _RedisNode:
    """One Redis server: the single one, or one node of the cluster."""

    name: str
    port: int
    dir: Path
    log: Path
    out: Path
    pidfile: Path
    cluster_config: Path | None  # nodes.conf, in cluster mode

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class _Paths:
    def __init__(self, settings: Settings) -> None:
        root = settings.data_dir.resolve()
        self.root = root
        self.kafka = root / "kafka"
        self.classpath = root / "kafka" / "classpath.txt"
        self.kafka_cluster = root / "kafka" / "nodes.properties"
        self.redis = root / "redis"
        self.logs = root / "logs"
        self.run = root / "run"
        self.settings = settings

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def kafka_node(self, node_id: int) -> _KafkaNode:
        s = self.settings
        port, cport = s.kafka_port + node_id - 1, s.kafka_controller_port + node_id - 1
        if s.kafka_brokers == 1:
            return _KafkaNode(
                1, "kafka", port, cport, self.kafka / "data", self.kafka / "server.properties",
                self.kafka / "log4j2.properties", self.logs / "kafka.log", self.logs / "kafka.out",
                self.pidfile("kafka"),
            )  # fmt: skip
        home = self.kafka / f"node-{node_id}"
        return _KafkaNode(
            node_id, f"kafka-{node_id}", port, cport, home / "data", home / "server.properties",
            home / "log4j2.properties", home / "kafka.log", home / "kafka.out", home / "kafka.pid",
        )  # fmt: skip

    def kafka_nodes(self) -> list[_KafkaNode]:
        return [self.kafka_node(i) for i in range(1, self.settings.kafka_brokers + 1)]

    def kafka_pidfiles(self) -> list[Path]:
        """Every broker pid file under this data dir, whatever the node count."""
        return [self.pidfile("kafka"), *sorted(self.kafka.glob("node-*/kafka.pid"))]

    def redis_node(self, port: int) -> _RedisNode:
        if not self.settings.redis_cluster:
            return _RedisNode(
                "redis", port, self.redis, self.logs / "redis.log", self.logs / "redis.out", self.pidfile("redis"), None
            )
        home = self.redis / f"node-{port}"
        return _RedisNode(
            f"redis-{port}", port, home, home / "redis.log", home / "redis.out", home / "redis.pid", home / "nodes.conf"
        )

    def redis_nodes(self) -> list[_RedisNode]:
        return [self.redis_node(port) for port in self.settings.redis_ports]

    def redis_pidfiles(self) -> list[Path]:
        """Every Redis pid file under this data dir, single server and cluster nodes."""
        return [self.pidfile("redis"), *sorted(self.redis.glob("node-*/redis.pid"))]


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


def _stop_all(targets: Iterable[tuple[Path, str, str]], *, kill: bool = False, quorum: int | None = None) -> list[str]:
    """Signal every live process of `targets` (pidfile, marker, name) at once, wait until all are gone.

    At once, because the nodes of a KRaft quorum stopped one by one leave the
    last ones waiting for the quorum. Even so, a combined node whose broker
    still waits to shut down when fewer than `quorum` nodes are left waits
    for a quorum that will not come back: it gets QUORUM_GRACE_S, then SIGKILL
    (Kafka recovers its logs at the next start; acknowledged data is on disk).
    Returns the names of the processes stopped."""
    live: dict[int, tuple[Path, str, str]] = {}
    for pidfile, marker, name in targets:
        pid = _read_pid(pidfile, marker)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        live[pid] = (pidfile, marker, name)
    stopped = [name for _, _, name in live.values()]
    deadline = time.monotonic() + STOP_TIMEOUT_S
    quorum_lost_at: float | None = None
    waiting = dict(live)
    while waiting:
        for pid, (pidfile, marker, _) in list(waiting.items()):
            _reap(pid)
            if _read_pid(pidfile, marker) is None:
                del waiting[pid]
        now = time.monotonic()
        if quorum is not None and waiting and len(waiting) < quorum and quorum_lost_at is None:
            quorum_lost_at = now
        overdue = now > deadline or (quorum_lost_at is not None and now - quorum_lost_at > QUORUM_GRACE_S)
        if waiting and overdue:
            for pid, (_, _, name) in waiting.items():
                if now > deadline:
                    print(f"{name} (pid {pid}) did not stop in {STOP_TIMEOUT_S:.0f}s: killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = quorum_lost_at = float("inf")  # killed: just wait for them to go
        time.sleep(0.1)
    for pid, (pidfile, _, _) in live.items():
        # The command line empties before the process closes its sockets:
        # wait until it has finished exiting, so its ports are free again.
        while not _exited(pid):
            time.sleep(0.05)
        pidfile.unlink(missing_ok=True)
    return stopped


def _exited(pid: int) -> bool:
    """True once `pid` is gone or a zombie with every thread gone (its sockets closed).

    A killed multi-threaded process shows its main thread as a zombie while
    the other threads still hold its files."""
    _reap(pid)
    try:
        tasks = [Path(f"/proc/{pid}/task/{tid}/stat").read_text() for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return not Path(f"/proc/{pid}").exists()
    return all(stat.rpartition(")")[2].split()[0] in ("Z", "X") for stat in tasks)


def _reap(pid: int) -> None:
    # When the stack was started by this very process, collect the zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _since(pidfile: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(pidfile.stat().st_mtime, UTC)
    except OSError:
        return None


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


# --- Kafka -------------------------------------------------------------------

_KAFKA_MARKER = "kafka.Kafka"


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


def _kafka_pid(node: _KafkaNode) -> int | None:
    # The node's own server.properties in the command line: a pid reused by
    # another broker (another data dir, another node) is not ours.
    pid = _read_pid(node.pidfile, str(node.server_properties))
    return pid if pid is not None and _read_pid(node.pidfile, _KAFKA_MARKER) is not None else None


def _secure_port(settings: Settings, node: _KafkaNode) -> int:
    return settings.kafka_secure_port + node.node_id - 1


def _write_kafka_config(settings: Settings, paths: _Paths, node: _KafkaNode) -> None:
    node.data.mkdir(parents=True, exist_ok=True)
    node.log.parent.mkdir(parents=True, exist_ok=True)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in paths.kafka_nodes())
    # Internal topics (offsets, transactions, share state) on up to 3 brokers.
    internal_rf = min(3, settings.kafka_brokers)
    internal_isr = 2 if internal_rf >= 3 else 1
    listeners = [f"PLAINTEXT://127.0.0.1:{node.port}", f"CONTROLLER://127.0.0.1:{node.controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{node.port}"]
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    secured: list[str] = []
    if settings.stack_secure:
        secure = f"SASL_SSL://127.0.0.1:{_secure_port(settings, node)}"
        listeners.append(secure)
        advertised.append(secure)
        protocols += ",SASL_SSL:SASL_SSL"
        secured = stack_secure.kafka_properties(stack_secure.SecureMaterial(paths.root), _secure_port(settings, node))
    lines = [
        "# Written by `nudge stack up` from settings; edits are overwritten.",
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(advertised)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={protocols}",
        *secured,
        f"log.dirs={node.data}",
        f"num.partitions={settings.partitions}",
        f"default.replication.factor={settings.replication}",
        f"min.insync.replicas={settings.min_insync_replicas}",
        f"offsets.topic.replication.factor={internal_rf}",
        "offsets.topic.num.partitions=6",
        f"transaction.state.log.replication.factor={internal_rf}",
        f"transaction.state.log.min.isr={internal_isr}",
        f"share.coordinator.state.topic.replication.factor={internal_rf}",
        f"share.coordinator.state.topic.min.isr={internal_isr}",
        "group.initial.rebalance.delay.ms=0",
        # Oversized input must still reach the DLQ, so the broker takes it.
        f"message.max.bytes={settings.max_message_bytes}",
        f"replica.fetch.max.bytes={settings.max_message_bytes}",
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
    ]
    if settings.kafka_brokers > 1:
        # A killed broker is fenced (and leaves every ISR) in 6 s, not 9.
        lines += ["broker.heartbeat.interval.ms=1000", "broker.session.timeout.ms=6000"]
    # With --secure it holds the PLAIN user's password.
    stack_secure.write_private(node.server_properties, "\n".join([*lines, ""]))
    node.log4j.write_text(
        "\n".join(
            [
                "rootLogger.level=INFO",
                "rootLogger.appenderRef.file.ref=FILE",
                "appender.file.type=RollingFile",
                "appender.file.name=FILE",
                f"appender.file.fileName={node.log}",
                f"appender.file.filePattern={node.log}.%i",
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


def _java(settings: Settings, node: _KafkaNode, classpath: str, main: str, *args: str) -> list[str]:
    java = _require("java", "default-jre-headless")
    return [
        java,
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={node.log4j}",
        f"-Dkafka.logs.dir={node.log.parent}",
        "-cp",
        classpath,
        main,
        *args,
    ]


def _read_properties(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _check_kafka_layout(settings: Settings, paths: _Paths) -> None:
    """Refuse to mix node counts in one data dir (a running or a formatted one)."""
    ours = {node.pidfile for node in paths.kafka_nodes()}
    others = [p for p in paths.kafka_pidfiles() if p not in ours and _read_pid(p, _KAFKA_MARKER) is not None]
    if others:
        raise StackError(
            f"a Kafka with another node count runs from {paths.root} ({', '.join(map(str, others))}): "
            f"`nudge stack down` first (NUDGE_KAFKA_BROKERS={settings.kafka_brokers})"
        )
    if settings.kafka_brokers > 1:
        formatted = _read_properties(paths.kafka_cluster).get("nodes")
        if formatted and int(formatted) != settings.kafka_brokers:
            raise StackError(
                f"the Kafka in {paths.kafka} was formatted with {formatted} nodes, NUDGE_KAFKA_BROKERS="
                f"{settings.kafka_brokers}: set it back or wipe it with `nudge stack reset`"
            )


def _format_kafka(settings: Settings, paths: _Paths, classpath: str, nodes: list[_KafkaNode]) -> None:
    """Format the storage of `nodes` that were never formatted, all with the cluster's id."""
    fresh = [node for node in nodes if not (node.data / "meta.properties").exists()]
    if not fresh:
        return
    cluster_id = _read_properties(paths.kafka_cluster).get("cluster.id") if settings.kafka_brokers > 1 else None
    for node in paths.kafka_nodes():
        cluster_id = cluster_id or _read_properties(node.data / "meta.properties").get("cluster.id")
    cluster_id = cluster_id or uuid.uuid4().hex[:22]
    if settings.kafka_brokers > 1:
        paths.kafka_cluster.write_text(f"cluster.id={cluster_id}\nnodes={settings.kafka_brokers}\n")
    formats = [
        subprocess.Popen(
            _java(
                settings,
                node,
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(node.server_properties),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in fresh
    ]
    for node, proc in zip(fresh, formats, strict=True):
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage of {node.name} failed:\n{output}")


def _start_kafka_nodes(settings: Settings, paths: _Paths, nodes: list[_KafkaNode]) -> list[str]:
    """Start the `nodes` that are not running and wait until every broker is registered."""
    _check_kafka_layout(settings, paths)
    lines = []
    stopped = []
    for node in nodes:
        pid = _kafka_pid(node)
        if pid is None:
            stopped.append(node)
        elif settings.stack_secure and "SASL_SSL://" not in _read_properties(node.server_properties).get(
            "listeners", ""
        ):
            raise StackError(
                f"{node.name} runs at {node.address} without the SASL_SSL listener: "
                "`nudge stack down` first, then `nudge stack up --secure`"
            )
        else:
            lines.append(f"{node.name:6} already running at {node.address}")
    if not stopped:
        return lines
    for node in stopped:
        ports = [(node.port, "NUDGE_KAFKA_PORT"), (node.controller_port, "NUDGE_KAFKA_CONTROLLER_PORT")]
        if settings.stack_secure:
            ports.append((_secure_port(settings, node), "NUDGE_KAFKA_SECURE_PORT"))
        for port, env in ports:
            if _port_open(port):
                raise StackError(f"port {port} ({node.name}) is already in use by another process: set {env}")
    classpath = _kafka_classpath(paths)
    for node in stopped:
        _write_kafka_config(settings, paths, node)
    _format_kafka(settings, paths, classpath, stopped)
    started = time.monotonic()
    procs = {
        node.node_id: _spawn(
            _java(settings, node, classpath, "kafka.Kafka", str(node.server_properties)), node.out, node.pidfile
        )
        for node in stopped
    }
    wait_kafka_brokers(settings, procs)
    took = time.monotonic() - started
    for node in stopped:
        lines.append(f"{node.name:6} started at {node.address} (pid {procs[node.node_id].pid}, ready in {took:.1f}s)")
    return lines


def wait_kafka_brokers(
    settings: Settings, procs: dict[int, subprocess.Popen[bytes]] | None = None, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until all `kafka_brokers` local brokers are registered and unfenced.

    `procs` (node id -> process just started) turns an early exit into an
    error with the node's last log lines."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    paths = _Paths(settings)
    bootstrap = ",".join(f"127.0.0.1:{port}" for port in settings.kafka_ports)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        for node_id, proc in (procs or {}).items():
            if proc.poll() is not None:
                node = paths.kafka_node(node_id)
                raise StackError(
                    f"Kafka {node.name} exited with {proc.returncode}; last log lines:\n"
                    f"{_tail(node.out)}\n{_tail(node.log)}"
                )
        if any(_port_open(port) for port in settings.kafka_ports):
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
                try:
                    cluster = admin.describe_cluster()
                finally:
                    admin.close()
                live = sorted(b["broker_id"] for b in cluster["brokers"] if not b.get("is_fenced"))
                if len(live) == settings.kafka_brokers:
                    return
                last = f"brokers registered: {live}"
            except KafkaError as exc:
                last = exc
        time.sleep(0.5)
    logs = ", ".join(str(node.log) for node in paths.kafka_nodes())
    raise StackError(f"Kafka not ready after {timeout_s:.0f}s ({last}); see {logs}")


def kafka_node_pids(settings: Settings) -> dict[int, int]:
    """node id -> pid of every running local broker."""
    out = {}
    for node in _Paths(settings).kafka_nodes():
        pid = _kafka_pid(node)
        if pid is not None:
            out[node.node_id] = pid
    return out


def _kafka_node(settings: Settings, node_id: int) -> _KafkaNode:
    if not 1 <= node_id <= settings.kafka_brokers:
        raise ConfigError(f"no Kafka node {node_id}: NUDGE_KAFKA_BROKERS={settings.kafka_brokers}")
    return _Paths(settings).kafka_node(node_id)


def start_kafka_node(settings: Settings, node_id: int) -> str:
    """Start one broker of the local stack (if stopped) and wait until all brokers are registered."""
    node = _kafka_node(settings, node_id)
    (line,) = _start_kafka_nodes(settings, _Paths(settings), [node])
    return line


def stop_kafka_node(settings: Settings, node_id: int, *, kill: bool = False) -> bool:
    """Stop one broker (SIGTERM, or SIGKILL with `kill`) and wait until it is gone; False if it was not running."""
    node = _kafka_node(settings, node_id)
    return bool(_stop_all([(node.pidfile, str(node.server_properties), node.name)], kill=kill))


# --- Redis -------------------------------------------------------------------

_REDIS_MARKER = "redis-server"


def _secure_redis_conf(node: _RedisNode) -> Path:
    return node.dir / "secure.conf"


def _redis_argv(binary: str, node: _RedisNode, *, secure: bool = False) -> list[str]:
    # With --secure, TLS and the ACL user come from a 0600 config file: no password on the command line.
    argv = [binary, str(_secure_redis_conf(node))] if secure else [binary]
    argv += [
        "--port", str(node.port),
        "--bind", "127.0.0.1",
        "--dir", str(node.dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--save", "",
        "--logfile", str(node.log),
    ]  # fmt: skip
    if node.cluster_config is not None:
        argv += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node.cluster_config),
            "--cluster-node-timeout", str(REDIS_CLUSTER_NODE_TIMEOUT_MS),
        ]  # fmt: skip
    return argv


def _check_redis_layout(settings: Settings, paths: _Paths) -> None:
    ours = {node.pidfile for node in paths.redis_nodes()}
    others = [p for p in paths.redis_pidfiles() if p not in ours and _read_pid(p, _REDIS_MARKER) is not None]
    if others:
        mode = "a Redis Cluster" if settings.redis_cluster else "a single Redis"
        raise StackError(
            f"another Redis runs from {paths.root} ({', '.join(map(str, others))}) and this stack is "
            f"{mode} (NUDGE_REDIS_CLUSTER, NUDGE_REDIS_CLUSTER_NODES): `nudge stack down` first"
        )


def _start_redis_nodes(settings: Settings, paths: _Paths, nodes: list[_RedisNode]) -> list[str]:
    """Start the `nodes` that are not running; wait until each answers PING."""
    _check_redis_layout(settings, paths)
    lines, stopped = [], []
    for node in nodes:
        if _read_pid(node.pidfile, _REDIS_MARKER) is None:
            stopped.append(node)
        elif settings.stack_secure and not _port_open(settings.redis_tls_port):
            raise StackError(
                f"{node.name} runs at {node.address} without TLS and its ACL user: "
                "`nudge stack down` first, then `nudge stack up --secure`"
            )
        else:
            lines.append(f"{node.name:6} already running at {node.address}")
    if not stopped:
        return lines
    binary = _require("redis-server", "redis-server")
    for node in stopped:
        ports = [(node.port, "NUDGE_REDIS_PORT")]
        if node.cluster_config is not None:
            ports.append((node.port + 10_000, "NUDGE_REDIS_PORT"))
        if settings.stack_secure:
            ports.append((settings.redis_tls_port, "NUDGE_REDIS_TLS_PORT"))
        for port, env in ports:
            if _port_open(port):
                raise StackError(f"port {port} ({node.name}) is already in use by another process: set {env}")
    material = stack_secure.SecureMaterial(paths.root) if settings.stack_secure else None
    auth = None if material is None else (stack_secure.USER, material.redis_password())
    started = time.monotonic()
    procs = []
    for node in stopped:
        node.dir.mkdir(parents=True, exist_ok=True)
        if material is not None:
            stack_secure.write_private(
                _secure_redis_conf(node), stack_secure.redis_config(material, settings.redis_tls_port)
            )
        procs.append(_spawn(_redis_argv(binary, node, secure=settings.stack_secure), node.out, node.pidfile))
    deadline = time.monotonic() + REDIS_READY_TIMEOUT_S
    for node, proc in zip(stopped, procs, strict=True):
        while not _redis_ping(node.port, auth):
            if proc.poll() is not None:
                raise StackError(f"redis-server {node.name} exited with {proc.returncode}:\n{_tail(node.log)}")
            if time.monotonic() > deadline:
                raise StackError(f"Redis {node.name} not ready after {REDIS_READY_TIMEOUT_S:.0f}s; see {node.log}")
            time.sleep(0.1)
        took = time.monotonic() - started
        lines.append(f"{node.name:6} started at {node.address} (pid {proc.pid}, ready in {took:.1f}s)")
    return lines


def _redis_ping(port: int, auth: tuple[str, str] | None = None) -> bool:
    """Whether the Redis on `port` answers PING (as the secured stack's ACL user with `auth`)."""
    import redis

    username, password = auth or (None, None)
    try:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            username=username,
            password=password,
            socket_timeout=1,
            socket_connect_timeout=1,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def redis_cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of the Redis node on `port`, as strings."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        raw = client.cluster("INFO")
    finally:
        client.close()
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def wait_redis_cluster_ok(settings: Settings, timeout_s: float = REDIS_CLUSTER_TIMEOUT_S) -> None:
    """Wait until every node of the local Redis Cluster says cluster_state:ok, all slots assigned."""
    import redis

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            infos = {port: redis_cluster_info(port) for port in settings.redis_ports}
        except redis.RedisError as exc:
            last = str(exc)
        else:
            bad = {
                port: info.get("cluster_state")
                for port, info in infos.items()
                if info.get("cluster_state") != "ok"
                or info.get("cluster_known_nodes") != str(settings.redis_cluster_nodes)
                or info.get("cluster_slots_assigned") != str(REDIS_CLUSTER_SLOTS)
            }
            if not bad:
                return
            last = ", ".join(f"{port}: {state}" for port, state in bad.items())
        time.sleep(0.2)
    raise StackError(
        f"Redis Cluster not ok after {timeout_s:.0f}s ({last}); see {_Paths(settings).redis}/node-*/redis.log"
    )


def _create_redis_cluster(settings: Settings) -> str | None:
    """Join the nodes into one cluster, only when none of them belongs to a cluster yet."""
    infos = [redis_cluster_info(port) for port in settings.redis_ports]
    if any(info.get("cluster_known_nodes") != "1" or info.get("cluster_slots_assigned") != "0" for info in infos):
        return None  # a restart: nodes.conf knows the cluster
    cli = _require("redis-cli", "redis-tools")
    argv = [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in settings.redis_ports)]
    result = subprocess.run(
        [*argv, "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return f"redis cluster created: {settings.redis_cluster_nodes} masters, {REDIS_CLUSTER_SLOTS} slots"


def _start_redis(settings: Settings, paths: _Paths) -> list[str]:
    lines = _start_redis_nodes(settings, paths, paths.redis_nodes())
    if settings.redis_cluster:
        created = _create_redis_cluster(settings)
        if created:
            lines.append(created)
        wait_redis_cluster_ok(settings)
    return lines


def redis_node_pids(settings: Settings) -> dict[int, int]:
    """port -> pid of every running local Redis (the single server, or each cluster node)."""
    out = {}
    for node in _Paths(settings).redis_nodes():
        pid = _read_pid(node.pidfile, _REDIS_MARKER)
        if pid is not None:
            out[node.port] = pid
    return out


def _redis_node(settings: Settings, port: int) -> _RedisNode:
    if port not in settings.redis_ports:
        raise ConfigError(f"no local Redis on port {port}: its ports are {settings.redis_ports}")
    return _Paths(settings).redis_node(port)


def start_redis_node(settings: Settings, port: int) -> str:
    """Start one Redis node (if stopped); in cluster mode wait until the cluster is ok again.

    Never creates a cluster: a restarted node rejoins from its nodes.conf and reloads its AOF."""
    paths = _Paths(settings)
    (line,) = _start_redis_nodes(settings, paths, [_redis_node(settings, port)])
    if settings.redis_cluster:
        wait_redis_cluster_ok(settings)
    return line


def stop_redis_node(settings: Settings, port: int, *, kill: bool = False) -> bool:
    """Stop one Redis node (SIGTERM, or SIGKILL with `kill`) and wait until it is gone; False if not running."""
    node = _redis_node(settings, port)
    return bool(_stop_all([(node.pidfile, _REDIS_MARKER, node.name)], kill=kill))


# --- commands ----------------------------------------------------------------


def up(settings: Settings, *, kafka: bool = True, redis: bool = True) -> list[str]:
    """Start Redis and Kafka (idempotent) and create the topics.

    `kafka=False` or `redis=False` leaves that half out (tests pair a Redis
    Cluster with another stack's Kafka: settings.kafka_bootstrap names it)."""
    from nudge.topics import ensure_topics

    if kafka and settings.replication > settings.kafka_brokers:
        raise ConfigError(
            f"NUDGE_REPLICATION={settings.replication} exceeds NUDGE_KAFKA_BROKERS={settings.kafka_brokers}"
        )
    problem = output_problem(settings.data_dir, directory=True)
    if problem:  # before any server starts and writes its files there
        raise ConfigError(f"NUDGE_DATA_DIR={settings.data_dir}: {problem}")
    paths = _Paths(settings)
    material = stack_secure.ensure_material(settings) if settings.stack_secure else None
    lines = _start_redis(settings, paths) if redis else []
    if kafka:
        lines += _start_kafka_nodes(settings, paths, paths.kafka_nodes())
        if material is not None:
            stack_secure.store_scram_credentials(settings, material)
        created = ensure_topics(settings)
        if created:
            lines.append(
                f"topics created: {', '.join(created)} ({settings.partitions} partitions, "
                f"replication {settings.replication}, min.insync.replicas {settings.min_insync_replicas})"
            )
    if material is not None:
        lines += _secured_lines(settings, material, kafka=kafka, redis=redis)
    return lines


def _secured_lines(settings: Settings, material: stack_secure.SecureMaterial, *, kafka: bool, redis: bool) -> list[str]:
    """What `up --secure` serves, and the env vars (file paths, no secret) that point clients at it."""
    env_file = stack_secure.write_env_file(settings, material)
    served = []
    if kafka:
        addresses = ",".join(f"127.0.0.1:{port}" for port in settings.kafka_secure_ports)
        mechanisms = ", ".join(stack_secure.SASL_MECHANISMS)
        served.append(f"Kafka SASL_SSL at {addresses} ({mechanisms}; user {stack_secure.USER})")
    if redis:
        served.append(f"Redis TLS at 127.0.0.1:{settings.redis_tls_port} (ACL user {stack_secure.USER})")
    return [
        f"secured: {'; '.join(served)}; CA {material.ca}",
        f"clients use them with these env vars (`set -a; . {env_file}; set +a`):",
        *(f"  {name}={value}" for name, value in stack_secure.client_env(settings, material).items()),
    ]


def _pidfile_name(pidfile: Path, kind: str) -> str:
    """run/kafka.pid -> kafka; kafka/node-2/kafka.pid -> kafka-2; redis/node-7000/redis.pid -> redis-7000."""
    parent = pidfile.parent.name
    return f"{kind}-{parent.removeprefix('node-')}" if parent.startswith("node-") else kind


def down(settings: Settings) -> list[str]:
    """Stop the processes this stack started (pid files, any node count), waiting for each."""
    paths = _Paths(settings)
    lines = []
    for kind, marker, pidfiles in (
        ("kafka", _KAFKA_MARKER, paths.kafka_pidfiles()),
        ("redis", _REDIS_MARKER, paths.redis_pidfiles()),
    ):
        # Kafka's nodes form a quorum: a majority of the voters (node dirs).
        voters = len(list(paths.kafka.glob("node-*"))) if kind == "kafka" else 0
        quorum = voters // 2 + 1 if voters > 1 else None
        stopped = _stop_all(((p, marker, _pidfile_name(p, kind)) for p in pidfiles), quorum=quorum)
        lines += [f"{name:6} stopped" for name in stopped] or [f"{kind:6} was not running"]
    return lines


def status(settings: Settings) -> list[ServiceStatus]:
    """One line per broker and per Redis node of the configured stack."""
    paths = _Paths(settings)
    out = []
    for kafka in paths.kafka_nodes():
        pid = _kafka_pid(kafka)
        since = _since(kafka.pidfile) if pid is not None else None
        secure = _read_properties(kafka.server_properties).get("listeners", "") if pid is not None else ""
        address = kafka.address + (
            f", SASL_SSL 127.0.0.1:{_secure_port(settings, kafka)}" if "SASL_SSL" in secure else ""
        )
        out.append(ServiceStatus(kafka.name, pid is not None, pid, address, since))
    for redis_node in paths.redis_nodes():
        pid = _read_pid(redis_node.pidfile, _REDIS_MARKER)
        since = _since(redis_node.pidfile) if pid is not None else None
        # redis-server rewrites its command line: a secured one is known by its TLS port.
        tls = pid is not None and settings.redis_cluster is False and _port_open(settings.redis_tls_port)
        address = redis_node.address + (f", TLS 127.0.0.1:{settings.redis_tls_port}" if tls else "")
        out.append(ServiceStatus(redis_node.name, pid is not None, pid, address, since))
    return out


def reset(settings: Settings) -> list[str]:
    """Stop the stack and wipe its data (keeps the resolved Kafka classpath)."""
    lines = down(settings)
    paths = _Paths(settings)
    material = stack_secure.SecureMaterial(paths.root)
    wiped = [paths.kafka / "data", *sorted(paths.kafka.glob("node-*")), paths.redis, paths.logs]
    wiped += [p for p in (material.tls, material.secrets) if p.exists()]
    for path in wiped:
        shutil.rmtree(path, ignore_errors=True)
    paths.kafka_cluster.unlink(missing_ok=True)
    material.env_file.unlink(missing_ok=True)
    lines.append(f"wiped {', '.join(str(p) for p in wiped)}")
    return lines


def configure(parser: argparse.ArgumentParser) -> None:
    from nudge.cli import settings_epilog

    parser.add_argument("action", choices=("up", "down", "status", "reset"), help="what to do with the stack")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="up: also serve Kafka SASL_SSL and Redis TLS, with generated passwords and a local CA, and print "
        "the env vars clients use [default: NUDGE_STACK_SECURE]",
    )
    parser.epilog = settings_epilog(
        "data_dir",
        "kafka_brokers",
        "kafka_port",
        "kafka_controller_port",
        "kafka_heap",
        "redis_port",
        "redis_cluster",
        "redis_cluster_nodes",
        "partitions",
        "replication",
        "min_insync_replicas",
        "stack_secure",
        "kafka_secure_port",
        "redis_tls_port",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.secure:
        settings = dataclasses.replace(settings, stack_secure=True)
    if args.action == "status":
        services = status(settings)
        width = max(6, *(len(s.name) for s in services))
        for service in services:
            print(service.line(width))
        print(f"{'data':{width}} {settings.data_dir.resolve()}")
        return 0 if all(s.running for s in services) else 3
    action = {"up": up, "down": down, "reset": reset}[args.action]
    for line in action(settings):
        print(line)
    return 0
