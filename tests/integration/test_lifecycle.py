"""Trainer service and hot swap on a real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from models import load_artifact, store
from streams.core.jsonl import read_jsonl
from streams.devtools.synthetic import generate_events, generate_requests, make_world
from streams.kafka.clients import KafkaSender, ResultCollector, message_key, produce_records
from streams.kafka.topics import create_topics
from tests.conftest import REPO, isolated_settings, run_cli, settings_env, start_worker
from trainer.service import run_once

pytestmark = pytest.mark.integration


def test_publish_announce_and_swap_while_requests_flow(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, models_dir=str(tmp_path / "models"), promotion_tolerance=1.0)
    world = make_world(n_users=100, n_items=60, n_clusters=3, seed=31)
    # Before the first produce, which would create the events topic with the broker's partition
    # count: the worker refuses events and requests topics of different counts.
    create_topics(settings)
    produce_records(settings, settings.events_topic, generate_events(world, 2000, seed=32))
    first = run_cli(settings, "train-service", "--once", "--max-epochs", "5")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "trainer: promoted" in first.stdout
    [v1] = store.versions(settings.models_dir)

    worker = start_worker(settings, Path(settings.models_dir), tmp_path)
    results: dict[str, dict] = {}
    sent: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with ResultCollector(settings) as collector:
            sender = KafkaSender(settings)
            n = 0
            while not stop.is_set():
                [request] = generate_requests(world, 1, n_candidates=20, seed=n, prefix=f"flow-{n}")
                sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
                sender.flush()
                sent.append(request["request_id"])
                for result in collector.poll(0.02):
                    results[result["request_id"]] = result
                n += 1
            results.update(collector.wait_for(sent, timeout=60))

    flow = threading.Thread(target=traffic)
    flow.start()
    try:
        deadline = time.monotonic() + 120
        # list(): a snapshot, since the traffic thread is still adding results.
        while not any(r["model"]["version"] == v1.name for r in list(results.values())):
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.2)
        produce_records(settings, settings.events_topic, generate_events(world, 1000, seed=33, start_ts=1_750_000_000))
        second = run_cli(settings, "train-service", "--once", "--max-epochs", "5")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "trainer: promoted" in second.stdout, second.stdout
        v2 = store.newest(settings.models_dir)
        assert v2 is not None and v2.name != v1.name
        while not any(r["model"]["version"] == v2.name for r in list(results.values())):
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.2)
    finally:
        stop.set()
        flow.join(90)
        worker.stop()
    assert set(sent) == set(results), f"{len(set(sent) - set(results))} requests unanswered"
    assert not [r for r in results.values() if "error" in r]
    versions = [results[rid]["model"]["version"] for rid in sent]
    # One switch, never back: every result after the first v2 one is v2.
    first_v2 = versions.index(v2.name)
    assert set(versions[:first_v2]) == {v1.name} and set(versions[first_v2:]) == {v2.name}
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["promotion"]["decision"] == "promoted"
    assert manifest["promotion"]["serving_version"] == v1.name


def test_gate_rejects_a_worse_model(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, models_dir=str(tmp_path / "models"), promotion_tolerance=0.01)
    world = make_world(n_users=100, n_items=60, n_clusters=3, seed=41)
    produce_records(settings, settings.events_topic, generate_events(world, 2500, seed=42))
    good = run_once(settings, max_epochs=6, announce=False, progress=lambda line: None)
    assert good.decision == "promoted"
    produce_records(settings, settings.events_topic, generate_events(world, 800, seed=43, start_ts=1.75e9))

    from trainer.train import train_to_artifact

    def scrambled(events, out_dir, **kwargs):  # type: ignore[no-untyped-def]
        # The same events with items shuffled among them: a model of noise.
        items = [e["item_id"] for e in events]
        order = list(reversed(items))
        noisy = [{**e, "item_id": order[i]} for i, e in enumerate(events)]
        return train_to_artifact(noisy, out_dir, **kwargs)

    bad = run_once(settings, max_epochs=6, announce=False, progress=lambda line: None, train_fn=scrambled)
    assert bad.decision == "rejected", (bad.candidate, bad.serving)
    assert bad.candidate["ndcg@10"] < bad.serving["ndcg@10"] - 0.01  # type: ignore[index]
    assert [p.name for p in store.versions(settings.models_dir)] == [good.version]
    decisions = list(read_jsonl(Path(settings.models_dir) / "decisions.jsonl"))
    assert [d["decision"] for d in decisions] == ["promoted", "rejected"]
    assert decisions[1]["serving"]["ndcg@10"] == pytest.approx(bad.serving["ndcg@10"])  # type: ignore[index]


def test_a_killed_trainer_never_leaves_a_loadable_half_model(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, models_dir=str(tmp_path / "models"))
    world = make_world(n_users=100, n_items=60, n_clusters=3, seed=51)
    produce_records(settings, settings.events_topic, generate_events(world, 2500, seed=52))
    env = settings_env(settings)
    for delay in (1.0, 2.0, 3.0, 4.5):
        process = subprocess.Popen(
            [sys.executable, "-m", "streams", "train-service", "--once", "--max-epochs", "8"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        for version in store.versions(settings.models_dir):
            load_artifact(version)  # every visible version is complete
        visible = (
            [p for p in Path(settings.models_dir).iterdir() if not p.name.startswith(".")]
            if Path(settings.models_dir).exists()
            else []
        )
        assert all(store.is_artifact(p) for p in visible if p.is_dir())
    finished = run_cli(settings, "train-service", "--once", "--max-epochs", "8")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert store.newest(settings.models_dir) is not None
