"""The trainer reads only its window of the event log, with the log's exact end offsets."""

from __future__ import annotations

import pytest

from streams.devtools.synthetic import generate_events, make_world
from streams.kafka.clients import KafkaSender, produce_records, read_topic
from streams.kafka.topics import create_topics
from tests.conftest import isolated_settings
from trainer.event_log import log_from_topic

pytestmark = pytest.mark.integration


def test_the_window_is_each_partitions_newest_share_and_the_ends_are_exact(broker) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    create_topics(settings, [settings.events_topic])
    world = make_world(n_users=40, n_items=30, n_clusters=3, seed=61)
    produce_records(settings, settings.events_topic, generate_events(world, 1200, seed=62))
    sender = KafkaSender(settings)
    sender.send(settings.events_topic, b"u00001", b"not json")  # invalid: skipped and counted
    sender.flush()
    everything, all_ends, all_invalid = log_from_topic(settings, settings.events_topic)
    raw, raw_ends = read_topic(settings, settings.events_topic)
    assert all_ends == raw_ends and len(everything) == len(raw) - 1 == 1200 and all_invalid == 1
    assert sorted(zip(everything.partition.tolist(), everything.offset.tolist(), strict=True)) == sorted(
        (p, o) for p, o, v in raw if v != b"not json"
    )

    events, ends, _ = log_from_topic(settings, settings.events_topic, window=300)
    assert ends == all_ends  # the position reached is the log's end, whatever the window
    valid = set(zip(everything.partition.tolist(), everything.offset.tolist(), strict=True))
    for partition, end in ends.items():
        offsets = events.offset[events.partition == int(partition)].tolist()
        # The newest offsets of the partition, in order: its share by size (the invalid record
        # counts), told by the broker's watermarks before reading.
        start = min(offsets)
        assert offsets == [o for o in range(start, end) if (int(partition), o) in valid]
        assert abs((end - start) - 300 * end / sum(ends.values())) <= 10
    assert 300 - 1 <= len(events) <= 300 + len(ends)
