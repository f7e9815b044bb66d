"""Performance harness: latency against an echo floor, sustainable rate, ingestion, scaling, forward time.

Every measurement starts a fresh embedded broker (its fetches slow down as its
topics grow), starts the service under test as real processes (``reranker
worker``, or the aiokafka echo of bench/echo.py), waits until it answers, and
runs a fixed window of open-loop load (bench/open_loop.py). BENCHMARKS.md
("Performance") has the method, the commands and the numbers.

    python -m bench.harness forward
    python -m bench.harness process --users 10000 --events 50000
    python -m bench.harness latency --target worker --rates 100,200,300,400,600,800
    python -m bench.harness latency --target echo --rates 100,200,300,400,600,800
    python -m bench.harness ingest --users 10000 --events 50000
    python -m bench.harness ingest --users 10000,100000,1000000 --store rocksdb://
    python -m bench.harness backlog --rate 200 --event-rate 30000 --window 20
    python -m bench.harness smoke

Results are appended as JSON lines to ``--out`` (default var/bench/results.jsonl),
each with the 1-minute load average taken right before the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from bench.open_loop import RequestFactory, probe, run_open_loop  # noqa: E402
from streams.devtools.broker import EmbeddedBroker, embedded_env, start_embedded_broker  # noqa: E402
from streams.devtools.processes import launch_worker, stop_process  # noqa: E402
from streams.kafka.topics import create_topics  # noqa: E402
from streams.ports import free_port  # noqa: E402
from streams.settings import Settings  # noqa: E402

DEFAULT_WORK = REPO / "var" / "bench"
# The load generator's result consumer keeps the project's default fetch wait whatever the
# service under test uses, so a change of the worker's settings never changes the client.
CLIENT_FETCH_WAIT_MS = 5
# "echo-naive-events": the naive echo whose consumer also reads the events topic (from its end).
TARGETS = ("worker", "echo", "echo-naive", "echo-naive-events")


def say(line: str) -> None:
    print(line, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (anything, not only this benchmark) over the next ``seconds``."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    try:
        total0, idle0 = snap()
        time.sleep(seconds)
        total1, idle1 = snap()
    except OSError:
        return float("nan")
    return round(1.0 - (idle1 - idle0) / max(1, total1 - total0), 3)


QUIET_LOAD = 0.0  # --quiet: wait for the 1-minute load average to fall below this before measuring
QUIET_MAX_WAIT_S = 900.0  # --quiet-max-wait


def wait_for_quiet() -> dict[str, float]:
    """Wait (up to QUIET_MAX_WAIT_S) until load1 <= QUIET_LOAD; returns what the machine looked like."""
    # Checked every 5 s; the load average decays with a 1-minute time constant.
    waited = 0.0
    if QUIET_LOAD > 0:
        started = time.monotonic()
        while load1() > QUIET_LOAD and time.monotonic() - started < QUIET_MAX_WAIT_S:
            time.sleep(5.0)
        waited = round(time.monotonic() - started, 1)
        if load1() > QUIET_LOAD:
            say(f"  (load1 {load1()} still above {QUIET_LOAD} after {waited}s; measuring anyway)")
    return {"load1_before": load1(), "cpu_busy_before": cpu_busy(), "quiet_wait_s": waited}


def machine() -> dict[str, Any]:
    import platform

    import torch

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ----------------------------------------------------------------------------------------------
# The synthetic world and its model


@dataclasses.dataclass
class BenchWorld:
    users: list[str]
    items: list[str]
    model_dir: Path
    max_ts: float
    world: Any


def prepare_world(
    work: Path,
    *,
    n_users: int = 2000,
    n_items: int = 2000,
    n_events: int = 40_000,
    max_epochs: int = 3,
    seed: int = 11,
    retrain: bool = False,
) -> BenchWorld:
    """A planted-taste world and a small model trained on it (cached under ``work``)."""
    from streams.devtools.synthetic import generate_events, make_world

    world = make_world(n_users=n_users, n_items=n_items, n_clusters=8, seed=seed)
    model_dir = work / f"model-u{n_users}-i{n_items}-e{n_events}-x{max_epochs}-s{seed}"
    events = None
    if retrain or not (model_dir / "manifest.json").exists():
        from trainer.train import train_to_artifact

        events = generate_events(world, n_events, seed=seed + 1)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        started = time.monotonic()
        train_to_artifact(events, model_dir, seed=0, log=lambda line: None, max_epochs=max_epochs)
        say(f"trained a model on {n_events} events in {time.monotonic() - started:.1f}s: {model_dir}")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    max_ts = float(manifest.get("trained_through", {}).get("max_ts") or 1_700_000_000.0 + n_events)
    return BenchWorld(world.users, world.items, model_dir, max_ts, world)


def state_events(bw: BenchWorld, per_user: int, seed: int = 5) -> list[dict[str, Any]]:
    """Interactions newer than the model's watermark, so the worker applies them online."""
    from streams.devtools.synthetic import generate_events

    return generate_events(bw.world, per_user * len(bw.users), seed=seed, start_ts=bw.max_ts + 1000.0)


def history_events(bw: BenchWorld, n: int, seed: int = 21) -> list[dict[str, Any]]:
    """``n`` interactions that end before the model's watermark: the log a deployment keeps."""
    from streams.devtools.synthetic import generate_events

    return generate_events(bw.world, n, seed=seed, start_ts=bw.max_ts - n - 100.0)


