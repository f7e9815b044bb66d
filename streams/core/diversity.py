"""Diversify a scored list: greedy MMR and greedy DPP MAP over an item similarity matrix.

Both are greedy and lazy: they yield one pick at a time, so a caller that needs the first k items
(after the business rules skipped some) pays for k steps, not for the whole list.

Relevance is the list's scores min-max normalised to [0, 1] within the list, so one weight means
the same on every model, whatever the scale of its scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models import ModelBundle

# The DPP kernel is L = diag(q) (S + JITTER I) diag(q): the jitter keeps it positive definite when
# two items have the same features (identical rows of S), so such an item is strongly penalised
# (its conditional variance drops to about JITTER) instead of making the Cholesky update divide by 0.
DPP_JITTER = 1e-3


def normalised(scores: np.ndarray) -> np.ndarray:
    """Scores min-max scaled to [0, 1] (all 1 when they are equal)."""
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        return np.ones_like(scores, dtype=np.float64)
    return (scores - low) / (high - low)


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, weight: float) -> Iterator[int]:
    """Maximal marginal relevance (Carbonell and Goldstein 1998), greedily.

    Each step picks argmax (1 - weight) * rel_i - weight * max_{j picked} sim(i, j); ties go to the
    earlier index, so a list in relevance order stays in it at weight 0.

    Args:
        relevance: [N] in [0, 1], the list's order of preference (index order breaks ties).
        similarity: [N, N] item similarities, 1 on the diagonal.
        weight: 0..1, the share of diversity in the objective.

    Yields:
        Every index 0..N-1 once, in pick order.
    """
    n = relevance.shape[0]
    base = (1.0 - weight) * relevance.astype(np.float64)
    # Before the first pick nothing is near anything: the first pick is the most relevant item.
    closest = np.zeros(n)
    blocked = np.zeros(n)  # -inf once picked
    objective = base.copy()
    for _ in range(n):
        j = int(objective.argmax())
        yield j
        blocked[j] = -np.inf
        if weight:
            np.maximum(closest, similarity[j], out=closest)
            np.multiply(closest, -weight, out=objective)
            objective += base
            objective += blocked
        else:
            objective[j] = -np.inf


def dpp_order(relevance: np.ndarray, similarity: np.ndarray, weight: float) -> Iterator[int]:
    """Greedy MAP inference of a DPP with quality-weighted kernel, by the incremental Cholesky
    update of Chen, Zhang and Zhou (NeurIPS 2018, "Fast greedy MAP inference for DPP").

    The kernel is L = diag(q) K diag(q) with K = S + DPP_JITTER I and q_i = exp(alpha rel_i),
    alpha = (1 - weight) / (2 weight) (Chen et al.'s trade-off theta = 1 - weight). Each step picks
    argmax of log det L_{Y+i} - log det L_Y = 2 alpha rel_i + log d_i^2, where d_i^2 is i's
    conditional variance under K given the picks: working in logs keeps large alphas (small
    weights) from overflowing exp. At weight 0 the order is the relevance order.

    Args:
        relevance: [N] in [0, 1].
        similarity: [N, N] positive semi-definite similarities (cosine of vectors, or Jaccard of
            sets, which is PSD), 1 on the diagonal.
        weight: 0..1.

    Yields:
        Every index 0..N-1 once, in pick order.
    """
    n = relevance.shape[0]
    if n == 0:
        return
    if weight <= 0:
        yield from np.lexsort((np.arange(n), -relevance)).tolist()
        return
    gain = ((1.0 - weight) / weight) * relevance.astype(np.float64)
    kernel = similarity.astype(np.float64, copy=False)
    d2 = np.diagonal(kernel).astype(np.float64) + DPP_JITTER
    # Row i holds item i's Cholesky coordinates along the picks so far.
    coords = np.zeros((n, n))
    blocked = np.zeros(n)  # -inf once picked
    objective = np.empty(n)
    for t in range(n):
        np.maximum(d2, 1e-300, out=objective)
        np.log(objective, out=objective)
        objective += gain
        objective += blocked
        j = int(objective.argmax())
        yield j
        blocked[j] = -np.inf
        dj = math.sqrt(max(float(d2[j]), 0.0))
        if dj <= 1e-12 or t == n - 1:
            continue
        e = kernel[j] - coords[:, :t] @ coords[j, :t]
        e /= dj
        e[j] = 0.0
        coords[:, t] = e
        d2 -= e * e


METHODS = {"mmr": mmr_order, "dpp": dpp_order}


def diversify(method: str, scores: np.ndarray, similarity: np.ndarray, weight: float) -> Iterator[int]:
    """Pick order of a list whose ``scores`` are in preference order (index order breaks ties)."""
    return METHODS[method](normalised(scores), similarity, weight)


def feature_similarity(
    item_ids: Sequence[str], items: Mapping[str, Mapping[str, Any]], fields: Sequence[str]
) -> np.ndarray:
    """[N, N] Jaccard similarity of the items' sets of feature values (1 on the diagonal).

    An item without a record, or without a value in ``fields``, is similar to no other item.
    """
    vocab: dict[Any, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for row, item in enumerate(item_ids):
        record = items.get(item)
        if record is None:
            continue
        for name in fields:
            value = record.get(name)
            for v in value if isinstance(value, list) else (value,):
                if v is not None and isinstance(v, (str, int, float, bool)):
                    rows.append(row)
                    cols.append(vocab.setdefault((name, v), len(vocab)))
    hot = np.zeros((len(item_ids), max(1, len(vocab))))
    hot[rows, cols] = 1.0
    inter = hot @ hot.T
    sizes = hot.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(sim, 1.0)
    return sim


def embedding_similarity(vectors: np.ndarray) -> np.ndarray:
    """[N, N] cosine similarity of item vectors [N, D] (1 on the diagonal)."""
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.maximum(norms, 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, 1.0)
    return sim


def model_item_vectors(bundle: ModelBundle, item_ids: Sequence[str]) -> np.ndarray | None:
    """[N, D] the model's candidate-side item vectors (unknown items: the fallback row), or None
    for a kind that has none."""
    vectors = getattr(bundle.model, "item_vectors", None)
    if vectors is None:
        return None
    rows = torch.tensor([bundle.item_index.get(i, 0) for i in item_ids], dtype=torch.int64)
    with torch.inference_mode():
        return np.asarray(vectors(rows).numpy(), dtype=np.float64)


def similarity_of(
    kind: str,
    bundle: ModelBundle,
    items: Mapping[str, Mapping[str, Any]],
    fields: Sequence[str],
    candidates: Sequence[str],
) -> Callable[[Sequence[int]], np.ndarray]:
    """A builder of the similarity matrix of some of ``candidates`` (by index), for the diversity
    stage: "embedding" = cosine of the model's item vectors (item features when the kind has no
    item vectors), "features" = Jaccard of the items' values of ``fields`` in their records."""

    def build(indexes: Sequence[int]) -> np.ndarray:
        ids = [candidates[i] for i in indexes]
        if kind == "embedding":
            vectors = model_item_vectors(bundle, ids)
            if vectors is not None:
                return embedding_similarity(vectors)
        return feature_similarity(ids, items, fields)

    return build
