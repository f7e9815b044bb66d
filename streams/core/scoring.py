"""Score and order the candidates of many requests in one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models import ModelBundle
from models.upstream import upstream_batch

SCORE_DECIMALS = 5
# Requests go through the model in sub-batches of similar candidate counts, each padded to its
# widest request: one 1,000-candidate request among 63 of 20 would otherwise make a [64, 1000]
# batch, 50 times the real work. A sub-batch takes another request while its padding stays within
# this share of its real candidates, or within PAD_FREE_CELLS cells (below that, padding costs
# less than the fixed cost of another forward pass).
MAX_PADDING_SHARE = 0.25
PAD_FREE_CELLS = 1024


@dataclass
class ScoringInput:
    """One request, ready for the model.

    Attributes:
        user_vector: [D] float32.
        history: [H] int64 item rows, 0-padded on the left.
        candidates: candidate item ids in request order.
        upstream: upstream retrieval scores (NaN where absent), same order. A model with an
            upstream part scores them (with the positions) as `models.upstream` features; they
            also break ties in model score.
        k: how many to return; ``None`` returns all.
        arrange: the stages after scoring (``streams.core.rules.Arrangement``): (order by model
            score, scores, candidates) -> the indexes to return, cut to k; None = the model's
            order cut to k.
    """

    user_vector: np.ndarray
    history: np.ndarray
    candidates: list[str]
    upstream: np.ndarray
    k: int | None
    arrange: Callable[[np.ndarray, np.ndarray, Sequence[str]], np.ndarray] | None = None


def size_groups(
    sizes: Sequence[int], max_padding_share: float = MAX_PADDING_SHARE, pad_free_cells: int = PAD_FREE_CELLS
) -> list[list[int]]:
    """Indexes of requests grouped by candidate count, so that each group's padding is bounded.

    Requests are taken from the fewest candidates up; a group takes the next one while its padded
    cells (members x widest) exceed its real candidates by at most ``max_padding_share`` of them,
    or by at most ``pad_free_cells``.

    Returns:
        Groups of indexes into ``sizes``, each group in ascending size; every index once.
    """
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        n = sizes[i]
        # n is the group's widest so far: requests come in ascending size.
        padding = (len(group) + 1) * n - (real + n)
        if group and padding > max(max_padding_share * (real + n), pad_free_cells):
            groups.append(group)
            group, real = [], 0
        group.append(i)
        real += n
    if group:
        groups.append(group)
    return groups


def _model_scores(bundle: ModelBundle, inputs: Sequence[ScoringInput]) -> np.ndarray:
    """Scores [B, N_max] of one padded batch, rounded to SCORE_DECIMALS."""
    width = max(len(x.candidates) for x in inputs)
    items = np.zeros((len(inputs), width), dtype=np.int64)
    index = bundle.item_index
    for row, request in enumerate(inputs):
        items[row, : len(request.candidates)] = [index.get(c, 0) for c in request.candidates]
    users = np.stack([x.user_vector for x in inputs]).astype(np.float32, copy=False)
    histories = np.stack([x.history for x in inputs])
    # Only a model with an upstream part pays for the features.
    upstream = upstream_batch([x.upstream for x in inputs], width) if bundle.model.n_upstream_features else None
    scores = bundle.model.numpy_scores(users, histories, items, upstream, bundle.cache)
    if scores is None:
        args = [torch.from_numpy(users), torch.from_numpy(histories), torch.from_numpy(items)]
        if upstream is not None:
            args.append(torch.from_numpy(upstream))
        with torch.inference_mode():
            scores = bundle.model(*args).numpy()
    # The same item can score a few ulps differently at another position or in
    # another batch (vectorised kernels); rounding makes equal scores equal, so
    # ties break by the rules below and live and offline scoring agree.
    return np.round(scores.astype(np.float64), SCORE_DECIMALS)


def rerank_batch(
    bundle: ModelBundle, inputs: Sequence[ScoringInput], *, max_padding_share: float = MAX_PADDING_SHARE
) -> list[list[tuple[str, float]]]:
    """Rank each request's candidates, best first, cut to its k.

    Requests go through the model in padded [B, N_max] sub-batches of similar
    candidate counts (``size_groups``; ``max_padding_share=math.inf`` makes it one
    batch). Items unknown to the model map to row 0 (the model's fallback representation);
    ties in model score (to SCORE_DECIMALS decimals) are broken by the upstream score, then by request order,
    so the output is deterministic (`rank_order`).

    Returns:
        Per request, in request order, a list of (item_id, score), best first.
    """
    if not inputs:
        return []
    scores_of: list[np.ndarray] = [np.empty(0)] * len(inputs)
    for group in size_groups([len(x.candidates) for x in inputs], max_padding_share):
        scores = _model_scores(bundle, [inputs[i] for i in group])
        for row, i in enumerate(group):
            scores_of[i] = scores[row, : len(inputs[i].candidates)]
    ranked: list[list[tuple[str, float]]] = []
    for request, model_scores in zip(inputs, scores_of):
        order = rank_order(model_scores, request.upstream)
        if request.arrange is not None:
            order = request.arrange(order, model_scores, request.candidates)
        elif request.k is not None:
            order = order[: request.k]
        # tolist() converts in one call; indexing numpy scalars one by one costs ~1 us each.
        candidates = request.candidates
        ranked.append([(candidates[i], score) for i, score in zip(order.tolist(), model_scores[order].tolist())])
    return ranked


def rank_order(model_scores: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """Candidate indexes best first: by model score, ties by upstream score (absent = lowest),
    then by request order.

    Args:
        model_scores: [n] float64 scores, already rounded to SCORE_DECIMALS.
        upstream: [n] upstream scores, NaN where absent.
    """
    up = np.asarray(upstream, dtype=np.float64)
    up = np.where(np.isnan(up), -np.inf, up)
    # lexsort sorts by the last key first.
    return np.lexsort((np.arange(len(model_scores)), -up, -model_scores))
