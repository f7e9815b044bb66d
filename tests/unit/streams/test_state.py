import dataclasses

import numpy as np

from streams.core.state import (
    Interaction,
    RecentStates,
    UserState,
    already_trained,
    apply_event,
    apply_events,
    decode_state,
    encode_state,
    history_rows,
    initial_state,
    rows_key,
    state_history_rows,
    update_seed,
)

ONLINE = dict(online=True, steps=3, lr=0.05, negatives=4)


def test_state_round_trips_through_bytes() -> None:
    state = UserState(
        vector=np.arange(4, dtype=np.float32) / 3,
        history=["a", "b"],
        counts={"click": 2},
        applied=2,
        model_version="v",
        last_ts=5.5,
    )
    back = decode_state(encode_state(state))
    assert np.array_equal(back.vector, state.vector) and back.vector.dtype == np.float32
    assert (back.history, back.counts, back.applied, back.model_version, back.last_ts) == (
        ["a", "b"],
        {"click": 2},
        2,
        "v",
        5.5,
    )


def test_known_user_starts_from_the_model(bundle) -> None:  # type: ignore[no-untyped-def]
    user = next(iter(bundle.user_index))
    row = bundle.user_index[user]
    state = initial_state(bundle, user)
    assert np.allclose(state.vector, bundle.model.user_vectors()[row].numpy())
    expected = [bundle.item_ids[r] for r in bundle.user_history[row] if r > 0]
    assert state.history == expected and state.history
    assert state.model_version == bundle.version


def test_unknown_user_starts_empty(bundle) -> None:  # type: ignore[no-untyped-def]
    state = initial_state(bundle, "never-seen")
    assert state.history == [] and not state.vector.any()


def test_history_rows_pad_left_and_map_unknown_to_zero(bundle) -> None:  # type: ignore[no-untyped-def]
    known = bundle.item_ids[1]
    rows = history_rows(bundle, [known, "unknown-item"])
    assert rows.shape == (bundle.history_len,)
    assert rows[-2] == 1 and rows[-1] == 0 and not rows[:-2].any()


def test_watermark_rules() -> None:
    by_offsets = {"topic": "t", "offsets": {"0": 10, "1": 0}, "max_ts": 100.0}
    assert already_trained(by_offsets, "t", 0, 9, ts=1e9)
    assert not already_trained(by_offsets, "t", 0, 10, ts=0.0)
    assert not already_trained(by_offsets, "t", 1, 0, ts=0.0)
    # Without a position (offline files), the timestamp watermark decides.
    assert already_trained(by_offsets, None, None, None, ts=100.0)
    assert not already_trained(by_offsets, None, None, None, ts=100.5)
    assert not already_trained({}, "t", 0, 0, ts=0.0)


def test_online_update_is_deterministic_and_learns(bundle) -> None:  # type: ignore[no-untyped-def]
    start = initial_state(bundle, "fresh")
    item = bundle.item_ids[3]
    one = apply_event(bundle, start, "fresh", item, "click", 1.0, 1.0, **ONLINE)
    two = apply_event(bundle, start, "fresh", item, "click", 1.0, 1.0, **ONLINE)
    assert np.array_equal(one.vector, two.vector)
    assert not np.array_equal(one.vector, start.vector)
    assert one.history == [item] and one.counts == {"click": 1} and one.applied == 1
    other_user = apply_event(bundle, start, "other", item, "click", 1.0, 1.0, **ONLINE)
    assert update_seed("fresh", 0) != update_seed("other", 0)
    assert other_user.history == one.history


def test_dismiss_stays_out_of_history_and_frozen_mode_keeps_the_vector(bundle) -> None:  # type: ignore[no-untyped-def]
    start = initial_state(bundle, "fresh")
    item = bundle.item_ids[2]
    dismissed = apply_event(bundle, start, "fresh", item, "dismiss", 1.0, -1.0, **ONLINE)
    assert dismissed.history == [] and dismissed.counts == {"dismiss": 1}
    frozen = apply_event(bundle, start, "fresh", item, "click", 1.0, 1.0, **{**ONLINE, "online": False})
    assert np.array_equal(frozen.vector, start.vector) and frozen.history == [item]


