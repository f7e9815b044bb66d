"""Training the transition term: it learns a planted order, and learns nothing from its own steps."""

from typing import Any

import numpy as np
import torch

from trainer.train import train_model

N_ITEMS = 80


def sequences(seed: int, *, chained: bool, users: int = 150, length: int = 14) -> list[list[int]]:
    """Per user, distinct items 1..N_ITEMS in time order: with ``chained``, mostly each item's
    successor (item + 1) next, else a random unseen item; without, all random."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        seq = [int(rng.integers(1, N_ITEMS + 1))]
        while len(seq) < length:
            nxt = seq[-1] % N_ITEMS + 1
            if not chained or nxt in seq or rng.random() > 0.8:
                nxt = int(rng.choice([i for i in range(1, N_ITEMS + 1) if i not in seq]))
            seq.append(nxt)
        out.append(seq)
    return out


def events(seqs: list[list[int]]) -> list[dict[str, Any]]:
    return [
        {"user_id": f"u{u}", "item_id": f"i{item}", "event_type": "click", "ts": 1_000 + 10 * t}
        for u, seq in enumerate(seqs)
        for t, item in enumerate(seq)
    ]


def train(seqs: list[list[int]], top: int) -> tuple[Any, dict[str, Any]]:
    model, info = train_model(
        events(seqs),
        seed=0,
        log=lambda _: None,
        hparams={"sequence_top": top, "sequence_window": 2, "dim": 16, "history_len": 5, "max_epochs": 8},
    )
    return model, info


def successor_hit_rate(trained: tuple[Any, dict[str, Any]], seqs: list[list[int]]) -> float:
    """How often the model puts a user's planted next item (last + 1) first among the items the
    user has not taken."""
    model, info = trained
    index = {int(i[1:]): r for r, i in enumerate(info["item_ids"]) if r}
    user_row = {u: r for r, u in enumerate(info["user_ids"])}
    hits = 0
    uv = model.user_vectors()
    for u, seq in enumerate(seqs):
        nxt = seq[-1] % N_ITEMS + 1
        if nxt in seq:
            continue
        history = torch.tensor([[index[i] for i in seq[-5:]]])
        cands = [i for i in range(1, N_ITEMS + 1) if i not in seq]
        with torch.no_grad():
            s = model(uv[user_row[f"u{u}"]][None], history, torch.tensor([[index[i] for i in cands]]))[0]
        hits += cands[int(s.argmax())] == nxt
    return hits / len(seqs)


def test_the_transition_term_learns_a_planted_order() -> None:
    seqs = sequences(1, chained=True)
    with_table, without = train(seqs, top=20), train(seqs, top=0)
    weights = with_table[0].seq_weight.detach()
    assert float(weights.sum()) > 0.5
    # The user-item part alone cannot know where in the chain a user is.
    assert successor_hit_rate(with_table, seqs) > successor_hit_rate(without, seqs) + 0.2  # 0.96 vs 0.67


def test_an_examples_own_step_is_not_in_the_table_it_learns_from() -> None:
    """Random orders: the table tells nothing about a user's next item. Were each example's own
    step left in the table, its item would be the one that follows, and the weight would grow."""
    weights = train(sequences(2, chained=False), top=20)[0].seq_weight.detach()
    assert float(weights.abs().max()) < 0.3
