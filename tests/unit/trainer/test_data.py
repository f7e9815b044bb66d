import numpy as np

from streams.settings import DEFAULT_EVENT_WEIGHTS
from trainer.data import (
    EventColumns,
    build_interactions,
    last_positive_history,
    sample_unseen,
    split_validation,
    training_examples,
)


def ev(u: object, i: object, t: str, ts: float) -> dict:
    return {"user_id": u, "item_id": i, "event_type": t, "ts": ts}


EVENTS = [
    ev("b", 30, "click", 5),
    ev(1, "10", "view", 3),
    ev("1", 20, "purchase", 3),  # same ts as the view above: arrival order decides
    ev("1", "10", "dismiss", 4),
    ev("1", "40", "teleport", 6),  # unknown type: ignored
    ev("1", "30", "click", 7),
    {"user_id": "1", "item_id": "50", "event_type": "click"},  # no ts: ignored
]


def test_interactions_index_and_order() -> None:
    d = build_interactions(EVENTS, DEFAULT_EVENT_WEIGHTS)
    assert d.user_ids == ["", "1", "b"] and d.item_ids == ["", "10", "20", "30"]
    assert d.n_events == 5 and d.n_skipped == 2 and d.max_ts == 7
    seq = d.sequences[d.user_index["1"]]
    rows = d.item_index
    assert seq == [(rows["10"], 0.5), (rows["20"], 3.0), (rows["10"], -1.0), (rows["30"], 1.0)]
    # Rows do not depend on event order.
    assert build_interactions(EVENTS[::-1], DEFAULT_EVENT_WEIGHTS).item_index == d.item_index


def test_histories_hold_positives_only_most_recent_last() -> None:
    d = build_interactions(EVENTS, DEFAULT_EVENT_WEIGHTS)
    h = last_positive_history(d.sequences, 4)
    assert h.shape == (3, 4) and h.dtype == np.int64
    assert h[0].tolist() == [0, 0, 0, 0]
    assert h[1].tolist() == [0, 1, 2, 3]  # 10, 20, 30: the dismiss is not history
    assert last_positive_history(d.sequences, 2)[1].tolist() == [2, 3]


def test_training_examples_use_only_preceding_positives() -> None:
    d = build_interactions(EVENTS, DEFAULT_EVENT_WEIGHTS)
    ex = training_examples(d.sequences, 3)
    u1 = ex.users == 1
    assert ex.items[u1].tolist() == [1, 2, 1, 3]
    assert ex.history[u1].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 2]]
    assert ex.labels[u1].tolist() == [1, 1, 0, 1]
    assert ex.weights[u1].tolist() == [0.5, 3.0, 1.0, 1.0]


def test_validation_carves_each_eligible_users_last_positive() -> None:
    events = [ev("u", i, "click", i) for i in range(1, 6)] + [ev("v", 1, "click", 1)]
    events += [ev("w", i, "view", 10 + i) for i in range(6, 30)]
    d = build_interactions(events, DEFAULT_EVENT_WEIGHTS)
    train, val = split_validation(d, 3, n_negatives=10, min_positives=3, seed=0)
    u, v = d.user_index["u"], d.user_index["v"]
    assert [i for i, _ in train[u]] == [d.item_index[str(k)] for k in (1, 2, 3, 4)]
    assert train[v] == d.sequences[v]  # a single-event user keeps it
    k = val.users.tolist().index(u)
    assert val.candidates[k, 0] == d.item_index["5"]
    assert val.history[k].tolist() == [d.item_index[str(x)] for x in (2, 3, 4)]
    negs = val.candidates[k, 1:][val.valid[k, 1:]]
    assert len(negs) == 10 and len(set(negs.tolist())) == 10
    assert not set(negs.tolist()) & {d.item_index[str(x)] for x in range(1, 6)}
    assert v not in val.users.tolist()


def test_columns_build_the_same_interactions_as_dicts() -> None:
    columns = EventColumns()
    for e in EVENTS:
        if isinstance(e.get("ts"), (int, float)) and e["event_type"] in DEFAULT_EVENT_WEIGHTS:
            columns.append(str(e["user_id"]), str(e["item_id"]), e["event_type"], e["ts"], partition=0, offset=7)
    a, b = build_interactions(EVENTS, DEFAULT_EVENT_WEIGHTS), build_interactions(columns, DEFAULT_EVENT_WEIGHTS)
    assert (a.user_ids, a.item_ids, a.sequences, a.n_events) == (b.user_ids, b.item_ids, b.sequences, b.n_events)
    assert next(iter(columns)) == {"user_id": "b", "item_id": "30", "event_type": "click", "ts": 5.0}
    assert columns.take(np.array([2, 0])).user.tolist() == [columns.user[2], columns.user[0]]


def test_sampled_negatives_are_distinct_unseen_and_cover_the_catalogue() -> None:
    rng = np.random.default_rng(0)
    seen = np.arange(1, 501)
    drawn = np.concatenate([sample_unseen(rng, 1000, seen, 99) for _ in range(200)])
    assert drawn.size == 200 * 99 and drawn.min() > 500 and drawn.max() <= 1000
    assert np.unique(sample_unseen(rng, 1000, seen, 99)).size == 99
    # Uniform over the unseen items: every one drawn, none far more often than the others.
    counts = np.bincount(drawn, minlength=1001)[501:]
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()
    # Fewer unseen items than asked for: all of them.
    assert sorted(sample_unseen(rng, 10, np.arange(1, 8), 99).tolist()) == [8, 9, 10]
    assert sample_unseen(rng, 10, np.arange(1, 11), 99).size == 0


class HugeCatalogue(list):  # type: ignore[type-arg]
    """Item ids whose length says 10^12 items: anything that lists every item cannot allocate it."""

    def __len__(self) -> int:
        return 10**12 + 1


def test_validation_cost_does_not_grow_with_the_catalogue() -> None:
    """Listing every unseen item per user costs users x items (np.arange over the catalogue); with
    10^12 items that cannot even be allocated, while sampling follows each user's history."""
    events = [ev(f"u{u}", f"i{u * 7 + k}", "click", k) for u in range(500) for k in range(4)]
    d = build_interactions(events, DEFAULT_EVENT_WEIGHTS)
    d.item_ids = HugeCatalogue(d.item_ids)
    _, val = split_validation(d, 3, n_negatives=99, min_positives=3, seed=0)
    assert len(val) == 500 and val.valid.all()


def test_validation_users_are_capped_and_the_others_keep_their_events() -> None:
    events = [ev(f"u{u}", f"i{k}", "click", k) for u in range(50) for k in range(5)]
    d = build_interactions(events, DEFAULT_EVENT_WEIGHTS)
    train, val = split_validation(d, 3, n_negatives=5, min_positives=3, max_users=10, seed=0)
    assert len(val) == 10
    carved = set(val.users.tolist())
    assert all(len(train[r]) == (4 if r in carved else 5) for r in range(1, d.n_users + 1))
