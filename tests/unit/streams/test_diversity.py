"""The diversity stage: greedy MMR and greedy DPP MAP, and the similarity matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streams.core.diversity import (
    DPP_JITTER,
    diversify,
    dpp_order,
    embedding_similarity,
    feature_similarity,
    mmr_order,
    normalised,
)


def random_psd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return embedding_similarity(rng.normal(size=(n, 4)))


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_weight_zero_keeps_the_relevance_order(method: str) -> None:
    scores = np.array([3.0, 2.0, 2.0, 1.0, -1.0])
    assert list(diversify(method, scores, random_psd(5, 0), 0.0)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_a_near_copy_of_the_first_pick_goes_behind_a_different_item(method: str) -> None:
    # Items 0 and 1 have the same features; 2 is slightly less relevant and unlike both.
    sim = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scores = np.array([1.0, 0.95, 0.9])
    assert list(diversify(method, scores, sim, 0.0)) == [0, 1, 2]
    assert list(diversify(method, scores, sim, 0.5)) == [0, 2, 1]


def test_mmr_matches_its_definition() -> None:
    rng = np.random.default_rng(3)
    rel, sim, w = rng.random(12), random_psd(12, 4), 0.4
    picked: list[int] = []
    while len(picked) < 12:
        rest = [i for i in range(12) if i not in picked]
        value = [(1 - w) * rel[i] - w * max((sim[i, j] for j in picked), default=0.0) for i in rest]
        picked.append(rest[int(np.argmax(value))])
    assert list(mmr_order(rel, sim, w)) == picked


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_dpp_greedy_matches_log_determinants(seed: int) -> None:
    """The incremental Cholesky update picks what maximising log det L_Y step by step picks."""
    rng = np.random.default_rng(seed)
    n, w = 10, 0.3
    rel, sim = rng.random(n), random_psd(n, seed)
    alpha = (1 - w) / (2 * w)
    q = np.exp(alpha * rel)
    kernel = q[:, None] * (sim + DPP_JITTER * np.eye(n)) * q[None, :]
    picked: list[int] = []
    while len(picked) < n:
        rest = [i for i in range(n) if i not in picked]
        dets = [np.linalg.slogdet(kernel[np.ix_(picked + [i], picked + [i])])[1] for i in rest]
        picked.append(rest[int(np.argmax(dets))])
    assert list(dpp_order(rel, sim, w)) == picked


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_every_item_is_picked_once_even_with_identical_items(method: str) -> None:
    sim = np.ones((6, 6))  # all the same features: the DPP kernel is singular without its jitter
    picks = list(diversify(method, np.linspace(1, 0, 6), sim, 0.7))
    assert sorted(picks) == list(range(6))


def test_picks_are_lazy() -> None:
    calls = []

    class Counting(np.ndarray):
        def __getitem__(self, key):  # type: ignore[no-untyped-def]
            calls.append(key)
            return super().__getitem__(key)

    sim = random_psd(50, 1).view(Counting)
    first = list(itertools.islice(mmr_order(np.linspace(1, 0, 50), sim, 0.3), 3))
    assert len(first) == 3
    # One similarity row is read per pick made (the last pick's row only when a next is asked for).
    assert len(calls) <= 3


def test_normalised_scales_to_unit_range() -> None:
    assert normalised(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalised(np.array([1.0, 1.0])).tolist() == [1.0, 1.0]


def test_feature_similarity_is_jaccard_of_the_values() -> None:
    items = {
        "a": {"item_id": "a", "genres": ["x", "y"]},
        "b": {"item_id": "b", "genres": ["y", "z"]},
        "c": {"item_id": "c", "genres": "x"},  # a scalar value counts as one value
        "d": {"item_id": "d"},
    }
    sim = feature_similarity(["a", "b", "c", "d", "unknown"], items, ["genres"])
    assert sim[0, 1] == pytest.approx(1 / 3)
    assert sim[0, 2] == pytest.approx(1 / 2)
    assert sim[1, 2] == 0.0
    assert sim[3].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # no values: similar to nothing
    assert sim[4, 4] == 1.0
    assert np.linalg.eigvalsh(sim).min() > -1e-9  # Jaccard is positive semi-definite (DPP kernel)


def test_embedding_similarity_is_cosine() -> None:
    sim = embedding_similarity(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == pytest.approx(0.0)
    assert sim[0, 3] == pytest.approx(-1.0)
