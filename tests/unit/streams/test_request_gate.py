"""The request gate ends a held request's wait early enough for its answer to be on the broker
within ``read_barrier_max_ms``, not only for the wait to end by then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from streams.core.processing import InMessage, OutMessage
from streams.core.worker_metrics import WorkerMetrics
from streams.settings import Settings
from streams.worker.consuming import ANSWER_SHARE_MAX, RequestGate
from streams.worker.faust_hooks import FetchLog


class Answering:
    """Stands in for the Processor: answers every request with nothing, records them."""

    def __init__(self) -> None:
        self.metrics = WorkerMetrics()
        self.answered: list[InMessage] = []

    def process(self, messages: list[InMessage]) -> list[OutMessage]:
        self.answered.extend(messages)
        return []


class NoSend:
    async def send_all(self, outputs: Iterable[OutMessage]) -> None:
        return None


def gate_and_request(wait_left_s: float, delivery_s: float = 0.0) -> tuple[RequestGate, Answering, Any]:
    """A gate (on the running loop) and a request of partition 0 whose events are not applied,
    with ``wait_left_s`` of its 1 s bound left."""
    settings = Settings(read_barrier_max_ms=1000)
    processor = Answering()
    fetch_log = FetchLog()
    fetch_log.active = True
    fetch_log.record(settings.events_topic, 0, highwater=500, position=0)
    fetch_log.seq = 1
    fetch_log.record(settings.requests_topic, 0, highwater=1, position=0)
    gate = RequestGate(
        settings,
        processor,  # type: ignore[arg-type]  # the part of the Processor the gate uses
        NoSend(),
        fetch_log,
        applied=lambda partition: 0,  # nothing applied: the request can only end stale
        ack=lambda messages: None,
        delivery_time=lambda: delivery_s,
    )
    produced_s_ago = 1.0 - wait_left_s
    message: Any = SimpleNamespace(
        topic=settings.requests_topic,
        partition=0,
        offset=0,
        timestamp=time.time() - produced_s_ago,
        key=b"u1",
        value=b"{}",
    )
    # The partition came to the worker long enough ago that the request's age counts whole.
    gate.barrier.since_assigned[0] = asyncio.get_running_loop().time() - 10.0
    return gate, processor, message


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_without_answer_times_a_request_waits_until_its_bound() -> None:
    async def scenario() -> int:
        gate, processor, request = gate_and_request(wait_left_s=0.2)
        await gate.submit([request])
        return len(processor.answered)

    assert run(scenario()) == 0


def test_a_wait_ends_as_much_before_the_bound_as_answers_take() -> None:
    async def scenario() -> tuple[int, bool]:
        gate, processor, request = gate_and_request(wait_left_s=0.08)
        gate.answer_times.append(0.02)  # release to sent
        await gate.submit([request])
        held_after_short_answers = len(processor.answered)
        gate.answer_times.append(0.09)  # one answer took 0.09 s: more than the 0.08 s left
        await gate.answer_ready()
        return held_after_short_answers, bool(processor.answered and processor.answered[0].stale)

    held, stale = run(scenario())
    assert held == 0  # 0.02 s of answering leaves 0.06 s to wait
    assert stale  # released before its bound, flagged stale: its events were not applied


def test_the_acknowledgement_time_counts_and_the_early_end_is_capped() -> None:
    async def scenario(delivery_s: float, wait_left_s: float) -> int:
        gate, processor, request = gate_and_request(wait_left_s=wait_left_s, delivery_s=delivery_s)
        gate.answer_times.append(0.01)
        await gate.submit([request])
        return len(processor.answered)

    assert run(scenario(delivery_s=0.06, wait_left_s=0.05)) == 1  # 0.01 + 0.06 > 0.05
    # A slow broker takes at most ANSWER_SHARE_MAX of the (1 s) bound off the wait.
    assert run(scenario(delivery_s=5.0, wait_left_s=ANSWER_SHARE_MAX + 0.1)) == 0
    assert run(scenario(delivery_s=5.0, wait_left_s=ANSWER_SHARE_MAX - 0.01)) == 1
