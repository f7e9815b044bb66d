"""Gauges a worker computes periodically: consumer lag per input topic and users in state.

Both come from a faust timer rather than from the agent: the agent runs only
when messages arrive, and a consumer that has stopped (or fallen far behind)
is exactly the case where these numbers matter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import faust
from faust.types import TableT

from streams.core.worker_metrics import WorkerMetrics
from streams.worker.faust_hooks import committed_offsets

log = logging.getLogger(__name__)

# Lag is a sum over the assigned partitions (no broker call): cheap enough to refresh every second,
# so a backlog shows within one scrape.
MONITOR_INTERVAL_S = 1.0
# Until every assigned partition has been fetched (after a start or a rebalance).
FIRST_LAG_POLL_S = 0.1
# Counting a RocksDB table walks every key. The count is refreshed at most at this share of the
# time, so even off the event loop a big table costs the worker's CPU well under 2 %.
COUNT_TIME_SHARE = 0.02


class LagSource(Protocol):
    """What lag needs of a faust consumer (faust.transport.consumer.Consumer has it all)."""

    def assignment(self) -> set[Any]: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def position(self, tp: Any) -> int | None: ...


async def consumer_lag(consumer: LagSource, topics: Iterable[str]) -> dict[str, int]:
    """Messages not yet processed, per topic, over the partitions assigned to this consumer.

    Per partition: the high watermark minus the committed offset (faust commits
    an offset only after the agent has handled the message), or minus the
    fetch position when nothing was committed yet. The high watermark is the
    one carried by fetch responses (aiokafka's ``highwater``): the embedded
    broker's ListOffsets answer under-reports the end of a partition.
    Partitions that have not been fetched yet (no high watermark) are left out.

    Returns:
        {topic: lag} for every topic in ``topics``; 0 where no partition is assigned.
    """
    wanted = set(topics)
    lag = {topic: 0 for topic in wanted}
    committed = committed_offsets(consumer)
    for tp in consumer.assignment():
        if tp.topic not in wanted:
            continue
        high = consumer.highwater(tp)
        if high is None or high < 0:
            continue
        done = committed.get(tp)
        if done is None:
            done = await consumer.position(tp)
        if done is None:
            continue
        lag[tp.topic] += max(0, int(high) - int(done))
    return lag


class TableCounter:
    """``len(table)``, counted in a worker thread no more often than its cost allows.

    Counting a RocksDB table walks every key: a second or more at a million users, for which the
    agent would stand still if it ran on the event loop. A RocksDB iterator reads a consistent
    snapshot, and rocksdict databases may be read from another thread while the loop writes
    them, so the walk runs in the loop's default executor and the gauge shows the last count
    that finished.
    """

    def __init__(
        self, table: Any, time_share: float = COUNT_TIME_SHARE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.table = table
        self.time_share = time_share
        self.clock = clock
        self.next_at = 0.0
        self.last: int | None = None
        self.running: asyncio.Future[tuple[int, float]] | None = None

    def count(self) -> int | None:
        """The last finished count of the worker's partitions of the table (None before the
        first); starts a new count in a thread when none is running and its time has come."""
        if self.running is None and self.clock() >= self.next_at:
            self.running = asyncio.get_running_loop().run_in_executor(None, self._count)
            self.running.add_done_callback(self._finished)
        return self.last

    def _count(self) -> tuple[int, float]:
        started = self.clock()
        size = len(self.table)
        return size, self.clock() - started

    def _finished(self, future: asyncio.Future[tuple[int, float]]) -> None:
        self.running = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            # Table not recovered yet, or a partition opened while the walk went over them.
            log.debug("table size not available: %r", exc)
            return
        self.last, took = future.result()
        self.next_at = self.clock() + took / self.time_share


def lag_known(consumer: LagSource, topics: Iterable[str]) -> bool:
    """Whether every assigned partition of ``topics`` has a high watermark (has been fetched), so
    that `consumer_lag` counts all of them (True when none is assigned)."""
    wanted = set(topics)
    highwaters = [consumer.highwater(tp) for tp in consumer.assignment() if tp.topic in wanted]
    return all(high is not None and high >= 0 for high in highwaters)


def register_monitor(
    app: faust.App, table: TableT, topics: Iterable[str], metrics: WorkerMetrics, interval_s: float = MONITOR_INTERVAL_S
) -> None:
    """A task on ``app`` that sets reranker_consumer_lag and reranker_users_in_state every
    ``interval_s``. The lag is set only once the group has assigned this worker its partitions and
    each of them has been fetched: until then it is not known (0 would be a claim). After a start
    or a rebalance it is looked at every FIRST_LAG_POLL_S until known, so it shows at once."""
    topic_names = list(topics)
    counter = TableCounter(table)
    assigned = asyncio.Event()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's signal accepts coroutines
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned.set()

    async def sample() -> bool:
        known = False
        # A failure here must not end the task (a faust task that raises is not restarted).
        try:
            if assigned.is_set() and lag_known(app.consumer, topic_names):
                for topic, value in (await consumer_lag(app.consumer, topic_names)).items():
                    metrics.consumer_lag.labels(topic).set(value)
                known = True
        except Exception as exc:  # noqa: BLE001  consumer not started yet, or between assignments
            log.debug("consumer lag not available: %r", exc)
        users = counter.count()
        if users is not None:
            metrics.users_in_state.set(users)
        return known

    @app.task
    async def monitor() -> None:
        while True:
            known = await sample()
            await asyncio.sleep(interval_s if known else FIRST_LAG_POLL_S)
