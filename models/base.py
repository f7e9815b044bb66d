"""Re-ranker interface shared by every model kind, and the kind registry.

A kind is declared once, by `register` on its `Reranker` subclass: its name, its default
hyper-parameters and, when it trains in more than one stage, the extra stage as a "module:function"
reference. The reference is resolved only when training asks for it, so this package never imports
the trainer (which imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn


def check_table_sizes(n_users: int, n_items: int) -> None:
    if n_users < 0 or n_items < 1:
        raise ValueError(f"need n_users >= 0 and n_items >= 1, got {n_users}, {n_items}")


class Reranker(nn.Module):
    """Scores candidate items for a user from a free user vector and a recent-item history.

    Row 0 of every user and item table means "unknown"; item row 0 is also the history padding.
    Subclasses implement `user_repr`, `score`, `embed_users`, `user_vectors`, `dim` and
    `fill_unknown_rows`.

    Attributes:
        name: Registry name of the kind, set by `register`.
        default_hparams: The kind's own training defaults, added to (and overriding) the trainer's
            `DEFAULT_HPARAMS`; set by `register`.
        training_stage: "module:function" of the stage run after the common training, or None;
            set by `register` (see `training_stage_of`).
        hparams: Constructor keyword arguments, JSON-serialisable, enough to rebuild the model.
    """

    name: ClassVar[str]
    default_hparams: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    training_stage: ClassVar[str | None] = None

    def __init__(self, n_users: int, n_items: int, **hparams: Any) -> None:
        """Store the table sizes and the constructor arguments.

        Args:
            n_users: Number of known users; user tables get n_users + 1 rows.
            n_items: Number of known items; item tables get n_items + 1 rows.
            **hparams: Model hyper-parameters, kept verbatim in `self.hparams`.
        """
        super().__init__()
        check_table_sizes(n_users, n_items)
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.hparams: dict[str, Any] = dict(hparams)

    @classmethod
    def state_shapes(cls, n_users: int, n_items: int, **hparams: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of each tensor in the state_dict of ``cls(n_users, n_items, **hparams)``,
        without allocating it: what an artifact's weights must hold, known before the model is built.

        This default builds the model on the meta device, which allocates nothing but, the first
        time in a process, imports torch's compiler stack (seconds, ~75 MB); a kind overrides it with
        the closed form.

        Raises:
            TypeError, ValueError: hyper-parameters the constructor refuses.
        """
        with torch.device("meta"):
            model = cls(n_users, n_items, **hparams)
        return {k: (tuple(t.shape), t.dtype) for k, t in model.state_dict().items()}

    @property
    def dim(self) -> int:
        """Dimension D of the free user vectors."""
        raise NotImplementedError

    def user_repr(self, user_vec: Tensor, history: Tensor) -> Tensor:
        """Combine the free user vector with the recent-item history.

        Args:
            user_vec: [B, D] float32 free user vectors (zeros for unknown users).
            history: [B, H] int64 item rows, 0 = padding, most recent last.

        Returns:
            [B, R] float32 user representations.
        """
        raise NotImplementedError

    def score(self, user_repr: Tensor, items: Tensor) -> Tensor:
        """Score candidate items.

        Args:
            user_repr: [B, R] output of `user_repr`.
            items: [B, N] int64 item rows (0 = unknown item).

        Returns:
            [B, N] float32 scores, higher is better.
        """
        raise NotImplementedError

    @property
    def n_upstream_features(self) -> int:
        """U, the number of upstream features (`models.upstream`) the model scores with; 0 = it
        ignores the upstream order, and callers need not compute them."""
        return 0

    def numpy_scores(
        self,
        user_vec: np.ndarray,
        history: np.ndarray,
        items: np.ndarray,
        upstream: np.ndarray | None,
        cache: dict[str, Any],
    ) -> np.ndarray | None:
        """`forward` without torch, for serving (same arguments as numpy arrays; ``cache`` as in
        `online_vectors`), or None for a kind without such a path: callers then use `forward`.
        A kind's version must agree with `forward` to float32 rounding."""
        return None

    def forward(
        self,
        user_vec: Tensor,
        history: Tensor,
        items: Tensor,
        upstream: Tensor | None = None,
        sequence: Tensor | None = None,
    ) -> Tensor:
        """Score `items` [B, N] for users given by `user_vec` [B, D] and `history` [B, H]; returns [B, N].

        `upstream` is [B, N, U] float32 per-request features of the upstream order
        (`models.upstream.upstream_batch`), or None; kinds without an upstream part ignore it.
        `sequence` is [B, N, S] transition features (`models.sequence`) a trainer gives in place of
        a kind's own table; kinds without one ignore it.
        """
        return self.score(self.user_repr(user_vec, history), items)

    def score_parts(
        self,
        user_vec: Tensor,
        history: Tensor,
        items: Tensor,
        upstream: Tensor | None = None,
        sequence: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The additive parts of `forward`'s scores, each [B, N]; they sum to its output."""
        return {"model": self.forward(user_vec, history, items, upstream, sequence)}

    def embed_users(self, users: Tensor) -> Tensor:
        """Differentiable lookup of free user vectors, for training: [B] int64 rows -> [B, D]."""
        raise NotImplementedError

    def user_vectors(self) -> Tensor:
        """The learned free user vectors, [n_users + 1, D] float32 with row 0 all zeros."""
        raise NotImplementedError

    def fill_unknown_rows(self) -> None:
        """Set item row 0 to the mean of the known items so unknown items score like an average one."""
        raise NotImplementedError

    def set_item_features(self, rows: Tensor, features: Tensor) -> None:
        """Overwrite the feature rows of existing items (kinds trained with a `feature_vocab`).

        Args:
            rows: [K] int64 item rows in 1..n_items.
            features: [K, V] float32 normalised multi-hot rows (see `models.features`).
        """
        raise NotImplementedError(f"model kind {self.name!r} takes no item features")

    def add_items(self, features: Tensor) -> None:
        """Append K items known only by their features: [K, V] float32 rows; n_items grows by K."""
        raise NotImplementedError(f"model kind {self.name!r} takes no item features")

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
        """`steps` SGD steps on B free user vectors, the model frozen (the online update).

        Each row minimises sum_n weights[b, n] * BCE(score(vecs[b] + ctx, items[b, n]), labels[b, n]).
        A row's result must not depend on the other rows, bit for bit. Entries with loss weight 0
        are padding and come after a row's real entries.

        This generic version takes autograd steps one row at a time, with the padding dropped, so a
        row is computed with the shapes it has alone. Kinds with a hand-derived gradient override it.

        Args:
            vecs: [B, D] float32 current free vectors; may be overwritten (the caller's copy).
            histories: [B, H] int64 item rows, 0-padded, most recent last.
            items: [B, N] int64 item rows in 1..n_items.
            labels: [B, N] float32 targets, 1 or 0.
            weights: [B, N] float32 loss weights >= 0.
            steps: Gradient steps.
            lr: Step size.
            cache: Scratch space that lives as long as the model's weights and item rows (e.g. for
                weight copies in another layout); the caller empties it when they change.

        Returns:
            [B, D] float32 new vectors.
        """
        out = np.array(vecs, dtype=np.float32, copy=True)
        for b in range(out.shape[0]):
            real = np.flatnonzero(weights[b])
            n = int(real[-1]) + 1 if real.size else 1
            out[b] = _autograd_steps(
                self, out[b].copy(), histories[b], items[b, :n], labels[b, :n], weights[b, :n], steps, lr
            )
        return out


def _autograd_steps(
    model: Reranker,
    vec: np.ndarray,
    history: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    w: np.ndarray,
    steps: int,
    lr: float,
) -> np.ndarray:
    """`Reranker.online_vectors` for one row: vec [D], history [H], items/labels/w [N] -> [D]."""
    v = torch.from_numpy(vec).unsqueeze(0)
    h = torch.from_numpy(np.asarray(history, dtype=np.int64)).unsqueeze(0)
    it = torch.from_numpy(np.ascontiguousarray(items)).unsqueeze(0)
    y, wt = torch.from_numpy(np.ascontiguousarray(labels)), torch.from_numpy(np.ascontiguousarray(w))
    for _ in range(steps):
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            s = model(v, h, it)[0]
            loss = (wt * torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="none")).sum()
            (g,) = torch.autograd.grad(loss, v)
        v = v.detach() - lr * g
    return v[0].numpy().astype(np.float32, copy=True)


