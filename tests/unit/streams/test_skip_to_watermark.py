"""skip_to: a consumer's partitions below the model's watermark move up to it, faust is left to
count the skipped offsets as processed, and the read barrier's floor follows the move."""

import asyncio
from collections import defaultdict
from typing import Any

from faust.types import TP

from streams.worker.faust_hooks import FetchLog, skip_to


class Consumer:
    """What skip_to uses of faust's Consumer: assignment, position, seek and the read offsets."""

    def __init__(self, positions: dict[TP, int], read: dict[TP, int | None]) -> None:
        self.positions = positions
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, read)

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def seek(self, tp: TP, offset: int) -> None:
        # faust's Consumer.seek records the new offset as read.
        self.positions[tp] = offset
        self._read_offset[tp] = offset


def test_only_partitions_below_the_watermark_move_and_keep_their_read_offset() -> None:
    events = [TP("user-events", p) for p in range(4)]
    requests = TP("rerank-requests", 0)
    consumer: Any = Consumer(
        {events[0]: 0, events[1]: 50, events[2]: 200, events[3]: 7, requests: 0},
        {events[1]: 49, events[2]: 199},
    )
    watermark = {0: 100, 1: 100, 2: 100, 3: 0}
    fetch_log = FetchLog()
    # aiokafka fetched partition 0 from its reset position before the seek.
    fetch_log.record("user-events", 0, highwater=150, position=0)
    moved = asyncio.run(skip_to(consumer, "user-events", watermark, fetch_log=fetch_log))
    # Partition 2 is past the watermark (its commit wins), 3 has none, requests are another topic.
    assert moved == {events[0]: 100, events[1]: 100}
    assert consumer.positions == {events[0]: 100, events[1]: 100, events[2]: 200, events[3]: 7, requests: 0}
    # The read offsets are those from before the skip, so the next record leaves a gap behind it.
    assert consumer._read_offset[events[0]] is None and consumer._read_offset[events[1]] == 49
    # Nothing below a moved partition's new offset will be delivered: the barrier counts it applied.
    assert fetch_log.first_position == {("user-events", 0): 100, ("user-events", 1): 100}