def test_history_is_capped(bundle) -> None:  # type: ignore[no-untyped-def]
    state = initial_state(bundle, "fresh")
    for n in range(bundle.history_len + 5):
        state = apply_event(
            bundle, state, "fresh", bundle.item_ids[1 + n % 5], "view", n, 0.5, **{**ONLINE, "online": False}
        )
    assert len(state.history) == bundle.history_len


def test_history_rows_memo_follows_the_history_and_changes_nothing(bundle) -> None:  # type: ignore[no-untyped-def]
    # Positive, negative and count-only events, an unknown item, more events than the history
    # holds, a model swap (another version) and a decode (no memo) on the way.
    users = ["u-a", "u-b", next(iter(bundle.user_index))]
    memo_states = [initial_state(bundle, user) for user in users]
    plain_states = list(memo_states)
    weights = [1.0, 0.5, -1.0, 0.0, 1.0, 1.0]
    # The same model after an item from the items topic got a row (register_items appends one):
    # a history holding that item maps it to the new row from then on.
    grown = dataclasses.replace(
        bundle, item_ids=[*bundle.item_ids, "unknown-item"], item_index={**bundle.item_index, "unknown-item": 1}
    )
    # A next model whose rows of the same items differ: a memo of the old one must not serve it.
    top = max(bundle.item_index.values())
    swapped = dataclasses.replace(
        bundle,
        version=bundle.version + "-next",
        item_index={item: top + 1 - row for item, row in bundle.item_index.items()},
    )
    for n in range(bundle.history_len + 12):
        model = swapped if n >= bundle.history_len else grown if n >= 8 else bundle
        item = "unknown-item" if n % 7 == 3 else model.item_ids[1 + (n * 5) % (len(model.item_ids) - 1)]
        interactions = [
            Interaction(user, item, "click", float(n), weights[(n + k) % len(weights)], n)
            for k, user in enumerate(users)
        ]
        memo_states = apply_events(model, memo_states, interactions, **ONLINE)
        # The same events on states that never carry a memo.
        plain_states = apply_events(
            model, [dataclasses.replace(s, rows_memo=None) for s in plain_states], interactions, **ONLINE
        )
        for memo_state, plain_state in zip(memo_states, plain_states):
            # The memo changes nothing of the state: vectors bit for bit, the rest exactly.
            assert np.array_equal(memo_state.vector, plain_state.vector)
            fields = ("history", "counts", "applied", "model_version", "last_ts", "last_offset")
            assert [getattr(memo_state, f) for f in fields] == [getattr(plain_state, f) for f in fields]
            if memo_state.rows_memo is not None:
                version, rows = memo_state.rows_memo
                assert version == rows_key(model)
                assert np.array_equal(rows, history_rows(model, memo_state.history)), n
            assert np.array_equal(state_history_rows(model, memo_state), history_rows(model, memo_state.history))
        if n == 5:
            memo_states = [decode_state(encode_state(s)) for s in memo_states]
    assert any(s.rows_memo is not None for s in memo_states)


def test_recent_states_keep_the_latest_put_per_user_up_to_the_bound() -> None:
    def state(n: int) -> UserState:
        return UserState(vector=np.full(2, n, dtype=np.float32), history=[], applied=n)

    recent = RecentStates(2)
    recent.put("a", 0, state(1))
    recent.put("b", 1, state(2))
    assert recent.get("a", 0) is not None and recent.get("a", 0).applied == 1  # type: ignore[union-attr]
    assert recent.get("a", 1) is None  # another partition's store: not this entry
    recent.put("a", 0, state(3))  # a new write replaces, and makes "a" the latest
    recent.put("c", 0, state(4))  # over the bound: the least recently put ("b") goes
    assert recent.get("b", 1) is None and len(recent) == 2
    assert recent.get("a", 0).applied == 3 and recent.get("c", 0).applied == 4  # type: ignore[union-attr]
    recent.clear()
    assert len(recent) == 0 and recent.get("a", 0) is None
    off = RecentStates(0)
    off.put("a", 0, state(1))
    assert off.get("a", 0) is None and len(off) == 0
