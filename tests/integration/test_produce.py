"""``reranker produce`` against a real broker: items keyed by item_id, unknown topics refused."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from streams.core.jsonl import write_jsonl
from streams.kafka.clients import consumer_config
from streams.kafka.topics import create_topics
from streams.settings import Settings
from tests.conftest import isolated_settings, run_cli, wait_until

pytestmark = pytest.mark.integration


def keyed_messages(settings: Settings, topic: str, count: int) -> list[tuple[bytes | None, dict]]:
    consumer = Consumer(consumer_config(settings))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[tuple[bytes | None, dict]] = []

        def read() -> bool:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    got.append((msg.key(), orjson.loads(msg.value() or b"")))
            return len(got) >= count

        wait_until(read, timeout=30, what=f"{count} messages on {topic}")
        return got
    finally:
        consumer.close()


def topics(settings: Settings) -> set[str]:
    return set(AdminClient({"bootstrap.servers": settings.bootstrap}).list_topics(timeout=10).topics)


def test_items_go_to_the_compacted_topic_keyed_by_item_id(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    items = [{"item_id": f"item-{n}", "title": f"Item {n}", "genres": ["drama"]} for n in range(5)]
    write_jsonl(tmp_path / "items.jsonl", items)
    done = run_cli(settings, "produce", "--topic", settings.items_topic, "--file", str(tmp_path / "items.jsonl"))
    assert done.returncode == 0, done.stderr
    got = keyed_messages(settings, settings.items_topic, len(items))
    assert sorted(got, key=lambda kv: kv[1]["item_id"]) == [(i["item_id"].encode(), i) for i in items]

    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.items_topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_an_item_without_item_id_fails_loudly(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a"}, {"title": "no id"}, {"item_id": "c"}])
    done = run_cli(settings, "produce", "--topic", settings.items_topic, "--file", str(tmp_path / "items.jsonl"))
    assert done.returncode == 2
    assert "record 2 has no 'item_id'" in done.stderr
    assert "Traceback" not in done.stderr
    assert [key for key, _ in keyed_messages(settings, settings.items_topic, 1)] == [b"a"]


def test_an_unknown_topic_is_refused_unless_created_on_purpose(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    write_jsonl(tmp_path / "events.jsonl", [{"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 1.0}])
    typo = settings.events_topic.replace("events", "evnets")
    done = run_cli(settings, "produce", "--topic", typo, "--file", str(tmp_path / "events.jsonl"))
    assert done.returncode == 2
    assert f"no topic {typo!r}" in done.stderr and settings.events_topic in done.stderr
    assert typo not in topics(settings)

    done = run_cli(settings, "produce", "--topic", typo, "--file", str(tmp_path / "events.jsonl"), "--create")
    assert done.returncode == 0, done.stderr
    assert typo in topics(settings)
    # Once it exists, it is a topic like any other.
    done = run_cli(settings, "produce", "--topic", typo, "--file", str(tmp_path / "events.jsonl"))
    assert done.returncode == 0, done.stderr
    assert [key for key, _ in keyed_messages(settings, typo, 2)] == [b"u1", b"u1"]


def test_the_results_topic_takes_the_largest_result_the_worker_may_send(broker) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    create_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.results_topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    # Kafka's default (1,048,588 bytes) is below a result of a request at max_message_bytes.
    assert int(config["max.message.bytes"].value) == settings.largest_result_bytes() > 1_048_588
