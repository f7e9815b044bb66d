"""One loop that reads a whole topic without a consumer group, for what every worker must see."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiokafka

from streams.kafka.security import aiokafka_security
from streams.settings import Settings


def aiokafka_properties(properties: Mapping[str, Any], client: type) -> dict[str, Any]:
    """The Kafka properties (dotted names) that ``client`` takes as keyword arguments
    (``fetch.min.bytes`` -> ``fetch_min_bytes``); the others are left out."""
    accepted = inspect.signature(client).parameters
    return {key.replace(".", "_"): value for key, value in properties.items() if key.replace(".", "_") in accepted}


def follower_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of the follower's consumer, with what ``consumer_extra_config`` can give it."""
    return {
        "bootstrap_servers": settings.bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": max(10, settings.consumer_fetch_wait_ms * 20),
        **aiokafka_security(settings),
        **aiokafka_properties(settings.consumer_extra_config, aiokafka.AIOKafkaConsumer),
    }


async def follow_topic(
    settings: Settings,
    topic: str,
    handle: Callable[[list[bytes | None]], Awaitable[None]],
    *,
    from_beginning: bool,
    backlog: Callable[[list[bytes | None]], Awaitable[None]] | None = None,
    backlog_until: Mapping[int, int] | None = None,
) -> None:
    """Hand every batch of values on ``topic`` to ``handle``, until cancelled.

    No consumer group: each worker reads every partition itself (model announcements and item
    metadata are meant for all of them), from the start of the topic or from its current end.

    Args:
        settings: connection and security settings.
        topic: the topic to follow.
        handle: awaited with the values of each non-empty fetch, in partition order.
        from_beginning: read what is already there first; otherwise only what comes next.
        backlog: with ``from_beginning``, awaited once with every value the topic held at the
            start (up to the end offsets then, or past them to the end of the fetch that
            reaches them), before ``handle`` sees anything; None hands those to ``handle`` too.
        backlog_until: {partition: offset} where the backlog ends, when it was taken earlier
            than this call (missing partitions: 0); None takes the end offsets now.
    """
    consumer = aiokafka.AIOKafkaConsumer(**follower_config(settings))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        tps = [aiokafka.TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        if from_beginning and backlog is not None:
            if backlog_until is not None:
                ends = {tp: int(backlog_until.get(tp.partition, 0)) for tp in tps}
            else:
                ends = await consumer.end_offsets(tps)
            held: list[bytes | None] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                held.extend(record.value for tp in tps for record in batches.get(tp, []))
            await backlog(held)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            values = [record.value for tp in tps for record in batches.get(tp, [])]
            if values:
                await handle(values)
    finally:
        await consumer.stop()
