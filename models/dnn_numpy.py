"""Numpy twins of `DNNReranker`'s scoring for the online update: scores and a hand-derived
gradient w.r.t. the user representation, for B users at once; and `scores_np`, the whole
forward for serving.

Why not torch: the online update must give a user's vector the same bits whether its event is
updated alone or inside a batch of any size (the worker batches what has arrived, so a replay with
other batch boundaries must agree). In float32 a product over the whole batch does not have that
property: a flattened [B*N, D] x [D, h] product is rounded differently for some rows as B changes
(OpenBLAS; e.g. [17, 64] x [64, 1] per row came out differently for B = 3 or 64 than alone). Here
every product goes through np.matmul on stacked operands ([B, m, n] @ [n, p] and the like), which
numpy evaluates as one BLAS call per row with that row's own [m, n] x [n, p] shape, so a row's
result depends only on the row. It is also faster than autograd for one small step per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.sequence import RECENT_ITEMS

if TYPE_CHECKING:
    from models.dnn import DNNReranker


def numpy_params(model: DNNReranker) -> dict[str, Any]:
    """Copy the weights the online update needs into float32 numpy arrays (one copy per model).

    The first MLP layer is split by input block ([u, q, u*q]) so the per-step work is a few
    [N, D] x [D, h] products instead of building the concatenated input.

    Returns:
        Dict with "hist_emb" [I+1, D] (item feature terms included, as in "item_emb" and
        "item_bias"), "pos_w" [H] (exp of the max-shifted position logits),
        "proj_w" [D, D], "proj_b" [D], "item_emb" [I+1, D], "item_bias" [I+1], "w_u", "w_q",
        "w_m" [h1, D] and "b1" [h1] (the first MLP layer split by input block; h1 = 1 when the
        MLP has no hidden layer) and "hidden": list of (weight [out, in], bias [out]) for the
        later layers, the final one included; for `scores_np`: "scale" (the user-item scale a, 1
        without an upstream part), "upstream" (the upstream MLP's two (weight, bias) layers, or
        []), "table" ((successors, counts, totals) of the transition table, or None) and
        "seq_weight" [N_SEQUENCE_FEATURES] (or None).
    """
    f = lambda t: t.detach().cpu().numpy().astype(np.float32, copy=True)
    logits = f(model.pos_logits)
    d = model.dim
    w1, b1 = f(model.mlp[0].weight), f(model.mlp[0].bias)
    with torch.no_grad():
        # Feature terms folded in: the tables hold each row's full vector.
        rows = torch.arange(model.n_items + 1)
        hist, items, bias = model.history_vectors(rows), model.item_vectors(rows), model.item_biases(rows)
    return {
        "hist_emb": f(hist),
        "pos_w": np.exp(logits - logits.max()),
        "proj_w": f(model.hist_proj.weight),
        "proj_b": f(model.hist_proj.bias),
        "item_emb": f(items),
        "item_bias": f(bias),
        "w_u": np.ascontiguousarray(w1[:, :d]),
        "w_q": np.ascontiguousarray(w1[:, d : 2 * d]),
        "w_m": np.ascontiguousarray(w1[:, 2 * d :]),
        "b1": b1,
        "hidden": [(f(layer.weight), f(layer.bias)) for layer in model.mlp[1:]],
        "history_len": model.history_len,
        "dim": d,
        # For `scores_np` (serving): the parts after the user-item score.
        "scale": float(model.model_scale.detach()) if model.n_upstream_features else 1.0,
        "upstream": [(f(model.upstream_net[i].weight), f(model.upstream_net[i].bias)) for i in (0, 2)]
        if model.n_upstream_features
        else [],
        "table": tuple(t.numpy() for t in (model.seq_successors, model.seq_counts, model.seq_totals))
        if model.sequence_top
        else None,
        "seq_weight": f(model.seq_weight) if model.sequence_top else None,
    }


def history_context_batch_np(p: dict[str, Any], histories: np.ndarray) -> np.ndarray:
    """`DNNReranker.history_context` of B users.

    Args:
        p: Output of `numpy_params`.
        histories: [B, H'] int64 item rows, 0 = padding, most recent last.

    Returns:
        [B, D] history contexts, zeros for all-padding rows, in the dtype of `p`'s tables.
    """
    length = p["history_len"]
    h = histories[:, -length:]
    mask = h > 0
    present = mask.any(axis=1)
    w = p["pos_w"][length - h.shape[1] :] * mask
    total = w.sum(axis=1, keepdims=True)
    everyone = present.all()
    if not everyone:
        # Empty rows divide by 1 instead of 0 (their weights are all zero) and are zeroed below.
        total[~present] = 1.0
    ctx = np.matmul((w / total)[:, None, :], p["hist_emb"][h])  # [B, 1, D]
    out = np.matmul(p["proj_w"], ctx.transpose(0, 2, 1))[:, :, 0] + p["proj_b"]  # [B, D]
    if not everyone:
        out[~present] = 0.0
    return out


def item_terms_batch(p: dict[str, Any], items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of the score that do not depend on u, for reuse across gradient steps.

    Args:
        p: Output of `numpy_params`.
        items: [B, N] int64 item rows.

    Returns:
        (q [B, N, D] item embeddings, [B, N, h1] first-layer pre-activation from q plus its bias,
        [B, N] item biases).
    """
    q = p["item_emb"][items]
    return q, np.matmul(q, p["w_q"].T) + p["b1"], p["item_bias"][items]


def score_and_grad_batch_np(
    p: dict[str, Any],
    u: np.ndarray,
    items: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray],
    dloss_dscore: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`DNNReranker.score` of B users, each with its own N items, with a hand-derived gradient w.r.t. u.

    Args:
        p: Output of `numpy_params`.
        u: [B, D] user representations.
        items: [B, N] int64 item rows, or their precomputed `item_terms_batch`.
        dloss_dscore: None to skip the backward pass, or a callable mapping scores [B, N] to
            dLoss/dscore [B, N].

    Returns:
        (scores [B, N], dLoss/du [B, D] or None).
    """
    q, pre_q, base = item_terms_batch(p, items) if isinstance(items, np.ndarray) else items
    uq = q * u[:, None, :]
    # [h1, D] @ [B, D, 1] -> [B, h1, 1] -> [B, 1, h1]: the u block of the first layer, per user.
    x = np.matmul(uq, p["w_m"].T) + pre_q + np.matmul(p["w_u"], u[:, :, None]).transpose(0, 2, 1)
    acts = []
    for w, b in p["hidden"]:
        x = np.maximum(x, 0.0)
        acts.append(x)
        x = np.matmul(x, w.T) + b
    s = x[:, :, 0] + uq.sum(axis=2) + base
    if dloss_dscore is None:
        return s, None
    g = dloss_dscore(s).astype(q.dtype, copy=False)
    grad_u = np.matmul(g[:, None, :], q)[:, 0]  # [B, 1, N] @ [B, N, D] -> [B, D]
    gx = g[:, :, None]
    for (w, _), a in zip(reversed(p["hidden"]), reversed(acts)):
        gx = np.matmul(gx, w) * (a > 0)
    # gx is now dLoss/d(first-layer output), [B, N, h1].
    grad_u += np.matmul(gx.sum(axis=1)[:, None, :], p["w_u"])[:, 0] + (np.matmul(gx, p["w_m"]) * q).sum(axis=1)
    return s, grad_u


def transition_features_np(p: dict[str, Any], histories: np.ndarray, items: np.ndarray) -> np.ndarray:
    """`models.sequence.table_features` of B users' candidates: [B, H], [B, N] -> [B, N, 2]."""
    successors, counts, totals = p["table"]
    top = successors.shape[1]
    recent = histories[:, -RECENT_ITEMS:][:, ::-1]
    b, k = recent.shape
    pair = np.zeros((b, k, items.shape[1]), dtype=np.float32)
    for r in range(b):
        for j, src in enumerate(recent[r].tolist()):
            if src <= 0 or totals[src] <= 0:
                continue
            row = successors[src]
            at = np.minimum(np.searchsorted(row, items[r]), top - 1)
            found = (row[at] == items[r]) & (items[r] > 0)
            pair[r, j] = counts[src][at] * found
    tot = totals[recent]
    present = tot > 0
    share = pair / np.maximum(tot, 1e-12)[:, :, None] * present[:, :, None]
    recent_share = share.sum(axis=1) / np.maximum(present.sum(axis=1, keepdims=True), 1)
    return np.log1p(top * np.stack([share[:, 0], recent_share], axis=-1)).astype(np.float32)


def scores_np(
    p: dict[str, Any], user_vecs: np.ndarray, histories: np.ndarray, items: np.ndarray, upstream: np.ndarray | None
) -> np.ndarray:
    """`DNNReranker.forward` in numpy: [B, D], [B, H], [B, N], [B, N, U] or None -> [B, N] float32.

    A request's forward in torch is some forty small operator calls, each with a fixed cost that
    a [1, 100] batch does not amortise; here it is a dozen numpy calls. Scores agree with torch's
    to float32 rounding (tests/unit/models/test_dnn_numpy_scores.py states the tolerance).
    """
    u = user_vecs + history_context_batch_np(p, histories)
    s, _ = score_and_grad_batch_np(p, u, items)
    if p["table"] is not None:
        s = s + transition_features_np(p, histories, items) @ p["seq_weight"]
    s = p["scale"] * s
    if p["upstream"] and upstream is not None:
        (w0, b0), (w2, b2) = p["upstream"]
        s = s + (np.maximum(upstream @ w0.T + b0, 0.0) @ w2.T + b2)[:, :, 0]
    return s.astype(np.float32, copy=False)
