"""The "dnn" re-ranker: free user vector + recent-history encoder, scored by MLP + dot product + bias."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.base import Reranker, register


@register("dnn")
class DNNReranker(Reranker):
    """User representation u = p_u + W h(history); score = MLP([u, q_i, u*q_i]) + <u, q_i> + b_i.

    h(history) is a recency-weighted mean of a separate history-item embedding table: one learned
    logit per position (most recent last), softmax over the non-padding positions. Keeping u
    additive in p_u makes du/dp_u the identity, which the online update relies on.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        dim: int = 64,
        history_len: int = 50,
        mlp_hidden: list[int] | tuple[int, ...] = (),
        dropout: float = 0.0,
        init_std: float = 0.05,
        **extra: Any,
    ) -> None:
        """Build the tables and the MLP.

        Args:
            n_users: Known users (table rows n_users + 1, row 0 = unknown user, kept at zero).
            n_items: Known items (table rows n_items + 1, row 0 = unknown item / history padding).
            dim: Embedding dimension D.
            history_len: H, the number of most recent items the history encoder looks at.
            mlp_hidden: Hidden layer widths of the scoring MLP (ReLU between layers).
            dropout: Dropout on the MLP hidden layers and on history embeddings while training.
            init_std: Standard deviation of the normal initialisation of embedding tables.
            **extra: Rejected; present only to give a clear error on a misspelled hyper-parameter.
        """
        if extra:
            raise TypeError(f"unknown dnn hyper-parameters: {sorted(extra)}")
        mlp_hidden = [int(h) for h in mlp_hidden]
        super().__init__(
            n_users,
            n_items,
            dim=int(dim),
            history_len=int(history_len),
            mlp_hidden=mlp_hidden,
            dropout=float(dropout),
            init_std=float(init_std),
        )
        d = int(dim)
        self._dim = d
        self.history_len = int(history_len)
        self.user_emb = nn.Embedding(n_users + 1, d, padding_idx=0)
        self.item_emb = nn.Embedding(n_items + 1, d)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.hist_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        # Zero logits = plain mean at start; training learns how much recency matters.
        self.pos_logits = nn.Parameter(torch.zeros(self.history_len))
        self.hist_proj = nn.Linear(d, d)
        widths = [3 * d, *mlp_hidden, 1]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.drop = nn.Dropout(float(dropout))
        with torch.no_grad():
            for table in (self.user_emb, self.item_emb, self.hist_emb):
                table.weight.normal_(0.0, init_std)
            self.user_emb.weight[0].zero_()
            self.hist_emb.weight[0].zero_()
            self.item_bias.weight.zero_()
            nn.init.eye_(self.hist_proj.weight)
            self.hist_proj.bias.zero_()
            # A small last layer lets the dot product dominate early and the MLP grow into its role.
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()

    @property
    def dim(self) -> int:
        """Dimension D of user vectors, item embeddings and user representations."""
        return self._dim

    def history_context(self, history: Tensor) -> Tensor:
        """Encode the recent-item history.

        Args:
            history: [B, H'] int64 item rows, 0 = padding, most recent last. H' > H keeps the last
                H; H' < H uses the position weights of the H' most recent slots.

        Returns:
            [B, D] float32 history context (zeros for an all-padding history).
        """
        h = history[:, -self.history_len :]
        mask = h > 0
        logits = self.pos_logits[self.history_len - h.shape[1] :]
        # Max-shifted exp with the mask applied after it gives zero weights (not NaN) on empty rows.
        w = torch.exp(logits - logits.max()).unsqueeze(0) * mask
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        emb = self.drop(self.hist_emb(h))
        ctx = torch.einsum("bh,bhd->bd", w, emb)
        return self.hist_proj(ctx) * mask.any(dim=1, keepdim=True)

    def user_repr(self, user_vec: Tensor, history: Tensor) -> Tensor:
        """u = user_vec + history_context(history): [B, D], [B, H] -> [B, D]."""
        return user_vec + self.history_context(history)

    def score(self, user_repr: Tensor, items: Tensor) -> Tensor:
        """Score items [B, N] for user representations [B, D]; returns [B, N] float32."""
        q = self.item_emb(items)
        u = user_repr.unsqueeze(1).expand_as(q)
        uq = u * q
        x = torch.cat([u, q, uq], dim=-1)
        for layer in self.mlp[:-1]:
            x = self.drop(torch.relu(layer(x)))
        x = self.mlp[-1](x).squeeze(-1)
        return x + uq.sum(-1) + self.item_bias(items).squeeze(-1)

    def embed_users(self, users: Tensor) -> Tensor:
        """[B] user rows -> [B, D] free user vectors (differentiable)."""
        return self.user_emb(users)

    def user_vectors(self) -> Tensor:
        """[n_users + 1, D] learned free user vectors, row 0 zeros."""
        return self.user_emb.weight.detach()

    @torch.no_grad()
    def fill_unknown_rows(self) -> None:
        """Item row 0 of the candidate tables becomes the mean of rows 1..n_items; user row 0 zero."""
        self.item_emb.weight[0] = self.item_emb.weight[1:].mean(dim=0)
        self.item_bias.weight[0] = self.item_bias.weight[1:].mean(dim=0)
        self.user_emb.weight[0].zero_()
        self.hist_emb.weight[0].zero_()


