"""Keys and partitions on a live worker: a mis-keyed message is dead-lettered, a message from a
producer on librdkafka's default partitioner is re-routed and reaches its user's state."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from models import load_artifact
from streams.core.offline import score_stream_offline
from streams.core.partitioning import partition_for
from streams.devtools.synthetic import events_for_cluster
from streams.kafka.clients import KafkaSender, ResultCollector
from streams.settings import Settings
from tests.conftest import WorkerProcess, assert_same_results, isolated_settings, start_worker, wait_until
from tests.integration.test_end_to_end import ask
from tests.integration.test_faulty_models import metric

pytestmark = pytest.mark.integration

CLICKS_OK = 'reranker_events_total{event_type="click",outcome="ok"}'


def request_for(world, user: str, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    return {"request_id": request_id, "user_id": user, "k": 10, "candidates": [{"item_id": i} for i in world.items]}


def offline(settings: Settings, model_dir: Path, events: list[dict], requests: list[dict]) -> list[dict]:
    """The reference: every event, then every request, one message at a time."""
    lines = [{"kind": "event", **e} for e in events] + [{"kind": "request", **r} for r in requests]
    return score_stream_offline(load_artifact(model_dir), settings, lines)


def warm(settings: Settings, world, worker: WorkerProcess) -> None:  # type: ignore[no-untyped-def]
    got = ask(settings, [request_for(world, "warm-up", "warm-up")], timeout=120)
    assert got, f"worker never answered:\n{worker.log()[-3000:]}"


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_a_message_keyed_other_than_its_user_is_dead_lettered(broker, trained_world, tmp_path, store: str) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, store=store)
    world = trained_world.world
    user, cluster = "mis-keyed", 1
    world.user_cluster[user] = cluster
    clicks = events_for_cluster(world, user, cluster, 8, seed=3, start_ts=1.75e9)
    reference_cold = offline(settings, trained_world.model_dir, [], [request_for(world, user, "good")])
    reference_warm = offline(settings, trained_world.model_dir, clicks, [request_for(world, user, "good")])
    # The clicks move this user's ranking: were they applied, the answer below would differ.
    assert [i["item_id"] for i in reference_cold[0]["items"]] != [i["item_id"] for i in reference_warm[0]["items"]]
    worker = start_worker(settings, trained_world.model_dir, tmp_path, "--store", store)
    try:
        warm(settings, world, worker)
        with ResultCollector(settings, settings.dead_letter_topic) as dead, ResultCollector(settings) as results:
            sender = KafkaSender(settings)
            for click in clicks:
                sender.send(settings.events_topic, b"another-user", orjson.dumps(click))
            sender.send(settings.requests_topic, None, orjson.dumps(request_for(world, user, "unkeyed")))
            sender.flush()
            answered = results.wait_for(["unkeyed"], timeout=60)
            letters: list[dict] = []
            wait_until(
                lambda: letters.extend(dead.poll(0.2)) or len(letters) >= len(clicks) + 1,
                timeout=60,
                what="dead letters",
            )
        good = ask(settings, [request_for(world, user, "good")], timeout=60)
        assert metric(worker.metrics_port, 'reranker_dead_letters_total{reason="key_mismatch"}') == len(clicks) + 1
    finally:
        worker.stop()
    assert answered["unkeyed"]["error"]["code"] == "key_mismatch"
    assert sorted(d["reason"] for d in letters) == ["key_mismatch"] * (len(clicks) + 1)
    # None of the mis-keyed clicks reached the user's state.
    assert_same_results([good["good"]], reference_cold, ignore=("ts",))


def test_events_from_librdkafkas_default_partitioner_reach_their_users_state(broker, trained_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    partitions = 12
    settings = isolated_settings(broker, store="rocksdb://", partitions=partitions)
    world = trained_world.world
    users = {f"crc-user-{n}": n % world.n_clusters for n in range(6)}
    events = [
        e
        for n, (user, cluster) in enumerate(users.items())
        for e in events_for_cluster(world, user, cluster, 8, seed=40 + n, start_ts=1.75e9 + 100 * n)
    ]
    for user, cluster in users.items():
        world.user_cluster[user] = cluster
    requests = [request_for(world, user, f"after-{user}") for user in users]
    reference = offline(settings, trained_world.model_dir, events, requests)
    worker = start_worker(settings, trained_world.model_dir, tmp_path, "--store", "rocksdb://")
    try:
        warm(settings, world, worker)
        placed: dict[str, int] = {}

        def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
            assert err is None, err
            placed[msg.key().decode()] = msg.partition()

        # No partitioner setting: librdkafka's default, consistent_random (CRC32 of the key).
        producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all"})
        for event in events:
            producer.produce(
                settings.events_topic, key=event["user_id"].encode(), value=orjson.dumps(event), on_delivery=delivered
            )
        assert producer.flush(30) == 0
        misplaced = [u for u in users if placed[u] != partition_for(u.encode(), partitions)]
        assert len(misplaced) >= 3, placed  # the case this test is about
        wait_until(
            lambda: metric(worker.metrics_port, CLICKS_OK) >= len(events),
            timeout=60,
            what="every event applied",
        )
        live = ask(settings, requests, timeout=60)
        rerouted = metric(worker.metrics_port, 'reranker_wrong_partition_total{topic="' + settings.events_topic + '"}')
    finally:
        worker.stop()
    print(f"placement: {len(misplaced)} of {len(users)} users off their partition, {rerouted:.0f} events re-routed")
    assert_same_results([live[r["request_id"]] for r in requests], reference, ignore=("ts",))
    assert rerouted == 8 * len(misplaced)
    # The producer's fix is logged once for the topic, not once per message.
    assert worker.log().count("partitioner=murmur2_random") == 1, worker.log()[-3000:]
