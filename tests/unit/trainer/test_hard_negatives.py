"""Hard negatives for the user-item part: the shown-but-not-chosen candidates of a user's served
lists, drawn next to the sampled negatives ("served_negatives")."""

from __future__ import annotations

import numpy as np
import torch

from streams.devtools.synthetic import generate_events, make_world
from trainer.served import LoggedRequest, ServedLists
from trainer.train import draw_hard_negatives, hard_negative_pools, train_model


def lists() -> ServedLists:
    """Two lists of user 1 and one of user 3; user 2 has none. Candidates: a chosen one, shown
    ones, one taken later (not valid), an unknown item (row 0) and padding."""
    items = np.array([[5, 6, 7, 0, 0], [8, 5, 9, 0, 0], [10, 11, 12, 13, 0]], dtype=np.int64)
    labels = np.array([[1, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 1, 0, 0]], dtype=np.float32)
    valid = np.array(
        [[True, True, False, True, False], [True, True, True, False, False], [True, True, True, True, False]]
    )
    n, w = items.shape
    return ServedLists(
        users=np.array([1, 1, 3], dtype=np.int64),
        history=np.zeros((n, 4), dtype=np.int64),
        items=items,
        upstream=np.zeros((n, w, 5), dtype=np.float32),
        scores=np.full((n, w), np.nan),
        labels=labels,
        valid=valid,
        sequence=np.zeros((n, w, 0), dtype=np.float32),
    )


def pool_of(user: int) -> list[int]:
    p = hard_negative_pools(lists())
    a = int(p.offsets[user])
    return sorted(p.items[a : a + int(p.counts[user])].tolist())


def test_pools_hold_only_shown_and_not_chosen_known_candidates() -> None:
    # User 1: 6, 8 and 5 shown; not 5 where chosen, not 9 (chosen), not 7 (taken later), not
    # the unknown row 0 nor padding.
    assert pool_of(1) == [5, 6, 8]
    assert pool_of(2) == []
    assert pool_of(3) == [10, 11, 13]


def test_draws_come_from_the_users_pool_or_uniform_without_one() -> None:
    pools = hard_negative_pools(lists())
    rng = np.random.default_rng(0)
    users = np.array([1, 3, 2, 7], dtype=np.int64)  # 2: no lists; 7: beyond the pools' users
    drawn = draw_hard_negatives(pools, users, 200, rng, n_items=20)
    assert drawn.shape == (4, 200)
    assert set(drawn[0].tolist()) == {5, 6, 8}
    assert set(drawn[1].tolist()) == {10, 11, 13}
    for row in drawn[2:]:
        assert row.min() >= 1 and row.max() <= 20
        assert len(set(row.tolist())) > 4  # uniform over the catalogue, not a pool


def test_no_shown_candidate_at_all_gives_uniform_draws() -> None:
    only_chosen = lists()
    only_chosen.labels[:] = np.where(only_chosen.valid & (only_chosen.items > 0), 1.0, 0.0)
    pools = hard_negative_pools(only_chosen)
    assert pools.items.size == 0
    drawn = draw_hard_negatives(pools, np.array([1, 3]), 50, np.random.default_rng(1), n_items=9)
    assert drawn.min() >= 1 and drawn.max() <= 9


def test_served_negatives_change_what_the_user_item_part_learns() -> None:
    """With logged lists, "served_negatives" > 0 trains on them (different item embeddings from
    the same seed); without lists it is a no-op (identical weights)."""
    world = make_world(n_users=30, n_items=30, n_clusters=3, seed=5)
    events = generate_events(world, 240, seed=6)
    rng = np.random.default_rng(0)
    items = sorted({str(e["item_id"]) for e in events})
    logged = []
    for k, e in enumerate(events[::3]):
        others = [i for i in rng.permutation(items).tolist() if i != str(e["item_id"])][:9]
        cands = [str(e["item_id"]), *others]
        logged.append(LoggedRequest(f"r{k}", str(e["user_id"]), float(e["ts"]) - 1.0, cands, np.full(10, np.nan)))

    def item_table(hp: dict, with_lists: bool) -> torch.Tensor:
        model, _ = train_model(
            events, hparams=hp, seed=0, max_epochs=2, log=lambda _: None, logged=logged if with_lists else None
        )
        return model.state_dict()["item_emb.weight"]

    assert not torch.equal(item_table({"served_negatives": 0}, True), item_table({"served_negatives": 8}, True))
    assert torch.equal(item_table({"served_negatives": 0}, False), item_table({"served_negatives": 8}, False))
