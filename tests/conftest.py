"""Shared fixtures. Integration tests talk to a real embedded broker started here."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models import online_update_batch
from streams.devtools.broker import EmbeddedBroker, start_embedded_broker
from streams.devtools.processes import launch_worker, stop_process
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One fresh embedded broker for the test session; each module uses its own topics."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with start_embedded_broker(port=free_port(), log_file=log) as running:
        yield running


def isolated_settings(broker: EmbeddedBroker, **overrides: Any) -> Settings:
    """Settings with topic names and an app id nobody else in the session uses, in the embedded
    profile (``settings_env`` passes it, with every value, to child processes)."""
    tag = uuid.uuid4().hex[:8]
    base = Settings.load(env={}, overrides={"broker": broker.bootstrap, "profile": "embedded"})
    return dataclasses.replace(
        base,
        app_id=f"reranker-test-{tag}",
        events_topic=f"user-events-{tag}",
        requests_topic=f"rerank-requests-{tag}",
        results_topic=f"reranked-results-{tag}",
        dead_letter_topic=f"dead-letters-{tag}",
        model_updates_topic=f"model-updates-{tag}",
        items_topic=f"items-{tag}",
        **overrides,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The RERANKER_* environment that makes a child process use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    for name, value in settings.as_dict().items():
        env[f"RERANKER_{name.upper()}"] = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
    return env


@dataclasses.dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    web_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        return stop_process(self.process, timeout)


def start_worker(
    settings: Settings,
    model_dir: Path,
    workdir: Path,
    *extra: str,
    web_port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> WorkerProcess:
    """A real ``reranker worker`` process; its data dir is ``workdir/data-<web port>``;
    ``extra_env`` adds variables that are not settings (a fault-injection switch)."""
    create_topics(settings)
    metrics_port, web_port = free_port(), web_port or free_port()
    log_path = workdir / f"worker-{web_port}.log"
    process = launch_worker(
        model_dir,
        web_port=web_port,
        metrics_port=metrics_port,
        data_dir=workdir / f"data-{web_port}",
        log_path=log_path,
        extra_args=extra,
        env={**settings_env(settings), **(extra_env or {})},
        cwd=REPO,
    )
    return WorkerProcess(process, metrics_port, web_port, log_path)


def run_cli(settings: Settings, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``reranker ARGS`` as a user would, with ``settings`` in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Scores of one item from forward passes of different batch shapes (a padded batch or one request,
# another CPU's kernels) differ by a few float32 ulps: 1e-5 of a score in the 5th decimal on AMD
# EPYC, none on Intel Xeon. Results agree when their order is identical and every score is within
# this absolute bound (scores are O(1) and rounded to 5 decimals).
SCORE_ATOL = 1e-4


def assert_same_results(
    a: list[dict[str, Any]], b: list[dict[str, Any]], atol: float = SCORE_ATOL, ignore: tuple[str, ...] = ()
) -> None:
    """Results equal up to float noise: the same fields and item order, scores within ``atol``;
    ``ignore`` names fields left out (``("ts",)``: the publish time of two runs never agrees)."""
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b):
        strip = lambda r: {k: v for k, v in r.items() if k != "items" and k not in ignore}
        assert strip(x) == strip(y), (x, y)
        assert [i["item_id"] for i in x["items"]] == [i["item_id"] for i in y["items"]], x["request_id"]
        assert [i["rank"] for i in x["items"]] == [i["rank"] for i in y["items"]], x["request_id"]
        diffs = [abs(i["score"] - j["score"]) for i, j in zip(x["items"], y["items"])]
        assert max(diffs, default=0.0) <= atol, (x["request_id"], max(diffs))


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(interval)


@dataclasses.dataclass
class TrainedWorld:
    world: Any
    events: list[dict[str, Any]]
    model_dir: Path


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorld:
    """A small planted-taste world and a model trained on it (a few seconds)."""
    from streams.devtools.synthetic import generate_events, make_world
    from trainer.train import train_to_artifact

    world = make_world(n_users=120, n_items=60, n_clusters=3, seed=21)
    events = generate_events(world, 2500, seed=22)
    model_dir = train_to_artifact(
        events, tmp_path_factory.mktemp("model") / "m", seed=0, log=lambda line: None, max_epochs=8
    )
    return TrainedWorld(world, events, Path(model_dir))


@pytest.fixture
def bundle(trained_world: TrainedWorld):  # type: ignore[no-untyped-def]
    from models import load_artifact

    return load_artifact(trained_world.model_dir)


def online_update(
    bundle: Any,
    vec: np.ndarray,
    history: np.ndarray,
    item_row: int,
    weight: float,
    *,
    seed: int,
    steps: int = 3,
    lr: float = 0.05,
    n_negatives: int = 4,
) -> np.ndarray:
    """One event alone: `online_update_batch` with one row; [D], [H] -> new [D]."""
    return online_update_batch(
        bundle,
        np.asarray(vec, dtype=np.float32)[None],
        np.asarray(history)[None],
        np.array([item_row]),
        np.array([weight]),
        [seed],
        steps=steps,
        lr=lr,
        n_negatives=n_negatives,
    )[0]