def history_model(work: Path, settings: Settings, n: int, ends: dict[int, int]) -> Path:
    """A model trained (1 epoch) from the ``n`` history events on ``settings.events_topic``, its
    watermark at their end offsets ``ends``, as ``reranker train --topic`` records it.

    The same events produced to a fresh broker land at the same offsets, so the model is cached
    under ``work`` and reused while its watermark equals ``ends``.
    """
    from trainer.event_log import events_from_topic
    from trainer.train import train_to_artifact

    model_dir = work / f"history-model-{n}-p{settings.partitions}"
    if (model_dir / "manifest.json").exists():
        through = json.loads((model_dir / "manifest.json").read_text()).get("trained_through", {})
        if {int(k): int(v) for k, v in (through.get("offsets") or {}).items()} == ends:
            return model_dir
        shutil.rmtree(model_dir)
    started = time.monotonic()
    events, through = events_from_topic(settings, settings.events_topic)
    train_to_artifact(events, model_dir, trained_through=through, max_epochs=1, log=lambda line: None)
    say(f"trained a model from the {n} history events on the topic in {time.monotonic() - started:.1f}s")
    return model_dir


# ----------------------------------------------------------------------------------------------
# Processes


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def disk_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return round(total / 1024 / 1024, 1)


@dataclasses.dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0
    data_dir: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        # Nothing of a run is kept (each starts a fresh broker), so a slow shutdown is cut short.
        stop_process(self.process, timeout)

    def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {'name{labels}': value} (samples only)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def counter(self, prefix: str, must_contain: str = "") -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix) and must_contain in k)

    def counter_or(self, prefix: str, must_contain: str = "", default: float = -1.0) -> float:
        """``counter``, or ``default`` while the metrics server is not up yet."""
        try:
            return self.counter(prefix, must_contain)
        except OSError:
            return default


