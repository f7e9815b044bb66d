"""Ranking quality on held-out interactions, in one spelling of metric keys.

Keys are ``hr@K``, ``ndcg@K`` and ``mrr``, without a prefix: where a dict sits (a manifest's
"metrics", a gate decision's "candidate") says which data it was measured on.

``evaluate_split`` scores the training validation carve-out with the model's tensors;
``rank_metrics`` scores ranked id lists, as the benchmark's scorer does; ``ranking_metrics``
applies it to result records of the results contract.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

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


def rank_metrics(ranked: Mapping[str, list[str]], truth: Mapping[str, str], k: int = 10) -> dict[str, Any]:
    """HR@k, NDCG@k and MRR of the truth items in the ranked lists.

    Args:
        ranked: request id -> item ids, best first.
        truth: request id -> held-out item id; every request here counts.
        k: Cut-off of HR and NDCG.

    Returns:
        {"requests", "missing" (truth requests without a ranked list), "hr@k", "ndcg@k", "mrr"},
        unrounded; all metrics 0.0 for an empty truth.
    """
    hr = ndcg = mrr = 0.0
    missing = 0
    for rid, item in truth.items():
        ids = ranked.get(rid)
        if ids is None:
            missing += 1
            continue
        if item in ids:
            rank = ids.index(item) + 1
            mrr += 1.0 / rank
            if rank <= k:
                hr += 1.0
                ndcg += 1.0 / math.log2(rank + 1)
    n = max(len(truth), 1)
    return {"requests": len(truth), "missing": missing, f"hr@{k}": hr / n, f"ndcg@{k}": ndcg / n, "mrr": mrr / n}


def ranking_metrics(results: Sequence[Mapping[str, Any]], truth: Mapping[str, str], k: int = 10) -> dict[str, float]:
    """`rank_metrics` of result records ({"request_id", "items": [{"item_id"}, ...]}) over
    ``truth``; a request without a result counts as a miss.

    Returns:
        {"hr@k", "ndcg@k", "mrr", "requests"}.
    """
    m = rank_metrics({r["request_id"]: [i["item_id"] for i in r.get("items", [])] for r in results}, truth, k)
    return {f"hr@{k}": m[f"hr@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"], "mrr": m["mrr"], "requests": float(m["requests"])}
