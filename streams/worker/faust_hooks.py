"""Every use of faust's and aiokafka's private interfaces, in one place.

faust-streaming is pinned below its next minor version in pyproject.toml; each hook names what
it relies on, so an upgrade is checked here and nowhere else.

The transport, for the embedded broker's quirks, configured by settings:

* faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``. Against a
  broker that does not answer a waiting fetch early when data arrives (the
  embedded Tansu broker), every consumed message then waits up to 1.5 s.
* faust's table recovery reads each changelog partition up to its end as
  reported by ListOffsets. The embedded broker reports the base offset of the
  last record batch, so recovery would stop short of the newest records (and
  a RocksDB store that has them fails with ConsistencyError). The end is
  therefore confirmed by the high watermark that a fetch response carries.

Start-up: faust's ``TableManager.on_start`` sleeps a second before subscribing, for tables
defined after the app starts; the worker's table is defined before (``PromptTableManager``).

The consuming path of the worker (streams/worker/consuming.py):

* faust hands every fetched message to the event loop one at a time (``Consumer._drain_messages``
  awaits ``wait_first`` on two futures per message), then through a channel and a stream: about
  170 us per message, and several turns of the event loop each. The worker's input topics skip
  all of it: their messages go, one list per fetch and topic, to the app's ``bulk_sinks``
  (``_Consumer._drain_messages``). Behind a backlog of events, faust's way let requests in only a
  few per turn of a busy loop, slower than they came (measured: 70-160 of 200 a second, their
  age at arrival growing to seconds); other topics still go faust's way.
* faust runs its aiokafka consumer in a thread of its own, with its own event loop: every fetch
  then crossed threads twice (a call into the consumer's loop, its result back) and both threads
  took turns at the GIL, so the consumer's socket writes waited for the scoring and the scoring for
  them (py-spy at 200 requests/s: socket writes 9% of the worker's samples, two thirds of them
  fetch requests, and the cross-thread wake-ups 6%). The
  consumer service runs on the app's loop instead (``_ConsumerThread.start``, ``call_thread``); its
  records are decoded there, ``broker_max_poll_records`` at a time, the requests topic's first
  (``RerankerApp.priority_topics``), so a backlog's fetch is never one long hold of the loop.
* Results go through a producer of their own (``OwnProducer``), flushed before each commit like
  faust's: faust's producer also carries the changelog, and a result waited behind it.
* Read-your-writes needs, per partition, the high watermark of a fetch response handled after a
  request arrived. aiokafka keeps only the newest one, without saying which response set it, so
  the fetcher's response handler is wrapped to number the responses (``FetchLog``).
* A table write through ``Table.__setitem__`` sends one changelog record through faust's producer
  buffer and writes the changelog offset to RocksDB in each send's callback (~150 us per write).
  ``write_table_states`` writes a chunk's states to the store and sends their changelog records
  as one aiokafka batch per partition, recording the persisted offset once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import aiokafka
import faust
import mode
from aiokafka import TopicPartition
from faust import streams as faust_streams
from faust.auth import SASLCredentials, SSLCredentials
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP, Message, TableT
from faust.types.auth import SASLMechanism
from mode.utils.futures import maybe_async

from streams.kafka.security import ssl_context
from streams.settings import Settings

log = logging.getLogger(__name__)


async def fetched_end_offsets(
    bootstrap: list[str], reported: Mapping[Any, int], *, auth: Mapping[str, Any] | None = None, timeout: float = 10.0
) -> dict[Any, int]:
    """End offsets as fetch responses give them, never below the ``reported`` ones.

    A throwaway consumer (no group) fetches each partition from its reported
    end; the high watermark in the response is the true end of the log.
    """
    if not reported:
        return {}
    probe = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10, **(auth or {})
    )
    await probe.start()
    try:
        by_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
        probe.assign(list(by_tp))
        for tp, original in by_tp.items():
            probe.seek(tp, max(0, reported[original] or 0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(probe.highwater(tp) is None for tp in by_tp) and loop.time() < deadline:
            await probe.getmany(timeout_ms=50, max_records=1)
        out = {}
        for tp, original in by_tp.items():
            fetched = probe.highwater(tp)
            out[original] = max(reported[original] or 0, fetched if fetched is not None else 0)
            if fetched is not None and fetched != reported[original]:
                log.debug("end of %s: ListOffsets said %s, fetch says %s", tp, reported[original], fetched)
        return out
    finally:
        await probe.stop()


class FetchLog:
    """Per partition, the newest fetch response that carried it: its number (responses are
    numbered in the order the consumer handled them) and the partition's high watermark; and the
    offset of the first fetch since the partition was (re)assigned, below which nothing is
    delivered to this worker. Written by the consumer's thread, read by the event loop."""

    def __init__(self) -> None:
        # False until the fetcher is watched: without it no end offset can be trusted.
        self.active = False
        self.seq = 0
        self.latest: dict[tuple[str, int], tuple[int, int]] = {}
        self.first_position: dict[tuple[str, int], int] = {}

    def record(self, topic: str, partition: int, highwater: int, position: int) -> None:
        key = (topic, partition)
        self.latest[key] = (self.seq, highwater)
        self.first_position.setdefault(key, position)

    def skipped(self, moved: Mapping[Any, int]) -> None:
        """Partitions sought forward (``{tp: offset}``) past a model's watermark: nothing below
        the new offset will be delivered, although a fetch from the old position may have been
        recorded first (aiokafka starts fetching as soon as the partitions are assigned)."""
        for tp, offset in moved.items():
            key = (tp.topic, tp.partition)
            self.first_position[key] = max(self.first_position.get(key, offset), offset)

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.latest.pop((tp.topic, tp.partition), None)
            self.first_position.pop((tp.topic, tp.partition), None)


