"""Ranking quality of a model on a validation split, for early stopping and for choosing epochs."""

from __future__ import annotations

import math

import torch

from models.base import Reranker
from trainer.data import ValidationSplit


@torch.no_grad()
def evaluate_split(model: Reranker, split: ValidationSplit, k: int = 10, batch_size: int = 1024) -> dict[str, float]:
    """NDCG@k and HR@k of the held-out item (candidate column 0) among its candidates.

    Ties count against the held-out item, so a model that scores everything equal gets no credit.

    Returns:
        {"ndcg@k", "hr@k", "n"}; metrics are NaN when the split is empty.
    """
    if len(split) == 0:
        return {f"ndcg@{k}": math.nan, f"hr@{k}": math.nan, "n": 0}
    was_training = model.training
    model.eval()
    ranks = []
    uv = model.user_vectors()
    for a in range(0, len(split), batch_size):
        sl = slice(a, a + batch_size)
        users = torch.from_numpy(split.users[sl])
        s = model(uv[users], torch.from_numpy(split.history[sl]), torch.from_numpy(split.candidates[sl]))
        valid = torch.from_numpy(split.valid[sl])
        beats = (s[:, 1:] >= s[:, :1]) & valid[:, 1:]
        ranks.append(1 + beats.sum(dim=1))
    model.train(was_training)
    rank = torch.cat(ranks).double()
    hit = rank <= k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    return {f"ndcg@{k}": float(ndcg.mean()), f"hr@{k}": float(hit.double().mean()), "n": int(rank.numel())}
