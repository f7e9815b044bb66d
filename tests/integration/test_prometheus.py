"""A real Prometheus scrapes a live worker and a live trainer; every dashboard query must answer.

The Prometheus configuration is the stack's own (prometheus/prometheus.yml) with
each job's service discovery replaced by the local ports, so the job names and
metric names the Grafana dashboard reads are checked against real scrapes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.devtools.processes import stop_process
from streams.devtools.synthetic import events_for_cluster, generate_events, generate_requests
from streams.kafka.clients import KafkaSender, message_key, produce_records
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings
from tests.conftest import (
    REPO,
    TrainedWorld,
    WorkerProcess,
    isolated_settings,
    run_cli,
    settings_env,
    start_worker,
    wait_until,
)
from tests.integration.test_end_to_end import ask

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "grafana" / "dashboards" / "reranker.json"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
RULES = REPO / "prometheus" / "rules.yml"
WORKER_JOB, TRAINER_JOB = "reranker-worker", "reranker-trainer"
# What Grafana puts in place of its variables; the window spans the whole test.
# Events are applied in fetch-sized batches, often faster than a monitor period (1 s) can see
# them wait; requests are scored one at a time (about 1 ms each), so a burst of them keeps the
# requests topic behind for several monitor periods even on a fast machine.
BURST_EVENTS = 6000
BURST_REQUESTS = 6000
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$instance": ".*"}


def prometheus_binary() -> str | None:
    """The prometheus server binary (Debian: apt-get install prometheus), if installed."""
    found = shutil.which("prometheus")
    if found:
        return found
    for candidate in ("/usr/bin/prometheus", "/usr/local/bin/prometheus"):
        if Path(candidate).is_file():
            return candidate
    return None


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included."""
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((panel["title"], target["expr"]))

    walk(json.loads(path.read_text())["panels"])
    return queries


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Grafana sends it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def local_config(targets: dict[str, list[str]], self_target: str) -> dict[str, Any]:
    """prometheus/prometheus.yml with a 1 s scrape and every job pointed at local targets."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = []
    for job in config["scrape_configs"]:
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "static_configs"}
        job["static_configs"] = [{"targets": targets.get(job["job_name"], [self_target])}]
        jobs.append(job)
    assert {WORKER_JOB, TRAINER_JOB} <= {j["job_name"] for j in jobs}, "the stack's job names changed"
    config["scrape_configs"] = jobs
    # The config is written elsewhere: its rule files, relative to the stack's config, become absolute.
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve()) for f in config.get("rule_files", [])]
    return config


@dataclasses.dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now; raises on a PromQL error."""
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def values(self, expr: str) -> list[float]:
        return [float(r["value"][1]) for r in self.query(expr)]

    def peak(self, expr: str, since: float) -> float:
        """The largest value ``expr`` took at any evaluation from ``since`` (unix time) to now."""
        answer = self.get("/api/v1/query_range", query=expr, start=f"{since:.3f}", end=f"{time.time():.3f}", step="0.5")
        assert answer["status"] == "success", answer
        return max((float(v) for r in answer["data"]["result"] for _, v in r["values"]), default=0.0)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)


def start_prometheus(binary: str, workdir: Path, targets: dict[str, list[str]]) -> Prometheus:
    """Our own prometheus process (not the system service) on a free port."""
    port = free_port()
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(local_config(targets, f"127.0.0.1:{port}")))
    log_path = workdir / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until(
            lambda: prometheus.process.poll() is None and prometheus.ready(), 30, interval=0.2, what="prometheus ready"
        )
    except TimeoutError:
        prometheus.stop()
        raise AssertionError(f"prometheus did not start:\n{log_path.read_text()[-3000:]}") from None
    return prometheus


@dataclasses.dataclass
class Observed:
    settings: Settings
    prometheus: Prometheus
    worker: WorkerProcess
    trainer: subprocess.Popen[bytes] | None
    trainer_log: Path
    world: Any
    first_version: str

    def logs(self) -> str:
        trainer = self.trainer_log.read_text(errors="replace") if self.trainer_log.exists() else ""
        return (
            f"--- worker\n{self.worker.log()[-2000:]}\n--- trainer\n"
            f"{trainer[-2000:]}\n--- prometheus\n"
            f"{self.prometheus.log_path.read_text(errors='replace')[-1000:]}"
        )


