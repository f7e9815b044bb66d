import numpy as np

from streams.core.scoring import ScoringInput, rerank_batch
from streams.core.state import history_rows, initial_state


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
