"""The worker's two consuming paths: events in large chunks, requests behind a read barrier.

Both input topics are taken from faust's consumer one list per fetch (faust_hooks,
``bulk_sinks``), not through faust's per-message streams. Events are applied by the Processor a
chunk at a time (one call, one state write per user, one changelog batch per partition) and
acknowledged after; the event loop is given back between chunks, so the monitor and the other
timers keep running during a backlog, and the requests handed over meanwhile are taken in before
the next chunk. A request waits in a :class:`~streams.core.read_barrier.ReadBarrier` until the
events of its own partition are applied up to an end offset taken after it arrived
(read-your-writes), at most ``read_barrier_max_ms``; it is acknowledged only once it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Protocol

import faust
from faust.types import TP, Message

from streams.core.processing import InMessage, OutMessage, Processor
from streams.core.read_barrier import Fetched, Held, ReadBarrier
from streams.core.state import UserState, encode_state
from streams.settings import Settings
from streams.worker.faust_hooks import FetchLog, ack_messages, write_table_states
from streams.worker.tables import FAULT_KILL_AFTER_STATE_WRITE_ENV, TableStates

log = logging.getLogger(__name__)

# How often held requests are looked at while any is held (their deadlines, new fetch responses).
BARRIER_POLL_S = 0.002
# Wait before a chunk whose store write or send failed is tried again.
RETRY_S = 1.0
# Time one chunk should take on the event loop: a request or a timer waits at most about this
# long behind the events path. The chunk size follows the measured cost per event.
CHUNK_TARGET_S = 0.02
MIN_CHUNK = 32
# Answers whose time from release to sent is remembered, and the most of the bound that the
# longest of them may take off a wait.
ANSWER_TIMES_KEPT = 64
ANSWER_SHARE_MAX = 0.1
# How far ahead of a chunk held requests' deadlines are looked at: the chunk's own time, and as
# much again for what runs before the next look (a slice of fetched records, the chunk's sends).
DEADLINE_LOOKAHEAD_S = 2 * CHUNK_TARGET_S
# Most buffered events looked at to fill one chunk when some partitions wait for a request.
SCAN_FACTOR = 4


class Sender(Protocol):
    async def send_all(self, outputs: Iterable[OutMessage]) -> None: ...


class ChunkStore:
    """processing.StateStore for one chunk of events: reads the table's store, keeps the chunk's
    writes and writes them together in :meth:`flush`."""

    def __init__(self, app: faust.App, states: TableStates) -> None:
        self.app = app
        self.states = states
        self.pending: dict[str, tuple[int, UserState]] = {}
        kill = os.environ.get(FAULT_KILL_AFTER_STATE_WRITE_ENV)
        self.kill_after_writing = kill.encode() if kill else None

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        hit = self.pending.get(user_id)
        if hit is not None:
            return hit[1]
        return self.states.read(user_id, source, remember=False)

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        self.pending[user_id] = (source.partition or 0, state)

    async def flush(self) -> None:
        pending, self.pending = self.pending, {}
        if not pending:
            return
        writes: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for user_id, (partition, state) in pending.items():
            writes[partition].append((user_id.encode(), encode_state(state)))
        # Kept before the write, which puts every state in the store before its first await: a
        # request answered while the changelog is sent reads what the store holds.
        recent = self.states.recent
        for user_id, (partition, state) in pending.items():
            recent.put(user_id, partition, state)
        try:
            await write_table_states(self.app, self.states.table, writes, kill_after_writing=self.kill_after_writing)
        except BaseException:
            # Some of the states may be in the store and some not: read them from it again.
            recent.clear()
            raise


def in_message(message: Message, *, stale: bool = False) -> InMessage:
    return InMessage(
        message.topic,
        message.partition,
        message.offset,
        message.timestamp,
        message.key,
        message.value,
        message,
        stale,
    )


class RequestGate:
    """Takes the requests faust's consumer hands over, holds each until its partition's events
    are applied far enough, then answers it."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        sender: Sender,
        fetch_log: FetchLog,
        applied: Callable[[int], int | None],
        ack: Callable[[list[Message]], None],
        delivery_time: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.settings = settings
        self.delivery_time = delivery_time
        self.processor = processor
        self.sender = sender
        self.fetch_log = fetch_log
        self.applied = applied
        self.ack = ack
        self.barrier: ReadBarrier[Message] = ReadBarrier(settings.read_barrier_max_ms / 1000.0)
        self.wake = asyncio.Event()
        # Requests handed over and not yet taken in: taken before the next chunk of events.
        self.inbox: deque[Message] = deque()
        self.has_requests = asyncio.Event()
        # How long the latest answers took from release to sent; with the results' recent time from
        # sent to acknowledged (``delivery_time``), a wait ends that much before its bound, so the
        # answer (not only the end of the wait) is on the broker within read_barrier_max_ms.
        self.answer_times: deque[float] = deque(maxlen=ANSWER_TIMES_KEPT)

    def answer_time(self) -> float:
        taken = max(self.answer_times, default=0.0) + self.delivery_time()
        return min(taken, self.settings.read_barrier_max_ms / 1000.0 * ANSWER_SHARE_MAX)

    def deliver(self, messages: list[Message]) -> None:
        """The consumer's hand-over of one fetch's requests (runs on the event loop)."""
        self.inbox.extend(messages)
        self.has_requests.set()

    async def take_in(self) -> None:
        """Submit what is in the inbox, in batches of at most ``batch_max`` (one forward pass each)."""
        metrics = self.processor.metrics
        while self.inbox:
            batch = [self.inbox.popleft() for _ in range(min(len(self.inbox), self.settings.batch_max))]
            metrics.batch_messages.observe(len(batch))
            await self.submit(batch)
            # Liveness: a consumer can stop without an error (faust issue #175), which only
            # shows as this timestamp falling behind while the consumer lag grows.
            metrics.last_batch.set_to_current_time()

    async def run_inbox(self) -> None:
        """Takes requests in as they are handed over (the events path also takes them in before
        each of its chunks, so a backlog of events never keeps them waiting)."""
        while True:
            if not self.inbox:
                self.has_requests.clear()
                await self.has_requests.wait()
                continue
            try:
                await self.take_in()
            except Exception:  # a failure here must not stop taking the next requests in
                log.exception("taking requests in failed")

    def fetched(self, partition: int) -> Fetched | None:
        return self.fetch_log.latest.get((self.settings.events_topic, partition))

    async def submit(self, batch: list[Message]) -> None:
        if self.settings.read_barrier_max_ms <= 0 or not self.fetch_log.active:
            await self._answer([(message, False, None) for message in batch])
            return
        now = asyncio.get_running_loop().time()
        wall = time.time()
        topic = self.settings.requests_topic
        for message in batch:
            partition = message.partition
            # The bound counts from the request's Kafka timestamp (the producer's clock), never
            # from later than its arrival: time spent reaching the worker is part of the wait.
            produced = message.timestamp
            age = wall - produced if produced else 0.0
            # The newest response of the request's partition came at or after the request itself;
            # without one (not recorded), every response so far counts as possibly before it.
            seen = self.fetch_log.latest.get((topic, partition))
            seq = seen[0] if seen is not None else self.fetch_log.seq
            self.barrier.hold(message, partition, seq, now, age)
        await self.answer_ready()
        self.wake.set()

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions taken away by a rebalance: requests not yet taken in are dropped
        unacknowledged (the new owner reads them from the committed offset); held ones are
        answered by the wait bound."""
        gone = {tp.partition for tp in tps if tp.topic == self.settings.requests_topic}
        if not gone:
            return
        self.inbox = deque(m for m in self.inbox if m.partition not in gone)
        self.barrier.forget(gone)

    def limits(self) -> dict[int, int]:
        self.barrier.fix_targets(self.fetched)
        return self.barrier.limits()

    async def answer_ready(self, lookahead: float = 0.0) -> None:
        """Answer the held requests whose events are applied, and those whose wait runs out
        within ``lookahead`` seconds (stale): the caller is about to hold the loop that long."""
        now = asyncio.get_running_loop().time()
        ahead = lookahead + self.answer_time()
        ready, stale = self.barrier.release(self.fetched, self.applied, now + ahead)
        if not ready and not stale:
            return
        released: list[tuple[Held[Message], bool]] = [(h, False) for h in ready] + [(h, True) for h in stale]
        released.sort(key=lambda pair: pair[0].since)
        await self._answer([(h.item, is_stale, now - h.since) for h, is_stale in released])

    async def _answer(self, items: list[tuple[Message, bool, float | None]]) -> None:
        metrics = self.processor.metrics
        for _, _, waited in items:
            if waited is not None:
                metrics.read_barrier_wait.observe(waited)
        t0 = time.perf_counter()
        outputs = self.processor.process([in_message(m, stale=s) for m, s, _ in items])
        await self.sender.send_all(outputs)
        self.answer_times.append(time.perf_counter() - t0)
        self.ack([m for m, _, _ in items])

    async def run(self) -> None:
        """Answers held requests as their wait runs out or their events' fetches come in."""
        while True:
            if not self.barrier.held:
                self.wake.clear()
                await self.wake.wait()
                continue
            await asyncio.sleep(BARRIER_POLL_S)
            try:
                await self.answer_ready()
            except Exception:  # a failure here must not stop answering the other requests
                log.exception("answering held requests failed")


