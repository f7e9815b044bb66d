"""confluent-kafka clients of the command line: bulk produce, replay, reading a topic for training.

Producers use the ``murmur2_random`` partitioner: it places a key on the same
partition as the Java client and faust (aiokafka) do, which the co-partitioned
user state depends on. librdkafka's default (consistent_random, CRC32) would
put keyed messages on other partitions and break the tables silently.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streams.kafka.security import confluent_security
from streams.settings import Settings

log = logging.getLogger(__name__)


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap,
        "partitioner": "murmur2_random",
        "linger.ms": settings.producer_linger_ms,
        "acks": "all",
        **confluent_security(settings),
        **settings.producer_extra_config,
    }


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap,
        # Required by the client even when partitions are assigned by hand (no group join).
        "group.id": group_id or f"reranker-cli-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": max(1, settings.consumer_fetch_wait_ms),
        "fetch.min.bytes": 1,
        "fetch.queue.backoff.ms": 1,
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        **confluent_security(settings),
        **settings.consumer_extra_config,
    }


class MissingKeyError(ValueError):
    """A record to produce lacks the field its topic is keyed by."""


def key_field(settings: Settings, topic: str) -> str | None:
    """The record field that keys ``topic``'s messages (None: unkeyed).

    Items are keyed by item_id: the items topic is compacted, and a compacted topic keeps the
    latest record per key (Apache Kafka rejects a null key there). Announcements go to a
    single partition, so they need no key. Everything else is keyed by user_id, which puts a
    user's events and requests on the same partition.
    """
    if topic == settings.items_topic:
        return "item_id"
    if topic == settings.model_updates_topic:
        return None
    return "user_id"


def message_key(record: dict[str, Any], field: str = "user_id") -> bytes | None:
    value = record.get(field)
    return str(value).encode() if value is not None else None


class KafkaSender:
    """A producer that fails loudly: delivery errors are collected and raised on flush."""

    def __init__(self, settings: Settings) -> None:
        self.producer = Producer(producer_config(settings))
        self.errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)
        self.producer.poll(0)
        self.sent += 1

    def close(self) -> None:
        """Deliver what is queued and drop the client (before the broker goes away)."""
        self.producer.flush(5.0)
        del self.producer

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise TimeoutError(f"{remaining} messages not delivered after {timeout}s")
        if self.errors:
            raise KafkaException(f"{len(self.errors)} messages failed, first: {self.errors[0]}")


# How often long reads and writes report progress.
PROGRESS_EVERY_S = 2.0


def produce_records(
    settings: Settings,
    topic: str,
    records: Iterable[dict[str, Any]],
    *,
    key: str | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> int:
    """Produce JSON records keyed by their ``key`` field (default: `key_field` of the topic).

    ``progress`` is called with the number sent so far every ``progress_every_s`` seconds.

    Returns:
        How many were sent.

    Raises:
        MissingKeyError: a record lacks the key field. The records before it are delivered,
            nothing from it on is sent: a null key would put it on an arbitrary partition, and a
            compacted topic refuses it.
    """
    field = key or key_field(settings, topic)
    sender = KafkaSender(settings)
    next_report = time.monotonic() + progress_every_s
    for number, record in enumerate(records, 1):
        message = message_key(record, field) if field is not None else None
        if field is not None and message is None:
            sender.flush()
            raise MissingKeyError(
                f"record {number} has no {field!r} to key {topic} by; "
                f"the {number - 1} records before it were sent, none after"
            )
        sender.send(topic, message, orjson.dumps(record))
        if progress is not None and time.monotonic() >= next_report:
            progress(sender.sent)
            next_report = time.monotonic() + progress_every_s
    sender.flush()
    return sender.sent


def partitions_of(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaException(f"topic {topic!r} does not exist or has no partitions")
    return sorted(info.partitions)


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
        for p in partitions_of(consumer, topic)
    }


def snapshot_ends(consumer: Consumer, topic: str, partitions: list[int], ends: dict[int, int]) -> None:
    """Add to ``ends`` each partition's high watermark once a fetch response has reported it."""
    for p in partitions:
        if p not in ends:
            high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
            if high >= 0:
                ends[p] = high