def numpy_params(model: DNNReranker) -> dict[str, Any]:
    """Copy the weights the online update needs into float32 numpy arrays (one copy per model).

    The first MLP layer is split by input block ([u, q, u*q]) so the per-step work is a few
    [N, D] x [D, h] products instead of building the concatenated input.

    Returns:
        Dict with "hist_emb" [I+1, D], "pos_w" [H] (exp of the max-shifted position logits),
        "proj_w" [D, D], "proj_b" [D], "item_emb" [I+1, D], "item_bias" [I+1], "w_u", "w_q",
        "w_m" [h1, D] and "b1" [h1] (the first MLP layer split by input block; h1 = 1 when the
        MLP has no hidden layer) and "hidden": list of (weight [out, in], bias [out]) for the
        later layers, the final one included.
    """
    f = lambda t: t.detach().cpu().numpy().astype(np.float32, copy=True)  # noqa: E731
    logits = f(model.pos_logits)
    d = model.dim
    w1, b1 = f(model.mlp[0].weight), f(model.mlp[0].bias)
    return {
        "hist_emb": f(model.hist_emb.weight),
        "pos_w": np.exp(logits - logits.max()),
        "proj_w": f(model.hist_proj.weight),
        "proj_b": f(model.hist_proj.bias),
        "item_emb": f(model.item_emb.weight),
        "item_bias": f(model.item_bias.weight)[:, 0].copy(),
        "w_u": np.ascontiguousarray(w1[:, :d]),
        "w_q": np.ascontiguousarray(w1[:, d : 2 * d]),
        "w_m": np.ascontiguousarray(w1[:, 2 * d :]),
        "b1": b1,
        "hidden": [(f(layer.weight), f(layer.bias)) for layer in model.mlp[1:]],
        "history_len": model.history_len,
        "dim": d,
    }


def history_context_np(p: dict[str, Any], history: np.ndarray) -> np.ndarray:
    """Numpy twin of `DNNReranker.history_context` for one user: history [H'] int64 -> [D] float32."""
    h = history[-p["history_len"] :]
    mask = h > 0
    if not mask.any():
        return np.zeros(p["dim"], dtype=np.float32)
    w = p["pos_w"][p["history_len"] - h.shape[0] :] * mask
    ctx = (w / w.sum()) @ p["hist_emb"][h]
    return (p["proj_w"] @ ctx + p["proj_b"]).astype(np.float32, copy=False)


def item_terms(p: dict[str, Any], items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of the score that do not depend on u, for reuse across gradient steps.

    Args:
        p: Output of `numpy_params`.
        items: [N] int64 item rows.

    Returns:
        (q [N, D] item embeddings, [N, h1] first-layer pre-activation from q plus its bias,
        [N] item biases).
    """
    q = p["item_emb"][items]
    return q, q @ p["w_q"].T + p["b1"], p["item_bias"][items]


def score_and_grad_np(
    p: dict[str, Any],
    u: np.ndarray,
    items: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray],
    dloss_dscore: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Numpy twin of `DNNReranker.score` for one user, with a hand-derived gradient w.r.t. u.

    Args:
        p: Output of `numpy_params`.
        u: [D] float32 user representation.
        items: [N] int64 item rows, or their precomputed `item_terms`.
        dloss_dscore: None to skip the backward pass, or a callable mapping scores [N] to
            dLoss/dscore [N].

    Returns:
        (scores [N], dLoss/du [D] or None).
    """
    q, pre_q, base = item_terms(p, items) if isinstance(items, np.ndarray) else items
    uq = q * u
    # First layer on [u, q, u*q] without materialising the concatenation.
    x = uq @ p["w_m"].T + pre_q + p["w_u"] @ u
    acts = []
    for w, b in p["hidden"]:
        x = np.maximum(x, 0.0)
        acts.append(x)
        x = x @ w.T + b
    s = x[:, 0] + uq.sum(axis=1) + base
    if dloss_dscore is None:
        return s, None
    g = dloss_dscore(s).astype(np.float32, copy=False)
    grad_u = g @ q
    gx = g[:, None]
    for (w, _), a in zip(reversed(p["hidden"]), reversed(acts)):
        gx = (gx @ w) * (a > 0)
    # gx is now dLoss/d(first-layer output), [N, h1].
    grad_u += gx.sum(axis=0) @ p["w_u"] + ((gx @ p["w_m"]) * q).sum(axis=0)
    return s, grad_u
