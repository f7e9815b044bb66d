"""Send requests through Kafka and collect their results."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from streams.core.offline import stream_line
from streams.kafka.clients import KafkaSender, ResultCollector, message_key
from streams.settings import Settings


def replay_requests(
    settings: Settings, requests: Sequence[dict[str, Any]], *, timeout: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Produce every request, then wait for one result each.

    Returns:
        (results in request order, request ids with no result before ``timeout``).
    """
    collector = ResultCollector(settings)
    try:
        sender = KafkaSender(settings)
        for request in requests:
            sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
        sender.flush()
        ids = [str(r.get("request_id")) for r in requests]
        got = collector.wait_for(ids, timeout)
    finally:
        collector.close()
    return [got[i] for i in ids if i in got], [i for i in ids if i not in got]


def replay_stream(
    settings: Settings,
    lines: Iterable[dict[str, Any]],
    *,
    timeout: float,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Send a mixed file in order: events as they come, each request only after the one before
    it was answered.

    Each line is ``{"kind": "event" | "request", ...}`` with the topic's record after ``kind``.
    Events are delivered (acknowledged by the broker) before the next request is sent, so the
    worker sees every earlier interaction first.

    Returns:
        (results in request order, request ids with no result within ``timeout`` each).
    """
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    collector = ResultCollector(settings)
    sender = KafkaSender(settings)
    started = time.monotonic()
    try:
        for number, line in enumerate(lines, start=1):
            kind, record = stream_line(line, number)
            if kind == "event":
                sender.send(settings.events_topic, message_key(record), orjson.dumps(record))
            else:
                sender.flush()
                request_id = str(record.get("request_id"))
                sender.send(settings.requests_topic, message_key(record), orjson.dumps(record))
                sender.flush()
                got = collector.wait_for([request_id], timeout)
                if request_id in got:
                    results.append(got[request_id])
                else:
                    missing.append(request_id)
                if progress and (len(results) + len(missing)) % 1000 == 0:
                    done = len(results) + len(missing)
                    progress(
                        f"replay: {done} requests answered ({done / (time.monotonic() - started):.0f}/s), "
                        f"{len(missing)} missing"
                    )
        sender.flush()
    finally:
        collector.close()
        sender.close()
    return results, missing
