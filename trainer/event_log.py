"""Training data read from the event log, with the exact log position it reaches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streams.core.records import ContractError, parse_event
from streams.kafka.clients import read_topic
from streams.settings import Settings

log = logging.getLogger(__name__)


def log_from_topic(
    settings: Settings, topic: str, progress: Callable[[int, int | None], None] | None = None
) -> tuple[list[tuple[int, int, dict[str, Any]]], dict[str, int], int]:
    """Valid events of ``topic`` with their positions; ``progress`` as in `read_topic`.

    Returns:
        ([(partition, offset, event)] in per-partition offset order, {partition: end offset},
        number of invalid records skipped).
    """
    raw, ends = read_topic(settings, topic, progress=progress)
    records, invalid = [], 0
    # Events from the future (or in milliseconds) would carry the model's max_ts watermark past
    # every live event to come.
    not_after = time.time() + settings.max_clock_skew_s
    for partition, offset, value in raw:
        try:
            event = parse_event(
                value,
                event_types=settings.event_weights,
                max_bytes=settings.max_message_bytes,
                not_after=not_after,
            )
        except ContractError:
            invalid += 1
            continue
        records.append(
            (
                partition,
                offset,
                {
                    "user_id": event.user_id,
                    "item_id": event.item_id,
                    "event_type": event.event_type,
                    "ts": event.ts,
                    "value": event.value,
                },
            )
        )
    if invalid:
        log.warning("skipped %d invalid events of %s", invalid, topic)
    return records, ends, invalid


def events_from_topic(
    settings: Settings, topic: str, progress: Callable[[int, int | None], None] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Valid events of ``topic`` and the watermark to store in the model artifact.

    ``progress`` is called now and then while reading, as in `read_topic`.

    Returns:
        (events, trained_through) where trained_through holds the topic, the end
        offset per partition that the events reach, and their largest ts. A
        worker skips online updates for events below those offsets.
    """
    records, ends, _ = log_from_topic(settings, topic, progress)
    events = [event for _, _, event in records]
    max_ts = max((e["ts"] for e in events), default=None)
    return events, {"topic": topic, "offsets": ends, "max_ts": max_ts}
