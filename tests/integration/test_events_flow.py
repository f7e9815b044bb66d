"""Flow control of the events path on a real broker: fetching pauses when the buffer is full and
resumes promptly when it has drained."""

from __future__ import annotations

import time

import pytest

from streams.devtools.synthetic import generate_events
from tests.conftest import isolated_settings, start_worker
from tests.integration.test_end_to_end import produce_and_locate
from tests.integration.test_read_your_writes import metric, partition_of, wait_ready

pytestmark = pytest.mark.integration

BACKLOG_EVENTS = 8_000


def test_fetching_resumes_at_once_when_the_buffer_has_drained(broker, trained_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The backlog is on one partition and the buffer holds 200 events, so the partition is
    # paused after each poll (a poll hands over up to 1,000 records) and resumed when 100 are
    # left: eight pauses and resumes. A poll that began while it was paused waited for the other
    # partitions' records up to faust's poll timeout (1 s), also after the resume, although
    # aiokafka already held the partition's next records: the worker sat idle a second each time.
    settings = isolated_settings(broker, events_buffer_max=200, events_batch_max=100)
    world = trained_world.world
    users = [u for u in world.users if partition_of(u, settings.partitions) == 0]
    events = generate_events(world, BACKLOG_EVENTS, seed=53, start_ts=1_740_000_000.0)
    for n, event in enumerate(events):
        event["user_id"] = users[n % len(users)]
    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    try:
        wait_ready(settings, world, worker)
        before = metric(worker.metrics_port, "reranker_events_total")
        produce_and_locate(settings, events)
        started = time.monotonic()
        deadline = started + 120
        while metric(worker.metrics_port, "reranker_events_total") - before < BACKLOG_EVENTS:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.1)
        took = time.monotonic() - started
        # Measured on a 2-core machine: 0.8 s; waiting after each resume, 7.3 s.
        assert took < 4.0, f"{BACKLOG_EVENTS} events took {took:.1f} s"
    finally:
        worker.stop()
