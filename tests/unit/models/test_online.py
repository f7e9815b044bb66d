from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelBundle, load_artifact, online_update, push_history, save_artifact
from models.dnn import DNNReranker

D, H, N_CLUSTERS, PER_CLUSTER = 16, 5, 4, 10
N_ITEMS, N_USERS = N_CLUSTERS * PER_CLUSTER, 6


def cluster_items(c: int) -> np.ndarray:
    return np.arange(1 + c * PER_CLUSTER, 1 + (c + 1) * PER_CLUSTER)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    """A model with planted taste clusters: items of cluster c lie around direction e_c."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = DNNReranker(N_USERS, N_ITEMS, dim=D, history_len=H, mlp_hidden=[8])
    emb = np.zeros((N_ITEMS + 1, D), dtype=np.float32)
    for c in range(N_CLUSTERS):
        emb[cluster_items(c), c] = 1.0
    emb[1:] += rng.normal(0, 0.1, size=(N_ITEMS, D))
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(emb))
        model.user_emb.weight.normal_(0, 0.05)
        model.user_emb.weight[0].zero_()
    model.fill_unknown_rows()
    path = save_artifact(
        tmp_path_factory.mktemp("online") / "art",
        model,
        item_ids=[f"i{k}" for k in range(1, N_ITEMS + 1)],
        user_ids=[f"u{k}" for k in range(1, N_USERS + 1)],
        user_history=np.zeros((N_USERS + 1, H), dtype=np.int64),
        item_popularity=np.ones(N_ITEMS + 1, dtype=np.float32),
        trained_through={"max_ts": 0},
        hparams={},
        metrics={},
        event_weights={},
    )
    return load_artifact(path)


def all_scores(b: ModelBundle, vec: np.ndarray, hist: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        s = b.model(
            torch.from_numpy(vec).unsqueeze(0),
            torch.from_numpy(hist).unsqueeze(0),
            torch.arange(N_ITEMS + 1).unsqueeze(0),
        )
    return s[0].numpy()


def test_push_history() -> None:
    h = np.array([0, 0, 3, 4], dtype=np.int64)
    out = push_history(h, 9)
    assert out.tolist() == [0, 3, 4, 9] and h.tolist() == [0, 0, 3, 4]
    assert push_history(np.array([1, 2, 3]), 4).tolist() == [2, 3, 4]
    assert push_history(h, 0).tolist() == h.tolist()  # unknown item: padding is not pushed


def test_deterministic_for_a_seed(bundle: ModelBundle) -> None:
    vec = bundle.model.user_vectors()[2].numpy().copy()
    hist = np.array([0, 0, 0, 5, 7], dtype=np.int64)
    a = online_update(bundle, vec, hist, 12, 1.0, seed=7)
    b = online_update(bundle, vec, hist, 12, 1.0, seed=7)
    c = online_update(bundle, vec, hist, 12, 1.0, seed=8)
    assert a.dtype == np.float32 and a.shape == (D,)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # different negatives
    assert not np.array_equal(a, vec)


def test_positive_event_raises_and_dismiss_lowers_the_item(bundle: ModelBundle) -> None:
    vec = bundle.model.user_vectors()[3].numpy().copy()
    hist = np.zeros(H, dtype=np.int64)
    before = all_scores(bundle, vec, hist)[12]
    up = online_update(bundle, vec, hist, 12, 1.0, seed=1)
    down = online_update(bundle, vec, hist, 12, -1.0, seed=1)
    assert all_scores(bundle, up, hist)[12] > before + 0.01
    assert all_scores(bundle, down, hist)[12] < before - 0.01
    # A heavier event moves further.
    big = online_update(bundle, vec, hist, 12, 3.0, seed=1)
    assert all_scores(bundle, big, hist)[12] > all_scores(bundle, up, hist)[12]


def test_unknown_item_or_zero_weight_leaves_vector_unchanged(bundle: ModelBundle) -> None:
    vec = np.full(D, 0.1, dtype=np.float32)
    hist = np.zeros(H, dtype=np.int64)
    out = online_update(bundle, vec, hist, 0, 1.0, seed=0)
    assert np.array_equal(out, vec) and out is not vec
    assert np.array_equal(online_update(bundle, vec, hist, 5, 0.0, seed=0), vec)


def test_positive_events_on_one_cluster_raise_that_cluster(bundle: ModelBundle) -> None:
    hist = np.zeros(H, dtype=np.int64)
    for target in range(N_CLUSTERS):
        vec = np.zeros(D, dtype=np.float32)  # a user the model has never seen
        before = all_scores(bundle, vec, hist)
        for n, item in enumerate(cluster_items(target)[:3]):
            vec = online_update(bundle, vec, hist, int(item), 1.0, seed=n)
        gain = all_scores(bundle, vec, hist) - before
        # Held-out items of the same cluster (not the three trained on) rise, the others do not.
        same = gain[cluster_items(target)[3:]].mean()
        others = np.mean([gain[cluster_items(c)].mean() for c in range(N_CLUSTERS) if c != target])
        assert same > 0.05 and same > others + 0.05, (target, same, others)


def test_hand_derived_update_matches_the_generic_autograd_path(bundle: ModelBundle) -> None:
    import dataclasses

    from models import Reranker

    class Delegate(Reranker):
        """Any kind without a hand-derived gradient takes the autograd path."""

        def __init__(self, inner: Reranker) -> None:
            super().__init__(inner.n_users, inner.n_items)
            self.inner = inner

        def user_repr(self, user_vec: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            return self.inner.user_repr(user_vec, history)

        def score(self, user_repr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return self.inner.score(user_repr, items)

    generic = dataclasses.replace(bundle, model=Delegate(bundle.model), cache={})
    vec = bundle.model.user_vectors()[4].numpy().copy()
    hist = np.array([0, 0, 3, 17, 29], dtype=np.int64)
    for item, weight in ((21, 1.0), (21, -1.0), (5, 3.0)):
        fast = online_update(bundle, vec, hist, item, weight, seed=11)
        slow = online_update(generic, vec, hist, item, weight, seed=11)
        assert not np.allclose(fast, vec)
        np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)
