"""What followed what: an item-to-item transition table and the per-candidate features from it.

Users take items in runs (a session of films, a season of episodes), so the items that followed a
user's last ones in other users' sequences are likely next. The user-item score knows the user's
taste but not where they are in such a run; this table does. On the ML-100K retrieved split
(BENCHMARKS.md) the features alone order the first stage's candidates about as well as the
user-item model, and the two together better than either.

The table keeps, per item row, its `top` most frequent successors within `window` steps (one d
steps later counts 1/d), sorted by item row so that a candidate is found by binary search, with
each item's total over all its successors. A trainer must not learn from a table that holds the
example's own step to its answer; subtracting the user's share afterwards is not enough (it
lifted that successor into the top ones), so it learns from tables of the other users
(`trainer.train`'s folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import Tensor

# Column order of `features_from_counts`.
SEQUENCE_FEATURES: tuple[str, ...] = (
    "follows_last",  # log1p(top * P(candidate follows the user's last item))
    "follows_recent",  # the same of the mean P over the user's last RECENT_ITEMS items present
)
N_SEQUENCE_FEATURES = len(SEQUENCE_FEATURES)
RECENT_ITEMS = 3


def transition_table(
    sequences: Sequence[Sequence[int]], n_items: int, *, window: int, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Successor counts of every item row.

    Args:
        sequences: Per user, item rows (1..n_items) in time order; zeros are skipped.
        n_items: Known items (rows 1..n_items; row 0 = unknown, without successors).
        window: A successor up to this many steps later counts, 1/d at d steps.
        top: Successors kept per item: the most frequent, ties by item row.

    Returns:
        (successors [n_items + 1, top] int64 item rows, each row ascending with its unused slots
        as leading zeros; counts [n_items + 1, top] float32 aligned with them, 0 in unused slots;
        totals [n_items + 1] float32, the counts of all successors, kept or not).
    """
    width = n_items + 1
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    wt: list[np.ndarray] = []
    for seq in sequences:
        s = np.asarray(seq, dtype=np.int64)
        s = s[s > 0]
        for d in range(1, window + 1):
            if s.size > d:
                src.append(s[:-d])
                dst.append(s[d:])
                wt.append(np.full(s.size - d, 1.0 / d))
    successors = np.zeros((width, top), dtype=np.int64)
    counts = np.zeros((width, top), dtype=np.float32)
    if not src:
        return successors, counts, np.zeros(width, dtype=np.float32)
    a, b, w = np.concatenate(src), np.concatenate(dst), np.concatenate(wt)
    pair, inverse = np.unique(a * width + b, return_inverse=True)
    pair_count = np.bincount(inverse, weights=w)
    pa, pb = pair // width, pair % width
    totals = np.bincount(pa, weights=pair_count, minlength=width).astype(np.float32)
    # Per source the most frequent first, to keep the top ones ...
    order = np.lexsort((pb, -pair_count, pa))
    pa, pb, pc = pa[order], pb[order], pair_count[order]
    rank = np.arange(pa.size) - np.searchsorted(pa, np.arange(width))[pa]
    keep = rank < top
    pa, pb, pc = pa[keep], pb[keep], pc[keep]
    # ... then ascending by item row, right-aligned so the unused (zero) slots lead.
    order = np.lexsort((pb, pa))
    pa, pb, pc = pa[order], pb[order], pc[order]
    kept = np.bincount(pa, minlength=width)
    slot = top - kept[pa] + (np.arange(pa.size) - np.searchsorted(pa, np.arange(width))[pa])
    successors[pa, slot] = pb
    counts[pa, slot] = pc
    return successors, counts, totals


def recent_items(history: Tensor) -> Tensor:
    """[B, RECENT_ITEMS] the last history slots, most recent first (0 = none): [B, H] -> [B, K]."""
    return history[:, -RECENT_ITEMS:].flip(1)


def transition_counts(
    successors: Tensor, counts: Tensor, totals: Tensor, history: Tensor, items: Tensor
) -> tuple[Tensor, Tensor]:
    """How often each candidate followed each of the user's recent items.

    Args:
        successors, counts, totals: A `transition_table` as tensors.
        history: [B, H] int64 item rows, 0-padded on the left, most recent last.
        items: [B, N] int64 candidate rows (0 = unknown or padding: no count).

    Returns:
        (counts [B, K, N] float32 of recent item k followed by candidate n, totals [B, K] float32
        of recent item k); K = RECENT_ITEMS, most recent first.
    """
    recent = recent_items(history)
    b, k = recent.shape
    n, top = items.shape[1], successors.shape[1]
    rows = successors[recent].reshape(b * k, top)
    wanted = items.unsqueeze(1).expand(b, k, n).reshape(b * k, n).contiguous()
    at = torch.searchsorted(rows, wanted).clamp_max(top - 1)
    found = (rows.gather(1, at) == wanted) & (wanted > 0)
    got = counts[recent].reshape(b * k, top).gather(1, at) * found
    return got.reshape(b, k, n), totals[recent]


def features_from_counts(pair_counts: Tensor, totals: Tensor, top: int) -> Tensor:
    """The `SEQUENCE_FEATURES` of `transition_counts`.

    Args:
        pair_counts: [B, K, N]; totals: [B, K]; a recent slot with total 0 counts as absent.
        top: The table's successors per item (the scale of the log).

    Returns:
        [B, N, N_SEQUENCE_FEATURES] float32.
    """
    present = totals > 0
    p = pair_counts / totals.clamp_min(1e-12).unsqueeze(-1) * present.unsqueeze(-1)
    last = p[:, 0]
    recent = p.sum(1) / present.sum(1, keepdim=True).clamp_min(1)
    return torch.log1p(top * torch.stack([last, recent], dim=-1))


def table_features(table: tuple[Tensor, Tensor, Tensor], history: Tensor, items: Tensor) -> Tensor:
    """[B, N, N_SEQUENCE_FEATURES] of candidates [B, N] after histories [B, H], from a table of
    tensors (successors, counts, totals)."""
    return features_from_counts(*transition_counts(*table, history, items), top=table[0].shape[1])


def fold_tables(
    sequences: Sequence[Sequence[int]], n_items: int, *, window: int, top: int, folds: int = 2
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per fold f, the `transition_table` of the users outside it (sequence index % folds != f),
    as tensors: what a trainer scores fold f's examples with, so none sees its own steps."""
    out = []
    for f in range(folds):
        others = [seq for u, seq in enumerate(sequences) if u % folds != f]
        out.append(tuple(torch.from_numpy(x) for x in transition_table(others, n_items, window=window, top=top)))
    return cast(list[tuple[Tensor, Tensor, Tensor]], out)


def fold_features(
    tables: Sequence[tuple[Tensor, Tensor, Tensor]], users: Tensor, history: Tensor, items: Tensor
) -> Tensor:
    """`table_features` of each row from the table of its user's fold (`fold_tables`).

    Args:
        users: [B] int64 user rows (the sequence indexes the tables were built with).
        history, items: [B, H], [B, N] as in `transition_counts`.
    """
    out = torch.zeros(*items.shape, N_SEQUENCE_FEATURES)
    for f, table in enumerate(tables):
        rows = torch.nonzero(users % len(tables) == f).squeeze(1)
        if rows.numel():
            out[rows] = table_features(table, history[rows], items[rows])
    return out
