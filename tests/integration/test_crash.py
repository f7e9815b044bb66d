"""SIGKILL a RocksDB worker mid-stream: nothing lost, duplicates identical, state as without the crash."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from models import load_artifact
from streams.core.offline import score_offline
from streams.devtools.synthetic import events_for_cluster, generate_requests
from streams.kafka.clients import KafkaSender, ResultCollector, message_key
from tests.conftest import isolated_settings, start_worker
from tests.integration.test_end_to_end import ask

pytestmark = pytest.mark.integration


def test_sigkill_mid_stream_loses_nothing(broker, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    settings = isolated_settings(broker, store="rocksdb://")
    users = {f"crash-{n}": n % world.n_clusters for n in range(20)}
    events = [
        e
        for n, (u, c) in enumerate(users.items())
        for e in events_for_cluster(world, u, c, 6, seed=200 + n, start_ts=1.75e9 + 1000 * n)
    ]
    worker = start_worker(settings, trained_world.model_dir, tmp_path, "--store", "rocksdb://")
    ask(settings, generate_requests(world, 1, seed=0, prefix="warm"), timeout=120)

    answers: dict[str, list[list[str]]] = defaultdict(list)
    sent: list[str] = []
    stop = threading.Event()
    first_after: list[float] = []
    killed_at: list[float] = []

    def traffic() -> None:
        sender = KafkaSender(settings)
        with ResultCollector(settings) as collector:
            n = 0
            pending_events = list(events)
            while not stop.is_set() or len(answers) < len(sent):
                if not stop.is_set():
                    for event in pending_events[:6]:
                        sender.send(settings.events_topic, message_key(event), orjson.dumps(event))
                    pending_events = pending_events[6:]
                    [request] = generate_requests(world, 1, n_candidates=20, seed=n, prefix=f"c{n}")
                    sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
                    sender.flush()
                    sent.append(request["request_id"])
                    n += 1
                elif time.monotonic() > deadline:
                    break
                for result in collector.poll(0.02):
                    answers[result["request_id"]].append([i["item_id"] for i in result["items"]])
                    if killed_at and not first_after and result["request_id"] not in answers_before:
                        first_after.append(time.monotonic())
        sender.close()

    answers_before: set[str] = set()
    deadline = float("inf")
    flow = threading.Thread(target=traffic)
    flow.start()
    try:
        time.sleep(3)
        answers_before.update(answers)
        killed_at.append(time.monotonic())
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        restarted = start_worker(
            settings, trained_world.model_dir, tmp_path, "--store", "rocksdb://", web_port=worker.web_port
        )
        time.sleep(3)
    finally:
        deadline = time.monotonic() + 90
        stop.set()
        flow.join(120)
    try:
        lost = [r for r in sent if r not in answers]
        duplicated = [r for r, got in answers.items() if len(got) > 1]
        recovery = first_after[0] - killed_at[0] if first_after else None
        print(
            f"crash: sent {len(sent)}, answered {len(answers)}, duplicated {len(duplicated)}, "
            f"lost {len(lost)}, recovery {recovery:.1f}s"
            if recovery
            else "no answer after the kill"
        )
        assert not lost, f"{len(lost)} of {len(sent)} requests lost: {lost[:5]}"
        assert all(all(g == got[0] for g in got) for got in answers.values()), "duplicates differ"
        assert recovery is not None

        # Users' state equals a run that never crashed (each event learned exactly once).
        check = [
            {"request_id": f"state-{u}", "user_id": u, "candidates": [{"item_id": i} for i in world.items]}
            for u in users
        ]
        live = ask(settings, check, timeout=60)
        reference = {
            r["request_id"]: r for r in score_offline(load_artifact(trained_world.model_dir), settings, check, events)
        }
        same = sum(
            [i["item_id"] for i in live[r]["items"]] == [i["item_id"] for i in reference[r]["items"]] for r in reference
        )
        assert same == len(reference), f"{same} of {len(reference)} users match the crash-free state"
    finally:
        restarted.stop()
