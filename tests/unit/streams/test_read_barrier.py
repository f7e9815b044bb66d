"""The read barrier's bookkeeping: when a held request may be answered, and when it is stale."""

from streams.core.read_barrier import Fetched, ReadBarrier


def fetched_from(table: dict[int, Fetched]):  # type: ignore[no-untyped-def]
    return table.get


def test_a_request_waits_for_a_fetch_at_or_after_its_own_then_for_the_events_below_its_end() -> None:
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=1.0)
    barrier.hold("r", partition=0, seq=5, now=0.0)
    fetched = {0: (4, 10)}  # an older response: its end offset may predate the request
    applied = {0: 10}
    assert barrier.release(fetched.get, applied.get, now=0.1) == ([], [])
    fetched[0] = (5, 12)  # the response that carried the request, or a later one: end 12
    assert barrier.release(fetched.get, applied.get, now=0.2) == ([], [])
    assert barrier.limits() == {0: 12}
    fetched[0] = (6, 20)  # a newer end does not move the target the request already has
    applied[0] = 12
    ready, stale = barrier.release(fetched.get, applied.get, now=0.3)
    assert [h.item for h in ready] == ["r"] and stale == []
    assert barrier.held == []


def test_requests_of_other_partitions_are_not_held_by_a_backlog() -> None:
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=1.0)
    barrier.hold("behind", partition=0, seq=3, now=0.0)
    barrier.hold("quiet", partition=1, seq=3, now=0.0)
    fetched = {0: (3, 5000), 1: (3, 40)}
    applied = {0: 100, 1: 40}
    ready, stale = barrier.release(fetched.get, applied.get, now=0.01)
    assert [h.item for h in ready] == ["quiet"] and stale == []
    assert [h.item for h in barrier.held] == ["behind"]


def test_past_the_bound_a_request_is_released_as_stale() -> None:
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=0.5)
    barrier.hold("r", partition=2, seq=1, now=10.0)
    fetched = {2: (1, 900)}
    applied = {2: 100}
    assert barrier.release(fetched.get, applied.get, now=10.49) == ([], [])
    ready, stale = barrier.release(fetched.get, applied.get, now=10.5)
    assert ready == [] and [h.item for h in stale] == ["r"]
    assert barrier.next_deadline() is None


def test_an_unknown_applied_position_keeps_the_request_waiting() -> None:
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=1.0)
    barrier.hold("r", partition=0, seq=0, now=0.0)
    ready, stale = barrier.release({0: (0, 0)}.get, {}.get, now=0.0)
    assert ready == [] and stale == []
    ready, _ = barrier.release({0: (0, 0)}.get, {0: 0}.get, now=0.0)
    assert [h.item for h in ready] == ["r"]


def test_the_bound_counts_from_when_the_request_was_produced() -> None:
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=1.0)
    barrier.hold("first", partition=0, seq=1, now=0.0)  # the partition is this worker's since 0.0
    ready, _ = barrier.release({0: (1, 50)}.get, {0: 50}.get, now=0.0)
    assert [h.item for h in ready] == ["first"]
    barrier.hold("late", partition=0, seq=1, now=5.0, age=0.8)
    fetched = {0: (1, 900)}
    applied = {0: 100}
    assert barrier.release(fetched.get, applied.get, now=5.19) == ([], [])
    _, stale = barrier.release(fetched.get, applied.get, now=5.2)
    assert [h.item for h in stale] == ["late"]


def test_after_a_partition_comes_to_the_worker_its_queued_requests_get_the_whole_wait() -> None:
    # After a restart or a rebalance, requests produced during the move are older than the bound;
    # the events behind them are few and come with the next fetches, so they are waited for.
    barrier: ReadBarrier[str] = ReadBarrier(max_wait_s=1.0)
    barrier.hold("queued", partition=3, seq=1, now=100.0, age=8.0)
    fetched = {3: (1, 60)}
    applied = {3: 55}
    assert barrier.release(fetched.get, applied.get, now=100.5) == ([], [])
    applied[3] = 60
    ready, stale = barrier.release(fetched.get, applied.get, now=100.6)
    assert [h.item for h in ready] == ["queued"] and stale == []
    # Once the partition has been here a while, an old request is stale at once ...
    barrier.hold("old", partition=3, seq=2, now=103.0, age=8.0)
    _, stale = barrier.release({3: (2, 70)}.get, applied.get, now=103.0)
    assert [h.item for h in stale] == ["old"]
    # ... until the partition is taken away and comes back.
    barrier.forget([3])
    barrier.hold("again", partition=3, seq=3, now=200.0, age=8.0)
    assert barrier.release({3: (3, 80)}.get, applied.get, now=200.5) == ([], [])