def drive_traffic(settings: Settings, world: Any) -> None:
    """Requests with and without ts, events learned online, and one bad message of each kind."""
    requests = generate_requests(world, 30, n_candidates=20, seed=31, k=5, prefix="prom", ts=time.time())
    requests += generate_requests(world, 10, n_candidates=20, seed=32, prefix="prom-no-ts")
    answered = ask(settings, requests, timeout=60)
    assert len(answered) == len(requests)
    # The compose stack's load generator, as its profile runs it (exit 1 if any went unanswered).
    loadgen = run_cli(settings, "loadgen", "--rate", "20", "--duration", "3", "--history", "0", timeout=120)
    assert loadgen.returncode == 0, loadgen.stdout + loadgen.stderr
    assert "done: 60 requests sent, 60 answered (0 with an error)" in loadgen.stdout, loadgen.stdout
    user, cluster = "prom-newcomer", 1
    world.user_cluster[user] = cluster
    sender = KafkaSender(settings)
    for event in events_for_cluster(world, user, cluster, 12, start_ts=time.time()):
        sender.send(settings.events_topic, message_key(event), orjson.dumps(event))
    sender.send(settings.requests_topic, b"u00001", b"{not json")
    sender.send(
        settings.requests_topic,
        b"u00001",
        orjson.dumps({"request_id": "prom-bad", "user_id": "u00001", "candidates": []}),
    )
    sender.send(
        settings.events_topic,
        b"u00001",
        orjson.dumps({"user_id": "u00001", "item_id": "i00001", "event_type": "teleport", "ts": time.time()}),
    )
    sender.flush()
    # A request after the events: its answer proves the worker has handled everything above.
    after = generate_requests(world, 1, seed=33, users=[user], prefix="prom-after", ts=time.time())
    assert ask(settings, after, timeout=60)


@pytest.fixture(scope="module")
def observed(
    broker,
    trained_world: TrainedWorld,
    tmp_path_factory: pytest.TempPathFactory,  # type: ignore[no-untyped-def]
) -> Iterator[Observed]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    workdir = tmp_path_factory.mktemp("prometheus")
    # The worker loads announced models only from inside its models_dir: the trainer's.
    settings = isolated_settings(broker, models_dir=str(workdir / "models"))
    if hasattr(settings, "model_updates_topic"):
        # This trainer announces its model; no worker of another module may hear it.
        settings = dataclasses.replace(settings, model_updates_topic=f"model-updates-{settings.app_id}")
    # Created first: a topic the broker creates on the first produce gets the broker's partition
    # count, and a worker refuses events and requests topics of different counts.
    create_topics(settings)
    produce_records(settings, settings.events_topic, trained_world.events)
    worker = start_worker(settings, trained_world.model_dir, workdir)
    trainer_port, trainer_log = free_port(), workdir / "trainer.log"
    trainer: subprocess.Popen[bytes] | None = None
    prometheus = None
    try:
        prometheus = start_prometheus(
            binary,
            workdir,
            {WORKER_JOB: [f"127.0.0.1:{worker.metrics_port}"], TRAINER_JOB: [f"127.0.0.1:{trainer_port}"]},
        )
        first_version = json.loads((trained_world.model_dir / "manifest.json").read_text())["version"]
        observed = Observed(settings, prometheus, worker, None, trainer_log, trained_world.world, first_version)
        # Rates need samples from before the traffic: wait for the first scrape of the worker.
        wait_until(
            lambda: prometheus.values(f'up{{job="{WORKER_JOB}"}}') == [1.0],
            60,
            interval=0.5,
            what="prometheus scraping the worker",
        )
        probe = generate_requests(trained_world.world, 1, seed=30, prefix="prom-probe")
        assert ask(settings, probe, timeout=120), f"worker never answered\n{observed.logs()}"
        drive_traffic(settings, trained_world.world)
        # Started once the worker follows the announcements topic (from its end), so the worker
        # hears the model this trainer promotes; and after the traffic, because training takes
        # both cores of a small machine and the latencies measured would be the trainer's.
        trainer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams",
                "train-service",
                "--topic",
                settings.events_topic,
                "--every",
                "3600",
                "--max-epochs",
                "2",
                "--metrics-port",
                str(trainer_port),
            ],
            stdout=open(trainer_log, "wb"),
            stderr=subprocess.STDOUT,
            env=settings_env(settings),
            cwd=REPO,
        )
        observed.trainer = trainer
        yield observed
    finally:
        if prometheus is not None:
            prometheus.stop()
        worker.stop()
        if trainer is not None:
            stop_process(trainer, 30)


