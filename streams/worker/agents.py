"""The worker's agent: consume events and requests, hand them to the Processor, send what it returns."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from itertools import groupby

import faust
from faust.types import EventT, StreamT

from streams.core.processing import InMessage, Processor
from streams.settings import Settings
from streams.worker.batching import take_available
from streams.worker.topics import Topics


def in_order(events: Sequence[EventT], events_topic: str) -> list[InMessage]:
    """The batch as InMessages, in produce-time order across partitions and topics.

    A user's events and requests arrive on two topics. Merging by Kafka
    timestamp restores the order in which they were produced (what a client
    that sends an event and then a request means), while each partition keeps
    its own offset order even where timestamps go backwards. Timestamps have
    millisecond resolution and an event acknowledged just before a request is
    often stamped with the same millisecond: on a tie the event goes first.
    """
    messages = [
        InMessage(
            e.message.topic,
            e.message.partition,
            e.message.offset,
            e.message.timestamp,
            e.message.key,
            e.message.value,
            e,
        )
        for e in events
    ]
    by_source = [
        list(group)
        for _, group in groupby(
            sorted(messages, key=lambda m: (m.topic, m.partition)), key=lambda m: (m.topic, m.partition)
        )
    ]
    if len(by_source) == 1:
        return by_source[0]
    for group in by_source:
        group.sort(key=lambda m: m.offset or 0)
    return list(heapq.merge(*by_source, key=lambda m: (m.timestamp or 0.0, m.topic != events_topic)))


def register_agents(app: faust.App, settings: Settings, topics: Topics, processor: Processor) -> None:
    sinks = {settings.results_topic: topics.results, settings.dead_letter_topic: topics.dead_letters}

    @app.agent(topics.inputs, name="rerank")
    async def rerank(stream: StreamT) -> None:
        # One forward pass per batch of whatever has arrived; nothing waits for a timer.
        async for batch in take_available(stream, settings.batch_max, within=settings.batch_window_ms / 1000.0):
            processor.metrics.batch_messages.observe(len(batch))
            for out in processor.process(in_order(batch, settings.events_topic)):
                await sinks[out.topic].send(key=out.key, value=out.value)
            # Liveness: a consumer can stop without an error (faust issue #175), which only
            # shows as this timestamp falling behind while the consumer lag grows.
            processor.metrics.last_batch.set_to_current_time()
