"""The deployment files agree with each other and with the code.

No Docker engine runs here, so docker-compose.yml is checked rather than run:
by ``docker-compose config`` where that binary exists, and always by the
consistency checks below (broker addresses, ports, mounts, scrape targets,
settings names, Grafana provisioning, the Dockerfile's copies).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import build_parser
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "prometheus" / "prometheus.yml"
DATASOURCE = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = REPO / "grafana" / "provisioning" / "dashboards" / "reranker.yml"
DASHBOARD = REPO / "grafana" / "dashboards" / "reranker.json"
SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
DEFAULTS = Settings()


def interpolate(value: Any) -> Any:
    """A compose value with ``${VAR:-default}`` replaced by its default and ``$$`` by ``$``."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the x-* anchors and << merges as compose does.
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def reranker_args(service: dict[str, Any]) -> list[str]:
    """The ``reranker`` arguments a service runs, from its command or its shell script."""
    command = service.get("command")
    if service.get("entrypoint", ["reranker"])[0] == "reranker":
        return [str(c) for c in command]
    script = command[0] if isinstance(command, list) else command
    [line] = [ln for ln in script.replace("\\\n", " ").splitlines() if "exec reranker " in ln]
    return shlex.split(line.split("exec reranker ", 1)[1].replace("$(hostname)", "host"))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_docker_compose_config_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "--profile", "loadgen", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_promtool_accepts_the_prometheus_config() -> None:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    done = subprocess.run([binary, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "topics", "worker", "trainer", "prometheus", "grafana", "loadgen"} <= set(services)
    assert services["loadgen"]["profiles"] == ["loadgen"]
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[name] == "1", name
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_LOG_DIRS"] in {v.split(":")[1] for v in services["kafka"]["volumes"]}


def test_every_broker_address_is_the_kafka_service(services: dict[str, dict[str, Any]]) -> None:
    users = [name for name, s in services.items() if s.get("image", "").startswith("stream-reranker")]
    assert set(users) >= {"worker", "trainer", "loadgen"}
    for name in users:
        assert environment(services[name])["RERANKER_BROKER"] == "kafka:9092", name
    assert "--bootstrap-server kafka:9092" in services["topics"]["command"][0]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if name in users:
            assert "topics" in depends, f"{name} must wait for the topics"


def test_environment_variables_are_known_settings(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key in environment(service):
            if key.startswith("RERANKER_"):
                assert key.removeprefix("RERANKER_").lower() in SETTINGS_FIELDS, f"{name}: {key}"
    # Values must load as settings (types, validation), as the containers would load them.
    Settings.load(env=environment(services["worker"]))


def test_topics_match_the_settings(services: dict[str, dict[str, Any]]) -> None:
    script = services["topics"]["command"][0]
    for topic in (DEFAULTS.events_topic, DEFAULTS.requests_topic, DEFAULTS.results_topic, DEFAULTS.dead_letter_topic):
        assert topic in script, topic
    if hasattr(DEFAULTS, "model_updates_topic"):
        assert f"create {DEFAULTS.model_updates_topic} 1" in script  # one partition: one order
    env = environment(services["topics"])
    assert env["PARTITIONS"] == environment(services["worker"])["RERANKER_PARTITIONS"]
    assert env["REPLICATION"] == environment(services["worker"])["RERANKER_REPLICATION_FACTOR"]


def test_commands_parse_with_the_cli(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    for name, command in (("worker", "worker"), ("trainer", "train-service"), ("loadgen", "loadgen")):
        args = reranker_args(services[name])
        assert args[0] == command
        parser.parse_args(args)  # exits (SystemExit) on an unknown flag


def test_workers_scale_without_sharing_state_or_ports(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    args = reranker_args(worker)
    assert "ports" not in worker, "a published port would collide between replicas"
    assert "container_name" not in worker
    assert flag(args, "--data-dir").startswith("/data/") and "host" in flag(args, "--data-dir")
    assert "/data" in worker["volumes"], "each replica needs its own anonymous /data volume"
    assert flag(args, "--store") == "rocksdb://"
    assert {flag(args, "--web-port"), flag(args, "--metrics-port")} <= {str(p) for p in worker["expose"]}
    assert worker["restart"] == "unless-stopped"
    assert worker["ulimits"]["nofile"]["soft"] >= 65536


def test_published_ports_do_not_collide(services: dict[str, dict[str, Any]]) -> None:
    published = [str(p).split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published


def test_mounted_files_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            elif ":" in str(volume):
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def _metrics_port(services: dict[str, dict[str, Any]], name: str) -> int:
    return int(flag(reranker_args(services[name]), "--metrics-port"))


def test_every_scrape_target_is_a_service_and_its_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"reranker-worker", "reranker-trainer"} <= set(jobs)
    [dns] = jobs["reranker-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A"  # one record per replica
    assert dns["port"] == _metrics_port(services, "worker")
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host == "localhost":
                    assert job["job_name"] == "prometheus" and port == "9090"
                    continue
                assert host in services, target
                assert int(port) == _metrics_port(services, host), target
    assert all(
        env_value == "0.0.0.0"
        for env_value in (environment(services[n])["RERANKER_METRICS_HOST"] for n in ("worker", "trainer"))
    )


def test_grafana_provisioning_points_at_the_mounted_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if str(v).startswith(".")}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    [provider] = yaml.safe_load(PROVIDER.read_text())["providers"]
    assert provider["type"] == "file"
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == "./grafana/dashboards"
    assert (REPO / mounts[dashboards_dir] / DASHBOARD.name).is_file()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_datasource_uid_is_the_one_every_panel_uses(services: dict[str, dict[str, Any]]) -> None:
    [source] = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert source["type"] == "prometheus"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dockerfile_copies_every_package(services: dict[str, dict[str, Any]]) -> None:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [pattern.rstrip("*") for pattern in include]
    dockerfile = (REPO / "Dockerfile").read_text()
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for package in {p.split(".")[0] for p in packages}:
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), package
        assert package not in ignored, package
    assert "download.pytorch.org/whl/cpu" in dockerfile
    assert services["worker"]["build"] == "."


def test_readme_describes_every_dashboard_panel() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### The dashboard") :]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] != "row":
            assert f"**{panel['title']}**" in section, panel["title"]
