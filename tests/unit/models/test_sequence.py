"""The transition table and its features (models.sequence), and the dnn kind's use of them."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_artifact
from models.artifact import save_artifact
from models.dnn import DNNReranker
from models.sequence import (
    features_from_counts,
    fold_features,
    fold_tables,
    table_features,
    transition_counts,
    transition_table,
)


def table_dict(successors: np.ndarray, counts: np.ndarray) -> dict[tuple[int, int], float]:
    return {
        (a, int(b)): float(c)
        for a in range(successors.shape[0])
        for b, c in zip(successors[a], counts[a], strict=True)
        if b > 0
    }


def test_the_table_counts_successors_within_the_window_one_over_the_distance() -> None:
    successors, counts, totals = transition_table([[1, 2, 3], [1, 3], [0, 2, 0, 3]], 4, window=2, top=3)
    # Zeros are skipped: the last user's sequence is [2, 3].
    assert table_dict(successors, counts) == pytest.approx({(1, 2): 1.0, (1, 3): 1.5, (2, 3): 2.0})
    assert totals.tolist() == pytest.approx([0.0, 2.5, 2.0, 0.0, 0.0])
    # Rows ascend by item row, the unused slots first, so a candidate is found by binary search.
    assert successors[1].tolist() == [0, 2, 3] and counts[1].tolist() == pytest.approx([0.0, 1.0, 1.5])
    assert successors[3].tolist() == [0, 0, 0] and successors.dtype == np.int64


def test_only_the_most_frequent_successors_are_kept_and_totals_count_them_all() -> None:
    seqs = [[1, 4], [1, 4], [1, 2], [1, 3], [1, 3], [1, 3]]
    successors, counts, totals = transition_table(seqs, 4, window=1, top=2)
    assert successors[1].tolist() == [3, 4] and counts[1].tolist() == [3.0, 2.0]
    assert totals[1] == 6.0


def test_fold_tables_hold_only_the_other_users_steps() -> None:
    seqs = [[1, 2], [1, 3], [1, 2], [2, 3]]
    tables = fold_tables(seqs, 3, window=1, top=3)
    # Fold 0 (users 0 and 2) is scored with the table of users 1 and 3, and the other way round.
    assert table_dict(tables[0][0].numpy(), tables[0][1].numpy()) == {(1, 3): 1.0, (2, 3): 1.0}
    assert table_dict(tables[1][0].numpy(), tables[1][1].numpy()) == {(1, 2): 2.0}
    users = torch.tensor([0, 1, 2])
    history, items = torch.tensor([[1], [1], [1]]), torch.tensor([[2, 3], [2, 3], [2, 3]])
    f = fold_features(tables, users, history, items)
    assert torch.equal(f[0], table_features(tables[0], history[:1], items[:1])[0])
    assert torch.equal(f[1], table_features(tables[1], history[1:2], items[1:2])[0])
    assert f[0, 0, 0] == 0 and f[0, 1, 0] > 0 and f[1, 0, 0] > 0 and f[1, 1, 0] == 0


def test_features_find_each_candidate_among_the_recent_items_successors() -> None:
    successors, counts, totals = transition_table([[1, 2], [1, 2], [1, 3], [2, 3]], 4, window=1, top=4)
    table = tuple(torch.from_numpy(x) for x in (successors, counts, totals))
    history = torch.tensor([[0, 0, 1], [0, 1, 2]])
    items = torch.tensor([[2, 3, 4, 0], [3, 2, 0, 0]])
    pair_counts, recent_totals = transition_counts(*table, history, items)
    # Recent items most recent first; history 0 = none.
    assert pair_counts[0].tolist() == [[2.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]
    assert pair_counts[1, :2].tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]]
    assert recent_totals.tolist() == [[3.0, 0.0, 0.0], [1.0, 3.0, 0.0]]
    f = features_from_counts(pair_counts, recent_totals, top=4)
    # follows_last = log1p(4 P(item | last)); follows_recent averages P over the recent items present.
    assert f[0, :, 0].tolist() == pytest.approx(np.log1p(4 * np.array([2 / 3, 1 / 3, 0, 0])).tolist())
    assert f[0, :, 1].tolist() == pytest.approx(f[0, :, 0].tolist())
    p_recent = (np.array([1.0, 0.0]) + np.array([1 / 3, 2 / 3])) / 2
    assert f[1, :2, 1].tolist() == pytest.approx(np.log1p(4 * p_recent).tolist())


def dnn_with_table() -> DNNReranker:
    torch.manual_seed(0)
    model = DNNReranker(3, 5, dim=4, history_len=4, sequence_top=3, sequence_window=2)
    model.set_transitions(*transition_table([[1, 2, 3], [1, 2], [4, 5]], 5, window=2, top=3))
    with torch.no_grad():
        model.seq_weight.copy_(torch.tensor([1.5, -0.5]))
    return model


@torch.no_grad()
def test_the_dnn_adds_the_weighted_features_as_a_part_of_its_score() -> None:
    model = dnn_with_table()
    user = model.user_vectors()[1:3]
    history = torch.tensor([[0, 0, 0, 1], [0, 0, 4, 5]])
    items = torch.tensor([[2, 3, 4], [1, 2, 3]])
    parts = model.score_parts(user, history, items)
    assert set(parts) == {"model", "sequence"}
    f = model.sequence_features(history, items)
    assert torch.allclose(parts["sequence"], f @ torch.tensor([1.5, -0.5]))
    assert torch.allclose(model(user, history, items), parts["model"] + parts["sequence"])
    assert (f[0, :2] > 0).all() and (f[1] == 0).all()  # nothing recorded follows item 5
    # Features given in place of the table's (a trainer's, own transitions taken out) are used.
    given = torch.zeros_like(f)
    assert model.score_parts(user, history, items, sequence=given)["sequence"].abs().max() == 0


@torch.no_grad()
def test_a_dnn_with_a_table_round_trips_through_an_artifact(tmp_path: Path) -> None:
    model = dnn_with_table()
    assert DNNReranker.state_shapes(3, 5, dim=4, history_len=4, sequence_top=3, sequence_window=2) == {
        k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()
    }
    save_artifact(
        tmp_path / "m",
        model,
        item_ids=["", "a", "b", "c", "d", "e"],
        user_ids=["", "u1", "u2", "u3"],
        user_history=np.zeros((4, 4), dtype=np.int64),
        trained_through={"max_ts": 1},
        hparams={},
        metrics={},
        event_weights={"view": 1.0},
    )
    loaded = load_artifact(tmp_path / "m").model
    for name in ("seq_successors", "seq_counts", "seq_totals", "seq_weight"):
        assert torch.equal(getattr(loaded, name), getattr(model, name))
    history, items = torch.tensor([[0, 0, 1, 2]]), torch.tensor([[3, 4, 5]])
    user = model.user_vectors()[1:2]
    assert torch.equal(loaded(user, history, items), model(user, history, items))


@torch.no_grad()
def test_items_added_later_have_no_transitions() -> None:
    model = DNNReranker(3, 5, dim=4, history_len=4, feature_vocab=["g:x"], sequence_top=3)
    model.set_transitions(*transition_table([[1, 2], [2, 3]], 5, window=3, top=3))
    model.add_items(torch.ones(2, 1))
    assert model.seq_successors.shape == (8, 3) and model.seq_totals.shape == (8,)
    f = model.sequence_features(torch.tensor([[0, 0, 0, 6], [0, 0, 1, 6]]), torch.tensor([[2, 7, 3], [2, 7, 3]]))
    # Nothing follows the new item 6, and the new item 7 follows nothing.
    assert (f[0] == 0).all() and (f[1, 1] == 0).all()
    # The older item 1 still counts in follows_recent.
    assert f[1, 0, 0] == 0 and f[1, 0, 1] > 0