def worker_env(bootstrap: str, overrides: dict[str, str]) -> dict[str, str]:
    """The worker's environment: ``overrides`` become RERANKER_* settings, except names that
    are already environment variables (upper case, e.g. OMP_NUM_THREADS), which pass as they are."""
    env = embedded_env(bootstrap, {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")})
    for key, value in overrides.items():
        env[key if key.isupper() else f"RERANKER_{key.upper()}"] = str(value)
    return env


# Where worker processes run from; another checkout (--worker-repo) compares code versions.
WORKER_REPO = REPO
# Copy each measurement's service logs into the work directory (--keep-logs).
KEEP_LOGS = False


def start_worker(
    bootstrap: str,
    model_dir: Path,
    workdir: Path,
    overrides: dict[str, str],
    *,
    store: str = "memory://",
    index: int = 0,
) -> Service:
    web_port, metrics_port = free_port(), free_port()
    data_dir = workdir / f"data-{index}-{web_port}"
    log_path = workdir / f"worker-{index}.log"
    process = launch_worker(
        model_dir,
        web_port=web_port,
        metrics_port=metrics_port,
        data_dir=data_dir,
        log_path=log_path,
        extra_args=["--store", store],
        env=worker_env(bootstrap, overrides),
        cwd=WORKER_REPO,
    )
    return Service(f"worker-{index}", process, log_path, metrics_port, data_dir)


def start_echo(bootstrap: str, workdir: Path, settings: Settings, *, naive: bool, events: bool = False) -> Service:
    log_path = workdir / "echo.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.echo",
        "--broker",
        bootstrap,
        "--fetch-wait-ms",
        str(settings.consumer_fetch_wait_ms),
        "--linger-ms",
        str(settings.producer_linger_ms),
        "--partitions",
        str(settings.partitions),
    ]
    if naive:
        cmd.append("--wait-ack")
    if events:
        cmd += ["--also-read", settings.events_topic]
    process = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    return Service("echo-naive" if naive else "echo", process, log_path)


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``seconds`` with py-spy (installed for measuring only) into ``out``
    (collapsed stacks; render with flamegraph tools or read with bench/profile_top.py)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return subprocess.Popen(
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-r",
            "250",
            "-f",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def fresh_broker(workdir: Path) -> Iterator[EmbeddedBroker]:
    with start_embedded_broker(port=free_port(), log_file=workdir / "broker.log") as broker:
        yield broker


def wait_committed(bootstrap: str, group: str, topic: str, positions: dict[int, int], timeout: float) -> float:
    """Block until ``group`` has committed past ``positions`` on ``topic``; returns when (monotonic)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout
        while True:
            committed = consumer.committed([TopicPartition(topic, p) for p in positions], timeout=10)
            if all(tp.offset >= positions[tp.partition] for tp in committed):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"group {group} did not commit past {positions} on {topic} "
                    f"in {timeout}s: {[(tp.partition, tp.offset) for tp in committed]}"
                )
            time.sleep(0.05)
    finally:
        consumer.close()


def produce_events(settings: Settings, records: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Produce JSON events keyed by user (murmur2); returns the end offset written per partition."""
    from confluent_kafka import Producer

    from streams.kafka.clients import producer_config

    positions: dict[int, int] = {}
    failures: list[str] = []

    def delivered(err, msg):  # type: ignore[no-untyped-def]
        if err is not None:
            failures.append(str(err))
        else:
            positions[msg.partition()] = max(positions.get(msg.partition(), 0), msg.offset() + 1)

    producer = Producer(
        {
            **producer_config(settings),
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for record in records:
        while True:
            try:
                producer.produce(
                    settings.events_topic,
                    key=str(record["user_id"]).encode(),
                    value=orjson.dumps(record),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise TimeoutError("events not delivered in 120s")
    if failures:
        raise RuntimeError(f"{len(failures)} events failed: {failures[0]}")
    return positions


# ----------------------------------------------------------------------------------------------
# Latency windows


@dataclasses.dataclass
class RunConfig:
    target: str = "worker"
    candidates: int = 100
    workers: int = 1
    window_s: float = 15.0
    warmup_s: float = 3.0
    drain_s: float = 5.0
    state_events_per_user: int = 3
    store: str = "memory://"
    # Worker settings (RERANKER_*); the echo takes consumer_fetch_wait_ms and producer_linger_ms.
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    profile: str = ""  # "py-spy" to sample the worker during the window
    # Events produced per second during the warm-up and the window (0: none), from another process.
    event_rate: float = 0.0
    # Events on the events topic before the service starts (the worker's model is trained from
    # them, so it starts at their end); the broker holds them either way.
    history_events: int = 0


def _produce_at_rate(
    settings: Settings,
    users: Sequence[str],
    items: Sequence[str],
    rate: float,
    seconds: float,
    start_ts: float,
    out: Any,
) -> None:
    """Produce events at ``rate`` per second for ``seconds`` (its own process: the client's event
    loop keeps the GIL of the harness); puts (events produced, end offset per partition) on ``out``."""
    from confluent_kafka import Producer

    from streams.kafka.clients import producer_config

    kinds = ("view", "click", "add_to_cart", "purchase")
    positions: dict[int, int] = {}

    def delivered(err, msg):  # type: ignore[no-untyped-def]
        if err is None:
            positions[msg.partition()] = max(positions.get(msg.partition(), 0), msg.offset() + 1)

    producer = Producer(
        {
            **producer_config(settings),
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed)
        while n < due:
            user = users[(n * 7919) % len(users)]
            record = {
                "user_id": user,
                "item_id": items[(n * 104729) % len(items)],
                "event_type": kinds[n % 4],
                "ts": start_ts + n * 1e-3,
            }
            try:
                producer.produce(
                    settings.events_topic, key=user.encode(), value=orjson.dumps(record), on_delivery=delivered
                )
            except BufferError:
                producer.poll(0.01)
                continue
            n += 1
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(120)
    out.put((n, positions))


def _settings(bootstrap: str, overrides: dict[str, str]) -> Settings:
    env = {f"RERANKER_{k.upper()}": str(v) for k, v in overrides.items() if not k.isupper()}
    return Settings.load(env=embedded_env(bootstrap, env))


def _ready_workers(
    bootstrap: str, services: list[Service], bw: BenchWorld, settings: Settings, timeout: float = 180.0
) -> None:
    """Wait until every worker answers: rounds of probes over many users until, in one round,
    all are answered and every worker served some (the group has settled)."""
    deadline = time.monotonic() + timeout
    users = bw.users[:32]
    while True:
        for s in services:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited:\n{s.log_tail()}")
        before = [s.counter_or("reranker_requests_total", 'outcome="ok"') for s in services]
        ok = asyncio.run(
            probe(
                bootstrap,
                users,
                bw.items,
                timeout=min(30.0, max(1.0, deadline - time.monotonic())),
                requests_topic=settings.requests_topic,
                results_topic=settings.results_topic,
                partitions=settings.partitions,
                fetch_wait_ms=settings.consumer_fetch_wait_ms,
            )
        )
        after = [s.counter_or("reranker_requests_total", 'outcome="ok"') for s in services]
        if ok and all(a > b >= 0 for a, b in zip(after, before)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("workers not ready:\n" + "\n".join(s.log_tail() for s in services))
        time.sleep(1.0)


def measure(bw: BenchWorld, cfg: RunConfig, rate: float, work: Path) -> dict[str, Any]:
    """One window at ``rate`` on a fresh broker; returns a JSON-able record."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{cfg.target}-{int(rate)}-", dir=work))
    services: list[Service] = []
    record: dict[str, Any] = {
        "kind": "latency",
        "target": cfg.target,
        "rate": rate,
        "candidates": cfg.candidates,
        "workers": cfg.workers,
        "window_s": cfg.window_s,
        "overrides": cfg.overrides,
        "store": cfg.store,
    }
    try:
        # Quiet is judged before this run's own processes start (an idle worker and broker
        # poll every few milliseconds and keep the load average near 0.5 by themselves).
        quiet = wait_for_quiet()
        record["load1_before_start"] = quiet["load1_before"]
        record["cpu_busy_before_start"] = quiet["cpu_busy_before"]
        record["quiet_wait_s"] = quiet["quiet_wait_s"]
        with fresh_broker(run_dir) as broker:
            settings = _settings(broker.bootstrap, cfg.overrides)
            create_topics(settings)
            model_dir = bw.model_dir
            if cfg.history_events:
                started = time.monotonic()
                ends = produce_events(settings, history_events(bw, cfg.history_events))
                record["history_events"] = cfg.history_events
                record["history_produce_s"] = round(time.monotonic() - started, 2)
                if cfg.target == "worker":
                    model_dir = history_model(work, settings, cfg.history_events, ends)
            if cfg.target == "worker":
                services = [
                    start_worker(broker.bootstrap, model_dir, run_dir, cfg.overrides, store=cfg.store, index=i)
                    for i in range(cfg.workers)
                ]
                t_start = time.monotonic()
                _ready_workers(broker.bootstrap, services, bw, settings)
                record["worker_ready_s"] = round(time.monotonic() - t_start, 1)
                if cfg.state_events_per_user:
                    events = state_events(bw, cfg.state_events_per_user)
                    started = time.monotonic()
                    positions = produce_events(settings, events)
                    done = wait_committed(
                        broker.bootstrap, settings.app_id, settings.events_topic, positions, timeout=300
                    )
                    record["state_events"] = len(events)
                    record["state_events_s"] = round(done - started, 2)
            else:
                services = [
                    start_echo(
                        broker.bootstrap,
                        run_dir,
                        settings,
                        naive=cfg.target.startswith("echo-naive"),
                        events=cfg.target == "echo-naive-events",
                    )
                ]
                ok = asyncio.run(
                    probe(
                        broker.bootstrap,
                        bw.users[:8],
                        bw.items,
                        timeout=60,
                        partitions=settings.partitions,
                        fetch_wait_ms=settings.consumer_fetch_wait_ms,
                    )
                )
                if not ok:
                    raise RuntimeError(f"echo did not answer:\n{services[0].log_tail()}")
            factory = RequestFactory(bw.users, bw.items, cfg.candidates, seed=1)
            pids = {"broker": broker.process.pid, **{s.name: s.process.pid for s in services}}
            record["load1_before"] = load1()
            record["cpu_busy_before"] = cpu_busy()
            cpu_before = {k: _cpu_seconds(p) for k, p in pids.items()}
            client_before = time.process_time()
            metrics_before = [s.metrics() for s in services] if cfg.target == "worker" else []
            spy = None
            if cfg.profile == "py-spy" and cfg.target == "worker":
                spy = start_py_spy(
                    services[0].process.pid,
                    cfg.warmup_s + cfg.window_s,
                    work / f"profile-{cfg.target}-{int(rate)}-c{cfg.candidates}.txt",
                )
            producer_process, produced_queue = None, None
            if cfg.event_rate > 0:
                import multiprocessing

                produced_queue = multiprocessing.Queue()
                producer_process = multiprocessing.Process(
                    target=_produce_at_rate,
                    args=(
                        settings,
                        bw.users,
                        bw.items,
                        cfg.event_rate,
                        cfg.warmup_s + cfg.window_s,
                        bw.max_ts + 10_000.0,
                        produced_queue,
                    ),
                )
                producer_process.start()
            lag_samples: list[tuple[float, float]] = []
            sampling = threading.Event()

            def sample_lag() -> None:
                # The monitor timer sets the lag gauge: if the events path held the loop, it would freeze.
                while not sampling.wait(0.5):
                    with contextlib.suppress(Exception):
                        lag = sum(v for k, v in services[0].metrics().items() if k.startswith("reranker_consumer_lag"))
                        lag_samples.append((time.monotonic(), lag))

            sampler = threading.Thread(target=sample_lag, daemon=True)
            if cfg.event_rate > 0:
                sampler.start()
            t0 = time.monotonic()
            result = asyncio.run(
                run_open_loop(
                    broker.bootstrap,
                    factory,
                    rate=rate,
                    window_s=cfg.window_s,
                    warmup_s=cfg.warmup_s,
                    drain_s=cfg.drain_s,
                    requests_topic=settings.requests_topic,
                    results_topic=settings.results_topic,
                    partitions=settings.partitions,
                    fetch_wait_ms=CLIENT_FETCH_WAIT_MS,
                )
            )
            elapsed = time.monotonic() - t0
            sampling.set()
            if lag_samples:
                changes = [t for (t, v), (_, w) in itertools.pairwise(lag_samples) if v != w]
                record["lag_samples"] = len(lag_samples)
                record["lag_max"] = max(v for _, v in lag_samples)
                record["lag_longest_unchanged_s"] = round(
                    max(
                        (b - a for a, b in itertools.pairwise([lag_samples[0][0], *changes, lag_samples[-1][0]])),
                        default=0.0,
                    ),
                    2,
                )
            if spy is not None:
                spy.wait(60)
            cpu_after = {k: _cpu_seconds(p) for k, p in pids.items()}
            record["cpu_share"] = {k: round((cpu_after[k] - cpu_before[k]) / elapsed, 3) for k in pids}
            record["cpu_share"]["client"] = round((time.process_time() - client_before) / elapsed, 3)
            if producer_process is not None and produced_queue is not None:
                produced, positions = produced_queue.get(timeout=300)
                producer_process.join(30)
                record["event_rate"] = cfg.event_rate
                record["events_produced"] = produced
                record["events_produced_per_s"] = round(produced / (cfg.warmup_s + cfg.window_s), 1)
                # Back to steady state: the worker has applied (committed) every produced event.
                ended = time.monotonic()
                done = wait_committed(broker.bootstrap, settings.app_id, settings.events_topic, positions, timeout=600)
                record["catch_up_after_window_s"] = round(done - ended, 2)
            # CPU per request offered: less sensitive to other load on the machine than wall times.
            n_offered = max(1, round(rate * (cfg.warmup_s + cfg.window_s)))
            record["cpu_us_per_request"] = {
                k: round(v * elapsed / n_offered * 1e6, 1) for k, v in record["cpu_share"].items()
            }
            record["load1_after"] = load1()
            record.update(result.summary())
            record["sustainable"] = result.sustainable()
            if cfg.target == "worker":
                # The window's own samples (warm-up included): the counts after minus before,
                # summed over the workers, so the probes and start-up are left out.
                m: dict[str, float] = {}
                for s, before in zip(services, metrics_before):
                    for key, value in s.metrics().items():
                        m[key] = m.get(key, 0.0) + value - before.get(key, 0.0)
                record["worker_batch_mean"] = _hist_mean(m, "reranker_batch_requests")
                record["worker_stale_answers"] = m.get("reranker_stale_answers_total", 0.0)
                record["worker_barrier_wait_ms_mean"] = _hist_mean(m, "reranker_read_barrier_wait_seconds", 1000.0)
                record["worker_barrier_wait_ms_p99"] = _hist_quantile(
                    m, "reranker_read_barrier_wait_seconds", 0.99, 1000.0
                )
                record["worker_events_applied"] = sum(v for k, v in m.items() if k.startswith("reranker_events_total"))
                record["worker_score_ms_mean"] = _hist_mean(m, "reranker_score_duration_seconds", 1000.0)
                # Request ts (set by the client at send) to the worker's publish; the rest of the
                # client's figure is the way back (producer linger, broker, client fetch).
                record["worker_request_latency_ms_mean"] = _hist_mean(m, "reranker_request_latency_seconds", 1000.0)
                record["worker_request_latency_ms_p50"] = _hist_quantile(
                    m, "reranker_request_latency_seconds", 0.5, 1000.0
                )
                for s in services:
                    if not s.alive():
                        record["worker_died"] = s.log_tail()
    finally:
        for s in services:
            s.stop()
        if KEEP_LOGS:
            for s in services:
                shutil.copy(s.log_path, work / f"{s.name}-{int(time.time())}.log")
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def _hist_mean(metrics: dict[str, float], name: str, scale: float = 1.0) -> float | None:
    total, count = metrics.get(f"{name}_sum"), metrics.get(f"{name}_count")
    if not count:
        return None
    return round(scale * (total or 0.0) / count, 3)


def _hist_quantile(metrics: dict[str, float], name: str, q: float, scale: float = 1.0) -> float | None:
    """Quantile of a Prometheus histogram by linear interpolation inside its bucket."""
    buckets = []
    for key, value in metrics.items():
        if key.startswith(f"{name}_bucket{{") and 'le="' in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return round(scale * lower_bound, 3)
            share = (target - lower_count) / max(1e-12, count - lower_count)
            return round(scale * (lower_bound + share * (bound - lower_bound)), 3)
        lower_bound, lower_count = bound, count
    return None


def ladder(
    bw: BenchWorld,
    cfg: RunConfig,
    rates: Sequence[float],
    work: Path,
    emit: Callable[[dict[str, Any]], None],
    stop_after_failures: int = 1,
) -> dict[str, Any]:
    """Measure each rate in turn; the maximum sustainable rate is the highest one that passed
    (no missing result, p99 <= 100 ms) below the first failure."""
    records, failures, best = [], 0, None
    for rate in rates:
        rec = measure(bw, cfg, rate, work)
        emit(rec)
        say("  " + describe(rec))
        records.append(rec)
        if rec["sustainable"] and failures == 0:
            best = rate
        elif not rec["sustainable"]:
            failures += 1
            if failures >= stop_after_failures:
                break
    summary = {
        "kind": "ladder",
        "target": cfg.target,
        "candidates": cfg.candidates,
        "workers": cfg.workers,
        "overrides": cfg.overrides,
        "rates": list(rates),
        "max_sustainable": best,
    }
    emit(summary)
    return summary


def describe(rec: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    cpu = ", ".join(f"{k} {v:.0%}" for k, v in (rec.get("cpu_share") or {}).items())
    return (
        f"{rec['target']} x{rec.get('workers', 1)} {rec['rate']:g}/s {rec['candidates']} cand: "
        f"p50 {f(rec.get('p50_ms'))} p95 {f(rec.get('p95_ms'))} p99 {f(rec.get('p99_ms'))} "
        f"max {f(rec.get('max_ms'))} ms, achieved {rec.get('achieved_rate', 0):.0f}/s, "
        f"missing {rec.get('missing')}, sustainable {rec.get('sustainable')}; cpu {cpu}; "
        f"load1 {rec.get('load1_before')}, machine busy {rec.get('cpu_busy_before', float('nan')):.0%} before"
    )


# ----------------------------------------------------------------------------------------------
# Event ingestion and state size


def ingest(
    bw: BenchWorld,
    work: Path,
    *,
    n_users: int,
    n_events: int,
    store: str,
    overrides: dict[str, str],
    backlog: bool = True,
    timeout: float = 3600.0,
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """Events per second through the online-update path, and the worker's RSS and data dir after.

    With ``backlog`` the events are produced before the worker starts, so the rate is the
    worker's alone (no producer competing for the CPU); it is timed from the first applied
    event to the last, by the worker's reranker_events_total counter, and the committed
    offsets of the group confirm the end.
    """
    import numpy as np

    run_dir = Path(tempfile.mkdtemp(prefix=f"ingest-{n_users}-", dir=work))
    record: dict[str, Any] = {
        "kind": "ingest",
        "users": n_users,
        "events": n_events,
        "store": store,
        "overrides": overrides,
        "backlog": backlog,
    }
    worker = None
    try:
        quiet = wait_for_quiet()
        record["load1_before_start"] = quiet["load1_before"]
        record["cpu_busy_before_start"] = quiet["cpu_busy_before"]
        with fresh_broker(run_dir) as broker:
            settings = _settings(broker.bootstrap, overrides)
            create_topics(settings)
            rng = np.random.default_rng(3)
            width = max(7, len(str(n_users - 1)))
            user_of = rng.permutation(n_users)
            items = bw.items
            item_pick = rng.integers(len(items), size=n_events)
            kinds = ("view", "click", "add_to_cart", "purchase")
            start_ts = bw.max_ts + 1000.0

            def events() -> Iterator[dict[str, Any]]:
                for n in range(n_events):
                    # Every user gets an event before any gets a second one.
                    yield {
                        "user_id": f"v{user_of[n % n_users]:0{width}d}",
                        "item_id": items[int(item_pick[n])],
                        "event_type": kinds[n % len(kinds)],
                        "ts": start_ts + n,
                    }

            if not backlog:
                worker = start_worker(broker.bootstrap, bw.model_dir, run_dir, overrides, store=store)
                _ready_workers(broker.bootstrap, [worker], bw, settings)
            t_produce = time.monotonic()
            positions = produce_events(settings, list(events()))
            record["produce_s"] = round(time.monotonic() - t_produce, 2)
            say(f"  produced {n_events} events in {record['produce_s']}s")
            if backlog:
                worker = start_worker(broker.bootstrap, bw.model_dir, run_dir, overrides, store=store)
            rss_start = None
            record["load1_before"] = load1()
            first_at = None
            samples: list[tuple[float, float]] = []
            deadline = time.monotonic() + timeout
            cpu0 = None
            while True:
                if not worker.alive():
                    raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
                with contextlib.suppress(OSError):
                    # Every outcome counts (ok, or frozen when online updates are off): handled is handled.
                    applied = worker.counter("reranker_events_total")
                    now = time.monotonic()
                    if rss_start is None:
                        rss_start = rss_mb(worker.process.pid)
                    if applied > 0 and first_at is None:
                        first_at, cpu0 = now, _cpu_seconds(worker.process.pid)
                        broker_cpu0 = _cpu_seconds(broker.process.pid)
                        if profile_s:
                            start_py_spy(
                                worker.process.pid,
                                profile_s,
                                work / f"profile-ingest-{n_users}-{store.split(':')[0]}.txt",
                            )
                    samples.append((now, applied))
                    if applied >= n_events:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{applied} of {n_events} events applied in {timeout}s")
                time.sleep(0.25)  # /metrics costs the worker CPU: poll it sparingly
            last_at = samples[-1][0]
            cpu1 = _cpu_seconds(worker.process.pid)
            broker_cpu1 = _cpu_seconds(broker.process.pid)
            committed_at = wait_committed(
                broker.bootstrap, settings.app_id, settings.events_topic, positions, timeout=120
            )
            record["load1_after"] = load1()
            span = max(1e-9, last_at - first_at)
            record["apply_s"] = round(span, 2)
            record["events_per_s"] = round(n_events / span, 1)
            # Steady rate between 10% and 90% of the events (start-up and tail left out).
            lo = next(t for t, a in samples if a >= 0.1 * n_events)
            hi = next(t for t, a in samples if a >= 0.9 * n_events)
            record["events_per_s_10_90"] = round(0.8 * n_events / max(1e-9, hi - lo), 1)
            # Rate in each tenth of the events: shows whether ingestion slows as topics and state grow.
            marks = [first_at] + [next(t for t, a in samples if a >= q / 10 * n_events) for q in range(1, 11)]
            record["events_per_s_by_tenth"] = [
                round(0.1 * n_events / max(1e-9, b - a), 1) for a, b in itertools.pairwise(marks)
            ]
            record["commit_lag_s"] = round(committed_at - last_at, 2)
            record["worker_cpu_share"] = round((cpu1 - cpu0) / span, 3)
            record["broker_cpu_share"] = round((broker_cpu1 - broker_cpu0) / span, 3)
            # CPU per event (from the first applied event on; the last sample may run ~0.1 s late).
            record["worker_cpu_us_per_event"] = round((cpu1 - cpu0) / n_events * 1e6, 1)
            record["broker_cpu_us_per_event"] = round((broker_cpu1 - broker_cpu0) / n_events * 1e6, 1)
            if not backlog:
                record["produce_to_commit_events_per_s"] = round(n_events / (committed_at - t_produce), 1)
            time.sleep(2.0)  # let the store flush what it buffers before sizing it
            record["rss_mb_start"] = rss_start
            record["rss_mb"] = rss_mb(worker.process.pid)
            record["data_dir_mb"] = disk_mb(worker.data_dir) if worker.data_dir else None
            with contextlib.suppress(Exception):
                record["users_in_state_metric"] = worker.counter("reranker_users_in_state")
            with contextlib.suppress(Exception):
                record["batch_messages_mean"] = _hist_mean(worker.metrics(), "reranker_batch_messages")
    finally:
        if worker is not None:
            worker.stop()
            if KEEP_LOGS:
                shutil.copy(worker.log_path, work / f"{worker.name}-ingest-{int(time.time())}.log")
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


# ----------------------------------------------------------------------------------------------
# The Processor alone


def process_timing(
    model_dir: Path,
    items: Sequence[str],
    *,
    n_users: int = 10_000,
    n_events: int = 50_000,
    batch: int = 64,
    online: bool = True,
) -> dict[str, Any]:
    """Events per second through ``Processor.process`` alone: parsing, online updates and state
    encoding into a dict (no Kafka, no faust), in batches like the agent's; shows how much of
    a worker's time per event is the project's own code."""
    import numpy as np

    from models import load_artifact
    from streams.core.processing import InMessage, Processor
    from streams.core.state import decode_state, encode_state

    class EncodedDictStore:
        """Keeps states encoded, like the faust table, so the codec is part of the cost."""

        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        def get(self, user_id: str, source: InMessage) -> Any:
            raw = self.data.get(user_id)
            return decode_state(raw) if raw is not None else None

        def put(self, user_id: str, state: Any, source: InMessage) -> None:
            self.data[user_id] = encode_state(state)

    bundle = load_artifact(model_dir)
    settings = Settings.load(env={}, overrides={"online_updates": online})
    processor = Processor(bundle, settings, EncodedDictStore())
    rng = np.random.default_rng(3)
    kinds = ("view", "click", "add_to_cart", "purchase")
    width = max(7, len(str(n_users - 1)))
    messages = [
        InMessage(
            settings.events_topic,
            0,
            n,
            None,
            None,
            orjson.dumps(
                {
                    "user_id": f"v{n % n_users:0{width}d}",
                    "item_id": items[int(rng.integers(len(items)))],
                    "event_type": kinds[n % len(kinds)],
                    "ts": 1.75e9 + n,
                }
            ),
        )
        for n in range(n_events)
    ]
    load = wait_for_quiet()["load1_before"]
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, n_events, batch):
        processor.process(messages[i : i + batch])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "kind": "process",
        "users": n_users,
        "events": n_events,
        "batch": batch,
        "online": online,
        "events_per_s": round(n_events / wall, 1),
        "us_per_event": round(wall / n_events * 1e6, 1),
        "cpu_us_per_event": round(cpu / n_events * 1e6, 1),
        "load1_before": load,
    }


# ----------------------------------------------------------------------------------------------
# Model forward time


def forward_timing(
    model_dir: Path, *, calls: int = 3000, candidates: int = 100, threads: Sequence[int] = (0, 1)
) -> list[dict[str, Any]]:
    """Median time of one 100-candidate request: rerank_batch, the raw eager forward, TorchScript."""
    import numpy as np
    import torch

    from models import load_artifact
    from streams.core.scoring import ScoringInput, rerank_batch
    from streams.core.state import history_rows, initial_state

    bundle = load_artifact(model_dir)
    model = bundle.model
    user = next(iter(bundle.user_index))
    state = initial_state(bundle, user)
    rng = np.random.default_rng(0)
    ids = list(bundle.item_index)
    cands = [ids[int(i)] for i in rng.choice(len(ids), size=candidates, replace=False)]
    inp = ScoringInput(
        user_vector=state.vector,
        history=history_rows(bundle, state.history),
        candidates=cands,
        upstream=rng.random(candidates),
        k=None,
    )
    u = torch.from_numpy(state.vector[None, :].astype(np.float32))
    h = torch.from_numpy(inp.history[None, :])
    it = torch.tensor([[bundle.item_index[c] for c in cands]], dtype=torch.int64)
    default_threads = torch.get_num_threads()

    def timed(fn: Callable[[], Any]) -> dict[str, float]:
        for _ in range(200):
            fn()
        out = np.empty(calls)
        for n in range(calls):
            t = time.perf_counter()
            fn()
            out[n] = time.perf_counter() - t
        out *= 1000.0
        return {"median_ms": round(float(np.median(out)), 4), "p99_ms": round(float(np.percentile(out, 99)), 4)}

    def eager() -> Any:
        with torch.inference_mode():
            return model(u, h, it)

    with torch.inference_mode():
        scripted = torch.jit.freeze(torch.jit.trace(model.eval(), (u, h, it), check_trace=False))

    def script() -> Any:
        with torch.inference_mode():
            return scripted(u, h, it)

    records = []
    for n in threads:
        torch.set_num_threads(n or default_threads)
        load = wait_for_quiet()["load1_before"]
        rec = {
            "kind": "forward",
            "candidates": candidates,
            "torch_threads": torch.get_num_threads(),
            "calls": calls,
            "load1_before": load,
            "rerank_batch": timed(lambda: rerank_batch(bundle, [inp])),
            "model_forward_eager": timed(eager),
            "model_forward_torchscript": timed(script),
        }
        rec["load1_after"] = load1()
        records.append(rec)
    torch.set_num_threads(default_threads)
    return records


def padding_timing(
    model_dir: Path, *, calls: int = 200, small: int = 63, small_candidates: int = 20, big_candidates: int = 1000
) -> dict[str, Any]:
    """rerank_batch of ``small`` requests of ``small_candidates`` and one of ``big_candidates``:
    grouped by size (today) against one padded batch (``max_padding_share=inf``, as before)."""
    import math

    import numpy as np
    import torch

    from models import load_artifact
    from streams.core.scoring import ScoringInput, rerank_batch
    from streams.core.state import history_rows, initial_state

    bundle = load_artifact(model_dir)
    rng = np.random.default_rng(0)
    users = list(bundle.user_index)
    ids = list(bundle.item_index)

    def request(user: str, n: int) -> ScoringInput:
        state = initial_state(bundle, user)
        cands = [ids[int(i)] for i in rng.choice(len(ids), size=n, replace=False)]
        return ScoringInput(state.vector, history_rows(bundle, state.history), cands, rng.random(n), None)

    inputs = [request(users[i % len(users)], small_candidates) for i in range(small)]
    inputs.insert(small // 2, request(users[0], big_candidates))
    variants = {
        "one_padded_batch": lambda: rerank_batch(bundle, inputs, max_padding_share=math.inf),
        "grouped_by_size": lambda: rerank_batch(bundle, inputs),
    }
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's default (torch_threads)
    load = wait_for_quiet()["load1_before"]
    # The two alternate call by call, so a change in the machine's load weighs on both alike; CPU
    # time as well as wall time, since on a shared machine the wall time is mostly waiting.
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for n in range(calls + 10):
        for name, fn in variants.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if n >= 10:
                wall[name].append((time.perf_counter() - t) * 1000.0)
                cpu[name].append((time.process_time() - c) * 1000.0)
    torch.set_num_threads(default_threads)
    rec: dict[str, Any] = {
        "kind": "padding",
        "requests": f"{small} x {small_candidates} + 1 x {big_candidates} candidates",
        "calls": calls,
        "torch_threads": 1,
        "load1_before": load,
    }
    for name in variants:
        rec[name] = {
            "median_ms": round(float(np.median(wall[name])), 3),
            "p99_ms": round(float(np.percentile(wall[name], 99)), 3),
            "median_cpu_ms": round(float(np.median(cpu[name])), 3),
        }
    rec["load1_after"] = load1()
    return rec


# ----------------------------------------------------------------------------------------------
# Command line


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="model cache and scratch (default var/bench)")
    ap.add_argument("--out", help="JSON-lines results file (default WORK/results.jsonl)")
    ap.add_argument("--retrain", action="store_true", help="train the bench model again")
    ap.add_argument("--world-users", type=int, default=2000)
    ap.add_argument("--world-items", type=int, default=2000)
    ap.add_argument("--world-events", type=int, default=40_000)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--worker-repo", help="run the worker from this checkout (A/B of code versions)")
    ap.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="before each measurement wait (up to 15 min) for the 1-minute load average "
        "to fall to LOAD; the figure is recorded either way",
    )
    ap.add_argument("--keep-logs", action="store_true", help="copy each run's service logs to WORK")
    ap.add_argument("--quiet-max-wait", type=float, default=900.0, metavar="SECONDS")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("latency", help="latency windows at stepped rates (fresh broker each)")
    p.add_argument("--target", choices=TARGETS, default="worker")
    p.add_argument("--rates", default="100,200,300,400,600,800,1000")
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--store", default="memory://")
    p.add_argument("--state-events", type=int, default=3, help="events per user applied before the window")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="N events on the events topic before the service starts; the worker's model is "
        "trained from them (a deployment's log, e.g. 99000 as ML-100K)",
    )
    p.add_argument("--all-rates", action="store_true", help="do not stop at the first failing rate")
    p.add_argument("--profile", choices=("", "py-spy"), default="")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="worker setting (RERANKER_KEY), e.g. batch_window_ms=2; an upper-case KEY "
        "is a plain environment variable of the worker, e.g. OMP_NUM_THREADS=1",
    )

    p = sub.add_parser("backlog", help="requests while events arrive faster than the worker applies them")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--event-rate", type=float, required=True, help="events produced per second")
    p.add_argument("--profile", choices=("", "py-spy"), default="")
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--store", default="memory://")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("ingest", help="events/s through online updates, then RSS and disk")
    p.add_argument("--users", default="10000", help="comma-separated user counts")
    p.add_argument("--events", type=int, default=0, help="events per run (default: one per user)")
    p.add_argument("--store", default="rocksdb://")
    p.add_argument("--live", action="store_true", help="produce while the worker runs (default: backlog)")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sample the worker with py-spy for SECONDS from the first applied event",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("process", help="events/s through the Processor alone (no Kafka, no faust)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=64)

    p = sub.add_parser("forward", help="median forward time of one request")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--candidates", type=int, default=100)

    p = sub.add_parser("padding", help="rerank_batch of many small requests and one large: grouped vs padded")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--small", type=int, default=63, help="requests of 20 candidates beside the large one")
    p.add_argument("--big", type=int, default=1000, help="candidates of the large request")

    p = sub.add_parser("smoke", help="a few seconds at a low rate (CI)")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--window", type=float, default=3.0)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--target", choices=TARGETS, default="worker")

    a = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the broker and workers of a run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    global WORKER_REPO, QUIET_LOAD, QUIET_MAX_WAIT_S, KEEP_LOGS
    QUIET_LOAD, QUIET_MAX_WAIT_S = a.quiet, a.quiet_max_wait
    KEEP_LOGS = a.keep_logs
    if a.worker_repo:
        WORKER_REPO = Path(a.worker_repo).resolve()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out) if a.out else work / "results.jsonl"
    meta = machine()

    def emit(rec: dict[str, Any]) -> None:
        rec = {**rec, "command": " ".join(sys.argv), "machine": meta, "worker_repo": str(WORKER_REPO)}
        with open(out_path, "ab") as fh:
            fh.write(orjson.dumps(rec) + b"\n")

    bw = prepare_world(
        work,
        n_users=a.world_users,
        n_items=a.world_items,
        n_events=a.world_events,
        max_epochs=a.max_epochs,
        retrain=a.retrain,
    )
    if a.command == "latency":
        cfg = RunConfig(
            target=a.target,
            candidates=a.candidates,
            workers=a.workers,
            window_s=a.window,
            warmup_s=a.warmup,
            state_events_per_user=a.state_events,
            store=a.store,
            overrides=_overrides(a.set),
            profile=a.profile,
            history_events=a.history,
        )
        rates = [float(r) for r in a.rates.split(",")]
        summary = ladder(bw, cfg, rates, work, emit, stop_after_failures=len(rates) if a.all_rates else 1)
        say(
            f"max sustainable rate ({a.target}, {a.candidates} candidates, {a.workers} worker(s)): "
            f"{summary['max_sustainable']}"
        )
    elif a.command == "backlog":
        cfg = RunConfig(
            target="worker",
            candidates=a.candidates,
            window_s=a.window,
            warmup_s=a.warmup,
            drain_s=10.0,
            store=a.store,
            overrides=_overrides(a.set),
            event_rate=a.event_rate,
            profile=a.profile,
        )
        rec = measure(bw, cfg, a.rate, work)
        emit(rec)
        say(describe(rec))
        say(
            f"  events: {rec.get('events_produced')} produced ({rec.get('events_produced_per_s')}/s), "
            f"caught up {rec.get('catch_up_after_window_s')} s after the window; answers: "
            f"{rec['answered']}/{rec['sent']}, missing {rec['missing']}, max {rec['max_ms']} ms, "
            f"stale {rec['stale']} (worker counted {rec.get('worker_stale_answers')})"
        )
    elif a.command == "ingest":
        for users in [int(u) for u in a.users.split(",")]:
            rec = ingest(
                bw,
                work,
                n_users=users,
                n_events=a.events or users,
                store=a.store,
                overrides=_overrides(a.set),
                backlog=not a.live,
                profile_s=a.profile,
            )
            emit(rec)
            say(
                f"  ingest {users} users / {rec['events']} events ({a.store}): {rec['events_per_s']} events/s "
                f"(10-90%: {rec['events_per_s_10_90']}), worker cpu {rec['worker_cpu_share']:.0%} "
                f"({rec['worker_cpu_us_per_event']} us/event), broker cpu {rec['broker_cpu_share']:.0%}, "
                f"RSS {rec['rss_mb_start']} -> {rec['rss_mb']} MB, data dir {rec['data_dir_mb']} MB; "
                f"load1 {rec['load1_before']}"
            )
    elif a.command == "process":
        for batch in (1, a.batch):
            rec = process_timing(bw.model_dir, bw.items, n_users=a.users, n_events=a.events, batch=batch)
            emit(rec)
            say(
                f"  Processor alone, batches of {batch}: {rec['events_per_s']} events/s "
                f"({rec['us_per_event']} us/event); load1 {rec['load1_before']}"
            )
    elif a.command == "forward":
        for rec in forward_timing(bw.model_dir, calls=a.calls, candidates=a.candidates):
            emit(rec)
            say(
                f"  forward ({rec['candidates']} candidates, {rec['torch_threads']} torch threads): "
                f"rerank_batch {rec['rerank_batch']['median_ms']} ms, eager forward "
                f"{rec['model_forward_eager']['median_ms']} ms, TorchScript "
                f"{rec['model_forward_torchscript']['median_ms']} ms (medians); load1 {rec['load1_before']}"
            )
    elif a.command == "padding":
        rec = padding_timing(bw.model_dir, calls=a.calls, small=a.small, big_candidates=a.big)
        emit(rec)
        medians = ", ".join(
            f"{name} {rec[name]['median_ms']} ms ({rec[name]['median_cpu_ms']} ms CPU)"
            for name in ("one_padded_batch", "grouped_by_size")
        )
        say(f"  rerank_batch, {rec['requests']}, medians of {a.calls}: {medians}; load1 {rec['load1_before']}")
    elif a.command == "smoke":
        cfg = RunConfig(
            target=a.target,
            candidates=a.candidates,
            window_s=a.window,
            warmup_s=1.0,
            drain_s=10.0,
            state_events_per_user=1,
        )
        rec = measure(bw, cfg, a.rate, work)
        emit(rec)
        say(describe(rec))
        say(
            "SMOKE "
            + orjson.dumps(
                {k: rec.get(k) for k in ("sent", "answered", "missing", "errors", "p50_ms", "p99_ms", "achieved_rate")}
            ).decode()
        )
        return 0 if rec["missing"] == 0 and rec["answered"] > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
