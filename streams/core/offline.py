"""``reranker score``: the live scoring path without Kafka.

Events are applied first, then requests are answered in batches, through the
same Processor the worker uses, so results match the live path for the same
model and events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from models import ModelBundle
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.core.records import parse_item
from streams.settings import Settings


def score_offline(
    bundle: ModelBundle,
    settings: Settings,
    requests: Iterable[dict[str, Any]],
    events: Iterable[dict[str, Any]] = (),
    items: Iterable[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Results (dicts of the results contract) for ``requests``, in request order.

    Args:
        items: item records, as the worker reads them from the items topic (the diversity stage
            and the ``max_per`` rule use them; a model trained with item features gets them too).
    """
    processor = Processor(bundle, settings, DictStateStore(), items=item_catalog(bundle, items))
    event_messages = [InMessage(settings.events_topic, None, None, None, None, orjson.dumps(e)) for e in events]
    processor.process(event_messages)
    request_list = list(requests)
    results: list[dict[str, Any]] = []
    step = settings.batch_max
    for start in range(0, len(request_list), step):
        chunk = [
            InMessage(settings.requests_topic, None, None, None, None, orjson.dumps(r))
            for r in request_list[start : start + step]
        ]
        for out in processor.process(chunk):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results


def item_catalog(bundle: ModelBundle, records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Item records by id, registered with the model as the worker's catalogue does."""
    catalog: dict[str, dict[str, Any]] = {}
    for raw in records:
        record = parse_item(orjson.dumps(raw))
        if record is not None:
            catalog[record["item_id"]] = record
    if catalog:
        bundle.register_items(list(catalog.values()))
    return catalog


def score_stream_offline(
    bundle: ModelBundle, settings: Settings, lines: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Results for a mixed stream ({"kind": "event"|"request", ...}) handled strictly in order,
    as ``reranker replay --stream`` drives a worker."""
    processor = Processor(bundle, settings, DictStateStore())
    results: list[dict[str, Any]] = []
    topics = {"event": settings.events_topic, "request": settings.requests_topic}
    for line in lines:
        record = {k: v for k, v in line.items() if k != "kind"}
        message = InMessage(topics[line["kind"]], None, None, None, None, orjson.dumps(record))
        for out in processor.process([message]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results
