"""The "dnn" re-ranker: free user vector + recent-history encoder, scored by MLP + dot product + bias.

Optional item features (a normalised multi-hot over a vocabulary such as genres or tags) add a
learned embedding to each item's candidate vector, bias and history embedding, so an item the
model never saw in training can still be scored from its metadata (see `add_items`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from models.base import Reranker, check_table_sizes, register
from models.dnn_numpy import (
    history_context_batch_np,
    item_terms_batch,
    numpy_params,
    score_and_grad_batch_np,
    scores_np,
)
from models.sequence import N_SEQUENCE_FEATURES, table_features


def _model_hparams(
    dim: int,
    history_len: int,
    mlp_hidden: Iterable[int],
    dropout: float,
    init_std: float,
    feature_vocab: Iterable[str],
    upstream_inputs: int,
    upstream_hidden: int,
    sequence_top: int,
    sequence_window: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The hyper-parameters of a dnn model as it stores them (`DNNReranker.__init__` documents
    them and holds their defaults).

    Raises:
        TypeError: an unknown hyper-parameter.
        ValueError: a value of the wrong kind, or duplicate feature names.
    """
    if extra:
        raise TypeError(f"unknown dnn hyper-parameters: {sorted(extra)}")
    vocab = [str(f) for f in feature_vocab]
    if len(set(vocab)) != len(vocab):
        raise ValueError("feature_vocab has duplicate names")
    model_hparams: dict[str, Any] = {
        "dim": int(dim),
        "history_len": int(history_len),
        "mlp_hidden": [int(h) for h in mlp_hidden],
        "dropout": float(dropout),
        "init_std": float(init_std),
    }
    if vocab:
        # Only present when used, so feature-less manifests stay as they were.
        model_hparams["feature_vocab"] = vocab
    if int(upstream_inputs) < 0 or int(upstream_hidden) < 1:
        raise ValueError("upstream_inputs must be >= 0 and upstream_hidden >= 1")
    if int(upstream_inputs):
        # Likewise: a model without an upstream part keeps the manifest of older versions.
        model_hparams["upstream_inputs"] = int(upstream_inputs)
        model_hparams["upstream_hidden"] = int(upstream_hidden)
    if int(sequence_top) < 0 or int(sequence_window) < 1:
        raise ValueError("sequence_top must be >= 0 and sequence_window >= 1")
    if int(sequence_top):
        model_hparams["sequence_top"] = int(sequence_top)
        model_hparams["sequence_window"] = int(sequence_window)
    return model_hparams


_HPARAM_ARGS = (
    "dim",
    "history_len",
    "mlp_hidden",
    "dropout",
    "init_std",
    "feature_vocab",
    "upstream_inputs",
    "upstream_hidden",
    "sequence_top",
    "sequence_window",
    "extra",
)


