"""Read-your-writes: when a request may be answered, as plain bookkeeping over offsets.

A user's events and requests travel on two topics, partitioned alike, and a worker consumes them
apart (events in large chunks, requests at once). A request on partition p is answered only once
the worker has applied the events topic's partition p up to an end offset (high watermark) taken
*after* the request arrived: every event the broker acknowledged before the request was produced
lies below that offset. Requests of other partitions are never held by it.

"Taken after the request arrived" is made precise with the consumer's fetch responses, numbered
in the order they were handled: the request came in a response numbered at most ``seq`` (the
newest one of its partition when it was handed over), so the end offset of the events partition
in a response numbered ``seq`` or later was read by the broker after the request was in its log
(one fetch to a broker at a time; see docs/RELIABILITY.md for when the two partitions have
different leaders). The first such end offset seen becomes the request's target.

``max_wait_s`` after it was produced (or after it arrived, when its age is not known) a request
is answered anyway and flagged stale. This module holds no clock
and no client: the worker passes the time and what it knows of fetches and applied offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# (number of the newest fetch response that carried the partition, its high watermark)
Fetched = tuple[int, int]


@dataclass
class Held(Generic[T]):
    item: T
    partition: int
    seq: int
    since: float
    deadline: float
    target: int | None = None


@dataclass
class ReadBarrier(Generic[T]):
    """Requests held until their partition's events are applied far enough.

    Args:
        max_wait_s: how long a request may be held; 0 = never held.
    """

    max_wait_s: float
    held: list[Held[T]] = field(default_factory=list)
    # Per partition, when its first request reached this worker since it got the partition.
    since_assigned: dict[int, float] = field(default_factory=dict)

    def hold(self, item: T, partition: int, seq: int, now: float, age: float = 0.0) -> None:
        """Hold ``item`` (a request of ``partition``) that came in fetch response ``seq`` or before.

        Args:
            age: how long ago the request was produced, as far as known: the wait is counted from
                then, so a request that reached the worker late is not held for the full bound;
                but never from before its partition came to this worker (its first request since),
                so that after a restart or a rebalance the requests queued meanwhile wait for the
                few events behind them instead of all being answered stale at once.
        """
        first = self.since_assigned.setdefault(partition, now)
        age = min(max(0.0, age), now - first)
        self.held.append(Held(item, partition, seq, now, now + self.max_wait_s - age))

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions taken away: a later assignment starts their wait origin afresh."""
        for partition in partitions:
            self.since_assigned.pop(partition, None)

    def fix_targets(self, fetched: Callable[[int], Fetched | None]) -> None:
        """Give each held request without a target the end offset of the first events fetch
        response numbered at or after its own, once there is one."""
        for h in self.held:
            if h.target is None:
                seen = fetched(h.partition)
                if seen is not None and seen[0] >= h.seq:
                    h.target = seen[1]

    def limits(self) -> dict[int, int]:
        """Per partition, the lowest target of a held request: events at or past it wait until
        that request is answered, so it sees exactly the events below its target."""
        out: dict[int, int] = {}
        for h in self.held:
            if h.target is not None:
                out[h.partition] = min(h.target, out.get(h.partition, h.target))
        return out

    def release(
        self, fetched: Callable[[int], Fetched | None], applied: Callable[[int], int | None], now: float
    ) -> tuple[list[Held[T]], list[Held[T]]]:
        """Take out the requests that may be answered now.

        Args:
            fetched: per events partition, the newest fetch response's number and end offset.
            applied: per events partition, the offset below which every event is applied (None
                when unknown).
            now: the current time.

        Returns:
            (requests whose events are applied, requests whose wait ran out: stale), each in the
            order they were held.
        """
        self.fix_targets(fetched)
        ready: list[Held[T]] = []
        stale: list[Held[T]] = []
        kept: list[Held[T]] = []
        for h in self.held:
            through = applied(h.partition) if h.target is not None else None
            if h.target is not None and through is not None and through >= h.target:
                ready.append(h)
            elif now >= h.deadline:
                stale.append(h)
            else:
                kept.append(h)
        self.held = kept
        return ready, stale

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self.held), default=None)
