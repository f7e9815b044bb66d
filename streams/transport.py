"""A faust Kafka transport whose consumer fetch wait is a setting.

faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``. Against a broker
that does not answer a waiting fetch early when data arrives (the embedded
Tansu broker), every consumed message then waits up to 1.5 s. This transport
keeps everything else of faust's consumer and only sets that wait.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 1500

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    thread_class: ClassVar[type[_ConsumerThread]] = _ConsumerThread

    def _new_consumer_thread(self) -> _ConsumerThread:
        return self.thread_class(self, loop=self.loop, beacon=self.beacon)


def transport_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A Transport class whose worker consumer waits at most ``fetch_max_wait_ms`` per fetch."""
    thread_cls = type(
        "ConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": int(fetch_max_wait_ms)}
    )
    consumer_cls = type("Consumer", (_Consumer,), {"thread_class": thread_cls})
    return type("Transport", (faust_aiokafka.Transport,), {"Consumer": consumer_cls})
