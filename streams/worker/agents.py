"""The worker's consuming tasks: events and requests taken per fetch (streams/worker/consuming.py);
both hand their messages to the Processor and send what it returns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, Protocol

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.types import Message

from streams.core.processing import OutMessage, Processor
from streams.core.worker_metrics import WorkerMetrics
from streams.settings import Settings
from streams.worker.consuming import EventsPath, RequestGate
from streams.worker.faust_hooks import RerankerApp, ack_messages
from streams.worker.tables import TableStates
from streams.worker.topics import Topics

log = logging.getLogger(__name__)

# Tries of one send, and the wait before the first retry (doubled before each next one): a
# broker that is briefly away (a leader election) is ridden out, a batch never waits for long.
SEND_ATTEMPTS = 4
SEND_BACKOFF_S = 0.5


class Sink(Protocol):
    """Where outputs of one topic go: a faust topic, whose ``send`` hands a message to the
    producer's buffer and returns the future of its delivery."""

    async def send(
        self, *, key: bytes | None, value: bytes, partition: int | None = None, timestamp: float | None = None
    ) -> Any: ...


def too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: faust raises ProducerSendError from aiokafka's error)
    says the message is over a size limit, which no retry changes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (MessageSizeTooLargeError, RecordTooLargeError)):
            return True
        seen = seen.__cause__
    return False


class OutputSender:
    """Hands a batch's outputs to the producer; no failure to send leaves the consuming paths.

    An exception out of a send would leave the batch unanswered and unacknowledged (it stopped
    the worker answering when requests still went through a faust agent: docs/RELIABILITY.md,
    "The worker never stops consuming"). So each send is retried with backoff a bounded number
    of times, and a result that still cannot go (too large, or the producer keeps failing) is
    replaced by a small error result, so its client is answered; every failure is logged and
    counted in reranker_send_failures_total.
    ``send_all`` returns once every output is in the producer's buffer: the batch is acknowledged
    after that.
    """

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        metrics: WorkerMetrics,
        error_result: Callable[[str | None, str | None, bytes | None, str, str], OutMessage],
        *,
        attempts: int = SEND_ATTEMPTS,
        backoff_s: float = SEND_BACKOFF_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sinks = sinks
        self.metrics = metrics
        self.error_result = error_result
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.sleep = sleep
        metrics.add_output_topics(sinks)

    async def send_all(self, outputs: Iterable[OutMessage]) -> None:
        for out in outputs:
            await self.send(out)

    async def send(self, out: OutMessage) -> None:
        reason = await self._send(out)
        if reason is None or out.request_id is None:
            return
        # The client waits on the request id: answer with an error, under a key that fits.
        code = "result_too_large" if reason == "too_large" else "send_failed"
        key = out.user_id.encode() if out.user_id is not None else None
        replacement = self.error_result(out.request_id, out.user_id, key, code, "the worker could not send the result")
        await self._send(replacement)

    async def _send(self, out: OutMessage) -> str | None:
        """Send with retries; None when the producer took it, else the failure reason (counted)."""
        for attempt in range(self.attempts):
            try:
                # Only a re-routed input names its partition and keeps its timestamp.
                sink = self.sinks[out.topic]
                if out.partition is None:
                    delivery = await sink.send(key=out.key, value=out.value)
                else:
                    delivery = await sink.send(
                        key=out.key, value=out.value, partition=out.partition, timestamp=out.timestamp
                    )
            except Exception as exc:  # noqa: BLE001  whatever the producer raises, the stream goes on
                reason = "too_large" if too_large(exc) else "error"
                if reason == "error" and attempt + 1 < self.attempts:
                    log.warning("sending to %s failed (attempt %d): %r; retrying", out.topic, attempt + 1, exc)
                    await self.sleep(self.backoff_s * 2**attempt)
                    continue
                log.error("could not send %d bytes to %s: %r", len(out.value), out.topic, exc)
                self.metrics.send_failures.labels(out.topic, reason).inc()
                return reason
            if isinstance(delivery, asyncio.Future):
                delivery.add_done_callback(partial(self._delivered, out.topic))
            return None
        raise AssertionError("unreachable: the last attempt returns")

    def _delivered(self, topic: str, delivery: asyncio.Future[Any]) -> None:
        # The broker can still refuse a message the producer took (its own size limit, a timeout):
        # by then the batch is acknowledged, so it is logged and counted.
        if not delivery.cancelled() and (exc := delivery.exception()) is not None:
            log.error("the broker did not take a message for %s: %r", topic, exc)
            self.metrics.send_failures.labels(topic, "delivery").inc()


def register_agents(
    app: RerankerApp, settings: Settings, topics: Topics, processor: Processor, states: TableStates
) -> None:
    """The worker's consuming paths on ``app``: both input topics are subscribed without a faust
    stream (its consumer hands their messages over per fetch), and tasks apply the events and
    answer the requests."""
    results = app.own_producer(settings.results_topic)
    sender = OutputSender(
        {
            settings.results_topic: results,
            settings.dead_letter_topic: topics.dead_letters,
            # Inputs found on the wrong partition go back to their own (Processor._misplaced).
            settings.events_topic: topics.events,
            settings.requests_topic: topics.requests,
        },
        processor.metrics,
        processor.error_result,
    )
    events = EventsPath(app, settings, processor, states, sender, app.fetch_log)
    gate = RequestGate(
        settings,
        processor,
        sender,
        app.fetch_log,
        events.applied,
        partial(ack_messages_of, app),
        delivery_time=results.ack_time,
    )
    events.gate = gate
    for topic, sink in ((topics.events, events.deliver), (topics.requests, gate.deliver)):
        app.topics.add(topic)
        app.bulk_sinks[topic.get_topic_name()] = sink

    @app.task
    async def apply_events() -> None:
        await events.run()

    @app.task
    async def take_requests_in() -> None:
        await gate.run_inbox()

    @app.task
    async def answer_held_requests() -> None:
        await gate.run()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's signal accepts coroutines
    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        events.forget(revoked)
        gate.forget(revoked)
        app.fetch_log.forget(revoked)
        # Every partition is revoked at the start of a rebalance (faust's eager protocol), and one
        # that comes back may hold another worker's writes once recovery has read its changelog:
        # no decoded state survives (test_a_partition_back_from_another_worker_serves_...).
        states.recent.clear()


def ack_messages_of(app: RerankerApp, messages: list[Message]) -> None:
    ack_messages(app.consumer, messages)
