"""One loop that reads a whole topic without a consumer group, for what every worker must see."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiokafka

from streams.kafka.security import aiokafka_security
from streams.settings import Settings


async def follow_topic(
    settings: Settings, topic: str, handle: Callable[[list[bytes | None]], Awaitable[None]], *, from_beginning: bool
) -> None:
    """Hand every batch of values on ``topic`` to ``handle``, until cancelled.

    No consumer group: each worker reads every partition itself (model announcements and item
    metadata are meant for all of them), from the start of the topic or from its current end.

    Args:
        settings: connection and security settings.
        topic: the topic to follow.
        handle: awaited with the values of each non-empty fetch, in partition order.
        from_beginning: read what is already there first; otherwise only what comes next.
    """
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=max(10, settings.consumer_fetch_wait_ms * 20),
        **aiokafka_security(settings),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        tps = [aiokafka.TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            values = [record.value for tp in tps for record in batches.get(tp, [])]
            if values:
                await handle(values)
    finally:
        await consumer.stop()
