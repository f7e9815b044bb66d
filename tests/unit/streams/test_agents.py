from types import SimpleNamespace

from streams.worker.agents import in_order


def fake_event(topic: str, partition: int, offset: int, ts: float):  # type: ignore[no-untyped-def]
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=ts, key=b"k", value=b"v")
    return SimpleNamespace(message=message)


def test_merges_topics_by_produce_time_keeping_partition_order() -> None:
    batch = [
        fake_event("requests", 0, 5, ts=3.0),
        fake_event("events", 0, 7, ts=1.0),
        fake_event("events", 0, 8, ts=0.5),  # clock went backwards: offset order still wins
        fake_event("events", 1, 2, ts=2.0),
    ]
    ordered = [(m.topic, m.partition, m.offset) for m in in_order(batch, "events")]
    assert ordered.index(("events", 0, 7)) < ordered.index(("events", 0, 8))
    assert ordered[-1] == ("requests", 0, 5)
    assert ordered.index(("events", 1, 2)) < ordered.index(("requests", 0, 5))
    assert sorted(id(m.handle) for m in in_order(batch, "events")) == sorted(map(id, batch))


def test_on_equal_timestamps_the_event_goes_before_the_request() -> None:
    batch = [fake_event("requests", 0, 9, ts=5.0), fake_event("events", 0, 3, ts=5.0)]
    assert [m.topic for m in in_order(batch, "events")] == ["events", "requests"]
