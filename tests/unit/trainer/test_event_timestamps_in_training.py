"""The trainer leaves out events from the future or in milliseconds, from files and from topics:
one of them would set the model's max_ts watermark past every live event to come."""

import dataclasses
import time

import orjson

from streams.devtools.synthetic import generate_events, make_world
from streams.settings import Settings
from trainer import event_log
from trainer.data import build_interactions
from trainer.train import train_model


def test_build_interactions_skips_and_counts_bad_timestamps() -> None:
    now = 1_750_000_000.0
    events = [
        {"user_id": "u", "item_id": "a", "event_type": "click", "ts": now - 10},
        {"user_id": "u", "item_id": "b", "event_type": "click", "ts": now * 1000},  # milliseconds
        {"user_id": "v", "item_id": "a", "event_type": "click", "ts": now + 3600},  # the future
    ]
    data = build_interactions(events, {"click": 1.0}, not_after=now + 300)
    assert (data.n_events, data.n_skipped, data.n_bad_ts, data.max_ts) == (1, 2, 2, now - 10)
    assert data.item_ids == ["", "a"] and data.user_ids == ["", "u"]


def test_a_model_trained_from_a_file_keeps_an_honest_watermark() -> None:
    world = make_world(n_users=30, n_items=20, n_clusters=2, seed=5)
    events = generate_events(world, 300, seed=6)
    planted = {**events[0], "ts": time.time() * 1000}
    lines: list[str] = []
    _, info = train_model([*events, planted], max_epochs=1, log=lines.append)
    assert info["trained_through"] == {"max_ts": max(e["ts"] for e in events)}
    assert any("skipped 1 events with a ts from the future or in milliseconds" in line for line in lines)


def test_events_from_a_topic_with_bad_timestamps_are_skipped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    values = [
        orjson.dumps({"user_id": "u", "item_id": "a", "event_type": "click", "ts": ts})
        for ts in (now - 60, now * 1000, now + 86400, now)
    ]

    def scan(settings, topic, keep, tail=0, progress=None):  # type: ignore[no-untyped-def]
        for n, value in enumerate(values):
            keep(0, n, value)
        return {"0": 4}

    monkeypatch.setattr(event_log, "scan_topic", scan)
    settings = dataclasses.replace(Settings.load(env={}), max_clock_skew_s=300.0)
    events, _, invalid = event_log.log_from_topic(settings, "user-events")
    assert events.offset.tolist() == [0, 3] and invalid == 2
    _, trained_through = event_log.events_from_topic(settings, "user-events")
    assert trained_through["max_ts"] == now