MODEL_REGISTRY: dict[str, type[Reranker]] = {}

_R = TypeVar("_R", bound=type[Reranker])


def register(name: str, *, defaults: Mapping[str, Any] | None = None, stage: str | None = None) -> Callable[[_R], _R]:
    """Class decorator that registers a `Reranker` subclass under `name`: everything a kind declares.

    Args:
        name: Kind name written into artifacts' manifests.
        defaults: The kind's training defaults on top of the trainer's `DEFAULT_HPARAMS` (new keys,
            or other values for existing ones); not inherited from a registered parent class.
        stage: "module:function" run on the model the common training produced, for kinds trained
            in more than one stage; see `training_stage_of` for its signature. Not inherited.

    Returns:
        The decorator; it sets `cls.name`, `cls.default_hparams` and `cls.training_stage` and
        returns the class unchanged otherwise.
    """
    if stage is not None and (stage.count(":") != 1 or not all(stage.split(":"))):
        raise ValueError(f"stage of model kind {name!r} must be 'module:function', got {stage!r}")

    def deco(cls: _R) -> _R:
        known = MODEL_REGISTRY.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"model kind {name!r} is already registered to {known.__qualname__}")
        cls.name = name
        cls.default_hparams = MappingProxyType(dict(defaults or {}))
        cls.training_stage = stage
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


def get_model_class(name: str) -> type[Reranker]:
    """Look up a registered model kind.

    Raises:
        KeyError: `name` is not registered; the message lists the known kinds.
    """
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_REGISTRY)) or "none"
        raise KeyError(f"unknown model kind {name!r}; known kinds: {known}") from None


def training_stage_of(cls: type[Reranker]) -> Callable[..., Any] | None:
    """Import and return the extra training stage of a kind, or None when it has none.

    The stage is called as stage(model, examples, validation_split, hparams, rng, log) and returns
    (served model, metrics, info); see `trainer.gan.fit_gan`.

    Raises:
        TypeError: The registered reference does not name a function.
    """
    if cls.training_stage is None:
        return None
    module, _, attr = cls.training_stage.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise TypeError(f"training stage {cls.training_stage!r} of model kind {cls.name!r} is not a function")
    return fn
