"""The project's topics and their creation with the partition counts and configs they need."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.security import confluent_security
from streams.settings import Settings

log = logging.getLogger(__name__)


def project_topics(settings: Settings) -> list[str]:
    """The topics the service reads and writes, all with the same partition count."""
    return [
        settings.events_topic,
        settings.requests_topic,
        settings.results_topic,
        settings.dead_letter_topic,
        settings.model_updates_topic,
        settings.items_topic,
    ]


def admin_config(settings: Settings) -> dict[str, Any]:
    """librdkafka properties of an admin client."""
    return {"bootstrap.servers": settings.bootstrap, **confluent_security(settings), **settings.admin_extra_config}


def existing_topics(settings: Settings, *, timeout: float = 30.0) -> set[str]:
    """The names of the topics the broker has now."""
    return set(AdminClient(admin_config(settings)).list_topics(timeout=timeout).topics)


def partition_counts(settings: Settings, names: Iterable[str], *, timeout: float = 30.0) -> dict[str, int]:
    """The partition count the broker reports for each of ``names`` (a missing topic is left out)."""
    topics = AdminClient(admin_config(settings)).list_topics(timeout=timeout).topics
    return {name: len(topics[name].partitions) for name in names if name in topics and topics[name].partitions}


def create_topics(
    settings: Settings,
    names: Iterable[str] | None = None,
    *,
    timeout: float = 30.0,
) -> list[str]:
    """Create the given topics (default: the project's) if they do not exist yet.

    Requests and events must have the same partition count: a user's state
    lives on the worker that owns the user's partition of both topics.

    Returns:
        The names that were created now.
    """
    admin = AdminClient(admin_config(settings))
    wanted = list(names) if names is not None else project_topics(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [n for n in wanted if n not in existing]
    if not missing:
        return []
    # Model announcements need one total order that every worker reads whole.
    partitions = {settings.model_updates_topic: 1}
    # Item metadata keeps the latest record per item.
    configs = {
        settings.items_topic: {"cleanup.policy": "compact"},
        # The broker must take the largest result the worker may send (Kafka's default limit is
        # about 1 MB), or an accepted request near max_message_bytes would go unanswered.
        settings.results_topic: {"max.message.bytes": str(settings.largest_result_bytes())},
    }
    futures = admin.create_topics(
        [
            NewTopic(n, partitions.get(n, settings.partitions), settings.replication_factor, config=configs.get(n, {}))
            for n in missing
        ],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(name)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS when another process won the race
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("created topics %s with %d partitions", created, settings.partitions)
    return created
