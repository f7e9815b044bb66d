"""Score and order the candidates of many requests in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models import ModelBundle

SCORE_DECIMALS = 5


@dataclass
class ScoringInput:
    """One request, ready for the model.

    Attributes:
        user_vector: [D] float32.
        history: [H] int64 item rows, 0-padded on the left.
        candidates: candidate item ids in request order.
        upstream: upstream retrieval scores (NaN where absent), same order; only break ties.
        k: how many to return; ``None`` returns all.
    """

    user_vector: np.ndarray
    history: np.ndarray
    candidates: list[str]
    upstream: np.ndarray
    k: int | None


def rerank_batch(bundle: ModelBundle, inputs: Sequence[ScoringInput]) -> list[list[tuple[str, float]]]:
    """Rank each request's candidates, best first, cut to its k.

    All requests go through the model as one padded [B, N_max] batch. Items
    unknown to the model map to row 0 (the model's fallback representation);
    ties in model score (to SCORE_DECIMALS decimals) are broken by the upstream score, then by request order,
    so the output is deterministic.

    Returns:
        Per request, a list of (item_id, score), best first.
    """
    if not inputs:
        return []
    width = max(len(x.candidates) for x in inputs)
    items = np.zeros((len(inputs), width), dtype=np.int64)
    index = bundle.item_index
    for row, request in enumerate(inputs):
        items[row, : len(request.candidates)] = [index.get(c, 0) for c in request.candidates]
    users = np.stack([x.user_vector for x in inputs]).astype(np.float32, copy=False)
    histories = np.stack([x.history for x in inputs])
    with torch.inference_mode():
        scores = bundle.model(torch.from_numpy(users), torch.from_numpy(histories), torch.from_numpy(items)).numpy()
    # The same item can score a few ulps differently at another position or in
    # another batch (vectorised kernels); rounding makes equal scores equal, so
    # ties break by the rules below and live and offline scoring agree.
    scores = np.round(scores.astype(np.float64), SCORE_DECIMALS)
    ranked: list[list[tuple[str, float]]] = []
    for row, request in enumerate(inputs):
        n = len(request.candidates)
        model_scores = scores[row, :n]
        upstream = np.asarray(request.upstream, dtype=np.float64)
        upstream = np.where(np.isnan(upstream), -np.inf, upstream)
        # lexsort sorts by the last key first.
        order = np.lexsort((np.arange(n), -upstream, -model_scores))
        if request.k is not None:
            order = order[: request.k]
        # tolist() converts in one call; indexing numpy scalars one by one costs ~1 us each.
        candidates = request.candidates
        ranked.append([(candidates[i], score) for i, score in zip(order.tolist(), model_scores[order].tolist())])
    return ranked
