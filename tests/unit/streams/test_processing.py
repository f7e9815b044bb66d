"""The Processor: ordering, state, fallbacks and bad input, on the offline store."""

import base64

import numpy as np
import orjson
import pytest

from streams.core.processing import DictStateStore, InMessage, Processor, dead_letter
from streams.devtools.synthetic import cluster_share_at_k, events_for_cluster
from streams.settings import Settings
from tests.conftest import assert_same_results


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
    clicks = events_for_cluster(world, user, cluster, 6, start_ts=1.75e9)
    processor = Processor(bundle, settings, DictStateStore())
    outputs = processor.process(
        [msg(settings, "request", {"request_id": "first", "user_id": user, "candidates": everything})]
        + [msg(settings, "event", e) for e in clicks]
        + [msg(settings, "request", {"request_id": "second", "user_id": user, "candidates": everything})]
    )
    by_id = {r["request_id"]: [i["item_id"] for i in r["items"]] for r in results(settings, outputs)}
    cold = Processor(bundle, settings, DictStateStore()).process(
        [msg(settings, "request", {"request_id": "first", "user_id": user, "candidates": everything})]
    )
    assert by_id["first"] == [i["item_id"] for i in results(settings, cold)[0]["items"]]
    assert cluster_share_at_k(world, user, by_id["second"], 10) > cluster_share_at_k(world, user, by_id["first"], 10)


def test_events_the_model_learned_are_not_learned_again(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    old = trained_world.events[:50]  # ts within the model's training window
    processor.process([msg(settings, "event", e) for e in old])
    assert store.states == {}
    assert processor.metrics.events.labels(old[0]["event_type"], "trained")._value.get() > 0


def test_unknown_user_and_items_are_answered(bundle, settings) -> None:  # type: ignore[no-untyped-def]
    known = bundle.item_ids[1:4]
    candidates = [
        {"item_id": "brand-new-1", "score": 0.9},
        *({"item_id": i} for i in known),
        {"item_id": "brand-new-2", "score": 0.1},
    ]
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [msg(settings, "request", {"request_id": "cold", "user_id": "nobody", "candidates": candidates})]
    )
    [result] = results(settings, outputs)
    assert "error" not in result and len(result["items"]) == 5
    ranked = [i["item_id"] for i in result["items"]]
    # Unknown items share the fallback representation; the upstream score breaks their tie.
    assert ranked.index("brand-new-1") < ranked.index("brand-new-2")


def test_bad_messages_become_dead_letters_and_error_results(bundle, settings) -> None:  # type: ignore[no-untyped-def]
    processor = Processor(bundle, settings, DictStateStore())
    outputs = processor.process(
        [
            msg(settings, "request", b"\xff\xfe not json"),
            msg(
                settings,
                "request",
                {"request_id": "dup", "user_id": "u", "candidates": [{"item_id": "a"}, {"item_id": "a"}]},
            ),
            msg(settings, "event", {"user_id": "u", "item_id": "a", "event_type": "wink", "ts": 1}),
            msg(settings, "request", {"request_id": "fine", "user_id": "u", "candidates": [{"item_id": "a"}]}),
        ]
    )
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

    monkeypatch.setattr("streams.core.processing.rerank_batch", broken)
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [
            msg(settings, "request", {"request_id": f"r{i}", "user_id": "u", "candidates": [{"item_id": "a"}]})
            for i in range(3)
        ]
    )
    answered = results(settings, outputs)
    assert [r["error"]["code"] for r in answered] == ["internal_error"] * 3
    assert len(dead(settings, outputs)) == 3