def test_the_stack_alert_rules_are_loaded_and_evaluate(observed: Observed) -> None:
    expected = {
        group["name"]: {rule["alert"] for rule in group["rules"]}
        for group in yaml.safe_load(RULES.read_text())["groups"]
    }
    assert expected

    def groups() -> list[dict[str, Any]]:
        answer = observed.prometheus.get("/api/v1/rules")
        assert answer["status"] == "success", answer
        return answer["data"]["groups"]

    loaded = {group["name"]: {rule["name"] for rule in group["rules"]} for group in groups()}
    assert loaded == expected
    # Each rule has been evaluated against the live series without a query error.
    wait_until(
        lambda: all(rule.get("health") != "unknown" for group in groups() for rule in group["rules"]),
        30,
        interval=0.5,
        what="every rule evaluated",
    )
    bad = {
        rule["name"]: rule.get("lastError") for group in groups() for rule in group["rules"] if rule["health"] != "ok"
    }
    assert not bad, bad
    # The worker and the trainer are scraped and making progress: their liveness alerts are silent.
    firing = {rule["name"] for group in groups() for rule in group["rules"] if rule.get("state") == "firing"}
    assert not firing & {"RerankerNoWorker", "RerankerWorkerDown", "RerankerWorkerNotProgressing"}, firing


def _has_finite_value(prometheus: Prometheus, expr: str) -> bool:
    return any(math.isfinite(v) for v in prometheus.values(expr))


def test_every_dashboard_query_returns_data(observed: Observed) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20, "the dashboard lost panels"
    pending = {as_promql(expr): title for title, expr in queries}
    # The trainer's first run (train + held-out evaluation) ends some time after the traffic.
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for expr in list(pending):
            if _has_finite_value(observed.prometheus, expr):
                del pending[expr]
        if pending:
            time.sleep(1.0)
    assert not pending, (
        "dashboard queries without data:\n"
        + "\n".join(f"  [{title}] {expr}" for expr, title in pending.items())
        + f"\n{observed.logs()}"
    )


def test_end_to_end_latency_quantiles_are_plausible(observed: Observed) -> None:
    def quantile(q: float) -> float:
        [value] = observed.prometheus.values(
            f"histogram_quantile({q}, sum by (le) (rate(reranker_request_latency_seconds_bucket[5m])))"
        )
        return value

    wait_until(lambda: math.isfinite(quantile(0.5)), 30, interval=0.5, what="latency quantiles")
    p50, p99 = quantile(0.5), quantile(0.99)
    assert 0 < p50 <= p99, (p50, p99)
    # Answers came back within a second in drive_traffic; the median cannot be near the top bucket.
    assert p50 < 1.0, p50


def test_outcomes_of_the_traffic_are_counted(observed: Observed) -> None:
    prometheus = observed.prometheus

    def total(expr: str) -> float:
        return sum(prometheus.values(expr))

    # The worker's counters as scraped, not as the worker holds them: proves the scrape path.
    wait_until(
        lambda: (
            total('reranker_dead_letters_total{reason="unknown_event_type"}') >= 1
            and total('reranker_requests_total{outcome="no_candidates"}') >= 1
            and total('reranker_requests_total{outcome="invalid_json"}') >= 1
            and total('reranker_events_total{outcome="ok"}') >= 12
            and total('reranker_requests_total{outcome="ok"}') >= 42
        ),
        30,
        interval=0.5,
        what="traffic counted in prometheus",
    )
    assert len(prometheus.query("reranker_model_info")) == 1
    # The timer's gauges: the newcomer's state exists, and the agent has finished batches.
    wait_until(lambda: total("reranker_users_in_state") >= 1, 30, interval=0.5, what="users in state")
    [since_batch] = prometheus.values("time() - reranker_worker_last_batch_timestamp_seconds")
    assert 0 <= since_batch < 120, since_batch


