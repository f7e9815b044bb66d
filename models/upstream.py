"""Per-request features of the upstream (first-stage) order, shared by training and serving.

A request's candidates arrive in the first stage's order, each with an optional retrieval
`score`. Raw scores are not comparable across retrievers or requests, so every feature is
normalised within the request: position gains, the within-list z-score and score rank, and a
flag for an absent score. A request without scores still gets its position features.
"""

from __future__ import annotations

import numpy as np

# Column order of `upstream_features`; a model stores how many it was trained with.
UPSTREAM_FEATURES: tuple[str, ...] = (
    "position_gain",  # 1 / log2(position + 2), position 0-based in request order
    "position_share",  # position / (n - 1): 0 first, 1 last
    "score_z",  # (score - mean) / std over the request's present scores; 0 when absent or std 0
    "score_rank_gain",  # 1 / log2(rank by score + 2); 0 when absent
    "score_absent",  # 1 where the candidate had no score
)
N_UPSTREAM_FEATURES = len(UPSTREAM_FEATURES)


def upstream_features(scores: np.ndarray | None, n: int) -> np.ndarray:
    """The upstream features of one request's n candidates, in request order.

    Args:
        scores: [n] upstream scores, NaN where absent; None = no candidate has one.
        n: Number of candidates.

    Returns:
        [n, N_UPSTREAM_FEATURES] float32, each column as `UPSTREAM_FEATURES` describes.
    """
    out = np.zeros((n, N_UPSTREAM_FEATURES), dtype=np.float32)
    if n == 0:
        return out
    pos = np.arange(n, dtype=np.float64)
    out[:, 0] = 1.0 / np.log2(pos + 2.0)
    out[:, 1] = pos / max(n - 1, 1)
    s = np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=np.float64)[:n]
    present = ~np.isnan(s)
    out[:, 4] = ~present
    k = int(present.sum())
    if k:
        v = s[present]
        std = float(v.std())
        if std > 0.0:
            out[present, 2] = (v - v.mean()) / std
        # Rank by score, ties by position (a stable sort of the negated scores).
        rank = np.empty(k)
        rank[np.argsort(-v, kind="stable")] = np.arange(k)
        out[present, 3] = 1.0 / np.log2(rank + 2.0)
    return out


def upstream_batch(scores: list[np.ndarray], width: int) -> np.ndarray:
    """`upstream_features` of several requests, zero-padded to ``width`` candidates.

    Args:
        scores: Per request, its [n_b] upstream scores (NaN where absent), n_b <= width.
        width: Padded candidate count.

    Returns:
        [len(scores), width, N_UPSTREAM_FEATURES] float32; rows past n_b are zeros.
    """
    out = np.zeros((len(scores), width, N_UPSTREAM_FEATURES), dtype=np.float32)
    for b, s in enumerate(scores):
        out[b, : len(s)] = upstream_features(s, len(s))
    return out