class EventsPath:
    """Buffers the events faust's consumer hands over and applies them a chunk at a time."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        processor: Processor,
        states: TableStates,
        sender: Sender,
        fetch_log: FetchLog,
    ) -> None:
        self.app = app
        self.settings = settings
        self.processor = processor
        self.sender = sender
        self.fetch_log = fetch_log
        self.store = ChunkStore(app, states)
        self.buffer: deque[Message] = deque()
        self.has_events = asyncio.Event()
        # Per events partition, the offset below which every delivered event is applied.
        self.applied_next: dict[int, int] = {}
        self.paused: set[TP] = set()
        self.gate: RequestGate | None = None
        self.chunk_size = settings.events_batch_max

    def deliver(self, messages: list[Message]) -> None:
        """The consumer's hand-over of one fetch's events (runs on the event loop)."""
        self.buffer.extend(messages)
        self.has_events.set()
        if len(self.buffer) >= self.settings.events_buffer_max:
            consumer = self.app.consumer
            for tp in {TP(m.topic, m.partition) for m in messages} - self.paused:
                consumer.pause_fetching(tp)  # type: ignore[attr-defined]  # on faust_hooks._Consumer
                self.paused.add(tp)

    def applied(self, partition: int) -> int | None:
        """Offset below which the partition's events are applied: those delivered and applied
        since it was assigned, and those before the first fetch (committed, or skipped)."""
        first = self.fetch_log.first_position.get((self.settings.events_topic, partition))
        done = self.applied_next.get(partition)
        if done is None:
            return first
        return done if first is None else max(done, first)

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions taken away by a rebalance: their buffered events are dropped unacknowledged
        (the new owner reads them from the committed offset)."""
        gone = {tp.partition for tp in tps if tp.topic == self.settings.events_topic}
        if not gone:
            return
        self.buffer = deque(m for m in self.buffer if m.partition not in gone)
        for partition in gone:
            self.applied_next.pop(partition, None)
        self.paused = {tp for tp in self.paused if tp.partition not in gone}

    def _take(self) -> list[Message]:
        limits = self.gate.limits() if self.gate is not None else {}
        size = self.chunk_size
        chunk: list[Message] = []
        if not limits:
            while self.buffer and len(chunk) < size:
                chunk.append(self.buffer.popleft())
            return chunk
        # Events at or past a held request's target wait for it to be answered.
        kept: list[Message] = []
        scanned = 0
        while self.buffer and len(chunk) < size and scanned < SCAN_FACTOR * size:
            message = self.buffer.popleft()
            scanned += 1
            limit = limits.get(message.partition)
            (kept if limit is not None and message.offset >= limit else chunk).append(message)
        self.buffer.extendleft(reversed(kept))
        return chunk

    async def run(self) -> None:
        metrics = self.processor.metrics
        while True:
            if not self.buffer:
                self.has_events.clear()
                await self.has_events.wait()
                continue
            if self.gate is not None and self.gate.inbox:
                await self.gate.take_in()
            chunk = self._take()
            if chunk:
                if self.gate is not None:
                    # A request whose wait would run out while the chunk holds the loop is answered
                    # now: after the chunk it would be late by the chunk's time.
                    await self.gate.answer_ready(lookahead=DEADLINE_LOOKAHEAD_S)
                started = time.perf_counter()
                try:
                    await self._apply(chunk)
                except Exception:  # the Processor isolates bad events: this is the store or the producer
                    # Nothing of the chunk is acknowledged; it is tried again (its events that were
                    # written are then duplicates, which the Processor recognises by offset).
                    log.exception("applying a chunk of %d events failed; retrying", len(chunk))
                    self.buffer.extendleft(reversed(chunk))
                    await asyncio.sleep(RETRY_S)
                    continue
                per_event = (time.perf_counter() - started) / len(chunk)
                fitting = int(CHUNK_TARGET_S / max(per_event, 1e-6))
                self.chunk_size = max(MIN_CHUNK, min(self.settings.events_batch_max, fitting))
                metrics.batch_messages.observe(len(chunk))
                metrics.last_batch.set_to_current_time()
            self._maybe_resume()
            if self.gate is not None:
                await self.gate.answer_ready()
            # Give the loop to requests and timers between chunks; when every buffered event
            # waits for a held request, give it a little longer.
            await asyncio.sleep(0 if chunk else BARRIER_POLL_S)

    async def _apply(self, chunk: list[Message]) -> None:
        # The Processor (shared with the requests, and swapped to new models in place) works on
        # the chunk's store for this call; nothing else runs on the loop until it returns.
        processor = self.processor
        table_store = processor.store
        processor.store = self.store
        try:
            outputs = processor.process([in_message(m) for m in chunk])
        finally:
            processor.store = table_store
        await self.store.flush()
        for message in chunk:
            self.applied_next[message.partition] = message.offset + 1
        await self.sender.send_all(outputs)
        ack_messages(self.app.consumer, chunk)

    def _maybe_resume(self) -> None:
        if self.paused and len(self.buffer) <= self.settings.events_buffer_max // 2:
            consumer = self.app.consumer
            for tp in self.paused:
                consumer.resume_fetching(tp)  # type: ignore[attr-defined]  # on faust_hooks._Consumer
            self.paused.clear()
