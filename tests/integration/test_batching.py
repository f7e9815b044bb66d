"""Micro-batching on a real broker: a lone request goes at once; a burst is batched."""

from __future__ import annotations

import time
import urllib.request

import pytest

from streams.devtools.synthetic import generate_requests
from tests.conftest import isolated_settings, start_worker
from tests.integration.test_end_to_end import ask

pytestmark = pytest.mark.integration


def batch_histogram(port: int) -> tuple[float, float]:
    """(batches, requests in them) from the worker's reranker_batch_requests histogram."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("reranker_batch_requests_"):
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0]] = float(value)
    return values.get("reranker_batch_requests_count", 0.0), values.get("reranker_batch_requests_sum", 0.0)


def test_lone_requests_go_at_once_and_bursts_share_a_batch(broker, trained_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, batch_max=64)
    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    world = trained_world.world
    try:
        assert ask(settings, generate_requests(world, 1, seed=1, prefix="ready"), timeout=120), worker.log()[-3000:]

        for n in range(3):
            started = time.monotonic()
            got = ask(settings, generate_requests(world, 1, seed=10 + n, prefix=f"lone{n}"), timeout=30)
            assert len(got) == 1
            assert time.monotonic() - started < 1.0, "a lone request waited for others"

        batches_before, requests_before = batch_histogram(worker.metrics_port)
        burst = generate_requests(world, 40, seed=50, prefix="burst")
        got = ask(settings, burst, timeout=30)
        assert set(got) == {r["request_id"] for r in burst}
        assert all("error" not in r and r["items"] for r in got.values())
        batches, requests = batch_histogram(worker.metrics_port)
        assert requests - requests_before == 40
        # Produced back to back, the burst reaches the worker in a few fetches.
        assert batches - batches_before < 40, "every request of the burst was scored alone"
    finally:
        worker.stop()
