"""The topics a worker reads and writes. Values and keys travel as raw bytes and are parsed by records.py."""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TopicT

from streams.settings import Settings


@dataclass
class Topics:
    # Both inputs are also sinks: a message found off its murmur2 partition is re-routed to it.
    events: TopicT  # consumed in bulk (streams/worker/consuming.py), outside faust's streams
    requests: TopicT  # consumed by the agent, answered behind the read barrier
    results: TopicT
    dead_letters: TopicT


def define_topics(app: faust.App, settings: Settings) -> Topics:
    def raw(*names: str) -> TopicT:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )

    return Topics(
        events=raw(settings.events_topic),
        requests=raw(settings.requests_topic),
        results=raw(settings.results_topic),
        dead_letters=raw(settings.dead_letter_topic),
    )