def tail_shares(lows: dict[int, int], ends: dict[int, int], tail: int) -> dict[int, int]:
    """Each partition's share of the newest ``tail`` records, by its size (rounded up, so the
    shares add up to at least ``tail``); an empty dict when the topic holds no more than that."""
    sizes = {p: max(0, ends[p] - lows.get(p, 0)) for p in ends}
    total = sum(sizes.values())
    if tail <= 0 or total <= tail:
        return {}
    return {p: max(1, math.ceil(tail * size / total)) for p, size in sizes.items()}


def _learn_ends(settings: Settings, topic: str, partitions: list[int], max_idle: float) -> dict[str, dict[int, int]]:
    """The low and high watermarks of every partition, the high ones from fetch responses.

    The embedded broker's ListOffsets(latest) can fall far short of the end (the base offset of
    the last record batch), so it only tells where to fetch from; what that fetch brings back,
    at most a batch per partition, is dropped with the consumer, so none of it can be mistaken
    for a record of the read that follows.

    Returns:
        {"low": {partition: offset}, "high": {partition: offset}}.
    """
    consumer = Consumer(consumer_config(settings))
    try:
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0) for p in partitions}
        consumer.assign([TopicPartition(topic, p, max(0, high)) for p, (_, high) in marks.items()])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + max_idle
        while len(ends) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: no end offsets after {max_idle}s (known {ends})")
            consumer.consume(10_000, timeout=0.2)
            snapshot_ends(consumer, topic, partitions, ends)
        return {"low": {p: low for p, (low, _) in marks.items()}, "high": ends}
    finally:
        consumer.close()


