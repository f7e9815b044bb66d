"""Per-event online learning of a user's free vector, with the model itself frozen."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from models.artifact import ModelBundle
from models.dnn import (DNNReranker, history_context_batch_np, item_terms_batch, numpy_params,
                        score_and_grad_batch_np)
from models.seeded import seeded_integers

# Popularity^0.75 flattens the head so negatives are mostly, not only, the blockbusters.


def push_history(history: np.ndarray, item_row: int) -> np.ndarray:
    """Append `item_row` as the most recent entry, dropping the oldest.

    Args:
        history: [H] int64 item rows, 0-padded, most recent last.
        item_row: Row of the new positive item. 0 (unknown item) is not pushed, since row 0 is
            the padding value; the history comes back unchanged.

    Returns:
        A new [H] int64 array.
    """
    out = np.array(history, dtype=np.int64, copy=True)
    if item_row == 0 or out.size == 0:
        return out
    out[:-1] = out[1:]
    out[-1] = item_row
    return out


def _sample_negatives(bundle: ModelBundle, rng: np.random.Generator, n: int, exclude: int) -> np.ndarray:
    """Draw n item rows uniformly, none equal to `exclude`; none at all without another item.

    Uniform, like the negatives the model was trained against. Popularity-weighted negatives
    teach the vector to avoid popular items, and on MovieLens-100K's temporal stream that cut
    NDCG@10 from 0.49 to 0.31 (the next interaction is often a popular item).
    """
    n_items = bundle.model.n_items
    if n <= 0 or n_items <= 1:
        return np.zeros(0, dtype=np.int64)
    r = rng.integers(1, n_items, size=n)
    # Skip `exclude` by shifting the draws at or above it: uniform over the other items.
    return np.where(r >= exclude, r + 1, r).astype(np.int64)


def _labels_and_weights(negs: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive event: item labelled 1 with weight |w|, negatives 0 sharing weight |w| equally.

    Sharing keeps the pull towards the item as strong as the push away from the sampled items
    together; with weight 1 each, four negatives would drag the item's own taste cluster down too.
    Dismiss: only the item, labelled 0 with weight |w|. Sampled items labelled 0 next to it would
    push the whole vector away from popular items instead of away from what was dismissed.
    """
    if weight > 0:
        labels = np.zeros(1 + negs.size, dtype=np.float32)
        labels[0] = 1.0
        w = np.full(1 + negs.size, abs(weight) / max(negs.size, 1), dtype=np.float32)
        w[0] = abs(weight)
        return labels, w
    return np.zeros(1, dtype=np.float32), np.full(1, abs(weight), dtype=np.float32)


def online_update(
    bundle: ModelBundle,
    user_vec: np.ndarray,
    history: np.ndarray,
    item_row: int,
    weight: float,
    *,
    seed: int,
    steps: int = 3,
    lr: float = 0.05,
    n_negatives: int = 4,
) -> np.ndarray:
    """SGD on the user's free vector for one event, the model frozen.

    Minimises the weighted logistic loss sum_j w_j * BCE(score_j, y_j) over the event's item
    (y = 1 for a positive event, 0 for a dismiss; w = |weight|) and, for positive events,
    `n_negatives` items drawn uniformly (y = 0, w = |weight| / n_negatives each).
    Deterministic for a given seed. `online_update_batch` with one row, so a single event and the
    same event inside a batch give the same vector.

    Args:
        bundle: Loaded artifact.
        user_vec: [D] float32 current free vector (zeros for a user unknown to the model).
        history: [H] int64 history before this event, 0-padded, most recent last.
        item_row: Row of the event's item; 0 (unknown) leaves the vector unchanged.
        weight: Event weight; > 0 positive, < 0 explicit negative, 0 no-op.
        seed: Seeds the negative sampling.
        steps: Gradient steps.
        lr: Step size.
        n_negatives: Sampled negatives for positive events.

    Returns:
        New [D] float32 user vector (a copy).
    """
    vecs = np.asarray(user_vec, dtype=np.float32).reshape(1, -1)
    histories = np.asarray(history, dtype=np.int64).reshape(1, -1)
    return online_update_batch(bundle, vecs, histories, np.array([item_row], dtype=np.int64),
                               np.array([weight], dtype=np.float64), [seed],
                               steps=steps, lr=lr, n_negatives=n_negatives)[0]


