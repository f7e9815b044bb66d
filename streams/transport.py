"""A faust Kafka transport for the embedded broker's quirks, configured by settings.

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
import logging
from typing import Any, ClassVar, Iterable, Mapping

import aiokafka
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

log = logging.getLogger(__name__)


async def fetched_end_offsets(bootstrap: list[str], reported: Mapping[Any, int], *,
                              auth: Mapping[str, Any] | None = None, timeout: float = 10.0) -> dict[Any, int]:
    """End offsets as fetch responses give them, never below the ``reported`` ones.

    A throwaway consumer (no group) fetches each partition from its reported
    end; the high watermark in the response is the true end of the log.
    """
    if not reported:
        return {}
    probe = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      fetch_max_wait_ms=10, **(auth or {}))
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
            server_list(transport.url, transport.default_port), reported,
            auth=credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


class _Consumer(faust_aiokafka.Consumer):
    thread_class: ClassVar[type[_ConsumerThread]] = _ConsumerThread

    def _new_consumer_thread(self) -> _ConsumerThread:
        return self.thread_class(self, loop=self.loop, beacon=self.beacon)


def configured_transport(fetch_max_wait_ms: int, verify_end_offsets: bool = True
                         ) -> type[faust_aiokafka.Transport]:
    """A Transport class with these consumer settings."""
    thread_cls = type("ConsumerThread", (_ConsumerThread,), {
        "fetch_max_wait_ms": int(fetch_max_wait_ms), "verify_end_offsets": bool(verify_end_offsets)})
    consumer_cls = type("Consumer", (_Consumer,), {"thread_class": thread_cls})
    return type("Transport", (faust_aiokafka.Transport,), {"Consumer": consumer_cls})