def scan_topic(
    settings: Settings,
    topic: str,
    visit: Callable[[int, int, bytes | None], None],
    *,
    tail: int = 0,
    max_idle: float = 10.0,
    progress: Callable[[int, int | None], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> dict[str, int]:
    """Call ``visit(partition, offset, value)`` for each record of ``topic`` up to its end at
    the time reading starts, in per-partition order, without keeping any of them.

    With ``tail`` > 0 only the newest ``tail`` records (rounded up per partition) are read,
    each partition giving its share by size (`tail_shares`).

    The end of each partition is the high watermark carried by fetch responses,
    not a ListOffsets answer: the embedded broker answers ListOffsets(latest)
    with the base offset of the last record batch, which would cut off the
    newest records.

    ``progress`` is called every ``progress_every_s`` seconds with the number of records read
    and the number to read (``None`` until every partition's end is known).

    Returns:
        {partition: end offset}: the exact log position the records reach.
    """
    consumer = Consumer(consumer_config(settings))
    try:
        partitions = partitions_of(consumer, topic)
        ends: dict[int, int] = {}
        # The first offset to visit per partition; the ends are known before the window is cut.
        first = dict.fromkeys(partitions, -1)
        start = dict.fromkeys(partitions, OFFSET_BEGINNING)
        if tail > 0:
            marks = _learn_ends(settings, topic, partitions, max_idle)
            ends = marks["high"]
            for p, share in tail_shares(marks["low"], ends, tail).items():
                first[p] = start[p] = max(marks["low"][p], ends[p] - share)
        consumer.assign([TopicPartition(topic, p, start[p]) for p in partitions])
        position = {p: max(0, start[p]) for p in partitions}
        # Records of a partition whose end no fetch response has reported yet wait here (one
        # fetch at most), so a record written after the start is never visited.
        pending: dict[int, list[tuple[int, bytes | None]]] = {}
        read = 0
        last_progress = time.monotonic()
        next_report = last_progress + progress_every_s

        def wanted(part: int, off: int) -> bool:
            return first[part] <= off < ends[part]

        def flush(part: int) -> None:
            nonlocal read
            for off, value in pending.pop(part, []):
                if wanted(part, off):
                    read += 1
                    visit(part, off, value)

        while True:
            snapshot_ends(consumer, topic, partitions, ends)  # later writes are not read
            for ready in [p for p in pending if p in ends]:
                flush(ready)
            if progress is not None and time.monotonic() >= next_report:
                total = (
                    sum(ends.values()) - sum(max(0, s) for s in start.values())
                    if len(ends) == len(partitions)
                    else None
                )
                progress(read, total)
                next_report = time.monotonic() + progress_every_s
            if len(ends) == len(partitions) and all(position[p] >= ends[p] for p in partitions):
                break
            batch = consumer.consume(10_000, timeout=0.2)
            if batch:
                last_progress = time.monotonic()
                snapshot_ends(consumer, topic, partitions, ends)
            elif time.monotonic() - last_progress > max_idle:
                raise TimeoutError(f"reading {topic}: no progress for {max_idle}s (positions {position}, ends {ends})")
            for msg in batch:
                if (err := msg.error()) is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                part, off = msg.partition(), msg.offset()
                if part is None or off is None:  # only error events lack a position
                    continue
                position[part] = off + 1
                if part not in ends:
                    pending.setdefault(part, []).append((off, msg.value()))
                elif wanted(part, off):
                    read += 1
                    visit(part, off, msg.value())
        return {str(p): end for p, end in sorted(ends.items())}
    finally:
        consumer.close()


def read_topic(
    settings: Settings,
    topic: str,
    *,
    max_idle: float = 10.0,
    progress: Callable[[int, int | None], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> tuple[list[tuple[int, int, bytes | None]], dict[str, int]]:
    """Everything in ``topic`` up to its end at the time reading starts (`scan_topic`, kept).

    Returns:
        ((partition, offset, value) in per-partition order, {partition: end offset}).
        The end offsets are the exact log position the data reaches.
    """
    out: list[tuple[int, int, bytes | None]] = []
    ends = scan_topic(
        settings,
        topic,
        lambda part, off, value: out.append((part, off, value)),
        max_idle=max_idle,
        progress=progress,
        progress_every_s=progress_every_s,
    )
    return out, ends


class ResultCollector:
    """Reads a results topic from its current end, without joining a consumer group.

    Create it before sending requests, so no answer can slip in before it starts. The end is
    each partition's high watermark from a fetch response (`_learn_ends`): the embedded broker's
    ListOffsets(latest) names the start of the last record batch, and reading from there handed
    a replay the previous replay's answers to the same request ids (first result wins).
    """

    def __init__(self, settings: Settings, topic: str | None = None, max_idle: float = 10.0) -> None:
        self.topic = topic or settings.results_topic
        self.consumer = Consumer(consumer_config(settings))
        partitions = partitions_of(self.consumer, self.topic)
        ends = _learn_ends(settings, self.topic, partitions, max_idle)["high"]
        self.consumer.assign([TopicPartition(self.topic, p, off) for p, off in ends.items()])

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        # consume(n, timeout) blocks until it has n messages or the timeout
        # passes; poll() returns on the first one, then drain what is buffered.
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        out = []
        for msg in [first, *self.consumer.consume(1000, timeout=0)]:
            if (err := msg.error()) is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            try:
                out.append(orjson.loads(msg.value() or b""))
            except orjson.JSONDecodeError:
                log.warning("skipping a non-JSON message on %s", self.topic)
        return out

    def wait_for(
        self, request_ids: Iterable[str], timeout: float, on_result: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Collect results until every id has one or ``timeout`` passes; the first result per id wins."""
        wanted = set(request_ids)
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while wanted - got.keys() and time.monotonic() < deadline:
            for result in self.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
                rid = result.get("request_id")
                if rid in wanted and rid not in got:
                    got[rid] = result
                    if on_result:
                        on_result(result)
        return got

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> ResultCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
