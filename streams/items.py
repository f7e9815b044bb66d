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

import aiokafka
import orjson

from streams.processing import Processor
from streams.security import aiokafka_security
from streams.settings import Settings

log = logging.getLogger(__name__)


def parse_item(raw: bytes | None) -> dict[str, Any] | None:
    """An item record, or None for a value that is not one (or a tombstone)."""
    try:
        record = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("item_id"), (str, int)) \
            or isinstance(record.get("item_id"), bool):
        return None
    return {**record, "item_id": str(record["item_id"])}


class ItemCatalog:
    def __init__(self, settings: Settings, processor: Processor) -> None:
        self.settings = settings
        self.processor = processor
        self.items: dict[str, dict[str, Any]] = {}
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
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=max(10, self.settings.consumer_fetch_wait_ms * 20),
            **aiokafka_security(self.settings))
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self.settings.items_topic) or {0}
            tps = [aiokafka.TopicPartition(self.settings.items_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                raws = [record.value for records in batches.values() for record in records]
                if raws:
                    added = self.apply(raws)
                    log.info("items: %d records, %d registered with the model", len(raws), added)
        finally:
            await consumer.stop()
