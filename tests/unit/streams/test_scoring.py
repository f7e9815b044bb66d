import dataclasses
import math

import numpy as np

from streams.core.scoring import MAX_PADDING_SHARE, PAD_FREE_CELLS, ScoringInput, rerank_batch, size_groups
from streams.core.state import history_rows, initial_state
from tests.conftest import SCORE_ATOL


def scoring_input(bundle, user: str, items: list[str], k=None, upstream=None) -> ScoringInput:  # type: ignore[no-untyped-def]
    state = initial_state(bundle, user)
    up = np.array(upstream if upstream is not None else [np.nan] * len(items), dtype=np.float64)
    return ScoringInput(state.vector, history_rows(bundle, state.history), items, up, k)


def test_batch_equals_one_by_one_and_is_sorted(bundle) -> None:  # type: ignore[no-untyped-def]
    users = list(bundle.user_index)[:5]
    items = bundle.item_ids[1:]
    inputs = [scoring_input(bundle, u, items[i : i + 7 + i]) for i, u in enumerate(users)]
    together = rerank_batch(bundle, inputs)
    alone = [rerank_batch(bundle, [x])[0] for x in inputs]
    for a, b, x in zip(together, alone, inputs):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
        scores = [s for _, s in a]
        assert scores == sorted(scores, reverse=True)
        assert sorted(i for i, _ in a) == sorted(x.candidates)


def test_k_cuts_and_ties_break_by_upstream_then_order(bundle) -> None:  # type: ignore[no-untyped-def]
    unknown = ["x1", "x2", "x3", "x4"]  # identical fallback scores
    [ranked] = rerank_batch(bundle, [scoring_input(bundle, "nobody", unknown, k=3, upstream=[0.1, np.nan, 0.9, 0.1])])
    assert [i for i, _ in ranked] == ["x3", "x1", "x4"]


def test_empty_batch() -> None:
    assert rerank_batch(None, []) == []  # type: ignore[arg-type]


def test_size_groups_bound_the_padding_and_keep_every_request_once() -> None:
    rng = np.random.default_rng(7)
    for sizes in ([20] * 63 + [1000], list(rng.integers(1, 1200, size=64)), [1] * 10, [5, 0, 3], [300]):
        groups = size_groups(sizes)
        assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
        for group in groups:
            real = sum(sizes[i] for i in group)
            padded = len(group) * max(sizes[i] for i in group)
            assert padded - real <= max(MAX_PADDING_SHARE * real, PAD_FREE_CELLS), (sizes, group)
    assert size_groups([20] * 63 + [1000]) == [list(range(63)), [63]]
    assert size_groups([20] * 63 + [1000], max_padding_share=math.inf) == [list(range(64))]


def test_one_large_request_does_not_pad_the_small_ones(bundle) -> None:  # type: ignore[no-untyped-def]
    cells: list[tuple[int, int]] = []

    class Spy:
        """The model, recording the shape of each batch it scores."""

        n_upstream_features = bundle.model.n_upstream_features

        def numpy_scores(self, users, histories, items, upstream, cache):  # type: ignore[no-untyped-def]
            cells.append(tuple(items.shape))
            return bundle.model.numpy_scores(users, histories, items, upstream, cache)

    spy = Spy()

    users = list(bundle.user_index)
    items = bundle.item_ids[1:]
    rng = np.random.default_rng(3)
    # Unknown ids as well: they share the fallback row, so their ties exercise the tie-break too.
    pool = [*items, "unknown-1", "unknown-2"]
    inputs = [
        scoring_input(bundle, users[i % len(users)], [pool[j] for j in rng.choice(len(pool), 20, replace=False)])
        for i in range(63)
    ]
    big = [pool[j % len(pool)] + ("" if j < len(pool) else f"-x{j}") for j in range(1000)]
    inputs.insert(17, scoring_input(bundle, users[0], big, k=50))
    ranked = rerank_batch(dataclasses.replace(bundle, model=spy), inputs)
    real = 63 * 20 + 1000
    assert sum(b * n for b, n in cells) <= real + max(MAX_PADDING_SHARE * real, PAD_FREE_CELLS), cells
    # Results in request order, equal to one padded batch and to one request at a time.
    for other in (
        rerank_batch(bundle, inputs, max_padding_share=math.inf),
        [rerank_batch(bundle, [x])[0] for x in inputs],
    ):
        for a, b in zip(ranked, other, strict=True):
            assert [i for i, _ in a] == [i for i, _ in b]
            assert np.allclose([s for _, s in a], [s for _, s in b], atol=SCORE_ATOL, rtol=0)
    assert len(ranked[17]) == 50 and all(len(r) == 20 for r in ranked[:17] + ranked[18:])
