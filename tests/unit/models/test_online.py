import dataclasses

import numpy as np
import pytest
import torch

from models import ModelBundle, Reranker, load_artifact, online_update_batch, save_artifact
from models.dnn import DNNReranker
from models.online import _batch_targets
from tests.conftest import online_update

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


class Delegate(Reranker):
    """Any kind without a hand-derived gradient takes the autograd path."""

    def __init__(self, inner: Reranker) -> None:
        super().__init__(inner.n_users, inner.n_items)
        self.inner = inner

    def user_repr(self, user_vec: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.inner.user_repr(user_vec, history)

    def score(self, user_repr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.inner.score(user_repr, items)


def generic_bundle(bundle: ModelBundle) -> ModelBundle:
    """``bundle`` with its model behind a kind the online update knows no gradient for."""
    return dataclasses.replace(bundle, model=Delegate(bundle.model), cache={})


def reference_targets(
    n_items: int, row: int, weight: float, seed: int, n_negatives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What one event should learn from, written out plainly: items [K], labels [K], weights [K].

    Positive: the item (label 1, weight |w|) and n_negatives uniform draws from the other items by
    default_rng(seed).integers (label 0, weight |w| / n_negatives). Dismiss: the item alone, label 0.
    """
    if weight > 0 and n_negatives > 0 and n_items > 1:
        r = np.random.default_rng(seed).integers(1, n_items, size=n_negatives)
        negs = np.where(r >= row, r + 1, r).astype(np.int64)
    else:
        negs = np.zeros(0, dtype=np.int64)
    labels = np.zeros(1 + negs.size, dtype=np.float32)
    labels[0] = weight > 0
    w = np.full(1 + negs.size, abs(weight) / max(negs.size, 1), dtype=np.float32)
    w[0] = abs(weight)
    return np.concatenate([[row], negs]).astype(np.int64), labels, w


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
    generic = generic_bundle(bundle)
    vec = bundle.model.user_vectors()[4].numpy().copy()
    hist = np.array([0, 0, 3, 17, 29], dtype=np.int64)
    for item, weight in ((21, 1.0), (21, -1.0), (5, 3.0)):
        fast = online_update(bundle, vec, hist, item, weight, seed=11)
        slow = online_update(generic, vec, hist, item, weight, seed=11)
        assert not np.allclose(fast, vec)
        np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)


def random_events(
    b: ModelBundle, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """n events mixing positive, dismiss and zero weights, unknown items and empty histories."""
    rng = np.random.default_rng(seed)
    d, h, n_items = b.model.dim, b.model.history_len, b.model.n_items
    vecs = rng.normal(0, 0.3, size=(n, d)).astype(np.float32)
    hists = rng.integers(0, n_items + 1, size=(n, h))
    hists[np.arange(n) % 4 == 0] = 0  # no history at all
    for i, cut in enumerate(rng.integers(0, h + 1, size=n)):
        hists[i, :cut] = 0  # left padding of any length
    items = rng.integers(1, n_items + 1, size=n)
    items[np.arange(n) % 7 == 3] = 0  # unknown item
    weights = rng.choice([1.0, 0.5, 3.0, -1.0, -0.25, 0.0], size=n)
    weights[:2] = [1.0, -1.0][:n]  # both kinds in every batch of two or more
    seeds = [int(s) for s in rng.integers(0, 2**64, size=n, dtype=np.uint64)]  # as update_seed makes them
    return vecs, hists, items, weights, seeds


def without_hidden_layers(b: ModelBundle) -> ModelBundle:
    """The fixture's bundle with an MLP-free model: a different set of products in the update."""
    import dataclasses

    torch.manual_seed(1)
    model = DNNReranker(N_USERS, N_ITEMS, dim=D, history_len=H, mlp_hidden=[])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return dataclasses.replace(b, model=model, cache={})


@pytest.mark.parametrize("n", [1, 3, 64])
@pytest.mark.parametrize("hidden", [True, False])
@pytest.mark.parametrize("steps,n_negatives", [(3, 4), (1, 16)])
def test_a_batch_row_is_bit_identical_to_the_event_alone(
    bundle: ModelBundle, n: int, hidden: bool, steps: int, n_negatives: int
) -> None:
    b = bundle if hidden else without_hidden_layers(bundle)
    vecs, hists, items, weights, seeds = random_events(b, n, seed=n)
    kw = dict(steps=steps, lr=0.05, n_negatives=n_negatives)
    before = vecs.copy()
    out = online_update_batch(b, vecs, hists, items, weights, seeds, **kw)
    assert out.dtype == np.float32 and out.shape == vecs.shape
    assert np.array_equal(vecs, before)  # inputs untouched
    for i in range(n):
        alone = online_update(b, vecs[i], hists[i], int(items[i]), float(weights[i]), seed=seeds[i], **kw)
        assert np.array_equal(out[i], alone), i
        if items[i] == 0 or weights[i] == 0:
            assert np.array_equal(out[i], vecs[i])
        else:
            assert not np.array_equal(out[i], vecs[i])
    # The same rows next to other company: a prefix, and the batch reversed.
    head = online_update_batch(b, vecs[:3], hists[:3], items[:3], weights[:3], seeds[:3], **kw)
    assert np.array_equal(head, out[:3])
    back = online_update_batch(b, vecs[::-1], hists[::-1], items[::-1], weights[::-1], seeds[::-1], **kw)
    assert np.array_equal(back[::-1], out)


def test_batch_negatives_are_the_per_event_draws(bundle: ModelBundle) -> None:
    _, _, items, weights, seeds = random_events(bundle, 40, seed=5)
    keep = (items > 0) & (weights != 0)
    rows, weights, seeds = items[keep], weights[keep], [s for s, k in zip(seeds, keep) if k]
    got_items, got_labels, got_w = _batch_targets(bundle, rows, weights, seeds, 4)
    assert got_items.shape == (rows.size, 5)
    for i, (row, weight, seed) in enumerate(zip(rows.tolist(), weights.tolist(), seeds)):
        items, labels, w = reference_targets(N_ITEMS, row, weight, seed, 4)
        k = items.size
        assert k == (5 if weight > 0 else 1) and row not in items[1:]
        assert np.array_equal(got_items[i, :k], items)
        assert np.array_equal(got_labels[i, :k], labels) and np.array_equal(got_w[i, :k], w)
        # Dismisses are padded with zero-weight copies of the item: they add nothing.
        assert not got_labels[i, k:].any() and not got_w[i, k:].any() and (got_items[i, k:] == row).all()


def test_batch_no_ops_and_bad_rows(bundle: ModelBundle) -> None:
    vecs, hists, items, weights, seeds = random_events(bundle, 5, seed=9)
    same = online_update_batch(bundle, vecs, hists, items, weights, seeds, steps=0, lr=0.05, n_negatives=4)
    assert np.array_equal(same, vecs) and same is not vecs
    items[1] = N_ITEMS + 1
    with pytest.raises(ValueError, match="out of range"):
        online_update_batch(bundle, vecs, hists, items, weights, seeds, steps=1, lr=0.05, n_negatives=4)
    with pytest.raises(ValueError, match="disagree"):
        online_update_batch(bundle, vecs, hists, items[:4], weights, seeds, steps=1, lr=0.05, n_negatives=4)


def test_batch_on_the_generic_path_loops_over_events(bundle: ModelBundle) -> None:
    generic = generic_bundle(bundle)
    vecs, hists, items, weights, seeds = random_events(bundle, 6, seed=3)
    kw = dict(steps=2, lr=0.05, n_negatives=4)
    slow = online_update_batch(generic, vecs, hists, items, weights, seeds, **kw)
    fast = online_update_batch(bundle, vecs, hists, items, weights, seeds, **kw)
    for i in range(6):
        alone = online_update(generic, vecs[i], hists[i], int(items[i]), float(weights[i]), seed=seeds[i], **kw)
        assert np.array_equal(slow[i], alone)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)


def test_the_update_runs_the_kinds_own_online_vectors_with_the_bundles_cache(bundle: ModelBundle) -> None:
    calls: list[tuple[tuple[int, ...], dict]] = []

    class Halving(Delegate):
        def online_vectors(self, vecs, histories, items, labels, weights, *, steps, lr, cache):  # type: ignore[no-untyped-def]
            calls.append((items.shape, cache))
            return vecs * 0.5

    b = dataclasses.replace(bundle, model=Halving(bundle.model), cache={})
    vecs, hists, items, weights, seeds = random_events(bundle, 6, seed=4)
    out = online_update_batch(b, vecs, hists, items, weights, seeds, steps=1, lr=0.05, n_negatives=4)
    learns = (items > 0) & (weights != 0)
    assert calls == [((int(learns.sum()), 5), b.cache)] and calls[0][1] is b.cache
    assert np.array_equal(out[learns], vecs[learns] * 0.5) and np.array_equal(out[~learns], vecs[~learns])


def test_dnn_keeps_its_numpy_weights_in_the_bundles_cache(bundle: ModelBundle) -> None:
    b = dataclasses.replace(bundle, cache={})
    vecs, hists, items, weights, seeds = random_events(b, 4, seed=6)
    first = online_update_batch(b, vecs, hists, items, weights, seeds, steps=1, lr=0.05, n_negatives=4)
    params = b.cache["dnn_numpy_params"]
    again = online_update_batch(b, vecs, hists, items, weights, seeds, steps=1, lr=0.05, n_negatives=4)
    assert b.cache["dnn_numpy_params"] is params and np.array_equal(first, again)
