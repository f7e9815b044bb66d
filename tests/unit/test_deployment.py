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
RULES = REPO / "prometheus" / "rules.yml"
RULES_TEST = REPO / "prometheus" / "tests" / "rules_test.yml"
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
    return shlex.split(line.split("exec reranker ", 1)[1])


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


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return binary


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def test_every_alert_is_unit_tested_and_documented() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert [(RULES_TEST.parent / f).resolve() for f in tests["rule_files"]] == [RULES]
    tested: dict[str, set[bool]] = {}
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            tested.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Alerts") :]
    for name, rule in _alerts().items():
        # One case where it fires and one where it must stay quiet.
        assert tested.get(name) == {True, False}, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert f"`{name}`" in section, f"README.md (Alerts) does not describe {name}"


def test_the_compose_prometheus_loads_the_rules(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if str(v).startswith(".")}
    config_file = flag_value(services["prometheus"]["command"], "--config.file")
    config_dir = config_file.rsplit("/", 1)[0]
    assert mounts[config_file] == "./prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        # Relative paths resolve against the config file's directory, in the stack and for promtool.
        in_container = rule_file if rule_file.startswith("/") else f"{config_dir}/{rule_file}"
        assert mounts[in_container] == f"./{RULES.relative_to(REPO)}"
        assert (PROMETHEUS.parent / rule_file).resolve() == RULES


def flag_value(command: list[str], name: str) -> str:
    [value] = [c.split("=", 1)[1] for c in command if c.startswith(f"{name}=")]
    return value


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


def created_topics(script: str) -> dict[str, str]:
    """{topic: the rest of its create line} from the topics step's shell script."""
    created: dict[str, str] = {}
    for line in script.splitlines():
        line = line.strip()
        if match := re.match(r"for topic in (.+); do$", line):
            created.update({t: '"$PARTITIONS"' for t in match.group(1).split()})
        elif (match := re.match(r"create (\S+) (.+)$", line)) and match.group(1) != '"$topic"':
            created[match.group(1)] = match.group(2)
    return created


def test_the_topics_step_creates_every_topic_the_services_use(services: dict[str, dict[str, Any]]) -> None:
    from streams.kafka.topics import project_topics

    created = created_topics(services["topics"]["command"][0])
    used = set(project_topics(Settings.load(env=environment(services["worker"]))))
    for name in ("worker", "trainer", "loadgen"):
        args = reranker_args(services[name])
        used |= {args[i + 1] for i, a in enumerate(args) if a == "--topic"}
    assert used <= set(created), used - set(created)
    assert created[DEFAULTS.items_topic].split() == ['"$PARTITIONS"', "--config", "cleanup.policy=compact"]
    assert created[DEFAULTS.model_updates_topic] == "1"
    # The broker takes the largest result the worker's settings allow (Kafka's default is ~1 MB).
    worker_settings = Settings.load(env=environment(services["worker"]))
    assert created[DEFAULTS.results_topic].split() == [
        '"$PARTITIONS"',
        "--config",
        f"max.message.bytes={worker_settings.largest_result_bytes()}",
    ]


def test_the_image_is_defined_once(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["worker"], builders
    image = services["worker"]["image"]
    assert compose["x-reranker-image"] == image
    for name in ("trainer", "loadgen"):
        assert services[name]["image"] == image, name
        assert services[name]["pull_policy"] == "never", f"{name}: no registry has {image}"


def published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_published_ports_listen_on_localhost_only(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name: published(service) for name, service in services.items() if published(service)}
    assert {"kafka", "grafana", "prometheus"} <= publishing.keys()
    for name, ports in publishing.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_grafana_gives_anonymous_visitors_no_more_than_viewing(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["grafana"])
    if env.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["environment"]
    assert raw["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}", "set by the operator"


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
    assert "/data" in worker["volumes"], "each replica needs its own anonymous /data volume"
    # A recreated container gets its predecessor's anonymous volume back: the store must be at
    # the same path in it, not under a hostname that changes with every container.
    assert flag(args, "--data-dir") == "/data"
    assert flag(args, "--store") == "rocksdb://"
    assert {flag(args, "--web-port"), flag(args, "--metrics-port")} <= {str(p) for p in worker["expose"]}
    assert worker["restart"] == "unless-stopped"
    assert worker["ulimits"]["nofile"]["soft"] >= 65536


def test_published_ports_do_not_collide(services: dict[str, dict[str, Any]]) -> None:
    host_ports = [p.rsplit(":", 2)[-2] for s in services.values() for p in published(s)]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_mounted_files_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            elif ":" in str(volume):
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def _metrics_port(services: dict[str, dict[str, Any]], name: str) -> int:
    if name == "kafka-exporter":
        exporter = services[name]
        port = int(flag_value(exporter["command"], "--web.listen-address").rsplit(":", 1)[1])
        assert str(port) in [str(p) for p in exporter["expose"]]
        assert flag_value(exporter["command"], "--kafka.server") == "kafka:9092"
        return port
    return int(flag(reranker_args(services[name]), "--metrics-port"))


def test_every_scrape_target_is_a_service_and_its_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"reranker-worker", "reranker-trainer", "kafka-exporter"} <= set(jobs)
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
    # Grafana reaches Prometheus inside the compose network, on the container's own port.
    assert host in services and any(str(p).endswith(f":{port}") for p in services[host]["ports"])
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


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def test_worker_panels_follow_the_instance_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert "label_values(reranker_worker_last_batch_timestamp_seconds, instance)" in json.dumps(variable["query"])
    assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    selectors = 0
    for panel in dashboard["panels"]:
        for expr in _exprs(panel):
            # Every selector of a worker series (not the trainer's, not `up`) is scoped to $instance.
            for match in re.finditer(r"\b((?:reranker_(?!trainer_)|process_)[a-z_]+)(\{[^}]*\})?", expr):
                assert match.group(2) and 'instance=~"$instance"' in match.group(2), (panel["title"], expr)
                selectors += 1
    assert selectors >= 20


def test_dashboard_has_error_ratio_swap_annotations_and_trainer_liveness() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dashboard["panels"]}
    [ratio] = _exprs(panels["Error ratio"])
    numerator, denominator = ratio.split(" / ")
    assert 'outcome!="ok"' in numerator and "reranker_requests_total" in denominator
    assert "outcome" not in denominator  # all requests, whatever their outcome
    assert panels["Error ratio"]["fieldConfig"]["defaults"]["unit"] == "percentunit"
    [swaps] = [a for a in dashboard["annotations"]["list"] if "reranker_model_swaps_total" in a.get("expr", "")]
    assert swaps["enable"] and swaps["datasource"]["uid"] == "reranker-prom"
    liveness = " ".join(_exprs(panels["Trainer loop liveness"]))
    assert "reranker_trainer_last_run_start_timestamp_seconds" in liveness
    assert "reranker_trainer_last_success_timestamp_seconds" in liveness
    runtime = " ".join(_exprs(panels["Worker CPU and memory"]))
    assert "process_resident_memory_bytes" in runtime and "process_cpu_seconds_total" in runtime


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