def online_update_batch(
    bundle: ModelBundle,
    vecs: np.ndarray,
    histories: np.ndarray,
    item_rows: np.ndarray,
    weights: np.ndarray,
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float,
    n_negatives: int,
) -> np.ndarray:
    """`online_update` for B independent events at once (one event per row).

    Each row gets exactly what `online_update` would give it alone: the same negatives (drawn
    from `np.random.default_rng(seed)` per row) and a result that does not depend on the other
    rows in the batch, bit for bit. For `DNNReranker` the gradient steps are vectorised over the
    rows, in float32: the batched numpy twins in `models.dnn` evaluate every product per row with
    that row's own shapes, which is what makes float32 batch-invariant (one [B*N, D] product is
    not: OpenBLAS rounds some rows differently as B changes). Other kinds loop over the generic
    autograd update.

    Args:
        bundle: Loaded artifact.
        vecs: [B, D] current free vectors.
        histories: [B, H] int64 histories before each event, 0-padded, most recent last.
        item_rows: [B] int64 rows of the events' items; rows with item_row <= 0 come back
            unchanged, as do rows with weight 0, and all rows when steps <= 0.
        weights: [B] event weights; > 0 positive, < 0 explicit negative, 0 no-op.
        seeds: B ints, each seeding its row's negative sampling.
        steps: Gradient steps.
        lr: Step size.
        n_negatives: Sampled negatives for positive events.

    Returns:
        New [B, D] float32 user vectors (a copy).

    Raises:
        ValueError: A row to update has item_row > n_items, or the inputs disagree on B.
    """
    out = np.array(vecs, dtype=np.float32, copy=True, ndmin=2)
    histories = np.asarray(histories, dtype=np.int64)
    item_rows = np.asarray(item_rows, dtype=np.int64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    n_rows = out.shape[0]
    if histories.ndim != 2 or not (histories.shape[0] == item_rows.size == weights.size == len(seeds)
                                   == n_rows):
        raise ValueError(f"batch shapes disagree: vecs {out.shape}, histories {histories.shape}, "
                         f"item_rows {item_rows.shape}, weights {weights.shape}, seeds {len(seeds)}")
    if steps <= 0:
        return out
    learns = (item_rows > 0) & (weights != 0)
    if learns.all():
        # The usual case, without the copies that picking rows out makes.
        active, rows, ws, hist, seeds_active = slice(None), item_rows, weights, histories, list(seeds)
    else:
        active = np.flatnonzero(learns)
        if active.size == 0:
            return out
        rows, ws, hist = item_rows[active], weights[active], histories[active]
        seeds_active = [seeds[i] for i in active.tolist()]
    model = bundle.model
    if rows.max() > model.n_items:
        bad = int(rows[rows > model.n_items][0])
        raise ValueError(f"item_row {bad} out of range 1..{model.n_items}")

    if not isinstance(model, DNNReranker):
        for i, row, weight, seed in zip(np.arange(n_rows)[active].tolist(), rows.tolist(), ws.tolist(),
                                        seeds_active):
            rng = np.random.default_rng(seed)
            negs = (_sample_negatives(bundle, rng, n_negatives, row) if weight > 0
                    else np.zeros(0, dtype=np.int64))
            items = np.concatenate([np.array([row], dtype=np.int64), negs])
            labels, w = _labels_and_weights(negs, weight)
            out[i] = _online_update_autograd(model, out[i].copy(), histories[i], items, labels, w, steps, lr)
        return out

    p = bundle.cache.get("online_dnn_params")
    if p is None:
        p = bundle.cache["online_dnn_params"] = numpy_params(model)
    items, labels, w = _batch_targets(bundle, rows, ws, seeds_active, n_negatives)
    vec = out if isinstance(active, slice) else out[active]
    # u = vec + ctx with ctx fixed, so dLoss/dvec = dLoss/du.
    ctx = history_context_batch_np(p, hist)

    def dloss(s: np.ndarray) -> np.ndarray:
        # tanh form of the sigmoid: no overflow warning for large |s|
        return w * (0.5 + 0.5 * np.tanh(0.5 * s) - labels)

    terms = item_terms_batch(p, items)
    for _ in range(steps):
        _, g = score_and_grad_batch_np(p, vec + ctx, terms, dloss)
        vec -= lr * g
    if vec is not out:
        out[active] = vec
    return out


def _batch_targets(
    bundle: ModelBundle, rows: np.ndarray, weights: np.ndarray, seeds: Sequence[int], n_negatives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, labels and loss weights of B events, padded to one N for every batch.

    Row b holds what `_sample_negatives` and `_labels_and_weights` give event b alone. Dismisses
    (weight < 0) have no negatives: their padding repeats the item with weight 0, so it adds
    exact zeros to every sum. N is 1 + n_negatives whenever negatives can be drawn, whatever
    the batch holds, so a row is computed with the same shapes alone or next to any other rows.

    Args:
        bundle: Loaded artifact.
        rows: [B] int64 item rows in 1..n_items.
        weights: [B] float64 non-zero event weights.
        seeds: B ints, one negative-sampling seed per row.
        n_negatives: Sampled negatives per positive event.

    Returns:
        (items [B, N] int64, labels [B, N] float32, loss weights [B, N] float32).
    """
    n_items = bundle.model.n_items
    n_neg = n_negatives if n_negatives > 0 and n_items > 1 else 0
    items = np.repeat(rows[:, None], 1 + n_neg, axis=1)
    positive = weights > 0
    # Rows picked out only when the batch mixes positive events and dismisses.
    picked: slice | np.ndarray = slice(None) if positive.all() else np.flatnonzero(positive)
    if n_neg and np.any(positive):
        # Each event's draws are `default_rng(seed).integers` as `_sample_negatives` makes them
        # (computed for all rows at once), and so is the shift past the excluded item.
        draws = seeded_integers(seeds if isinstance(picked, slice) else [seeds[i] for i in picked.tolist()],
                                1, n_items, n_neg)
        exclude = rows[picked, None]
        items[picked, 1:] = np.where(draws >= exclude, draws + 1, draws)
    labels = np.zeros(items.shape, dtype=np.float32)
    labels[:, 0] = positive
    w = np.zeros(items.shape, dtype=np.float32)
    w[:, 0] = np.abs(weights)
    # Negatives share the positive's weight: |w| / n in float64, then float32, as a lone event has it.
    w[picked, 1:] = (np.abs(weights[picked]) / max(n_neg, 1))[:, None]
    return items, labels, w


def _online_update_autograd(
    model: Any,
    vec: np.ndarray,
    history: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    w: np.ndarray,
    steps: int,
    lr: float,
) -> np.ndarray:
    """Generic (slower) path for kinds without a hand-derived gradient."""
    v = torch.from_numpy(vec).unsqueeze(0)
    h = torch.from_numpy(np.asarray(history, dtype=np.int64)).unsqueeze(0)
    it = torch.from_numpy(items).unsqueeze(0)
    y, wt = torch.from_numpy(labels), torch.from_numpy(w)
    for _ in range(steps):
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            s = model(v, h, it)[0]
            loss = (wt * torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="none")).sum()
            (g,) = torch.autograd.grad(loss, v)
        v = v.detach() - lr * g
    return v[0].numpy().astype(np.float32, copy=True)