def test_trainer_run_is_recorded(observed: Observed) -> None:
    prometheus = observed.prometheus
    wait_until(
        lambda: prometheus.values('reranker_trainer_runs_total{outcome="success"}') == [1.0],
        120,
        interval=1.0,
        what=f"a successful trainer run\n{observed.logs()}",
    )
    [ndcg] = prometheus.values('reranker_trainer_validation_metric{metric="ndcg_at_10"}')
    [hr] = prometheus.values('reranker_trainer_validation_metric{metric="hr_at_10"}')
    assert 0 < ndcg <= hr <= 1, (ndcg, hr)  # NDCG@10 never exceeds HR@10
    # No model served before: the first candidate is promoted.
    assert prometheus.values('reranker_trainer_promotions_total{decision="promoted"}') == [1.0]
    [age] = prometheus.values("time() - reranker_trainer_last_success_timestamp_seconds")
    assert 0 <= age < 300, age


def test_serving_model_is_one_series_after_the_promoted_model_swaps_in(observed: Observed) -> None:
    prometheus = observed.prometheus
    wait_until(
        lambda: prometheus.values("reranker_model_swaps_total") == [1.0],
        120,
        interval=1.0,
        what=f"the worker swapping to the promoted model\n{observed.logs()}",
    )
    wait_until(
        lambda: (
            len(prometheus.query("reranker_model_info")) == 1
            and prometheus.query("reranker_model_info")[0]["metric"]["version"] != observed.first_version
        ),
        10,
        interval=0.5,
        what="reranker_model_info naming only the new model",
    )
    # The dashboard's swap annotation marks it.
    for annotation in json.loads(DASHBOARD.read_text())["annotations"]["list"]:
        if "reranker_model_swaps_total" in annotation.get("expr", ""):
            assert prometheus.query(as_promql(annotation["expr"])), annotation["expr"]
    # Over the test, the dashboard's version panel saw both models, never two at one instant.
    counts = prometheus.values("max_over_time(count(reranker_model_info)[5m:1s])")
    assert counts == [1.0], counts
    versions = prometheus.query("count by (version) (max_over_time(reranker_model_info[5m]))")
    assert {r["metric"]["version"] for r in versions} >= {observed.first_version}
    assert len(versions) == 2, versions


def test_consumer_lag_is_reported_and_drains_to_zero(observed: Observed) -> None:
    settings, prometheus = observed.settings, observed.prometheus
    lag = f'sum by (topic) (reranker_consumer_lag{{job="{WORKER_JOB}"}})'

    def by_topic() -> dict[str, float]:
        return {r["metric"]["topic"]: float(r["value"][1]) for r in prometheus.query(lag)}

    # Everything sent so far has been answered: once committed, high watermark == committed offset.
    wait_until(
        lambda: by_topic() == {settings.events_topic: 0.0, settings.requests_topic: 0.0},
        30,
        interval=0.5,
        what="zero lag on both input topics",
    )
    # A burst of events and of requests: the requests wait behind each other long enough for
    # several lag samples.
    world = observed.world
    burst = [
        dict(e, user_id=f"burst-{n % 400}", ts=time.time())
        for n, e in enumerate(generate_events(world, BURST_EVENTS, seed=41))
    ]
    requests = generate_requests(
        world, BURST_REQUESTS, n_candidates=20, seed=42, users=[f"burst-{n}" for n in range(400)], prefix="lag"
    )
    burst_at, started = time.time(), time.monotonic()
    produce_records(settings, settings.events_topic, burst)
    produce_records(settings, settings.requests_topic, requests)

    def peak_since_burst(topic: str) -> float:
        # Only evaluations from the burst on: a sample from before it must not count.
        return prometheus.peak(f'sum(reranker_consumer_lag{{topic="{topic}"}})', burst_at)

    wait_until(lambda: peak_since_burst(settings.requests_topic) > 0, 60, interval=0.5, what="lag during the burst")
    # Only after the lag was seen: a zero read before it would be the sample from before the burst.
    wait_until(
        lambda: by_topic() == {settings.events_topic: 0.0, settings.requests_topic: 0.0},
        120,
        interval=0.5,
        what="lag drained on both topics",
    )
    print(
        f"burst of {BURST_EVENTS} events and {BURST_REQUESTS} requests drained in "
        f"{time.monotonic() - started:.1f}s, peak lag {peak_since_burst(settings.events_topic):.0f} events, "
        f"{peak_since_burst(settings.requests_topic):.0f} requests"
    )
