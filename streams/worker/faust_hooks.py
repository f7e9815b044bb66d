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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import aiokafka
import faust
from aiokafka import TopicPartition
from faust import streams as faust_streams
from faust.auth import SASLCredentials, SSLCredentials
from faust.stores import rocksdb as faust_rocksdb
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import EventT, StreamT
from faust.types.auth import SASLMechanism

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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 1500
    verify_end_offsets: ClassVar[bool] = True

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


class _Consumer(faust_aiokafka.Consumer):
    thread_class: ClassVar[type[_ConsumerThread]] = _ConsumerThread

    def _new_consumer_thread(self) -> _ConsumerThread:
        return self.thread_class(self, loop=self.loop, beacon=self.beacon)

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
        moved = await skip_to(self, topic, offsets)
        if moved:
            log.info(
                "started past the model's watermark: %s", {f"{tp.topic}[{tp.partition}]": o for tp, o in moved.items()}
            )


async def skip_to(consumer: Any, topic: str, offsets: Mapping[int, int]) -> dict[Any, int]:
    """Seek each of the consumer's assigned partitions of ``topic`` that is below ``offsets``
    ({partition: offset}) to it; returns {partition: offset} of those moved.

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
        position = await consumer.position(tp)
        if position is not None and position >= target:
            continue
        read = consumer._read_offset.get(tp)
        await consumer.seek(tp, target)
        consumer._read_offset[tp] = read
        moved[tp] = target
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


class RerankerApp(faust.App):
    """faust.App whose consumer has the settings above (``_new_transport`` is faust's factory)."""

    fetch_wait_ms: int = 1500
    verify_end_offsets: bool = True
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


def drain_in_background(stream: StreamT, channel: AsyncIterator[Any]) -> None:
    """Let the stream drain ``channel`` in a background task (``Stream._enable_passive``, the
    hook faust's own ``take_events`` uses), so its processors run as messages arrive."""
    stream._enable_passive(channel)  # type: ignore[attr-defined]  # on Stream, not StreamT


@contextlib.contextmanager
def as_current_event(event: EventT | None) -> Iterator[None]:
    """Make ``event`` faust's "current event" (``faust.streams._current_event``) inside the block.

    faust picks a table write's changelog partition (and RocksDB picks the per-partition
    database on reads and writes) from the current event. The agent works on batches, where
    that is the last event taken, not the one being handled, so it is set for each access.
    """
    if event is None:
        yield
        return
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


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
