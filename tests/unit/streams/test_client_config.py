"""Client properties set in the settings reach every Kafka client the project builds."""

import asyncio
import logging
from pathlib import Path

import aiokafka
import pytest

from models import load_artifact
from streams.kafka.clients import consumer_config, producer_config
from streams.kafka.follow import aiokafka_properties, follower_config
from streams.kafka.topics import admin_config
from streams.settings import Settings
from streams.worker.app import build_worker, faust_client_settings

EXTRA = {
    "RERANKER_CONSUMER_EXTRA_CONFIG": (
        '{"client.id": "reranker-a", "max.partition.fetch.bytes": 2097152, "fetch.min.bytes": 64,'
        ' "queued.max.messages.kbytes": 1024}'
    ),
    "RERANKER_PRODUCER_EXTRA_CONFIG": (
        '{"acks": "all", "compression.type": "lz4", "linger.ms": 20, "partitioner": "murmur2"}'
    ),
    "RERANKER_ADMIN_EXTRA_CONFIG": '{"request.timeout.ms": 60000}',
}


def test_extra_properties_reach_the_confluent_clients() -> None:
    settings = Settings.load(env=EXTRA)
    consumer = consumer_config(settings)
    assert consumer["client.id"] == "reranker-a" and consumer["queued.max.messages.kbytes"] == 1024
    producer = producer_config(settings)
    assert producer["compression.type"] == "lz4" and producer["linger.ms"] == 20
    assert producer["partitioner"] == "murmur2"  # over the project's own value
    assert "client.id" not in producer  # each client takes its own properties only
    assert admin_config(settings)["request.timeout.ms"] == 60000
    assert "request.timeout.ms" not in consumer_config(Settings.load(env={}))


def test_extra_properties_reach_the_aiokafka_follower_where_it_has_them() -> None:
    config = follower_config(Settings.load(env=EXTRA))
    assert config["client_id"] == "reranker-a" and config["fetch_min_bytes"] == 64
    assert config["max_partition_fetch_bytes"] == 2097152
    assert "queued_max_messages_kbytes" not in config  # librdkafka only

    async def build() -> None:  # the client takes every keyword as given (it is not started)
        aiokafka.AIOKafkaConsumer(**config)

    asyncio.run(build())
    assert aiokafka_properties({"no.such.property": 1}, aiokafka.AIOKafkaConsumer) == {}


def test_extra_properties_reach_faust_where_it_has_them(
    trained_world, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env=EXTRA)
    mapped, left_out = faust_client_settings(settings)
    assert set(left_out) == {"consumer:fetch.min.bytes", "consumer:queued.max.messages.kbytes", "producer:partitioner"}
    with caplog.at_level(logging.WARNING):
        worker = build_worker(settings, load_artifact(trained_world.model_dir), web_port=6098, data_dir=tmp_path)
    assert "producer:partitioner" in caplog.text
    conf = worker.app.conf
    assert conf.broker_client_id == "reranker-a"
    assert conf.consumer_max_fetch_size == 2097152
    assert conf.producer_acks == -1
    assert conf.producer_compression_type == "lz4"
    assert conf.producer_linger == pytest.approx(0.02)
    assert mapped["producer_linger"] == pytest.approx(0.02)
