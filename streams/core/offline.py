"""``reranker score``: the live scoring path without Kafka.

Events are applied first, then requests are answered in batches (``--requests``), or a
mixed stream is handled one message at a time in file order (``--stream``), through the
same Processor the worker uses, so results match the live path for the same model and
events. The stream form is the reference of every live ordering test: a worker that
applies each event before answering a later request gives exactly its results.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
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


STREAM_KINDS = ("event", "request")


def stream_line(line: dict[str, Any], number: int) -> tuple[str, dict[str, Any]]:
    """A line of a stream file (``{"kind": "event"|"request", ...}``, as ``make_split.py
    --protocol temporal`` writes stream.jsonl) as (kind, the topic's record).

    Raises:
        ValueError: ``kind`` is neither (``number`` is the line's, for the message).
    """
    kind = line.get("kind")
    if kind not in STREAM_KINDS:
        raise ValueError(f"line {number}: 'kind' must be 'event' or 'request', got {kind!r}")
    return kind, {k: v for k, v in line.items() if k != "kind"}


def score_stream_offline(
    bundle: ModelBundle,
    settings: Settings,
    lines: Iterable[dict[str, Any]],
    events: Iterable[dict[str, Any]] = (),
    items: Iterable[dict[str, Any]] = (),
    processor: Processor | None = None,
    store: DictStateStore | None = None,
) -> list[dict[str, Any]]:
    """Results (and error results) for a mixed stream handled strictly in order, one message at a
    time, as ``reranker replay --stream`` drives a worker.

    Args:
        lines: the stream (see `stream_line`).
        events: events applied first, one at a time in order (the history a worker's
            ``user-events`` topic holds before the stream starts, e.g. train.jsonl).
        items: item records, as in `score_offline` (ignored when ``processor`` is given).
        processor: the Processor to use (default: a new one over an empty DictStateStore), so a
            caller can read the user states it leaves.
        store: the state store of the default Processor (default: a new one), for comparison
            with a worker's states.
    """
    processor = processor or Processor(
        bundle, settings, store if store is not None else DictStateStore(), items=item_catalog(bundle, items)
    )
    results: list[dict[str, Any]] = []
    topics = {"event": settings.events_topic, "request": settings.requests_topic}
    history = (("event", event) for event in events)
    stream = (stream_line(line, number) for number, line in enumerate(lines, start=1))
    for kind, record in chain(history, stream):
        message = InMessage(topics[kind], None, None, None, None, orjson.dumps(record))
        for out in processor.process([message]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results
