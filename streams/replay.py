"""Send requests through Kafka and collect their results."""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from streams.kafka_io import KafkaSender, ResultCollector, message_key
from streams.settings import Settings


def replay_requests(settings: Settings, requests: Sequence[dict[str, Any]], *, timeout: float
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
