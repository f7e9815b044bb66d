import numpy as np
import orjson

from streams.settings import Settings
from trainer.data import EventColumns
from trainer.service import holdout_stream, split_holdout


def log_of(n_users: int, per_user: int) -> EventColumns:
    """Users spread over two partitions, every event a click at a distinct ts."""
    events = EventColumns()
    offsets = [0, 0]
    for k in range(per_user):
        for u in range(n_users):
            part = u % 2
            events.append(f"u{u}", f"i{(u + k) % 30}", "click", float(k * n_users + u), None, part, offsets[part])
            offsets[part] += 1
    return events


def test_the_holdout_is_each_partitions_newest_share() -> None:
    events = log_of(10, 10)
    train, held, cut = split_holdout(events, {"0": 50, "1": 50, "2": 0}, 0.1)
    assert cut == {"0": 45, "1": 45, "2": 0}
    assert sorted(events.offset[held].tolist()) == [45, 45, 46, 46, 47, 47, 48, 48, 49, 49]
    assert train.size == 90 and not set(train.tolist()) & set(held.tolist())


def test_the_gate_replays_only_the_users_it_scores() -> None:
    settings = Settings.load(env={})
    events = log_of(200, 10)
    train, held, _ = split_holdout(events, {"0": 1000, "1": 1000}, 0.1)
    messages, truth = holdout_stream(settings, "ev", events, train, held, max_requests=5)
    assert len(truth) == 5
    asked = {orjson.loads(m.value)["user_id"] for m in messages if m.topic == settings.requests_topic}
    replayed = {orjson.loads(m.value)["user_id"] for m in messages if m.topic == "ev"}
    assert replayed == asked and len(asked) == 5
    # Each asked user's whole window, in log order, and each truth among its 100 candidates.
    assert sum(m.topic == "ev" for m in messages) == 5 * 10
    for m in messages:
        if m.topic == settings.requests_topic:
            request = orjson.loads(m.value)
            ids = [c["item_id"] for c in request["candidates"]]
            assert truth[request["request_id"]] in ids and len(set(ids)) == len(ids) == 30 - 9


def test_empty_partitions_and_an_empty_window() -> None:
    events = log_of(0, 0)
    train, held, cut = split_holdout(events, {"0": 7}, 0.1)
    assert train.size == held.size == 0 and cut == {"0": 7}
    assert holdout_stream(Settings.load(env={}), "ev", events, train, held, max_requests=5) == ([], {})
    assert np.asarray(events.ts).size == 0
