"""Keys and partitions: a message must be keyed by its user_id and sit on murmur2(key) mod N."""

from __future__ import annotations

import logging
import random
import zlib

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.cli import CliError, input_partitions
from streams.core.partitioning import murmur2, partition_for
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.devtools.synthetic import events_for_cluster
from streams.settings import Settings

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2), as signed Java ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key", list(JAVA_MURMUR2))
def test_murmur2_is_the_java_clients(key: bytes) -> None:
    assert murmur2(key) == JAVA_MURMUR2[key] & 0xFFFFFFFF


def test_partition_for_places_keys_as_aiokafka_and_faust_do() -> None:
    rng = random.Random(0)
    partitioner = DefaultPartitioner()
    for _ in range(5000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF
        for n in (1, 4, 7, 12):
            assert partition_for(key, n) == partitioner(key, list(range(n)), list(range(n)))


@pytest.fixture
def settings() -> Settings:
    return Settings.load(env={})


N = 12


def user_off_home(n: int = N) -> tuple[str, int, int]:
    """A user whose librdkafka-default (CRC32) partition is not their murmur2 partition."""
    for i in range(1000):
        user = f"misplaced-{i}"
        crc, home = zlib.crc32(user.encode()) % n, partition_for(user.encode(), n)
        if crc != home:
            return user, crc, home
    raise AssertionError("no such user")


def message(settings: Settings, kind: str, record: dict, key: bytes | None, partition: int, offset: int) -> InMessage:
    topic = settings.events_topic if kind == "event" else settings.requests_topic
    return InMessage(topic, partition, offset, 1.75e9 + offset, key, orjson.dumps(record))


def on_kafka(bundle, settings: Settings) -> Processor:  # type: ignore[no-untyped-def]
    return Processor(
        bundle,
        settings,
        DictStateStore(),
        partitions={settings.events_topic: N, settings.requests_topic: N},
        check_keys=True,
    )


def test_a_message_under_another_key_is_dead_lettered_and_a_request_answered(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    user = "keyed-wrong"
    home = partition_for(user.encode(), N)
    [click] = events_for_cluster(world, user, 0, 1, start_ts=1.75e9)
    request = {"request_id": "r1", "user_id": user, "candidates": [{"item_id": i} for i in world.items[:5]]}
    processor = on_kafka(bundle, settings)
    outputs = processor.process(
        [
            message(settings, "event", click, b"someone-else", home, 0),
            message(settings, "event", click, None, home, 1),
            message(settings, "request", request, user.upper().encode(), home, 0),
        ]
    )
    letters = [orjson.loads(o.value) for o in outputs if o.topic == settings.dead_letter_topic]
    assert [d["reason"] for d in letters] == ["key_mismatch"] * 3
    [answer] = [orjson.loads(o.value) for o in outputs if o.topic == settings.results_topic]
    assert answer["request_id"] == "r1" and answer["error"]["code"] == "key_mismatch"
    assert [o.key for o in outputs if o.topic == settings.results_topic] == [user.encode()]
    assert processor.store.states == {}  # type: ignore[attr-defined]
    assert processor.metrics.dead_letters.labels("key_mismatch")._value.get() == 3
    assert processor.metrics.requests.labels("key_mismatch")._value.get() == 1
    assert processor.metrics.events.labels("invalid", "key_mismatch")._value.get() == 2


def test_a_message_off_its_partition_is_re_routed_and_logged_once(bundle, trained_world, settings, caplog) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    user, wrong, home = user_off_home()
    clicks = events_for_cluster(world, user, 1, 2, start_ts=1.75e9)
    request = {"request_id": "r2", "user_id": user, "candidates": [{"item_id": i} for i in world.items[:5]]}
    incoming = [
        message(settings, "event", clicks[0], user.encode(), wrong, 10),
        message(settings, "event", clicks[1], user.encode(), wrong, 11),
        message(settings, "request", request, user.encode(), wrong, 3),
    ]
    processor = on_kafka(bundle, settings)
    with caplog.at_level(logging.WARNING, logger="streams.core.processing"):
        outputs = processor.process(incoming)
    assert [(o.topic, o.key, o.value, o.partition, o.timestamp) for o in outputs] == [
        (m.topic, m.key, m.value, home, m.timestamp) for m in incoming
    ]
    assert processor.store.states == {}  # type: ignore[attr-defined]
    assert processor.metrics.wrong_partition.labels(settings.events_topic)._value.get() == 2
    assert processor.metrics.wrong_partition.labels(settings.requests_topic)._value.get() == 1
    warnings = [r.getMessage() for r in caplog.records if "murmur2_random" in r.getMessage()]
    assert len(warnings) == 2  # one per topic
    # On its own partition, the copy is handled: the events reach the user's state, the request
    # is answered from it.
    rerouted = [InMessage(o.topic, o.partition, n, o.timestamp, o.key, o.value) for n, o in enumerate(outputs)]
    answered = processor.process(rerouted)
    assert [orjson.loads(o.value)["request_id"] for o in answered] == ["r2"]
    assert len(processor.store.states[user].history) == 2  # type: ignore[attr-defined]


def test_offline_messages_carry_no_key_and_are_not_checked(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    request = {"request_id": "r3", "user_id": "u", "candidates": [{"item_id": i} for i in world.items[:5]]}
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [InMessage(settings.requests_topic, None, None, None, None, orjson.dumps(request))]
    )
    assert [o.topic for o in outputs] == [settings.results_topic]
    assert "error" not in orjson.loads(outputs[0].value)


def test_events_and_requests_topics_must_be_co_partitioned(settings) -> None:  # type: ignore[no-untyped-def]
    counts = {settings.events_topic: 12, settings.requests_topic: 12}
    assert input_partitions(settings, counts) == counts
    with pytest.raises(CliError, match="same count"):
        input_partitions(settings, {settings.events_topic: 12, settings.requests_topic: 4})


def test_the_worker_sends_a_re_routed_input_to_its_partition_with_its_timestamp() -> None:
    import asyncio

    from streams.core.processing import OutMessage
    from streams.core.worker_metrics import WorkerMetrics
    from streams.worker.agents import OutputSender

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        async def send(self, **kwargs):  # type: ignore[no-untyped-def]
            self.sent.append(kwargs)

    inputs, results = Recorder(), Recorder()
    sender = OutputSender({"events": inputs, "results": results}, WorkerMetrics(), lambda *a: None)  # type: ignore[arg-type,return-value]
    asyncio.run(
        sender.send_all(
            [OutMessage("events", b"u", b"{}", partition=5, timestamp=1.75e9), OutMessage("results", b"u", b"{}")]
        )
    )
    assert inputs.sent == [{"key": b"u", "value": b"{}", "partition": 5, "timestamp": 1.75e9}]
    assert results.sent == [{"key": b"u", "value": b"{}"}]


def test_produce_refuses_to_key_events_or_requests_by_another_field(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from streams.cli import main

    (tmp_path / "e.jsonl").write_text('{"user_id": "u", "session": "s"}\n')
    for topic in ("user-events", "rerank-requests"):
        with pytest.raises(SystemExit) as exited:
            main(["produce", "--topic", topic, "--file", str(tmp_path / "e.jsonl"), "--key", "session"])
        assert exited.value.code == 2
        assert "must be keyed by user_id" in capsys.readouterr().err
