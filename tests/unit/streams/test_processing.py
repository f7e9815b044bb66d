"""The Processor: ordering, state, fallbacks and bad input, on the offline store."""

import orjson
import pytest

from streams.processing import DictStateStore, InMessage, Processor
from streams.settings import Settings
from streams.synthetic import cluster_share_at_k, events_for_cluster


@pytest.fixture
def settings() -> Settings:
    return Settings.load(env={})


def msg(settings: Settings, kind: str, record, offset: int | None = None) -> InMessage:  # type: ignore[no-untyped-def]
    topic = settings.events_topic if kind == "event" else settings.requests_topic
    value = record if isinstance(record, bytes) else orjson.dumps(record)
    return InMessage(topic, 0 if offset is not None else None, offset, None, b"k", value)


def results(settings: Settings, outputs):  # type: ignore[no-untyped-def]
    return [orjson.loads(o.value) for o in outputs if o.topic == settings.results_topic]


def dead(settings: Settings, outputs):  # type: ignore[no-untyped-def]
    return [orjson.loads(o.value) for o in outputs if o.topic == settings.dead_letter_topic]


def test_a_request_never_sees_an_event_that_came_after_it(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    user, cluster = "late-user", 1
    world.user_cluster[user] = cluster
    everything = [{"item_id": i} for i in world.items]
    clicks = events_for_cluster(world, user, cluster, 6, start_ts=2e9)
    processor = Processor(bundle, settings, DictStateStore())
    outputs = processor.process(
        [msg(settings, "request", {"request_id": "first", "user_id": user, "candidates": everything})]
        + [msg(settings, "event", e) for e in clicks]
        + [msg(settings, "request", {"request_id": "second", "user_id": user, "candidates": everything})])
    by_id = {r["request_id"]: [i["item_id"] for i in r["items"]] for r in results(settings, outputs)}
    cold = Processor(bundle, settings, DictStateStore()).process(
        [msg(settings, "request", {"request_id": "first", "user_id": user, "candidates": everything})])
    assert by_id["first"] == [i["item_id"] for i in results(settings, cold)[0]["items"]]
    assert cluster_share_at_k(world, user, by_id["second"], 10) > \
        cluster_share_at_k(world, user, by_id["first"], 10)


def test_events_the_model_learned_are_not_learned_again(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    old = trained_world.events[:50]  # ts within the model's training window
    processor.process([msg(settings, "event", e) for e in old])
    assert store.states == {}
    assert processor.metrics.events.labels(old[0]["event_type"], "trained")._value.get() > 0


def test_unknown_user_and_items_are_answered(bundle, settings) -> None:  # type: ignore[no-untyped-def]
    known = bundle.item_ids[1:4]
    candidates = [{"item_id": "brand-new-1", "score": 0.9}, *({"item_id": i} for i in known),
                  {"item_id": "brand-new-2", "score": 0.1}]
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [msg(settings, "request", {"request_id": "cold", "user_id": "nobody", "candidates": candidates})])
    [result] = results(settings, outputs)
    assert "error" not in result and len(result["items"]) == 5
    ranked = [i["item_id"] for i in result["items"]]
    # Unknown items share the fallback representation; the upstream score breaks their tie.
    assert ranked.index("brand-new-1") < ranked.index("brand-new-2")


def test_bad_messages_become_dead_letters_and_error_results(bundle, settings) -> None:  # type: ignore[no-untyped-def]
    processor = Processor(bundle, settings, DictStateStore())
    outputs = processor.process([
        msg(settings, "request", b"\xff\xfe not json"),
        msg(settings, "request", {"request_id": "dup", "user_id": "u",
                                  "candidates": [{"item_id": "a"}, {"item_id": "a"}]}),
        msg(settings, "event", {"user_id": "u", "item_id": "a", "event_type": "wink", "ts": 1}),
        msg(settings, "request", {"request_id": "fine", "user_id": "u", "candidates": [{"item_id": "a"}]}),
    ])
    letters = dead(settings, outputs)
    assert [d["reason"] for d in letters] == ["invalid_json", "duplicate_candidates", "unknown_event_type"]
    assert letters[0]["raw_encoding"] == "base64" and letters[1]["raw_encoding"] == "text"
    answered = {r["request_id"]: r for r in results(settings, outputs)}
    assert answered["dup"]["error"]["code"] == "duplicate_candidates"
    assert "error" not in answered["fine"]
    assert processor.metrics.dead_letters.labels("invalid_json")._value.get() == 1


def test_a_scoring_failure_answers_every_waiting_request(bundle, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("model exploded")

    monkeypatch.setattr("streams.processing.rerank_batch", broken)
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [msg(settings, "request", {"request_id": f"r{i}", "user_id": "u", "candidates": [{"item_id": "a"}]})
         for i in range(3)])
    answered = results(settings, outputs)
    assert [r["error"]["code"] for r in answered] == ["internal_error"] * 3
    assert len(dead(settings, outputs)) == 3


def test_frozen_mode_leaves_state_untouched(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    frozen = dataclasses.replace(settings, online_updates=False)
    store = DictStateStore()
    processor = Processor(bundle, frozen, store)
    clicks = events_for_cluster(trained_world.world, "someone", 0, 4, start_ts=2e9)
    processor.process([msg(frozen, "event", e) for e in clicks])
    assert store.states == {}
    assert processor.metrics.events.labels("click", "frozen")._value.get() == 4


def test_a_redelivered_event_is_not_learned_twice(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    clicks = events_for_cluster(trained_world.world, "crashy", 1, 3, start_ts=2e9)
    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    processor.process([msg(settings, "event", e, offset=10 + i) for i, e in enumerate(clicks)])
    once = store.states["crashy"]
    # After a crash faust delivers the uncommitted tail again.
    processor.process([msg(settings, "event", e, offset=10 + i) for i, e in enumerate(clicks)][1:])
    again = store.states["crashy"]
    assert again.applied == once.applied == 3 and again.last_offset == 12
    assert (again.vector == once.vector).all()
    assert processor.metrics.events.labels("click", "duplicate")._value.get() == 2


def test_state_survives_a_model_swap(bundle, trained_world, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models import load_artifact
    from trainer.train import train_to_artifact

    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    trained_world.world.user_cluster["swapper"] = 2
    clicks = events_for_cluster(trained_world.world, "swapper", 2, 4, start_ts=2e9)
    processor.process([msg(settings, "event", e, offset=i) for i, e in enumerate(clicks)])
    before = store.states["swapper"]
    newer = load_artifact(train_to_artifact(trained_world.events, tmp_path / "v2", seed=3, max_epochs=2,
                                            log=lambda line: None))
    processor.bundle = newer  # what the model watcher does between batches
    state = processor.state_of("swapper", msg(settings, "event", clicks[0]))
    # The history (item ids) and counts carry over; the vector restarts in the new model's space.
    assert state.history == before.history and state.counts == before.counts
    assert state.model_version == newer.version and state.last_offset == before.last_offset
    assert not state.vector.any()  # "swapper" is unknown to the new model: its zero vector
    outputs = processor.process([msg(settings, "request", {
        "request_id": "after-swap", "user_id": "swapper",
        "candidates": [{"item_id": i} for i in trained_world.world.items]})])
    [result] = results(settings, outputs)
    assert result["model"]["version"] == newer.version and "error" not in result
    assert cluster_share_at_k(trained_world.world, "swapper", [i["item_id"] for i in result["items"]], 10) >= 0.5