def test_frozen_mode_leaves_state_untouched(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    frozen = dataclasses.replace(settings, online_updates=False)
    store = DictStateStore()
    processor = Processor(bundle, frozen, store)
    clicks = events_for_cluster(trained_world.world, "someone", 0, 4, start_ts=1.75e9)
    processor.process([msg(frozen, "event", e) for e in clicks])
    assert store.states == {}
    assert processor.metrics.events.labels("click", "frozen")._value.get() == 4


def test_a_redelivered_event_is_not_learned_twice(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    clicks = events_for_cluster(trained_world.world, "crashy", 1, 3, start_ts=1.75e9)
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


def test_redelivered_duplicates_write_their_state_again_once_per_user(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    """The state is written again so its changelog record goes out: the crash may have come
    between the local write and the changelog send."""
    clicks = events_for_cluster(trained_world.world, "crashy", 1, 3, start_ts=1.75e9)
    store = RecordingStore()
    processor = Processor(bundle, settings, store)
    messages = [msg(settings, "event", e, offset=10 + i) for i, e in enumerate(clicks)]
    processor.process(messages)
    written = store.states["crashy"]
    store.puts.clear()
    processor.process(messages)  # all three redelivered
    assert store.puts == [("crashy", 12)]
    assert store.states["crashy"].applied == written.applied == 3
    assert processor.metrics.state_rewrites._value.get() == 1
    # A redelivered tail followed by a new event: the new state is written, nothing else.
    store.puts.clear()
    newer = events_for_cluster(trained_world.world, "crashy", 1, 1, start_ts=1.76e9)[0]
    processor.process([*messages[1:], msg(settings, "event", newer, offset=13)])
    assert store.puts == [("crashy", 13)] and processor.metrics.state_rewrites._value.get() == 1


def test_the_one_by_one_fallback_rewrites_a_duplicate_state_once(bundle, trained_world, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clicks = events_for_cluster(trained_world.world, "crashy", 1, 3, start_ts=1.75e9)
    store = RecordingStore()
    processor = Processor(bundle, settings, store)
    messages = [msg(settings, "event", e, offset=10 + i) for i, e in enumerate(clicks)]
    processor.process(messages)
    store.puts.clear()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("batched update exploded")

    monkeypatch.setattr(processor, "_apply_rounds", broken)
    processor.process(messages)
    assert store.puts == [("crashy", 10)]
    assert processor.metrics.state_rewrites._value.get() == 1


def test_state_survives_a_model_swap(bundle, trained_world, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models import load_artifact
    from trainer.train import train_to_artifact

    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    trained_world.world.user_cluster["swapper"] = 2
    clicks = events_for_cluster(trained_world.world, "swapper", 2, 4, start_ts=1.75e9)
    processor.process([msg(settings, "event", e, offset=i) for i, e in enumerate(clicks)])
    before = store.states["swapper"]
    newer = load_artifact(
        train_to_artifact(trained_world.events, tmp_path / "v2", seed=3, max_epochs=2, log=lambda line: None)
    )
    processor.bundle = newer  # what the model watcher does between batches
    state = processor.state_of("swapper", msg(settings, "event", clicks[0]))
    # The history (item ids) and counts carry over; the vector restarts in the new model's space.
    assert state.history == before.history and state.counts == before.counts
    assert state.model_version == newer.version and state.last_offset == before.last_offset
    assert not state.vector.any()  # "swapper" is unknown to the new model: its zero vector
    outputs = processor.process(
        [
            msg(
                settings,
                "request",
                {
                    "request_id": "after-swap",
                    "user_id": "swapper",
                    "candidates": [{"item_id": i} for i in trained_world.world.items],
                },
            )
        ]
    )
    [result] = results(settings, outputs)
    assert result["model"]["version"] == newer.version and "error" not in result
    assert cluster_share_at_k(trained_world.world, "swapper", [i["item_id"] for i in result["items"]], 10) >= 0.5


class RecordingStore(DictStateStore):
    """A dict store that remembers every write: (user_id, offset of the source message)."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, int | None]] = []

    def put(self, user_id, state, source) -> None:  # type: ignore[no-untyped-def]
        self.puts.append((user_id, source.offset))
        super().put(user_id, state, source)


def same_states(a: DictStateStore, b: DictStateStore) -> None:
    assert a.states.keys() == b.states.keys()
    for user, x in a.states.items():
        y = b.states[user]
        assert np.array_equal(x.vector, y.vector) and x.vector.dtype == y.vector.dtype, user
        assert (x.history, x.counts, x.applied, x.model_version, x.last_ts, x.last_offset) == (
            y.history,
            y.counts,
            y.applied,
            y.model_version,
            y.last_ts,
            y.last_offset,
        ), user


def mixed_batch(settings: Settings, trained_world) -> list[InMessage]:  # type: ignore[no-untyped-def]
    """Known and unknown users with several events each, requests in between, a redelivered
    event, an unknown item, a dismiss and an invalid event."""
    world = trained_world.world
    known = world.users[:3]
    users = [*known, "newcomer-a", "newcomer-b"]
    candidates = [{"item_id": i, "score": 0.01 * n} for n, i in enumerate(world.items[:25])]
    out: list[InMessage] = []
    offset = 100
    for n in range(40):
        user = users[(n * 7) % len(users) if n % 3 else n % 2]
        if n % 9 == 4:
            out.append(msg(settings, "request", {"request_id": f"r{n}", "user_id": user, "candidates": candidates}))
            continue
        event = {
            "user_id": user,
            "item_id": world.items[(n * 5) % len(world.items)],
            "event_type": ["click", "view", "purchase", "dismiss"][n % 4],
            "ts": 1.75e9 + n,
        }
        if n == 17:
            event["item_id"] = "never-seen-item"
        out.append(msg(settings, "event", event, offset=offset))
        offset += 1
    redelivered = next(m for m in out if m.topic == settings.events_topic and m.offset == 103)
    out.insert(20, redelivered)
    out.insert(
        27,
        msg(settings, "event", {"user_id": users[0], "item_id": "x", "event_type": "wink", "ts": 1.75e9}, offset=999),
    )
    out.append(msg(settings, "request", {"request_id": "last", "user_id": users[0], "candidates": candidates}))
    return out


def test_a_batch_gives_the_states_and_results_of_one_message_at_a_time(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    messages = mixed_batch(settings, trained_world)
    batched_store, single_store = RecordingStore(), RecordingStore()
    batched = Processor(bundle, settings, batched_store, clock=lambda: 2e9)
    single = Processor(bundle, settings, single_store, clock=lambda: 2e9)
    out_batched = batched.process(messages)
    out_single = [o for m in messages for o in single.process([m])]
    same_states(batched_store, single_store)
    assert_same_results(results(settings, out_batched), results(settings, out_single))
    assert len(results(settings, out_batched)) == sum(m.topic == settings.requests_topic for m in messages)
    strip = lambda letters: sorted((d["offset"], d["reason"]) for d in letters)
    assert strip(dead(settings, out_batched)) == strip(dead(settings, out_single)) == [(999, "unknown_event_type")]
    for outcome in ("ok", "duplicate"):
        counts = [
            sum(p.metrics.events.labels(t, outcome)._value.get() for t in settings.event_weights)
            for p in (batched, single)
        ]
        assert counts[0] == counts[1] > 0, outcome
    # Fewer writes: one per user and group, and every state written last by its last event.
    assert len(batched_store.puts) < len(single_store.puts)
    last_write = {user: offset for user, offset in batched_store.puts}
    assert last_write == {user: state.last_offset for user, state in batched_store.states.items()}


def test_a_request_between_two_events_of_its_user_sees_only_the_first(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    user = trained_world.world.users[5]
    clicks = events_for_cluster(trained_world.world, user, 2, 2, start_ts=1.75e9)
    request = {
        "request_id": "between",
        "user_id": user,
        "candidates": [{"item_id": i} for i in trained_world.world.items],
    }
    store = DictStateStore()
    outputs = Processor(bundle, settings, store, clock=lambda: 2e9).process(
        [
            msg(settings, "event", clicks[0], offset=1),
            msg(settings, "request", request),
            msg(settings, "event", clicks[1], offset=2),
        ]
    )
    first_only = Processor(bundle, settings, DictStateStore(), clock=lambda: 2e9).process(
        [msg(settings, "event", clicks[0], offset=1), msg(settings, "request", request)]
    )
    both = Processor(bundle, settings, DictStateStore(), clock=lambda: 2e9).process(
        [
            msg(settings, "event", clicks[0], offset=1),
            msg(settings, "event", clicks[1], offset=2),
            msg(settings, "request", request),
        ]
    )
    assert results(settings, outputs) == results(settings, first_only) != results(settings, both)
    assert store.states[user].applied == 2 and store.states[user].last_offset == 2


def test_a_group_writes_each_user_once(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    def event(user: str, offset: int) -> InMessage:
        return msg(
            settings,
            "event",
            {
                "user_id": user,
                "item_id": trained_world.world.items[offset % 7],
                "event_type": "click",
                "ts": 1.75e9 + offset,
            },
            offset=offset,
        )

    store = RecordingStore()
    processor = Processor(bundle, settings, store)
    processor.process([event("a", 1), event("b", 2), event("a", 3), event("c", 4), event("a", 5), event("b", 6)])
    assert sorted(store.puts) == [("a", 5), ("b", 6), ("c", 4)]
    assert store.states["a"].applied == 3 and store.states["b"].applied == 2
    # A request for a user with events waiting only flushes at that user's next event.
    store.puts.clear()
    processor.process(
        [
            event("a", 7),
            event("b", 8),
            msg(settings, "request", {"request_id": "q", "user_id": "a", "candidates": [{"item_id": "x"}]}),
            event("c", 9),
            event("a", 10),
            event("b", 11),
        ]
    )
    assert store.puts == [("a", 7), ("b", 8), ("c", 9), ("a", 10), ("b", 11)]


def test_a_failing_batch_falls_back_to_one_event_at_a_time(bundle, trained_world, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import streams.core.state

    poison = bundle.item_ids[4]
    real = streams.core.state.online_update_batch

    def fragile(b, vecs, histories, item_rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        if bundle.item_index[poison] in item_rows.tolist():
            raise RuntimeError("poisoned")
        return real(b, vecs, histories, item_rows, *args, **kwargs)

    def event(user: str, item: str, offset: int) -> InMessage:
        return msg(
            settings,
            "event",
            {"user_id": user, "item_id": item, "event_type": "click", "ts": 1.75e9 + offset},
            offset=offset,
        )

    good = [event("a", bundle.item_ids[1], 1), event("b", bundle.item_ids[2], 2), event("a", bundle.item_ids[3], 3)]
    clean = DictStateStore()
    Processor(bundle, settings, clean).process(good)
    monkeypatch.setattr(streams.core.state, "online_update_batch", fragile)
    store = DictStateStore()
    processor = Processor(bundle, settings, store)
    outputs = processor.process([good[0], event("c", poison, 10), *good[1:]])
    same_states(store, clean)  # "c" has no state: its event failed alone
    assert [(d["offset"], d["reason"]) for d in dead(settings, outputs)] == [(10, "internal_error")]
    assert processor.metrics.events.labels("click", "error")._value.get() == 1
    assert processor.metrics.events.labels("click", "ok")._value.get() == 3


def test_a_dead_letter_keeps_at_most_its_share_of_a_big_message(settings) -> None:  # type: ignore[no-untyped-def]
    limit = settings.dead_letter_max_raw_bytes
    not_utf8 = b"\xff" * 950_000  # as base64, the whole would be past 1.2 MB
    letter = orjson.loads(dead_letter(settings, msg(settings, "event", not_utf8), "invalid_json", "e" * 5000).value)
    assert letter["raw_encoding"] == "base64" and letter["raw_truncated"] is True
    assert letter["raw_bytes"] == 950_000 and base64.b64decode(letter["raw"]) == not_utf8[:limit]
    assert len(letter["error"]) == 1024
    # UTF-8 cut inside a character: the partial character is dropped, the text stays text.
    text = ("a" + "é" * limit).encode()
    letter = orjson.loads(dead_letter(settings, msg(settings, "request", text), "too_large", "big").value)
    assert letter["raw_encoding"] == "text" and letter["raw_truncated"] is True
    assert letter["raw"] == "a" + "é" * ((limit - 1) // 2) and letter["raw_bytes"] == len(text)
    small = orjson.loads(dead_letter(settings, msg(settings, "event", b"\xffhi"), "invalid_json", "x").value)
    assert small["raw_truncated"] is False and small["raw_bytes"] == 3
    assert base64.b64decode(small["raw"]) == b"\xffhi"


def test_every_dead_letter_fits_the_worker_producer(settings) -> None:  # type: ignore[no-untyped-def]
    huge_key = InMessage(settings.events_topic, 0, 1, None, b"k" * 900_000, b"\xff" * 2_000_000)
    out = dead_letter(settings, huge_key, "too_large", "x" * 10_000)
    assert len(out.value) + len(out.key or b"") <= settings.largest_dead_letter_bytes()
    assert settings.largest_dead_letter_bytes() <= settings.worker_max_request_bytes()
