"""Train a re-ranker from wire-format events and publish it as an artifact."""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from models.artifact import ModelBundle, save_artifact
from models.base import Reranker, get_model_class, training_stage_of
from models.features import build_vocab, feature_rows
from models.sequence import fold_features, fold_tables, transition_table
from models.upstream import N_UPSTREAM_FEATURES
from streams.settings import DEFAULT_EVENT_WEIGHTS, Settings
from trainer.data import (
    EventColumns,
    TrainingExamples,
    ValidationSplit,
    build_interactions,
    last_positive_history,
    split_validation,
    to_columns,
    training_examples,
)
from trainer.served import (
    LoggedRequest,
    ServedLists,
    drop_pairs,
    evaluate_lists,
    label_requests,
    list_loss,
    served_lists,
    split_newest,
    with_sequence_features,
)
from trainer.validation import evaluate_split

# Chosen on the internal validation split (NDCG@10 of each user's last training interaction
# against 99 unseen items) of the ML-100K leave-one-out training events; single-seed noise is
# about +-0.01. With one hidden layer of 64: history_len 1 / 10 / 50 / 100 -> 0.440 / 0.475 /
# 0.482 / 0.472, "bce" 0.456 vs "softmax" 0.482, 4 negatives 0.467. mlp_hidden [] beat [64]
# (0.497 vs 0.478, 3 seeds each). With []: 8 / 16 / 32 negatives 0.492 / 0.497 / 0.500
# (2 seeds; 32 trains 1.5x slower), dim 32 0.497, a light attention over the history (query
# from the most recent item) 0.490 (2 seeds). Dropout 0.2, L2, lr 1e-3, and refitting on all
# events for the best epoch count (checked on a nested split) did not help.
# Keys the model constructor takes go to it; the rest drive training.
DEFAULT_HPARAMS: dict[str, Any] = {
    # model
    "dim": 64,
    "history_len": 50,
    "mlp_hidden": [],  # [] = one linear layer on [u, q, u*q]
    "dropout": 0.0,
    "init_std": 0.05,
    # optimisation
    "loss": "softmax",  # "softmax" (sampled softmax over 1 + n_negatives) or "bce"
    "n_negatives": 16,
    "lr": 3e-3,
    "batch_size": 512,
    "min_steps_per_epoch": 20,
    "max_epochs": 30,
    "patience": 3,
    # What is validated and kept is an exponential average of the weights over the optimiser's
    # steps (`average_weights`), this decay at most; 0 = the weights as the last step left them.
    # ML-100K retrieved split, seeds 0-4 (HR@10 / NDCG@10, means): 0 0.168 / 0.094, 0.999 0.172 /
    # 0.097 (seed spread of HR@10 0.161-0.175 -> 0.164-0.175); the same steps, so no extra time.
    "weight_average": 0.999,
    # validation carve-out
    "val_min_positives": 3,
    "val_negatives": 99,
    # Users carved out at most (0 = all eligible): each costs an evaluation row every epoch, and
    # 10,000 already measure NDCG@10 to about +-0.005.
    "val_max_users": 10_000,
    # 0 = automatic: 1 below 20k examples, else min(4, cpu count)
    "num_threads": 0,
    # item metadata (used only when train_model gets `items` and the model kind supports it)
    "item_features": True,
    "feature_min_count": 2,
    "max_features": 5000,
    # served lists (used only when train_model gets logged requests that events label)
    "served_lists": True,  # False: ignore them
    "served_weight": 0.0,  # > 0: the list-wise loss also trains the user-item part, this much
    # Per next-item example, this many extra negatives drawn from its user's served lists'
    # shown-but-not-chosen candidates (hard negatives); 0 = sampled negatives only. On the
    # ML-100K retrieved split (3 seeds each, NDCG@10 / HR@10): 0 0.079 / 0.147, 4 0.081, 16 0.083,
    # 64 0.087 / 0.157, 128 0.085 (one seed). Without served lists it does nothing.
    "served_negatives": 64,
    "upstream_hidden": 16,
    # Transition table (`models.sequence`, kinds that take one): successors kept per item, 0 =
    # none; a successor up to this many steps later counts.
    "sequence_top": 100,
    "sequence_window": 3,
    "sequence_lr": 3e-2,
    # Examples learn the weights from tables of the users outside their fold (`fold_tables`).
    "sequence_folds": 5,
    # Newest share of the labelled lists held out to stop the list-wise fit early.
    "served_val_share": 0.1,
    "served_lr": 1e-2,
    "served_epochs": 40,
    "served_patience": 5,
    "served_batch_size": 256,
}


