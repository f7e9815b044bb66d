import numpy as np

from streams.core.state import (
    UserState,
    already_trained,
    apply_event,
    decode_state,
    encode_state,
    history_rows,
    initial_state,
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
