"""Training data read from the event log, with the exact log position it reaches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streams.core.records import ContractError, parse_event
from streams.kafka.clients import scan_topic
from streams.settings import Settings
from trainer.data import EventColumns

log = logging.getLogger(__name__)


def log_from_topic(
    settings: Settings,
    topic: str,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    window: int = 0,
) -> tuple[EventColumns, dict[str, int], int]:
    """Valid events of ``topic`` with their positions; ``progress`` as in `scan_topic`.

    Each record is parsed as it arrives and kept only as a row of `EventColumns`, so memory
    follows the events kept, not the raw log.

    Args:
        window: Keep only the newest ``window`` records (0 = all): from each partition the tail
            that is its share of the window by size. The end offsets are still the log's.

    Returns:
        (events, each partition's in offset order, {partition: end offset}, number of invalid
        records skipped).
    """
    events = EventColumns()
    invalid = 0
    # Events from the future (or in milliseconds) would carry the model's max_ts watermark past
    # every live event to come.
    not_after = time.time() + settings.max_clock_skew_s

    def keep(partition: int, offset: int, value: bytes | None) -> None:
        nonlocal invalid
        try:
            event = parse_event(
                value,
                event_types=settings.event_weights,
                max_bytes=settings.max_message_bytes,
                not_after=not_after,
            )
        except ContractError:
            invalid += 1
            return
        events.append(event.user_id, event.item_id, event.event_type, event.ts, event.value, partition, offset)

    ends = scan_topic(settings, topic, keep, tail=window, progress=progress)
    if invalid:
        log.warning("skipped %d invalid events of %s", invalid, topic)
    return events, ends, invalid


def events_from_topic(
    settings: Settings, topic: str, progress: Callable[[int, int | None], None] | None = None
) -> tuple[EventColumns, dict[str, Any]]:
    """Valid events of ``topic`` and the watermark to store in the model artifact.

    ``progress`` is called now and then while reading, as in `scan_topic`.

    Returns:
        (events, trained_through) where trained_through holds the topic, the end
        offset per partition that the events reach, and their largest ts. A
        worker skips online updates for events below those offsets.
    """
    events, ends, _ = log_from_topic(settings, topic, progress)
    max_ts = float(events.ts.max()) if len(events) else None
    return events, {"topic": topic, "offsets": ends, "max_ts": max_ts}
