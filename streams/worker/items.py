"""Item metadata from the compacted ``items`` topic, applied to the serving model.

Every worker reads the whole topic (no consumer group) from its start, keeps the
latest record per item, and registers new metadata with the serving model, so a
new item with genres/tags is scored by its features. Registration runs on the
event loop, where the agent never is mid-batch, so it falls between batches like
a model swap; a newly swapped-in model gets the whole catalogue first.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.core.processing import Processor
from streams.core.records import parse_item
from streams.kafka.follow import follow_topic
from streams.settings import Settings

log = logging.getLogger(__name__)


class ItemCatalog:
    """The latest metadata of every item seen on the items topic, kept for models swapped in later."""

    def __init__(self, settings: Settings, processor: Processor) -> None:
        self.settings = settings
        self.processor = processor
        # The Processor's own dict: the diversity stage and the max_per rule read the records.
        self.items: dict[str, dict[str, Any]] = processor.items
        self.invalid = 0

    def apply(self, raws: list[bytes | None]) -> int:
        """Remember the records and register them with the serving model; returns items registered."""
        records = []
        for raw in raws:
            record = parse_item(raw)
            if record is None:
                self.invalid += 1
                continue
            self.items[record["item_id"]] = record
            records.append(record)
        return self.processor.bundle.register_items(records) if records else 0

    async def follow(self) -> None:
        """Read the items topic from its start until cancelled."""

        async def apply(raws: list[bytes | None]) -> None:
            added = self.apply(raws)
            log.info("items: %d records, %d registered with the model", len(raws), added)

        await follow_topic(self.settings, self.settings.items_topic, apply, from_beginning=True)