def watch_fetches(fetcher: Any, log_: FetchLog) -> None:
    """Number every fetch response that ``fetcher`` (aiokafka's ``Fetcher``) handles in ``log_``.

    ``Fetcher._proc_fetch_request(assignment, node_id, request)`` sends one fetch, then sets the
    high watermark (and ``timestamp``, in ms) of each partition of the response it accepts. A
    partition counts only when its timestamp is not older than the call: one whose part of the
    response was discarded (an error, a seek) keeps its older watermark and is left out.
    """
    original = fetcher._proc_fetch_request

    async def proc_fetch_request(assignment: Any, node_id: Any, request: Any) -> Any:
        started_ms = int(1000 * time.time())
        result = await original(assignment, node_id, request)
        log_.seq += 1
        for topic, partitions in request.topics:
            for partition, offset, *_ in partitions:
                try:
                    state = assignment.state_value(TopicPartition(topic, partition))
                except (KeyError, AssertionError):
                    continue
                if state is None or state.highwater is None or (state.timestamp or 0) < started_ms:
                    continue
                log_.record(topic, partition, state.highwater, offset)
        return result

    fetcher._proc_fetch_request = proc_fetch_request
    log_.active = True


class _SameLoop:
    """Stands in for mode's ``WorkerThread`` of a consumer that runs on the app's loop."""

    def stop(self) -> None:
        return None


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 1500
    verify_end_offsets: ClassVar[bool] = True

    async def start(self) -> None:
        """mode's ``ServiceThread.start`` without the thread: the service runs on the app's loop."""
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = asyncio.Future(loop=self.parent_loop)
        self._thread = _SameLoop()  # type: ignore[assignment]
        # Kept referenced: the loop holds only a weak reference to a task.
        self._serving = asyncio.ensure_future(self._serve(), loop=self.parent_loop)
        try:
            if not self.should_stop and self.wait_for_thread:
                await self._thread_running
        finally:
            self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The same loop: called directly, not through the method queue (two more loop turns a fetch).
        return await maybe_async(fun(*args, **kwargs))

    async def _gather_remaining_tasks(self) -> None:
        # The loop is the app's: its other tasks are not this service's to cancel.
        return None

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Mapping[Any, list[Any]]:
        """The priority topics' records first and whole, then up to ``max_records`` of the rest."""
        topics: set[str] = getattr(self.app, "priority_topics", set())
        # None or empty: every assigned partition (aiokafka's ``fetched_records``).
        partitions = active_partitions or consumer.assignment()
        priority = {tp for tp in partitions if tp.topic in topics}
        if not priority:
            return await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        first = dict(await super()._fetch_records(consumer, priority, timeout=0, max_records=None))
        rest = await super()._fetch_records(
            consumer, active_partitions, timeout=0 if first else timeout, max_records=max_records
        )
        for tp, records in rest.items():
            first[tp] = first.get(tp, []) + list(records)
        return first

    async def on_start(self) -> None:
        await super().on_start()
        # aiokafka builds its Fetcher in AIOKafkaConsumer.start(), which the parent has awaited.
        fetcher = getattr(self._consumer, "_fetcher", None)
        fetch_log = getattr(self.app, "fetch_log", None)
        if fetcher is not None and fetch_log is not None:
            watch_fetches(fetcher, fetch_log)
        else:
            log.warning("aiokafka's fetcher not found: requests are answered without the read barrier")

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions: Iterable[Any]) -> Mapping[Any, int]:
        reported = await super()._highwaters(list(partitions))
        if not self.verify_end_offsets or self.consumer.in_transaction:
            return reported
        conf = self.app.conf
        transport = self.transport
        return await fetched_end_offsets(
            server_list(transport.url, transport.default_port),  # type: ignore[attr-defined]  # not on TransportT
            reported,
            auth=credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )


