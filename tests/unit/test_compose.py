"""docker-compose.yml, the Dockerfile, Prometheus and Grafana provisioning agree with the settings.

No Docker engine runs here, so the compose file is parsed, not started: these
tests pin what would otherwise only break on a user's machine (a port that
differs from the settings default, an env var nudge does not read, a scrape
target on the wrong port, an image tag that floats).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from nudge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_LOCAL = ROOT / "deploy" / "prometheus" / "prometheus.local.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"

# Worker settings the lead is adding to nudge/settings.py. Delete this constant
# (and its use in KNOWN_ENV) once they are declared there.
SETTINGS_BEING_ADDED_BY_LEAD = frozenset(
    {"NUDGE_WORKER_METRICS_PORT", "NUDGE_STORE", "NUDGE_STATE_TTL_S", "NUDGE_GRACE_MS"}
)

NUDGE_SERVICES = ("topics", "worker", "collector")
DEFAULTS = {d.env: d.default for d in Settings.declarations()}
KNOWN_ENV = set(DEFAULTS) | SETTINGS_BEING_ADDED_BY_LEAD
# ${NAME}, ${NAME:-default}, ${NAME-default}: compose's substitution syntax.
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _substitute_defaults(value: str) -> str:
    """What compose makes of a string when no variable is set."""
    return SUBSTITUTION.sub(lambda m: m.group("default") or "", value)


def _published(service: dict[str, Any], container_port: int) -> list[str]:
    """The raw host side of every mapping of `container_port`."""
    found = []
    for mapping in service.get("ports", []):
        host, _, target = str(mapping).rpartition(":")
        if target == str(container_port):
            found.append(host)
    return found


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _scrape_targets(path: Path) -> dict[str, list[str]]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in config["scrape_configs"]
    }


# --- services and images --------------------------------------------------------


def test_all_services_exist(services: dict[str, Any]) -> None:
    assert {
        "kafka",
        "redis",
        "topics",
        "worker",
        "collector",
        "triggers",
        "deliver",
        "trainer",
        "report",
        "prometheus",
        "grafana",
    } <= set(services)


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        if "build" in service:
            assert image.startswith("nudge:") and not image.endswith(":latest"), name
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} must pin a tag"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} must pin at least major.minor"


def test_kafka_image_matches_the_local_broker_release(services: dict[str, Any]) -> None:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert local, "deploy/kafka/pom.xml names no kafka.version"
    assert services["kafka"]["image"] == f"apache/kafka:{local.group(1)}"
    assert local.group(1).startswith("4.1.")


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("kafka", "redis", "worker", "collector", "triggers", "deliver", "prometheus", "grafana"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test != ["NONE"], f"{name} has no healthcheck"
    assert "kafka-broker-api-versions.sh" in str(services["kafka"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/healthz" in str(services["collector"]["healthcheck"]["test"])


def test_depends_on_targets_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


# --- settings: env vars, ports, sizes --------------------------------------------


def test_every_nudge_variable_is_a_declared_setting() -> None:
    # Anywhere in the file: environment keys, ${...} substitutions, comments.
    for path in (COMPOSE, ROOT / "Dockerfile"):
        used = set(re.findall(r"\bNUDGE_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
        assert used, path
        assert used <= KNOWN_ENV, f"{path.name} uses undeclared settings: {sorted(used - KNOWN_ENV)}"


def test_nudge_substitutions_default_to_the_settings_defaults() -> None:
    found = 0
    for m in SUBSTITUTION.finditer(COMPOSE.read_text(encoding="utf-8")):
        assert m.group("op") == ":-", f"${{{m.group('name')}}} needs a :- default so compose runs without .env"
        if m.group("name") in DEFAULTS:
            found += 1
            assert m.group("default") == str(DEFAULTS[m.group("name")]), m.group(0)
    assert found >= 4


def test_published_ports_are_the_settings_defaults(services: dict[str, Any]) -> None:
    expected = {"kafka": (9092, "NUDGE_KAFKA_PORT"), "redis": (6379, "NUDGE_REDIS_PORT")}
    expected["collector"] = (8088, "NUDGE_COLLECTOR_PORT")
    for name, (port, env) in expected.items():
        assert DEFAULTS[env] == port
        hosts = _published(services[name], port)
        assert hosts == [f"127.0.0.1:${{{env}:-{port}}}"], f"{name} publishes {hosts}"


def test_nudge_services_share_one_env_and_reach_kafka_and_redis_by_service_name(services: dict[str, Any]) -> None:
    kafka_env = _env(services["kafka"])
    internal = re.search(r"INTERNAL://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert internal
    for name in NUDGE_SERVICES:
        service = services[name]
        env = _env(service)
        assert service["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert env["NUDGE_KAFKA_BOOTSTRAP"] == internal.group(1) == "kafka:19092", name
        assert env["NUDGE_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["NUDGE_MAX_MESSAGE_BYTES"] == kafka_env["KAFKA_MESSAGE_MAX_BYTES"], name


def test_kafka_is_a_single_kraft_node_sized_for_nudge(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "INTERNAL://:19092" in env["KAFKA_LISTENERS"] and "EXTERNAL://:9092" in env["KAFKA_LISTENERS"]
    assert "EXTERNAL://127.0.0.1:${NUDGE_KAFKA_PORT:-9092}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert int(_substitute_defaults(env["KAFKA_MESSAGE_MAX_BYTES"])) == Settings().max_message_bytes
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]


def test_redis_persists(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_worker_waits_for_healthy_kafka_redis_and_created_topics(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert worker["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
    }
    env = _env(worker)
    assert env["NUDGE_WORKER_METRICS_PORT"] == "6066" == str(Settings().worker_metrics_port)
    assert worker["expose"] == ["6066"]
    assert env["NUDGE_STORE"].startswith("rocksdb://")
    assert any(v.endswith(":/var/lib/nudge") for v in worker["volumes"]) and env["NUDGE_DATA_DIR"] == "/var/lib/nudge"


def test_topics_is_a_one_shot_after_kafka(services: dict[str, Any]) -> None:
    topics = services["topics"]
    assert topics["command"] == ["topics"]
    assert topics["restart"] == "no"
    assert topics["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_collector_listens_on_all_interfaces_in_its_container(services: dict[str, Any]) -> None:
    collector = services["collector"]
    assert collector["command"] == ["collect", "--host", "0.0.0.0"]
    env = _env(collector)
    assert env["NUDGE_COLLECTOR_PORT"] == "8088"
    assert "127.0.0.1:8088/healthz" in str(collector["healthcheck"]["test"])


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} bind-mounts missing {source}"
            else:
                used.add(source)
    assert used == declared
    for name in ("kafka", "redis", "worker", "prometheus", "grafana"):
        assert any(str(v).split(":", 1)[0] in declared for v in services[name]["volumes"]), name


# --- Dockerfile ------------------------------------------------------------------


def test_dockerfile_installs_with_constraints_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install -c constraints.txt ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["nudge"\]$', text, re.M)


def test_dockerignore_lets_every_package_in() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert {"pyproject.toml", "constraints.txt", *packages} <= allowed


# --- Prometheus and Grafana ------------------------------------------------------


def test_prometheus_scrapes_worker_and_collector_on_their_container_ports(services: dict[str, Any]) -> None:
    targets = _scrape_targets(PROMETHEUS)
    worker_port = _env(services["worker"])["NUDGE_WORKER_METRICS_PORT"]
    collector_port = _env(services["collector"])["NUDGE_COLLECTOR_PORT"]
    assert targets["nudge-worker"] == [f"worker:{worker_port}"]
    assert targets["nudge-collector"] == [f"collector:{collector_port}"]
    assert targets["nudge-triggers"] == [f"triggers:{_env(services['triggers'])['NUDGE_TRIGGERS_METRICS_PORT']}"]
    assert targets["nudge-deliver"] == [f"deliver:{_env(services['deliver'])['NUDGE_DELIVERY_METRICS_PORT']}"]
    assert targets["nudge-trainer"] == [f"trainer:{_env(services['trainer'])['NUDGE_TRAINER_METRICS_PORT']}"]
    assert targets["nudge-report"] == [f"report:{_env(services['report'])['NUDGE_REPORT_METRICS_PORT']}"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_local_prometheus_scrapes_the_default_local_ports() -> None:
    s = Settings()
    targets = _scrape_targets(PROMETHEUS_LOCAL)
    assert targets["nudge-worker"] == [f"127.0.0.1:{s.worker_metrics_port}"]
    assert targets["nudge-collector"] == [f"127.0.0.1:{s.collector_port}"]
    assert targets["nudge-triggers"] == [f"127.0.0.1:{s.triggers_metrics_port}"]
    assert targets["nudge-deliver"] == [f"127.0.0.1:{s.delivery_metrics_port}"]
    assert targets["nudge-trainer"] == [f"127.0.0.1:{s.trainer_metrics_port}"]
    assert targets["nudge-report"] == [f"127.0.0.1:{s.report_metrics_port}"]


@pytest.mark.parametrize("path", [PROMETHEUS, PROMETHEUS_LOCAL], ids=lambda p: p.name)
def test_promtool_accepts_the_config(path: Path) -> None:
    # A missing promtool is a failure, not a skip: `make system-deps` / .ci/run install it.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisions_the_prometheus_datasource(services: dict[str, Any]) -> None:
    config = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (source,) = config["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert _published(services["prometheus"], 9090) == ["127.0.0.1:9090"]


def test_grafana_loads_dashboards_from_the_mounted_directory(services: dict[str, Any]) -> None:
    config = yaml.safe_load((GRAFANA / "dashboards" / "nudge.yml").read_text(encoding="utf-8"))
    (provider,) = config["providers"]
    grafana = services["grafana"]
    mounts = dict(str(v).rsplit(":", 2)[:2] for v in grafana["volumes"] if str(v).startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
