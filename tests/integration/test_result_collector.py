"""The result collector that ``reranker replay`` and the benchmarks use reads only answers sent
after it was created, on the embedded broker too (whose ListOffsets names the start of a
partition's last record batch, not its end)."""

from __future__ import annotations

import orjson
import pytest

from streams.kafka.clients import KafkaSender, ResultCollector
from streams.kafka.topics import create_topics
from tests.conftest import isolated_settings

pytestmark = pytest.mark.integration


def test_a_collector_ignores_earlier_answers_to_the_same_request_ids(broker) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    create_topics(settings)
    ids = [f"r{n}" for n in range(300)]
    sender = KafkaSender(settings)
    try:
        # Sent together, so each partition holds them in a few multi-record batches.
        for rid in ids:
            sender.send(settings.results_topic, rid.encode(), orjson.dumps({"request_id": rid, "run": 1}))
        sender.flush()
        with ResultCollector(settings) as collector:
            for rid in ids:
                sender.send(settings.results_topic, rid.encode(), orjson.dumps({"request_id": rid, "run": 2}))
            sender.flush()
            got = collector.wait_for(ids, timeout=30)
    finally:
        sender.close()
    assert sorted(got) == sorted(ids)
    earlier = sorted(rid for rid, result in got.items() if result["run"] != 2)
    assert earlier == [], f"{len(earlier)} answers of the earlier run collected: {earlier[:5]}"
