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
from streams.settings import Settings


def score_offline(
    bundle: ModelBundle, settings: Settings, requests: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Results (dicts of the results contract) for ``requests``, in request order."""
    processor = Processor(bundle, settings, DictStateStore())
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


def score_stream_offline(
    bundle: ModelBundle, settings: Settings, lines: Iterable[dict[str, Any]], store: DictStateStore | None = None
) -> list[dict[str, Any]]:
    """Results for a mixed stream ({"kind": "event"|"request", ...}) handled strictly in order,
    as ``reranker replay --stream`` drives a worker; ``store`` (default: a new one) keeps the
    users' states, for comparison with a worker's."""
    processor = Processor(bundle, settings, store if store is not None else DictStateStore())
    results: list[dict[str, Any]] = []
    topics = {"event": settings.events_topic, "request": settings.requests_topic}
    for line in lines:
        record = {k: v for k, v in line.items() if k != "kind"}
        message = InMessage(topics[line["kind"]], None, None, None, None, orjson.dumps(record))
        for out in processor.process([message]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results