def _known_hparams(cls: type[Reranker]) -> set[str]:
    """Names of the hyper-parameters a kind takes: the trainer's and the kind's own."""
    return set(DEFAULT_HPARAMS) | set(cls.default_hparams)


def check_model_hparams(model_hparams: Mapping[str, Mapping[str, Any]]) -> None:
    """Check per-kind hyper-parameter overrides (the settings' `model_hparams` tables).

    Raises:
        ValueError: A table names an unregistered kind or a hyper-parameter its kind does not take.
    """
    for kind, table in model_hparams.items():
        try:
            cls = get_model_class(kind)
        except KeyError as e:
            raise ValueError(f"model_hparams: {e.args[0]}") from None
        unknown = set(table) - _known_hparams(cls)
        if unknown:
            raise ValueError(
                f"model_hparams.{kind}: unknown hyper-parameters {sorted(unknown)}; "
                f"known: {sorted(_known_hparams(cls))}"
            )


def _auto_threads(n_examples: int) -> int:
    """One thread for small data, where batches are tiny and thread hand-offs cost more than they
    save (and oversubscribed cores make them far worse); up to 4 for real data sets."""
    return 1 if n_examples < 20_000 else max(1, min(4, os.cpu_count() or 1))


def _model_kwargs(cls: type[Reranker], hp: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `hp` the model constructor takes as keyword arguments."""
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {k: v for k, v in hp.items() if k in names}


def _batch_loss(
    model: Reranker,
    users: torch.Tensor,
    hist: torch.Tensor,
    items: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    negs: torch.Tensor,
    hp: Mapping[str, Any],
    sequence: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted loss of one batch.

    Args:
        users: [B] user rows; hist: [B, H] history rows; items: [B] event items;
        labels: [B] 1 positive / 0 explicit negative; weights: [B] |event weight|;
        negs: [B, K] sampled negative item rows.
        sequence: [B, 1 + K, S] transition features of the event item and the negatives, for a
            model with a transition table.

    Returns:
        Scalar loss: positives against their sampled negatives, explicit negatives pushed down
        on their own (their sampled negatives carry no contrast).
    """
    u = model.user_repr(model.embed_users(users), hist)
    cand = torch.cat([items.unsqueeze(1), negs], dim=1)
    s = model.score(u, cand)
    if sequence is not None:
        s = s + cast(Any, model).sequence_term(sequence)
    if hp["loss"] == "softmax":
        pos_loss = torch.logsumexp(s, dim=1) - s[:, 0]
    elif hp["loss"] == "bce":
        pos_loss = F.softplus(-s[:, 0]) + F.softplus(s[:, 1:]).mean(dim=1)
    else:
        raise ValueError(f"unknown loss {hp['loss']!r}; use 'softmax' or 'bce'")
    neg_loss = F.softplus(s[:, 0])
    per_row = torch.where(labels > 0, pos_loss, neg_loss)
    return (weights * per_row).sum() / weights.sum()


@dataclass
class HardNegativePools:
    """Per user row, the shown-but-not-chosen candidates of its served lists (hard negatives),
    as slices of one flat array: user u's are ``items[offsets[u] : offsets[u] + counts[u]]``."""

    offsets: np.ndarray
    counts: np.ndarray
    items: np.ndarray


def hard_negative_pools(served: ServedLists) -> HardNegativePools:
    """The `HardNegativePools` of labelled lists. Only candidates that count as shown and not
    chosen qualify: valid (not padding, not taken later by the user), label 0, a known item."""
    r, c = np.nonzero(served.valid & (served.labels == 0) & (served.items > 0))
    users, items = served.users[r], served.items[r, c]
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users[order], minlength=int(served.users.max(initial=0)) + 1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return HardNegativePools(offsets, counts, items[order].astype(np.int64))


def draw_hard_negatives(
    pools: HardNegativePools, users: np.ndarray, m: int, rng: np.random.Generator, n_items: int
) -> np.ndarray:
    """[B, m] item rows: for each user row, m draws (with replacement) from its pool; a user
    without one (or unknown to the pools) gets uniform draws from 1..n_items instead."""
    known = users < pools.counts.size
    u = np.where(known, users, 0)
    counts = np.where(known, pools.counts[u], 0)
    pick = pools.offsets[u][:, None] + (rng.random((users.size, m)) * np.maximum(counts, 1)[:, None]).astype(np.int64)
    flat = pools.items if pools.items.size else np.zeros(1, dtype=np.int64)
    hard = flat[np.minimum(pick, flat.size - 1)]
    return np.where(counts[:, None] > 0, hard, rng.integers(1, n_items + 1, size=(users.size, m)))


def average_weights(averaged: Sequence[torch.Tensor], params: Sequence[torch.Tensor], step: int, decay: float) -> None:
    """Move ``averaged`` towards ``params`` after the optimiser's ``step``-th step (1-based).

    An exponential average with decay min(``decay``, (1 + step) / (10 + step)): the ramp of
    TensorFlow's ExponentialMovingAverage with ``num_updates``, so that the first steps are not
    held near the initial weights; over a few hundred steps it averages roughly the most recent
    tenth of them. Averaging the end of training smooths out where a seed's last steps left the
    weights (averaging the scores of several seeds' averaged models added little on top, measured).
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for a, p in zip(averaged, params, strict=True):
            a.mul_(d).add_(p.detach(), alpha=1 - d)


def _swap(params: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> None:
    """Exchange the values of ``params`` and ``other`` in place (the optimiser keeps its tensors)."""
    with torch.no_grad():
        for p, o in zip(params, other, strict=True):
            held = p.detach().clone()
            p.copy_(o)
            o.copy_(held)


def _fit(
    model: Reranker,
    ex: TrainingExamples,
    val: ValidationSplit,
    hp: Mapping[str, Any],
    rng: np.random.Generator,
    log: Callable[[str], None],
    epochs: int,
    served: ServedLists | None = None,
    train_seqs: Sequence[Sequence[tuple[int, float]]] = (),
) -> tuple[int, dict[str, float], int]:
    """Train `model` in place for up to `epochs` epochs.

    A model with a transition table learns its weights here, each example's features from a
    table of ``train_seqs`` (the sequences the examples come from) without its own user's.

    With `served` lists and ``served_weight`` > 0, each step also takes a share of the lists (all
    of them once per epoch) and adds ``served_weight`` x their list-wise loss, the free user
    vectors left out of it: the user-item part learns to order hard candidates too.

    With a non-empty `val`, stops once validation NDCG@10 has not improved for `patience` epochs
    and leaves the best epoch's weights in the model; with an empty one, trains all epochs. With
    ``weight_average`` > 0 the weights validated and kept are the running average of
    `average_weights` (the steps themselves go on from the unaveraged ones).

    Returns:
        (best epoch, or the last without validation; its validation metrics; epochs run).
    """
    n = len(ex)
    n_items = model.n_items
    bs = max(1, min(int(hp["batch_size"]), math.ceil(n / max(1, int(hp["min_steps_per_epoch"])))))
    K = int(hp["n_negatives"])
    users_t = torch.from_numpy(ex.users)
    items_t = torch.from_numpy(ex.items)
    labels_t = torch.from_numpy(ex.labels)
    weights_t = torch.from_numpy(ex.weights)
    # int32 on the host; each batch is widened on its own, not the whole [E, H] matrix at once.
    hist_t = torch.from_numpy(ex.history)
    # The transition weights are two numbers that start at zero: at the embeddings' step size
    # they would still be growing when the embeddings stop improving.
    seq_params = [p for name, p in model.named_parameters() if name == "seq_weight"]
    rest = [p for name, p in model.named_parameters() if name != "seq_weight"]
    groups: list[dict[str, Any]] = [{"params": rest}, {"params": seq_params, "lr": float(hp["sequence_lr"])}]
    opt = torch.optim.Adam(groups, lr=float(hp["lr"]))
    served_weight = float(hp["served_weight"]) if served is not None else 0.0
    n_lists = len(served) if served is not None and served_weight > 0 else 0
    list_bs = math.ceil(n_lists / max(1, math.ceil(n / bs))) if n_lists else 0
    M = int(hp.get("served_negatives", 0))
    pools = hard_negative_pools(served) if served is not None and M > 0 else None
    # Examples learn the transition weights from the tables of the other users (`fold_tables`).
    tables = _transitions(model, train_seqs, hp, folds=True) if getattr(model, "sequence_top", 0) else None
    decay = float(hp["weight_average"])
    trained = [p for p in model.parameters() if p.requires_grad]
    averaged = [p.detach().clone() for p in trained] if decay > 0 else None
    steps = 0
    best_epoch, best_metrics, best_ndcg, best_state = 0, {}, -math.inf, None
    epoch = 0
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        perm = torch.from_numpy(rng.permutation(n))
        negs_all = torch.from_numpy(rng.integers(1, n_items + 1, size=(n, K)))
        list_perm = rng.permutation(n_lists) if n_lists else np.zeros(0, dtype=np.int64)
        total = 0.0
        for step, a in enumerate(range(0, n, bs)):
            idx = perm[a : a + bs]
            items = items_t[idx]
            # A negative equal to the target would teach the model to score it down; move it to
            # the next row instead of resampling so the draw stays one vectorised call.
            negs = negs_all[a : a + bs]
            negs = torch.where(negs == items.unsqueeze(1), negs % n_items + 1, negs)
            if pools is not None:
                hard = torch.from_numpy(draw_hard_negatives(pools, ex.users[idx.numpy()], M, rng, n_items))
                negs = torch.cat([negs, torch.where(hard == items.unsqueeze(1), hard % n_items + 1, hard)], dim=1)
            hist = hist_t[idx].long()
            sequence = None
            if tables is not None:
                with torch.no_grad():
                    sequence = fold_features(tables, users_t[idx], hist, torch.cat([items.unsqueeze(1), negs], 1))
            loss = _batch_loss(model, users_t[idx], hist, items, labels_t[idx], weights_t[idx], negs, hp, sequence)
            rows = list_perm[step * list_bs : (step + 1) * list_bs]
            if served is not None and rows.size:
                lists = served.take(rows)
                users = model.embed_users(torch.from_numpy(lists.users)).detach()
                loss = loss + served_weight * list_loss(model, users, lists)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            if averaged is not None:
                steps += 1
                average_weights(averaged, trained, steps, decay)
        line = f"epoch {epoch:3d} loss {total / max(n, 1):.4f}"
        if len(val) == 0:
            log(f"{line} ({time.perf_counter() - te:.1f}s)")
            best_epoch = epoch
            continue
        if averaged is not None:
            _swap(trained, averaged)
        m = evaluate_split(model, val)
        log(f"{line} val ndcg@10 {m['ndcg@10']:.4f} hr@10 {m['hr@10']:.4f} ({time.perf_counter() - te:.1f}s)")
        if m["ndcg@10"] > best_ndcg:
            best_ndcg, best_epoch, best_metrics = m["ndcg@10"], epoch, m
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= int(hp["patience"]):
            break
        if averaged is not None:
            _swap(trained, averaged)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None:
        _swap(trained, averaged)
    return best_epoch, best_metrics, epoch


def _transitions(
    model: Reranker, sequences: Sequence[Sequence[tuple[int, float]]], hp: Mapping[str, Any], *, folds: bool = False
) -> Any:
    """The `models.sequence.transition_table` of the positives of ``sequences`` for this model,
    or with ``folds`` its `fold_tables` (by user row)."""
    positives = [[i for i, w in seq if w > 0] for seq in sequences]
    window, top = int(model.hparams["sequence_window"]), int(model.hparams["sequence_top"])
    if folds:
        return fold_tables(positives, model.n_items, window=window, top=top, folds=int(hp["sequence_folds"]))
    return transition_table(positives, model.n_items, window=window, top=top)


def _upstream_params(model: Reranker) -> torch.nn.ModuleList:
    """The upstream part of a model with one (`models.dnn`): its MLP and the user-item scale."""
    dnn = cast(Any, model)
    holder = torch.nn.ModuleList([dnn.upstream_net])
    holder.register_parameter("model_scale", dnn.model_scale)
    return holder


def _fit_upstream(
    model: Reranker,
    served: ServedLists,
    served_val: ServedLists | None,
    hp: Mapping[str, Any],
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Fit the upstream part (the upstream MLP and the user-item scale) on the served lists with
    the list-wise loss (`trainer.served.list_loss`), everything else frozen.

    It runs last, on the network that is served: its user-item part never learned the lists'
    answers (train_model leaves them out of the sampled objective), so the lists show it as
    serving will, and the blend learned here is not fooled by a part that memorised them. With
    `served_val`, stops once their NDCG@10 has not improved for ``served_patience`` epochs and
    keeps the best epoch.

    Returns:
        Metrics: "served_lists", and with `served_val`: "lists_ndcg@10",
        "lists_upstream_ndcg@10", "lists_best_epoch".
    """
    part = _upstream_params(model)
    model.requires_grad_(False)
    part.requires_grad_(True)
    model.eval()
    opt = torch.optim.Adam(part.parameters(), lr=float(hp["served_lr"]))
    uv = model.user_vectors()
    bs = int(hp["served_batch_size"])
    has_val = served_val is not None and len(served_val) > 0
    best: dict[str, Any] = {"ndcg": -math.inf, "epoch": 0, "state": None, "metrics": {}}
    if served_val is not None and has_val:
        m0 = evaluate_lists(model, served_val)
        log(f"lists epoch   0: val lists ndcg@10 {m0['ndcg@10']:.4f} (upstream order {m0['upstream_ndcg@10']:.4f})")
    for epoch in range(1, int(hp["served_epochs"]) + 1):
        perm = rng.permutation(len(served))
        for a in range(0, len(served), bs):
            lists = served.take(perm[a : a + bs])
            loss = list_loss(model, uv[torch.from_numpy(lists.users)], lists)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if served_val is None or not has_val:
            continue
        m = evaluate_lists(model, served_val)
        if m["ndcg@10"] > best["ndcg"]:
            best = {"ndcg": m["ndcg@10"], "epoch": epoch, "metrics": m}
            best["state"] = {k: v.detach().clone() for k, v in part.state_dict().items()}
        elif epoch - best["epoch"] >= int(hp["served_patience"]):
            break
    if best["state"] is not None:
        part.load_state_dict(best["state"])
    model.requires_grad_(False)
    scale = float(cast(Any, model).model_scale)
    out: dict[str, Any] = {"served_lists": len(served), "user_item_scale": round(scale, 4)}
    if has_val:
        out |= {
            "lists_ndcg@10": best["metrics"]["ndcg@10"],
            "lists_upstream_ndcg@10": best["metrics"]["upstream_ndcg@10"],
            "lists_best_epoch": best["epoch"],
        }
        log(
            f"lists: best epoch {best['epoch']}, val lists ndcg@10 {out['lists_ndcg@10']:.4f} "
            f"(upstream order {out['lists_upstream_ndcg@10']:.4f}), user-item scale {scale:.3f}"
        )
    return out


# Parameters with a row per user or per item; the rows of ids the serving model also knows are
# copied over by `warm_start`, the rest keep their fresh initialisation.
USER_TABLES = ("user_emb.",)
ITEM_TABLES = ("item_emb.", "item_bias.", "hist_emb.")


def warm_start(model: Reranker, user_ids: list[str], item_ids: list[str], serving: ModelBundle) -> dict[str, int]:
    """Start ``model`` from the serving model: the rows of the users and items both know, and
    every other parameter of the same name and shape (item-feature weights only when both
    learned the same feature vocabulary).

    Returns:
        {"users", "items": rows copied, "tensors": parameters copied from whole or in part}.
    """
    src = dict(serving.model.named_parameters())
    same_features = getattr(model, "feature_vocab", None) == getattr(serving.model, "feature_vocab", None)

    def rows(ids: list[str], index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(r, index[i]) for r, i in enumerate(ids) if r and i in index]
        to = torch.tensor([a for a, _ in pairs], dtype=torch.long)
        return to, torch.tensor([b for _, b in pairs], dtype=torch.long)

    users_to, users_from = rows(user_ids, serving.user_index)
    items_to, items_from = rows(item_ids, serving.item_index)
    copied = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            old = src.get(name)
            if old is None or old.shape[1:] != param.shape[1:]:
                continue
            if name.startswith(USER_TABLES):
                param[users_to] = old[users_from]
            elif name.startswith(ITEM_TABLES):
                param[items_to] = old[items_from]
            elif old.shape != param.shape or (name.startswith("feat") and not same_features):
                continue
            else:
                param.copy_(old)
            copied += 1
    return {"users": int(users_to.numel()), "items": int(items_to.numel()), "tensors": copied}


def train_model(
    events: list[dict[str, Any]] | EventColumns,
    *,
    kind: str = "dnn",
    event_weights: dict[str, float] | None = None,
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
    trained_through: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    max_epochs: int | None = None,
    items: list[dict[str, Any]] | None = None,
    model_hparams: Mapping[str, Mapping[str, Any]] | None = None,
    max_clock_skew_s: float = Settings.max_clock_skew_s,
    warm_from: ModelBundle | None = None,
    logged: list[LoggedRequest] | None = None,
    label_window_s: float = Settings.label_window_s,
) -> tuple[Reranker, dict[str, Any]]:
    """Train a re-ranker on wire-format events.

    Every event (after the validation carve-out) becomes an example that predicts its item from
    the user's preceding positives, so the history encoder learns next-item prediction. Training
    stops early when validation NDCG@10 has not improved for `patience` epochs, and the best
    epoch's weights are kept. A kind registered with an extra training stage then runs it on that
    model (kind "gan": `trainer.gan.fit_gan` fine-tunes it adversarially and returns the network
    chosen by its `serve` hyper-parameter).

    Hyper-parameters, lowest precedence first: `DEFAULT_HPARAMS`, the kind's registered defaults,
    `model_hparams[kind]`, `hparams`, then `max_epochs`.

    Args:
        events: Wire-format events, any order (ordered per user by (ts, arrival)).
        kind: Registered model kind.
        event_weights: Weight per event type; defaults to `DEFAULT_EVENT_WEIGHTS`.
        hparams: Overrides of the defaults, for this run.
        seed: Seeds weights, shuffling and negative sampling; same seed, same model.
        trained_through: Stored in the returned info; defaults to {"max_ts": max ts of events}.
        log: Receives one line per epoch and a summary.
        max_epochs: Overrides hparams["max_epochs"] (the pre-training of "gan" included).
        items: Item metadata records {"item_id", "genres"?, "tags"?, ...}. With
            hparams["item_features"] (default on) and a kind that takes `feature_vocab`, the model
            learns a feature vocabulary from the training items' metadata and embeds it.
        model_hparams: Kind -> overrides of that kind's defaults (the settings' `model_hparams`
            tables). Only the trained kind's table applies, but every table is checked.
        max_clock_skew_s: Events with a ts further ahead of the clock, or in milliseconds, are
            skipped (the settings' `max_clock_skew_s`).
        warm_from: A model of the same kind (the serving one) to start from (`warm_start`)
            when it knows some of the items; early stopping then usually ends sooner.
        logged: Logged re-rank requests (the requests topic). Those that `events` label within
            `label_window_s` (`trainer.served.label_requests`) become served lists: a kind that
            takes `upstream_inputs` then gets an upstream part, and the list-wise loss over the
            lists joins the sampled-negative one (hparams "served_weight"; 0 turns it off).
        label_window_s: How long after a request an event still labels it.

    Returns:
        (model in eval mode with unknown rows filled, info). info holds everything
        `save_artifact` needs: item_ids, user_ids, user_history, trained_through, hparams,
        metrics, event_weights, training.

    Raises:
        ValueError: No usable event, or a bad hyper-parameter.
    """
    t0 = time.perf_counter()
    weights_map = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights)
    cls = get_model_class(kind)
    check_model_hparams(model_hparams or {})
    unknown = set(hparams or {}) - _known_hparams(cls)
    if unknown:
        raise ValueError(f"unknown hyper-parameters: {sorted(unknown)}")
    hp = {**DEFAULT_HPARAMS, **cls.default_hparams, **(model_hparams or {}).get(kind, {}), **(hparams or {})}
    if max_epochs is not None:
        hp["max_epochs"] = int(max_epochs)
    stage = training_stage_of(cls)
    H = int(hp["history_len"])

    not_after = time.time() + max_clock_skew_s
    pre_skipped = pre_bad = 0
    if logged and hp["served_lists"]:
        # Labelling needs the columns too: convert once.
        events, pre_skipped, pre_bad = to_columns(events, not_after)
    data = build_interactions(events, weights_map, not_after=not_after)
    data.n_skipped += pre_skipped
    data.n_bad_ts += pre_bad
    if data.n_bad_ts:
        log(f"skipped {data.n_bad_ts} events with a ts from the future or in milliseconds")
    if data.n_events == 0:
        raise ValueError(f"no usable event among {len(events)} (known types: {sorted(weights_map)})")
    train_seqs, val = split_validation(
        data,
        H,
        n_negatives=int(hp["val_negatives"]),
        min_positives=int(hp["val_min_positives"]),
        max_users=int(hp["val_max_users"]),
        seed=seed,
    )
    ex = training_examples(train_seqs, H)
    kwargs = _model_kwargs(cls, hp)
    features = None
    if items and hp["item_features"] and "feature_vocab" in inspect.signature(cls.__init__).parameters:
        vocab = build_vocab(
            items, data.item_index, min_count=int(hp["feature_min_count"]), max_size=int(hp["max_features"])
        )
        if vocab:
            by_id = {str(m["item_id"]): m for m in items if m.get("item_id") is not None}
            features = feature_rows([by_id.get(i) for i in data.item_ids[1:]], vocab)
            kwargs["feature_vocab"] = vocab

    served = served_val = None
    if logged and hp["served_lists"] and isinstance(events, EventColumns):
        labelled = label_requests(logged, events, weights_map, label_window_s)
        log(f"served lists: {len(labelled)} of {len(logged)} logged requests labelled by events")
        if labelled and "upstream_inputs" in inspect.signature(cls.__init__).parameters:
            fit_lists, val_lists = split_newest(labelled, float(hp["served_val_share"]))
            val_items = val.candidates[:, 0] if len(val) else np.zeros(0, dtype=np.int64)
            served = drop_pairs(
                served_lists(fit_lists, events, weights_map, data.user_index, data.item_index, H),
                val.users,
                val_items,
            )
            if val_lists:
                served_val = drop_pairs(
                    served_lists(val_lists, events, weights_map, data.user_index, data.item_index, H),
                    val.users,
                    val_items,
                )
            kwargs["upstream_inputs"] = N_UPSTREAM_FEATURES
            # A list's positives are also next-item examples; learned there, they make the
            # user-item part look all-knowing on the lists, and the upstream part would learn to
            # count for nothing. Out of the sampled objective, the lists see the user-item part
            # as serving does: not knowing the answer.
            pairs = [lists.positive_pairs() for lists in (served, served_val) if lists is not None]
            keep = ~np.isin(
                ex.users * (data.n_items + 1) + ex.items,
                np.concatenate([u * (data.n_items + 1) + i for u, i in pairs]),
            )
            log(f"served lists: {int((~keep).sum())} of {len(ex)} examples are list answers, left to the lists")
            ex = ex.take(np.flatnonzero(keep))

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(hp["num_threads"]) or _auto_threads(len(ex)))
    try:
        log(
            f"train {kind}: {data.n_users} users, {data.n_items} items, {len(ex)} examples, "
            f"{len(val)} validation users, {data.n_skipped} events skipped"
        )
        if features is not None:
            log(
                f"item features: {features.shape[1]} in the vocabulary, "
                f"{int((features.sum(1) > 0).sum())} of {data.n_items} items have some"
            )
        torch.manual_seed(seed)
        model = cls(data.n_users, data.n_items, **kwargs)
        if features is not None:
            model.set_item_features(torch.arange(1, data.n_items + 1), torch.from_numpy(features))
        if getattr(model, "sequence_top", 0):
            # The validation carve-out's items stay out of the table while it measures the model.
            cast(Any, model).set_transitions(*_transitions(model, train_seqs, hp))
        warm: dict[str, int] = {}
        # With no item in common the serving model's other weights fit none of these items.
        if (
            warm_from is not None
            and warm_from.name == kind
            and type(warm_from.model) is cls
            and any(i in warm_from.item_index for i in data.item_ids[1:])
        ):
            warm = warm_start(model, data.user_ids, data.item_ids, warm_from)
            log(f"warm start from {warm_from.version}: {warm['users']} users, {warm['items']} items known")
        rng = np.random.default_rng(seed)
        if served is not None:
            # Trained on the lists alone, after the rest (`_fit_upstream`).
            _upstream_params(model).requires_grad_(False)
        best_epoch, best_metrics, epochs_run = _fit(
            model, ex, val, hp, rng, log, int(hp["max_epochs"]), served, train_seqs
        )
        stage_info: dict[str, Any] = {}
        if stage is not None:
            pre_epochs, pre_seconds = epochs_run, time.perf_counter() - t0
            model.fill_unknown_rows()
            model, stage_metrics, stage_info = stage(model, ex, val, hp, rng, log)
            best_metrics = {"ndcg@10": stage_metrics.pop("ndcg@10"), "hr@10": stage_metrics.pop("hr@10")}
            best_epoch = stage_metrics.pop("best_epoch")
            # Numbers stay in the metrics; labels (e.g. the served network) go with the stage's info.
            labels = {k: stage_metrics.pop(k) for k in list(stage_metrics) if isinstance(stage_metrics[k], str)}
            stage_info = {
                **labels,
                "pretrain_epochs": pre_epochs,
                "pretrain_seconds": round(pre_seconds, 3),
                "metrics": stage_metrics,
                **stage_info,
            }
            epochs_run = stage_info.pop("epochs")
        model.fill_unknown_rows()
        if getattr(model, "sequence_top", 0):
            # Served, the table holds everything the model was trained from.
            cast(Any, model).set_transitions(*_transitions(model, data.sequences, hp))
            log(f"transition table: weights {[round(w, 4) for w in cast(Any, model).seq_weight.tolist()]}")
        served_metrics: dict[str, Any] = {}
        if served is not None:
            if getattr(model, "sequence_top", 0):
                tables = _transitions(model, data.sequences, hp, folds=True)
                served = with_sequence_features(served, tables)
                if served_val is not None:
                    served_val = with_sequence_features(served_val, tables)
            served_metrics = _fit_upstream(model, served, served_val, hp, rng, log)
        model.eval()
        model.requires_grad_(False)
    finally:
        torch.set_num_threads(prev_threads)

    seconds = time.perf_counter() - t0
    metrics = {
        **served_metrics,
        "ndcg@10": best_metrics.get("ndcg@10", math.nan),
        "hr@10": best_metrics.get("hr@10", math.nan),
        "users": len(val),
        "best_epoch": best_epoch,
        **stage_info.pop("metrics", {}),
    }
    log(
        f"done in {seconds:.1f}s: best epoch {best_epoch} of {epochs_run}, "
        f"val ndcg@10 {metrics['ndcg@10']:.4f} hr@10 {metrics['hr@10']:.4f}"
    )
    info = {
        "item_ids": data.item_ids,
        "user_ids": data.user_ids,
        # Inference starts from everything the user did, the validation carve-out included.
        "user_history": last_positive_history(data.sequences, H),
        "trained_through": trained_through if trained_through is not None else {"max_ts": data.max_ts},
        "hparams": hp,
        "metrics": metrics,
        "event_weights": weights_map,
        "training": {
            "epochs": epochs_run,
            "n_events": data.n_events,
            "seconds": round(seconds, 3),
            "seed": seed,
            **({"warm_start": {"from": warm_from.version, **warm}} if warm and warm_from is not None else {}),
            **({kind: stage_info} if stage_info else {}),
        },
    }
    return model, info


def train_to_artifact(events: list[dict[str, Any]] | EventColumns, out_dir: str | Path, **train_args: Any) -> Path:
    """Train with `train_model` (``train_args`` are its keyword arguments) and publish the
    artifact atomically at `out_dir`; returns its path."""
    model, info = train_model(events, **train_args)
    return save_artifact(
        out_dir,
        model,
        item_ids=info["item_ids"],
        user_ids=info["user_ids"],
        user_history=info["user_history"],
        trained_through=info["trained_through"],
        hparams=info["hparams"],
        metrics=info["metrics"],
        event_weights=info["event_weights"],
        extra={"training": info["training"]},
    )
