"""End to end on the real embedded broker: CLI produce -> train from the topic -> worker -> results."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.core.jsonl import read_jsonl, write_jsonl
from streams.devtools.synthetic import (
    World,
    cluster_share_at_k,
    events_for_cluster,
    generate_events,
    generate_requests,
    make_world,
)
from streams.kafka.clients import KafkaSender, ResultCollector, message_key, producer_config
from streams.settings import Settings
from tests.conftest import WorkerProcess, isolated_settings, run_cli, start_worker, wait_until

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Stack:
    settings: Settings
    world: World
    events_path: Path
    model_dir: Path
    worker: WorkerProcess
    workdir: Path


def ask(settings: Settings, requests: list[dict[str, Any]], timeout: float = 60.0) -> dict[str, dict]:
    """Send requests through Kafka and return their results by request id."""
    with ResultCollector(settings) as collector:
        sender = KafkaSender(settings)
        for request in requests:
            sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
        sender.flush()
        return collector.wait_for([r["request_id"] for r in requests], timeout)


def produce_and_locate(settings: Settings, records: list[dict[str, Any]]) -> dict[int, int]:
    """Produce events and return, per partition, the offset just past the last one written."""
    positions: dict[int, int] = {}

    def delivered(err, msg):  # type: ignore[no-untyped-def]
        assert err is None, err
        positions[msg.partition()] = max(positions.get(msg.partition(), 0), msg.offset() + 1)

    producer = Producer(producer_config(settings))
    for record in records:
        producer.produce(
            settings.events_topic, key=message_key(record), value=orjson.dumps(record), on_delivery=delivered
        )
    assert producer.flush(30) == 0
    return positions


def wait_until_processed(settings: Settings, positions: dict[int, int], timeout: float = 60.0) -> None:
    """Wait until the worker's consumer group has committed past ``positions``.

    faust commits an offset only after the agent has handled the message, so
    this is proof that the events were applied, without guessing a sleep.
    """
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id, "enable.auto.commit": False}
    )
    try:

        def done() -> bool:
            committed = consumer.committed([TopicPartition(settings.events_topic, p) for p in positions], timeout=10)
            return all(tp.offset >= positions[tp.partition] for tp in committed)

        wait_until(done, timeout, interval=0.2, what="worker committed the events")
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("e2e")
    settings = isolated_settings(broker)
    world = make_world(n_users=150, n_items=80, n_clusters=4, seed=3)
    events_path = write_jsonl(workdir / "events.jsonl", generate_events(world, 3000, seed=4))
    produced = run_cli(settings, "produce", "--topic", settings.events_topic, "--file", str(events_path))
    assert produced.returncode == 0, produced.stderr
    assert "produced 3000 records" in produced.stdout
    model_dir = workdir / "model"
    trained = run_cli(settings, "train", "--topic", settings.events_topic, "--out", str(model_dir), "--max-epochs", "8")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert sum(manifest["trained_through"]["offsets"].values()) == 3000
    worker = start_worker(settings, model_dir, workdir)
    try:
        probe = generate_requests(world, 1, seed=99, prefix="probe")
        got = ask(settings, probe, timeout=120)
        assert got, f"worker never answered:\n{worker.log()[-3000:]}"
        yield Stack(settings, world, events_path, model_dir, worker, workdir)
    finally:
        worker.stop()


def test_results_follow_the_contract(stack: Stack) -> None:
    requests = generate_requests(stack.world, 20, n_candidates=15, seed=5, k=5)
    requests += generate_requests(stack.world, 5, n_candidates=12, seed=6, prefix="all")  # no k: all
    manifest = json.loads((stack.model_dir / "manifest.json").read_text())
    results = ask(stack.settings, requests)
    assert len(results) == len(requests)
    for request in requests:
        result = results[request["request_id"]]
        assert result["user_id"] == request["user_id"]
        assert "error" not in result
        assert result["model"] == {"name": "dnn", "version": manifest["version"]}
        expected = min(request.get("k", len(request["candidates"])), len(request["candidates"]))
        items = result["items"]
        assert len(items) == expected
        assert [i["rank"] for i in items] == list(range(1, expected + 1))
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)
        assert {i["item_id"] for i in items} <= {c["item_id"] for c in request["candidates"]}


def test_online_update_lifts_the_users_cluster(stack: Stack) -> None:
    world, settings = stack.world, stack.settings
    user, cluster = "newcomer-1", 2
    world.user_cluster[user] = cluster
    everything = [{"item_id": i} for i in world.items]
    before = ask(settings, [{"request_id": "before", "user_id": user, "candidates": everything}])
    share_before = cluster_share_at_k(world, user, [i["item_id"] for i in before["before"]["items"]], 10)

    positions = produce_and_locate(settings, events_for_cluster(world, user, cluster, 8))
    wait_until_processed(settings, positions)

    after = ask(settings, [{"request_id": "after", "user_id": user, "candidates": everything}])
    share_after = cluster_share_at_k(world, user, [i["item_id"] for i in after["after"]["items"]], 10)
    assert share_after >= 0.8, (share_before, share_after)
    assert share_after > share_before


def test_replay_equals_offline_score(stack: Stack) -> None:
    settings, workdir = stack.settings, stack.workdir
    known_users = [u for u in stack.world.users if not u.startswith("newcomer")]
    requests_path = write_jsonl(
        workdir / "requests.jsonl",
        generate_requests(stack.world, 200, n_candidates=30, seed=7, k=10, prefix="parity", users=known_users),
    )
    live = run_cli(
        settings, "replay", "--requests", str(requests_path), "--out", str(workdir / "live.jsonl"), "--timeout", "60"
    )
    assert live.returncode == 0, live.stdout + live.stderr
    assert "0 missing" in live.stdout
    offline = run_cli(
        settings,
        "score",
        "--model",
        str(stack.model_dir),
        "--requests",
        str(requests_path),
        "--events",
        str(stack.events_path),
        "--out",
        str(workdir / "offline.jsonl"),
    )
    assert offline.returncode == 0, offline.stderr

    def orders(path: Path) -> dict[str, list[str]]:
        return {r["request_id"]: [i["item_id"] for i in r["items"]] for r in read_jsonl(path)}

    live_orders, offline_orders = orders(workdir / "live.jsonl"), orders(workdir / "offline.jsonl")
    assert live_orders.keys() == offline_orders.keys() and len(live_orders) == 200
    same = sum(live_orders[r] == offline_orders[r] for r in live_orders)
    assert same / len(live_orders) >= 0.99, f"{same} of {len(live_orders)} identical"


def test_bad_input_is_answered_and_dead_lettered(stack: Stack) -> None:
    settings = stack.settings
    with ResultCollector(settings, settings.dead_letter_topic) as dead, ResultCollector(settings) as results:
        sender = KafkaSender(settings)
        sender.send(settings.requests_topic, b"u00001", b"{not json")
        sender.send(
            settings.requests_topic,
            b"u00001",
            orjson.dumps({"request_id": "bad-1", "user_id": "u00001", "candidates": []}),
        )
        sender.send(
            settings.events_topic,
            b"u00001",
            orjson.dumps({"user_id": "u00001", "item_id": "i00001", "event_type": "teleport", "ts": 1.0}),
        )
        good = generate_requests(stack.world, 1, seed=8, prefix="good-after-bad")[0]
        sender.send(settings.requests_topic, message_key(good), orjson.dumps(good))
        sender.flush()
        answered = results.wait_for(["bad-1", good["request_id"]], timeout=60)
        reasons: list[str] = []
        wait_until(
            lambda: reasons.extend(r["reason"] for r in dead.poll(0.2)) or len(reasons) >= 3,
            timeout=60,
            what="three dead letters",
        )
    assert answered["bad-1"]["error"]["code"] == "no_candidates"
    assert answered["bad-1"]["items"] == []
    assert "error" not in answered[good["request_id"]]
    assert sorted(reasons) == ["invalid_json", "no_candidates", "unknown_event_type"]
    assert stack.worker.process.poll() is None, "the worker must survive bad input"