@register("dnn")
class DNNReranker(Reranker):
    """User representation u = p_u + W h(history); score = MLP([u, q_i, u*q_i]) + <u, q_i> + b_i.

    h(history) is a recency-weighted mean of a separate history-item embedding table: one learned
    logit per position (most recent last), softmax over the non-padding positions. Keeping u
    additive in p_u makes du/dp_u the identity, which the online update relies on.

    With a non-empty `feature_vocab` (V features), every item row i has a feature row f_i
    (buffer `item_features` [n_items+1, V], each row a multi-hot divided by its number of ones)
    and q_i, b_i and the history embedding each get f_i @ (a learned [V, D] or [V] table) added.

    With `upstream_inputs` U > 0, the score of a candidate is a * s_i + g(x_i): the user-item
    score s_i above scaled by a learned a, plus a learned term of its upstream features x_i
    (`models.upstream`: position and score normalised within the request), g a one-hidden-layer
    MLP. `score_parts` splits it into {"model": a * s_i, "upstream": g(x_i)}; without upstream
    features the score is a * s_i.

    With `sequence_top` M > 0, the model also holds an item transition table (`models.sequence`:
    per item its M most frequent successors, set with `set_transitions`) and adds c . f_i to the
    user-item score, f_i the candidate's `SEQUENCE_FEATURES` (how often it followed the user's
    last items in other users' sequences), c learned with the rest; a scales it too, and
    `score_parts` names it "sequence".
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
        feature_vocab: list[str] | tuple[str, ...] = (),
        upstream_inputs: int = 0,
        upstream_hidden: int = 16,
        sequence_top: int = 0,
        sequence_window: int = 3,
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
            feature_vocab: Names of the item features (e.g. "genre:comedy"); empty = no features.
                The per-item rows start at zero; set them with `set_item_features`.
            upstream_inputs: U, the number of upstream features scored (0 = no upstream part;
                `models.upstream.N_UPSTREAM_FEATURES` when trained on served lists).
            upstream_hidden: Hidden width of the upstream MLP.
            sequence_top: M, successors kept per item in the transition table (0 = no table).
            sequence_window: How many steps later a successor still counts (`models.sequence`).
            **extra: Rejected; present only to give a clear error on a misspelled hyper-parameter.
        """
        model_hparams = _model_hparams(
            dim,
            history_len,
            mlp_hidden,
            dropout,
            init_std,
            feature_vocab,
            upstream_inputs,
            upstream_hidden,
            sequence_top,
            sequence_window,
            extra,
        )
        mlp_hidden = model_hparams["mlp_hidden"]
        vocab = model_hparams.get("feature_vocab", [])
        super().__init__(n_users, n_items, **model_hparams)
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
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.drop = nn.Dropout(float(dropout))
        self.n_features = len(vocab)
        self.item_features: Tensor  # a buffer, registered only for a model with item features
        if self.n_features:
            self.register_buffer("item_features", torch.zeros(n_items + 1, self.n_features))
            self.feat_emb = nn.Parameter(torch.randn(self.n_features, d) * float(init_std))
            self.feat_bias = nn.Parameter(torch.zeros(self.n_features))
            self.feat_hist = nn.Parameter(torch.randn(self.n_features, d) * float(init_std))
        self._n_upstream = int(model_hparams.get("upstream_inputs", 0))
        if self._n_upstream:
            hidden = int(model_hparams["upstream_hidden"])
            self.upstream_net = nn.Sequential(nn.Linear(self._n_upstream, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            # How much the user-item part counts next to the upstream term, learned with it.
            self.model_scale = nn.Parameter(torch.ones(()))
        self.sequence_top = int(model_hparams.get("sequence_top", 0))
        # Buffers, registered only for a model with a transition table (`set_transitions`).
        self.seq_successors: Tensor
        self.seq_counts: Tensor
        self.seq_totals: Tensor
        if self.sequence_top:
            self.register_buffer("seq_successors", torch.zeros(n_items + 1, self.sequence_top, dtype=torch.int64))
            self.register_buffer("seq_counts", torch.zeros(n_items + 1, self.sequence_top))
            self.register_buffer("seq_totals", torch.zeros(n_items + 1))
            # Zero: the table counts for nothing until training finds it useful.
            self.seq_weight = nn.Parameter(torch.zeros(N_SEQUENCE_FEATURES))
        with torch.no_grad():
            for table in (self.user_emb, self.item_emb, self.hist_emb):
                table.weight.normal_(0.0, init_std)
            self.user_emb.weight[0].zero_()
            self.hist_emb.weight[0].zero_()
            self.item_bias.weight.zero_()
            nn.init.eye_(self.hist_proj.weight)
            self.hist_proj.bias.zero_()
            # A small last layer lets the dot product dominate early and the MLP grow into its role.
            last = cast(nn.Linear, self.mlp[-1])
            last.weight.mul_(0.1)
            last.bias.zero_()

    @classmethod
    def state_shapes(cls, n_users: int, n_items: int, **hparams: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The closed form of `Reranker.state_shapes` for the tables and layers built above
        (tests/unit/models/test_artifact_limits.py checks it against built models)."""
        check_table_sizes(n_users, n_items)
        # The constructor's own defaults apply, as when it builds the model.
        args = inspect.signature(cls.__init__).bind(None, n_users, n_items, **hparams)
        args.apply_defaults()
        hp = _model_hparams(*(args.arguments[name] for name in _HPARAM_ARGS))
        d, features = hp["dim"], len(hp.get("feature_vocab", []))
        users, items = n_users + 1, n_items + 1
        shapes: dict[str, tuple[int, ...]] = {
            "pos_logits": (hp["history_len"],),
            "user_emb.weight": (users, d),
            "item_emb.weight": (items, d),
            "item_bias.weight": (items, 1),
            "hist_emb.weight": (items, d),
            "hist_proj.weight": (d, d),
            "hist_proj.bias": (d,),
        }
        for n, (a, b) in enumerate(itertools.pairwise([3 * d, *hp["mlp_hidden"], 1])):
            shapes[f"mlp.{n}.weight"], shapes[f"mlp.{n}.bias"] = (b, a), (b,)
        if features:
            shapes |= {
                "item_features": (items, features),
                "feat_emb": (features, d),
                "feat_bias": (features,),
                "feat_hist": (features, d),
            }
        if hp.get("upstream_inputs"):
            u, hidden = hp["upstream_inputs"], hp["upstream_hidden"]
            shapes |= {
                "upstream_net.0.weight": (hidden, u),
                "upstream_net.0.bias": (hidden,),
                "upstream_net.2.weight": (1, hidden),
                "upstream_net.2.bias": (1,),
                "model_scale": (),
            }
        if hp.get("sequence_top"):
            top = hp["sequence_top"]
            shapes |= {
                "seq_successors": (items, top),
                "seq_counts": (items, top),
                "seq_totals": (items,),
                "seq_weight": (N_SEQUENCE_FEATURES,),
            }
        dtype = torch.get_default_dtype()
        return {k: (shape, torch.int64 if k == "seq_successors" else dtype) for k, shape in shapes.items()}

    @property
    def dim(self) -> int:
        """Dimension D of user vectors, item embeddings and user representations."""
        return self._dim

    @property
    def n_upstream_features(self) -> int:
        """U of the upstream part (0 without one)."""
        return self._n_upstream

    @torch.no_grad()
    def set_transitions(self, successors: np.ndarray, counts: np.ndarray, totals: np.ndarray) -> None:
        """Set the transition table (`models.sequence.transition_table` over this model's item rows).

        Args:
            successors: [n_items + 1, M] int64. counts: [n_items + 1, M] float32. totals: [n_items + 1].
        """
        if not self.sequence_top:
            raise ValueError("this model has no transition table (sequence_top 0)")
        shape = (self.n_items + 1, self.sequence_top)
        if successors.shape != shape or counts.shape != shape or totals.shape != shape[:1]:
            raise ValueError(f"a transition table of {shape} rows and columns expected")
        self.seq_successors.copy_(torch.from_numpy(np.asarray(successors, dtype=np.int64)))
        self.seq_counts.copy_(torch.from_numpy(np.asarray(counts, dtype=np.float32)))
        self.seq_totals.copy_(torch.from_numpy(np.asarray(totals, dtype=np.float32)))

    def sequence_features(self, history: Tensor, items: Tensor) -> Tensor:
        """f [B, N, N_SEQUENCE_FEATURES] of candidates [B, N] after histories [B, H], from the table."""
        return table_features((self.seq_successors, self.seq_counts, self.seq_totals), history, items)

    def sequence_term(self, features: Tensor) -> Tensor:
        """c . f: [B, N, N_SEQUENCE_FEATURES] -> [B, N] (before the scale a)."""
        return features @ self.seq_weight

    def upstream_part(self, upstream: Tensor | None, like: Tensor) -> Tensor | None:
        """g(x) [B, N] of upstream features [B, N, U]; None without an upstream part or features."""
        if not self._n_upstream or upstream is None:
            return None
        if upstream.shape[-1] != self._n_upstream or upstream.shape[:2] != like.shape:
            raise ValueError(
                f"upstream features {tuple(upstream.shape)} do not fit scores {tuple(like.shape)} "
                f"with U = {self._n_upstream}"
            )
        return self.upstream_net(upstream).squeeze(-1)

    def forward(
        self,
        user_vec: Tensor,
        history: Tensor,
        items: Tensor,
        upstream: Tensor | None = None,
        sequence: Tensor | None = None,
    ) -> Tensor:
        """The sum of `score_parts`: [B, N]."""
        parts = self.score_parts(user_vec, history, items, upstream, sequence)
        return cast(Tensor, sum(parts.values()))

    def score_parts(
        self,
        user_vec: Tensor,
        history: Tensor,
        items: Tensor,
        upstream: Tensor | None = None,
        sequence: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """{"model": (scaled) user-item score, "sequence": (scaled) transition term (with a table),
        "upstream": upstream term (with an upstream part and features)}, each [B, N].

        Args:
            sequence: [B, N, N_SEQUENCE_FEATURES] features to use instead of the table's (a
                trainer's, with the user's own transitions taken out).
        """
        s = self.score(self.user_repr(user_vec, history), items)
        parts = {"model": s}
        if self.sequence_top:
            f = self.sequence_features(history, items) if sequence is None else sequence
            parts["sequence"] = self.sequence_term(f)
        if self._n_upstream:
            parts = {name: self.model_scale * part for name, part in parts.items()}
        g = self.upstream_part(upstream, s)
        if g is not None:
            parts["upstream"] = g
        return parts

    @property
    def feature_vocab(self) -> list[str]:
        """Item feature names, one per column of `item_features`; empty without features."""
        return list(self.hparams.get("feature_vocab", []))

    def item_vectors(self, items: Tensor) -> Tensor:
        """Candidate-side item vectors q: [...] int64 item rows -> [..., D]."""
        q = self.item_emb(items)
        if self.n_features:
            q = q + self.item_features[items] @ self.feat_emb
        return q

    def item_biases(self, items: Tensor) -> Tensor:
        """Item biases b: [...] int64 item rows -> [...]."""
        b = self.item_bias(items).squeeze(-1)
        if self.n_features:
            b = b + self.item_features[items] @ self.feat_bias
        return b

    def history_vectors(self, items: Tensor) -> Tensor:
        """History-side item embeddings: [...] int64 item rows -> [..., D] (padding rows are masked
        out by `history_context`, so their value does not matter)."""
        e = self.hist_emb(items)
        if self.n_features:
            e = e + self.item_features[items] @ self.feat_hist
        return e

    @torch.no_grad()
    def set_item_features(self, rows: Tensor, features: Tensor) -> None:
        """Overwrite the feature rows of existing items.

        Args:
            rows: [K] int64 item rows in 1..n_items.
            features: [K, V] float32 normalised multi-hot rows (see `models.features`).
        """
        if not self.n_features:
            raise ValueError("this model has no item features")
        rows = torch.as_tensor(rows, dtype=torch.int64)
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.shape != (rows.numel(), self.n_features):
            raise ValueError(f"features shape {tuple(features.shape)} != {(rows.numel(), self.n_features)}")
        if rows.numel() and (int(rows.min()) < 1 or int(rows.max()) > self.n_items):
            raise ValueError(f"item rows must lie in 1..{self.n_items}")
        self.item_features[rows] = features

    @torch.no_grad()
    def add_items(self, features: Tensor) -> None:
        """Append K new item rows, scored from their features alone.

        A new row's id-specific parts are those of an average known item (the mean of rows
        1..n_items; `fill_unknown_rows` keeps candidate row 0 at that mean), so two new items
        differ only through their features. New rows never receive gradient: call on a trained,
        frozen model. `n_items` grows by K.

        Args:
            features: [K, V] float32 normalised multi-hot rows.
        """
        if not self.n_features:
            raise ValueError("this model has no item features; new items score as row 0")
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"features must be [K, {self.n_features}], got {tuple(features.shape)}")
        k = features.shape[0]
        if k == 0:
            return
        known = slice(1, self.n_items + 1)
        for table in (self.item_emb, self.item_bias, self.hist_emb):
            w = table.weight
            mean = w[known].mean(dim=0, keepdim=True).expand(k, -1)
            table.weight = nn.Parameter(torch.cat([w, mean]), requires_grad=w.requires_grad)
            table.num_embeddings = table.weight.shape[0]
        self.item_features = torch.cat([self.item_features, features])
        if self.sequence_top:
            # New items have no recorded successors, and nothing recorded leads to them.
            self.seq_successors = torch.cat([self.seq_successors, self.seq_successors.new_zeros(k, self.sequence_top)])
            self.seq_counts = torch.cat([self.seq_counts, self.seq_counts.new_zeros(k, self.sequence_top)])
            self.seq_totals = torch.cat([self.seq_totals, self.seq_totals.new_zeros(k)])
        self.n_items += k

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
        emb = self.drop(self.history_vectors(h))
        ctx = torch.einsum("bh,bhd->bd", w, emb)
        return self.hist_proj(ctx) * mask.any(dim=1, keepdim=True)

    def user_repr(self, user_vec: Tensor, history: Tensor) -> Tensor:
        """u = user_vec + history_context(history): [B, D], [B, H] -> [B, D]."""
        return user_vec + self.history_context(history)

    def score(self, user_repr: Tensor, items: Tensor) -> Tensor:
        """Score items [B, N] for user representations [B, D]; returns [B, N] float32."""
        q = self.item_vectors(items)
        u = user_repr.unsqueeze(1).expand_as(q)
        uq = u * q
        x = torch.cat([u, q, uq], dim=-1)
        for layer in self.mlp[:-1]:
            x = self.drop(torch.relu(layer(x)))
        x = self.mlp[-1](x).squeeze(-1)
        return x + uq.sum(-1) + self.item_biases(items)

    def score_all(self, user_repr: Tensor, chunk: int = 64) -> Tensor:
        """Score every item row for each user, row 0 included.

        Without hidden MLP layers the score is bilinear in (u, q), so this is one [B, D] x [D, I+1]
        product; otherwise users are scored `chunk` at a time through `score`.

        Args:
            user_repr: [B, D] output of `user_repr`.
            chunk: Users per `score` call on the general path.

        Returns:
            [B, n_items + 1] float32 scores, equal to `score` on every row.
        """
        rows = torch.arange(self.n_items + 1, device=user_repr.device)
        if len(self.mlp) == 1:
            # s = w_u.u + w_q.q + sum_d u_d q_d (1 + w_m,d) + b0 + b_i
            d = self.dim
            first = cast(nn.Linear, self.mlp[0])
            w = first.weight[0]
            q = self.item_vectors(rows)
            item_part = q @ w[d : 2 * d] + self.item_biases(rows) + first.bias[0]
            return (user_repr * (1.0 + w[2 * d :])) @ q.T + (user_repr @ w[:d]).unsqueeze(1) + item_part
        out = []
        for a in range(0, user_repr.shape[0], chunk):
            u = user_repr[a : a + chunk]
            out.append(self.score(u, rows.unsqueeze(0).expand(u.shape[0], -1)))
        return torch.cat(out)

    def embed_users(self, users: Tensor) -> Tensor:
        """[B] user rows -> [B, D] free user vectors (differentiable)."""
        return self.user_emb(users)

    def user_vectors(self) -> Tensor:
        """[n_users + 1, D] learned free user vectors, row 0 zeros."""
        return self.user_emb.weight.detach()

    @torch.no_grad()
    def fill_unknown_rows(self) -> None:
        """Item row 0 of the candidate tables (and of the feature rows) becomes the mean of rows
        1..n_items, so an unknown item scores as the average item; user row 0 zero."""
        self.item_emb.weight[0] = self.item_emb.weight[1:].mean(dim=0)
        self.item_bias.weight[0] = self.item_bias.weight[1:].mean(dim=0)
        if self.n_features:
            self.item_features[0] = self.item_features[1:].mean(dim=0)
        self.user_emb.weight[0].zero_()
        self.hist_emb.weight[0].zero_()

    def _numpy_params(self, cache: dict[str, Any]) -> dict[str, Any]:
        """`numpy_params` of this model, kept in ``cache``."""
        p = cache.get("dnn_numpy_params")
        if p is None:
            p = cache["dnn_numpy_params"] = numpy_params(self)
        return p

    def numpy_scores(
        self,
        user_vec: np.ndarray,
        history: np.ndarray,
        items: np.ndarray,
        upstream: np.ndarray | None,
        cache: dict[str, Any],
    ) -> np.ndarray | None:
        """`forward` in numpy (`models.dnn_numpy.scores_np`), for serving; the eval-mode forward
        (no dropout)."""
        return scores_np(self._numpy_params(cache), user_vec, history, items, upstream)

    def online_vectors(
        self,
        vecs: np.ndarray,
        histories: np.ndarray,
        items: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray,
        *,
        steps: int,
        lr: float,
        cache: dict[str, Any],
    ) -> np.ndarray:
        """`Reranker.online_vectors` vectorised over the rows, in float32, with the numpy twins of
        `models.dnn_numpy` (which keep every row batch-invariant); a numpy copy of the weights is
        kept in `cache`.

        Args:
            vecs: [B, D] float32 current free vectors; updated in place and returned.
            histories: [B, H] int64 item rows, 0-padded, most recent last.
            items: [B, N] int64 item rows in 1..n_items.
            labels: [B, N] float32 targets.
            weights: [B, N] float32 loss weights (0 on padding).
            steps: Gradient steps.
            lr: Step size.
            cache: Scratch space the caller empties when weights or item rows change.

        Returns:
            [B, D] float32 new vectors (`vecs` itself).
        """
        p = self._numpy_params(cache)
        # u = vec + ctx with ctx fixed, so dLoss/dvec = dLoss/du.
        ctx = history_context_batch_np(p, histories)

        def dloss(s: np.ndarray) -> np.ndarray:
            # tanh form of the sigmoid: no overflow warning for large |s|
            return weights * (0.5 + 0.5 * np.tanh(0.5 * s) - labels)

        terms = item_terms_batch(p, items)
        for _ in range(steps):
            _, g = score_and_grad_batch_np(p, vecs + ctx, terms, dloss)
            if g is None:  # only without dloss; kept for the type checker
                raise RuntimeError("the backward pass gave no gradient")
            vecs -= lr * g
        return vecs