# Most messages of the bulk topic handed to the sink in one list; the loop is given back after
# each hand-over, so requests and timers never wait behind a whole fetch.
BULK_HANDOVER_MAX = 1000


class _Consumer(faust_aiokafka.Consumer):
    thread_class: ClassVar[type[_ConsumerThread]] = _ConsumerThread

    def _new_consumer_thread(self) -> _ConsumerThread:
        return self.thread_class(self, loop=self.loop, thread_loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - faust's loop, see below
        """faust's ``Consumer._drain_messages`` (faust-streaming 0.11), with the messages of each
        topic that has a sink in the app's ``bulk_sinks`` collected per fetch and handed to it in
        one call."""
        sinks: Mapping[str, Callable[[list[Message]], None]] = getattr(self.app, "bulk_sinks", None) or {}
        if not sinks:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        fetching = faust_consumer.CONSUMER_FETCHING
        bulk: dict[str, list[Message]] = {topic: [] for topic in sinks}
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(fetching)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        pending = bulk.get(message.topic)
                        if pending is not None:
                            pending.append(message)
                            set_read_offset(tp, offset)
                            if len(pending) >= BULK_HANDOVER_MAX:
                                sinks[message.topic](pending)
                                bulk[message.topic] = []
                                await asyncio.sleep(0)
                            continue
                        num_since_yield += 1
                        if num_since_yield > 100:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    for topic, pending in bulk.items():
                        if pending:
                            sinks[topic](pending)
                            bulk[topic] = []
                    unset_flag(fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(fetching)

    async def _commit_offsets(self, offsets: Mapping[Any, int], start_new_transaction: bool = True) -> bool:
        """faust flushes its producer before it commits; the results' own producer is flushed too,
        so no offset is committed before the outputs of what it covers are delivered."""
        for producer in getattr(self.app, "own_producers", ()):
            await producer.flush()
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    def pause_fetching(self, tp: TP) -> None:
        """Stop fetching ``tp`` (faust's own flow control for a full stream buffer)."""
        self.on_buffer_full(tp)

    def resume_fetching(self, tp: TP) -> None:
        self.on_buffer_drop(tp)
        # A poll in progress waits up to a second (faust's getmany timeout) for records of the
        # partitions that were active when it began, while aiokafka may already hold this one's
        # (it fetched them before the pause): the ingestion windows measured 0.5-1 s from a resume
        # to the next hand-over, the worker idle in between. The poll re-reads the active set
        # (the same set object) when woken.
        fetcher = getattr(getattr(self._thread, "_consumer", None), "_fetcher", None)
        for waiter in list(getattr(fetcher, "_fetch_waiters", ())):
            if not waiter.done():
                waiter.set_result(None)

    async def perform_seek(self) -> None:
        """faust's seek to the committed offsets after each assignment (``Consumer.perform_seek``,
        called by table recovery before the streams resume), then on past the serving model's
        watermark (``RerankerApp.start_offsets``) where a partition's commit lies below it or
        there is none: the model holds the state that those events would build."""
        await super().perform_seek()
        start_offsets = getattr(self.app, "start_offsets", None)
        if start_offsets is None:
            return
        topic, offsets = start_offsets()
        moved = await skip_to(self, topic, offsets, fetch_log=self.app.fetch_log)  # type: ignore[attr-defined]  # RerankerApp's
        if moved:
            log.info(
                "started past the model's watermark: %s", {f"{tp.topic}[{tp.partition}]": o for tp, o in moved.items()}
            )


async def skip_to(consumer: Any, topic: str, offsets: Mapping[int, int], *, fetch_log: FetchLog) -> dict[Any, int]:
    """Seek each of the consumer's assigned partitions of ``topic`` that is below ``offsets``
    ({partition: offset}) to it; returns {partition: offset} of those moved.

    The moves are recorded in ``fetch_log`` (`FetchLog.skipped`): the read barrier counts what lies
    below a moved partition's new offset as applied, else a request would wait for events that are
    in the model and never delivered.

    ``consumer`` is faust's (``Consumer.seek`` and ``position``). faust commits only offsets
    that follow the last committed one without a hole, and ``Consumer.seek`` would record the
    new offset as read, so the skipped offsets would stay a hole and no commit would pass them.
    The previous read offset (``Consumer._read_offset``) is put back instead: the first record
    after the skip then leaves a gap behind it, which faust counts as processed (``_add_gap``).
    """
    moved: dict[Any, int] = {}
    if not offsets:
        return moved
    for tp in sorted(consumer.assignment()):
        target = offsets.get(tp.partition)
        if tp.topic != topic or not target:
            continue
        # The group's commit as faust read it when seeking, besides the position: a position read
        # while the seek to the commit is still pending can lag it, and a skip from there would
        # move the partition back below its commit (its events then redelivered).
        committed = committed_offsets(consumer).get(tp)
        if committed is not None and committed >= target:
            continue
        position = await consumer.position(tp)
        if position is not None and position >= target:
            continue
        read = consumer._read_offset.get(tp)
        await consumer.seek(tp, target)
        consumer._read_offset[tp] = read
        moved[tp] = target
    fetch_log.skipped(moved)
    return moved


def configured_transport(fetch_max_wait_ms: int, verify_end_offsets: bool = True) -> type[faust_aiokafka.Transport]:
    """A Transport class with these consumer settings."""
    thread_cls = type(
        "ConsumerThread",
        (_ConsumerThread,),
        {"fetch_max_wait_ms": int(fetch_max_wait_ms), "verify_end_offsets": bool(verify_end_offsets)},
    )
    consumer_cls = type("Consumer", (_Consumer,), {"thread_class": thread_cls})
    return type("Transport", (faust_aiokafka.Transport,), {"Consumer": consumer_cls})


class PromptTableManager(TableManager):
    """faust's TableManager without the one-second sleep at its start (``TableManager.on_start``).

    The sleep gives an application time to define tables after the app starts; the worker
    defines its only table before (``build_worker``), so the second only delayed the consumer's
    subscription, and with it the group join and the first answer.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


# Sends whose time to acknowledgement an own producer remembers.
ACK_TIMES_KEPT = 64


class OwnProducer(mode.Service):
    """An aiokafka producer of its own for one output topic, made like faust's (same client
    settings and credentials, ``Producer._new_producer``) and flushed before every commit.

    faust's producer also carries the table's changelog and the events path's outputs. aiokafka
    sends one produce request at a time per broker and appends to a partition's batch only while
    it is not full, so during a backlog a result waited behind megabytes of changelog (measured:
    up to 180 ms in ``send``, then as long again to the broker). On a connection of its own a
    result is behind other results only.
    """

    def __init__(self, app: faust.App, topic: str, **kwargs: Any) -> None:
        super().__init__(loop=app.loop, **kwargs)
        self.app = app
        self.topic = topic
        self._producer: aiokafka.AIOKafkaProducer | None = None
        # Seconds from send to the broker's acknowledgement of the latest messages.
        self.ack_times: deque[float] = deque(maxlen=ACK_TIMES_KEPT)

    def ack_time(self) -> float:
        """The longest of the latest sends' times to acknowledgement (0 before any)."""
        return max(self.ack_times, default=0.0)

    def _acked(self, handed: float, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            self.ack_times.append(self.loop.time() - handed)

    async def on_start(self) -> None:
        faust_producer: Any = self.app.producer  # faust's aiokafka Producer (``_new_producer``)
        settings = {
            **faust_producer._settings_default(),
            **faust_producer._settings_auth(),
            **faust_producer._settings_extra(),
        }
        # aiokafka keeps one open batch per partition; at faust's 16 KiB (three results of 100
        # candidates) the results answered together went out in several round trips.
        settings["max_batch_size"] = max(settings["max_batch_size"], settings["max_request_size"])
        self._producer = aiokafka.AIOKafkaProducer(**settings)
        await self._producer.start()

    async def on_stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # sends what it holds first

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def send(
        self, *, key: bytes | None, value: bytes, partition: int | None = None, timestamp: float | None = None
    ) -> asyncio.Future[Any]:
        """Hands the message to the producer; returns the future of its delivery."""
        if self._producer is None:
            raise RuntimeError(f"the producer of {self.topic} is not running")
        timestamp_ms = int(timestamp * 1000) if timestamp is not None else None
        handed = self.loop.time()
        delivery = await self._producer.send(
            self.topic, value=value, key=key, partition=partition, timestamp_ms=timestamp_ms
        )
        delivery.add_done_callback(partial(self._acked, handed))
        return delivery


class RerankerApp(faust.App):
    """faust.App whose consumer has the settings above (``_new_transport`` is faust's factory)."""

    fetch_wait_ms: int = 1500
    verify_end_offsets: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_log = FetchLog()
        # Per topic, where its messages go, in lists (one or a few per fetch), instead of faust's
        # channels and streams (see the module's docstring); set before the app starts.
        self.bulk_sinks: dict[str, Callable[[list[Message]], None]] = {}
        # Topics whose fetched records are handed over before any other's, all of them each time.
        self.priority_topics: set[str] = set()
        # Producers besides faust's (started and stopped with the app, flushed before commits).
        self.own_producers: list[OwnProducer] = []

    def own_producer(self, topic: str) -> OwnProducer:
        producer = OwnProducer(self, topic)
        self.own_producers.append(producer)
        self.add_dependency(producer)
        return producer

    # (events topic, {partition: offset}) below which the serving model holds every event.
    start_offsets: Callable[[], tuple[str, Mapping[int, int]]] | None = None

    def _new_transport(self) -> faust_aiokafka.Transport:
        transport_cls = configured_transport(self.fetch_wait_ms, self.verify_end_offsets)
        return transport_cls(self.conf.broker_consumer, self)


def faust_credentials(settings: Settings) -> SASLCredentials | SSLCredentials | None:
    """faust's ``broker_credentials``; faust hands them to its aiokafka clients."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if settings.security_protocol.endswith("SSL") else None
    if settings.security_protocol.startswith("SASL"):
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=SASLMechanism(settings.sasl_mechanism),
            ssl_context=context,
        )
    return SSLCredentials(context)


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The group's committed offset per partition, as faust keeps it (``Consumer._committed_offset``):
    read from the broker when the partition is assigned and updated on every commit of this
    worker. There is no public accessor; a consumer without it gives {} (callers fall back to
    the position)."""
    return getattr(consumer, "_committed_offset", None) or {}


class SharedRocksDBOptions(faust_rocksdb.RocksDBOptions):
    """faust's RocksDB options (``faust.stores.rocksdb.RocksDBOptions``, whose ``as_options`` each
    partition's database is opened with) with one memory budget for all the partitions.

    faust's own give every partition a 2 GiB block cache and up to 3 x 64 MiB memtables, so a
    worker's memory grows with its partitions and its data. Here one LRU cache serves every
    partition and also holds the index and filter blocks (otherwise kept on the heap per open
    file), and one write-buffer manager caps the memtables of all of them together.
    """

    def __init__(self, block_cache_bytes: int, write_buffer_bytes: int, **kwargs: Any) -> None:
        import rocksdict

        # A memtable of half the budget lets one partition fill a new one while the last flushes.
        memtable = max(1 << 20, write_buffer_bytes // 2)
        super().__init__(
            block_cache_size=block_cache_bytes, write_buffer_size=memtable, max_write_buffer_number=2, **kwargs
        )
        self.cache = rocksdict.Cache(block_cache_bytes)
        # No stall: writers go on while a flush brings the memtables back under the budget.
        self.write_buffers = rocksdict.WriteBufferManager(write_buffer_bytes, False)

    def as_options(self) -> Any:
        import rocksdict

        options = super().as_options()
        table_options = rocksdict.BlockBasedOptions()
        table_options.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table_options.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        table_options.set_block_cache(self.cache)
        table_options.set_cache_index_and_filter_blocks(True)
        # The newest files' index and filter stay in memory: every lookup consults them.
        table_options.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table_options)
        options.set_write_buffer_manager(self.write_buffers)
        return options


def bound_rocksdb_memory(table: Any, *, block_cache_bytes: int, write_buffer_bytes: int) -> bool:
    """Give ``table``'s RocksDB store one block cache and one write-buffer budget for all its
    partitions (``Store.rocksdb_options``, read each time a partition's database is opened).

    Returns:
        False when the table is not in RocksDB (memory://), or in the python-rocksdb driver,
        which faust keeps with its own options.
    """
    store = table.data
    if not isinstance(store, faust_rocksdb.Store) or not store.use_rocksdict:
        return False
    store.rocksdb_options = SharedRocksDBOptions(
        block_cache_bytes,
        write_buffer_bytes,
        max_open_files=store.rocksdb_options.max_open_files,
        use_rocksdict=True,
        ttl=store.rocksdb_options.ttl,
    )
    return True


class _PartitionSource:
    """Stands for a consumed event of a partition where faust's store looks for one
    (``current_event().message.partition``): the events path writes states outside any stream."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = Message(topic, partition, -1, 0.0, 0, None, None, None, None)


@contextlib.contextmanager
def as_partition(topic: str, partition: int) -> Iterator[None]:
    """Make a stand-in for an event of ``topic``/``partition`` faust's current event."""
    source = _PartitionSource(topic, partition)
    token = faust_streams._current_event.set(weakref.ref(source))  # type: ignore[arg-type]  # duck-typed
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def read_table_value(table: TableT, key: bytes) -> bytes | None:
    """The table's store value for ``key`` (under the partition set by ``as_partition``), without
    the table's per-access sensors."""
    value: bytes | None = table.data.get(key)
    return value


async def write_table_states(
    app: faust.App,
    table: TableT,
    writes: Mapping[int, Sequence[tuple[bytes, bytes]]],
    *,
    kill_after_writing: bytes | None = None,
) -> None:
    """Write ``writes`` (per partition: key, value) to ``table``'s store, then send their changelog
    records, one aiokafka batch per partition (several when one is full).

    The changelog partition is the events partition, as faust's own ``Table.__setitem__`` picks
    it. RocksDB's persisted offset (from where a restart reads the changelog) is set to the last
    record of each batch once it is delivered. Returns once every record is in the producer's
    accumulator; faust flushes the producer before it commits offsets.

    Args:
        kill_after_writing: fault injection (tables.FAULT_KILL_AFTER_STATE_WRITE_ENV): SIGKILL the
            process right after the store has this key's state, before its changelog is sent.
    """
    store = table.data
    source_topic = table.changelog_topic.get_topic_name()
    for partition, items in writes.items():
        with as_partition(source_topic, partition):
            for key, value in items:
                store[key] = value
                if key == kill_after_writing:
                    os.kill(os.getpid(), signal.SIGKILL)
    producer: aiokafka.AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]  # aiokafka driver
    changelog = table.changelog_topic.get_topic_name()
    for partition, items in writes.items():
        batch = producer.create_batch()
        count = 0
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                await _send_changelog_batch(producer, store, changelog, partition, batch, count)
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a state of {len(value)} bytes does not fit one changelog batch")
            count += 1
        if count:
            await _send_changelog_batch(producer, store, changelog, partition, batch, count)


async def _send_changelog_batch(
    producer: aiokafka.AIOKafkaProducer, store: Any, topic: str, partition: int, batch: Any, count: int
) -> None:
    batch.close()
    delivery = await producer.send_batch(batch, topic, partition=partition)

    def persisted(done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            log.error("a changelog batch of %d states to %s[%d] was not delivered: %r", count, topic, partition, done)
            return
        store.set_persisted_offset(TP(topic, partition), done.result().offset + count - 1)

    delivery.add_done_callback(persisted)


def ack_messages(consumer: Any, messages: Iterable[Message]) -> None:
    """Acknowledge messages taken outside faust's streams (their offsets become committable)."""
    ack = consumer.ack
    for message in messages:
        ack(message)
