"""Reading a topic as a person would: its newest messages, then new ones as they arrive.

No consumer group is joined (partitions are assigned by hand and nothing is committed), so
reading never moves a service's offsets and never triggers a rebalance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.kafka.clients import consumer_config, partitions_of, snapshot_ends
from streams.settings import Settings


@dataclass(frozen=True)
class TopicMessage:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def _message(msg: Message) -> TopicMessage | None:
    if (err := msg.error()) is not None:
        if err.code() == KafkaError._PARTITION_EOF:
            return None
        raise KafkaException(err)
    part, off = msg.partition(), msg.offset()
    if part is None or off is None:
        return None
    return TopicMessage(part, off, msg.timestamp()[1], msg.key(), msg.value())


def tail_topic(
    settings: Settings,
    topic: str,
    *,
    last: int | None = 10,
    follow: bool = False,
    stop: threading.Event | None = None,
    max_idle: float = 10.0,
) -> Iterator[TopicMessage]:
    """The newest ``last`` messages of ``topic`` (all of them when ``None``), oldest first.

    Messages already in the topic are merged across partitions by timestamp. With ``follow``,
    new messages are then yielded as they arrive until ``stop`` is set.

    Raises:
        KafkaException: the topic does not exist.
        TimeoutError: the existing messages could not be read within ``max_idle`` seconds of silence.
    """
    stop = stop or threading.Event()
    consumer = Consumer(consumer_config(settings))
    try:
        partitions = partitions_of(consumer, topic)
        start: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            # On the embedded broker `high` may be the last batch's base offset, below the true
            # end: starting from it reads a few messages too many, never too few; the surplus is
            # cut below.
            start[p] = max(0, low) if last is None else max(0, low, high - last)
        consumer.assign([TopicPartition(topic, p, off) for p, off in start.items()])

        # The existing messages: up to each partition's high watermark as the first fetch reports it.
        position = dict(start)
        ends: dict[int, int] = {}
        backlog: list[TopicMessage] = []
        last_progress = time.monotonic()
        while not stop.is_set():
            snapshot_ends(consumer, topic, partitions, ends)
            if len(ends) == len(partitions) and all(position[p] >= ends[p] for p in partitions):
                break
            batch = consumer.consume(1000, timeout=0.2)
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > max_idle:
                raise TimeoutError(f"reading {topic}: no progress for {max_idle}s")
            for raw in batch:
                msg = _message(raw)
                if msg is not None:
                    position[msg.partition] = msg.offset + 1
                    backlog.append(msg)
        # Messages that arrived after the snapshot belong to the follow phase, in arrival order.
        early = [m for m in backlog if m.offset < ends.get(m.partition, m.offset + 1)]
        late = [m for m in backlog if m.offset >= ends.get(m.partition, m.offset + 1)]
        early.sort(key=lambda m: (m.timestamp_ms, m.partition, m.offset))
        if last is not None:
            early = early[len(early) - last :] if last > 0 else []
        yield from early
        if not follow:
            return
        yield from late
        while not stop.is_set():
            for raw in consumer.consume(1000, timeout=0.2):
                msg = _message(raw)
                if msg is not None:
                    yield msg
    finally:
        consumer.close()
