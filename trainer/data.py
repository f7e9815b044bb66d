"""Turn wire-format user events into index maps, per-user sequences and training tensors.

An event is `{"user_id", "item_id", "event_type", "ts", "value"?, "request_id"?}`. Each event type
has a weight: positive = implicit positive, negative = explicit negative (dismiss); types without
a weight, and weight 0, are ignored. Ids are always compared as `str`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.core.records import check_event_ts


def id_sort_key(s: str) -> tuple[int, str]:
    """Order ids numerically when they are numbers of the same form, stable for any string."""
    return (len(s), s)


@dataclass
class Interactions:
    """Events reduced to index space, grouped per user in time order.

    Attributes:
        user_ids: Row -> user id, user_ids[0] = "" (unknown).
        item_ids: Row -> item id, item_ids[0] = "" (unknown / padding).
        user_index: User id -> row (1..n_users).
        item_index: Item id -> row (1..n_items).
        sequences: Per user row (index 0 unused, empty): list of (item row, weight), ordered by
            (ts, arrival order), weights non-zero.
        n_events: Events that were kept.
        n_skipped: Events dropped (unknown type, zero weight, missing fields, bad ts).
        max_ts: Largest ts among all given events with a trusted ts, or None.
        n_bad_ts: Events dropped for a ts from the future or in milliseconds (part of n_skipped).
    """

    user_ids: list[str]
    item_ids: list[str]
    user_index: dict[str, int]
    item_index: dict[str, int]
    sequences: list[list[tuple[int, float]]]
    n_events: int
    n_skipped: int
    max_ts: int | float | None
    n_bad_ts: int = 0

    @property
    def n_users(self) -> int:
        """Known users."""
        return len(self.user_ids) - 1

    @property
    def n_items(self) -> int:
        """Known items."""
        return len(self.item_ids) - 1


def build_interactions(
    events: Iterable[Mapping[str, Any]], event_weights: Mapping[str, float], *, not_after: float | None = None
) -> Interactions:
    """Index users and items and build each user's time-ordered weighted sequence.

    Args:
        events: Wire-format events in arrival order.
        event_weights: Weight per event type.
        not_after: Latest trusted event time (now plus the allowed clock skew). Later events,
            and times in milliseconds, are skipped: they would carry the model's max_ts
            watermark past every live event to come.

    Returns:
        The `Interactions`; rows are assigned in `id_sort_key` order, so they do not depend on the
        order of the events.
    """
    kept: list[tuple[str, str, float, float, int]] = []
    skipped = bad_ts = 0
    max_ts: int | float | None = None
    for n, ev in enumerate(events):
        ts = ev.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            ts = None
        elif check_event_ts(ts, not_after) is not None:
            ts = None
            bad_ts += 1
        else:
            max_ts = ts if max_ts is None else max(max_ts, ts)
        w = event_weights.get(str(ev.get("event_type")))
        u, i = ev.get("user_id"), ev.get("item_id")
        if not w or u is None or i is None or ts is None:
            skipped += 1
            continue
        kept.append((str(u), str(i), float(ts), float(w), n))
    user_ids = [""] + sorted({k[0] for k in kept}, key=id_sort_key)
    item_ids = [""] + sorted({k[1] for k in kept}, key=id_sort_key)
    user_index = {u: r for r, u in enumerate(user_ids) if r}
    item_index = {i: r for r, i in enumerate(item_ids) if r}
    # Sorting by (user, ts, arrival) groups each user's events in time order with ties kept in
    # arrival order, as the stream would have delivered them.
    kept.sort(key=lambda k: (user_index[k[0]], k[2], k[4]))
    sequences: list[list[tuple[int, float]]] = [[] for _ in user_ids]
    for u, i, _, w, _ in kept:
        sequences[user_index[u]].append((item_index[i], w))
    return Interactions(user_ids, item_ids, user_index, item_index, sequences, len(kept), skipped, max_ts, bad_ts)


def last_positive_history(sequences: list[list[tuple[int, float]]], history_len: int) -> np.ndarray:
    """Each user's last `history_len` positive item rows, 0-padded on the left, most recent last.

    Returns:
        [len(sequences), history_len] int64 (row 0 all zeros).
    """
    out = np.zeros((len(sequences), history_len), dtype=np.int64)
    for r, seq in enumerate(sequences):
        pos = [i for i, w in seq if w > 0][-history_len:]
        if pos:
            out[r, history_len - len(pos) :] = pos
    return out


@dataclass
class ValidationSplit:
    """Each eligible user's last positive interaction against sampled never-seen items.

    Attributes:
        users: [V] int64 user rows.
        history: [V, H] int64 positives before the held-out one, 0-padded, most recent last.
        candidates: [V, 1 + K] int64; column 0 is the held-out item, then K negatives
            (0 where the user had fewer than K unseen items).
        valid: [V, 1 + K] bool, False on padding candidates.
    """

    users: np.ndarray
    history: np.ndarray
    candidates: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class TrainingExamples:
    """One row per training event: predict the event's item from the preceding positives.

    Attributes:
        users: [E] int64 user rows.
        history: [E, H] int32 positives strictly before the event, 0-padded, most recent last.
        items: [E] int64 item rows.
        labels: [E] float32, 1 for positive events, 0 for explicit negatives.
        weights: [E] float32 |event weight|.
    """

    users: np.ndarray
    history: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])


def split_validation(
    data: Interactions,
    history_len: int,
    *,
    n_negatives: int = 99,
    min_positives: int = 3,
    seed: int = 0,
) -> tuple[list[list[tuple[int, float]]], ValidationSplit]:
    """Carve each user's last positive event out of training, for early stopping.

    Only users with at least `min_positives` positive events give one up, so every user keeps
    training signal. Negatives are drawn uniformly, without replacement, from items the user never
    had an event with, like the offline benchmark's candidates.

    Returns:
        (training sequences without the carved-out events, the validation split).
    """
    rng = np.random.default_rng(seed)
    train_seqs: list[list[tuple[int, float]]] = []
    users, hists, cands, valids = [], [], [], []
    all_items = np.arange(1, data.n_items + 1)
    for r, seq in enumerate(data.sequences):
        pos_at = [k for k, (_, w) in enumerate(seq) if w > 0]
        if r == 0 or len(pos_at) < min_positives:
            train_seqs.append(list(seq))
            continue
        cut = pos_at[-1]
        train_seqs.append(seq[:cut] + seq[cut + 1 :])
        before = [seq[k][0] for k in pos_at[:-1]][-history_len:]
        h = np.zeros(history_len, dtype=np.int64)
        h[history_len - len(before) :] = before
        unseen = np.setdiff1d(all_items, [i for i, _ in seq], assume_unique=False)
        negs = rng.choice(unseen, size=min(n_negatives, unseen.size), replace=False)
        c = np.zeros(1 + n_negatives, dtype=np.int64)
        c[0] = seq[cut][0]
        c[1 : 1 + negs.size] = negs
        v = np.zeros(1 + n_negatives, dtype=bool)
        v[: 1 + negs.size] = True
        users.append(r)
        hists.append(h)
        cands.append(c)
        valids.append(v)
    k = 1 + n_negatives
    split = ValidationSplit(
        users=np.asarray(users, dtype=np.int64),
        history=np.stack(hists) if hists else np.zeros((0, history_len), dtype=np.int64),
        candidates=np.stack(cands) if cands else np.zeros((0, k), dtype=np.int64),
        valid=np.stack(valids) if valids else np.zeros((0, k), dtype=bool),
    )
    return train_seqs, split


def training_examples(sequences: list[list[tuple[int, float]]], history_len: int) -> TrainingExamples:
    """Build next-item examples: every event, with the positives that came before it as history."""
    n = sum(len(s) for s in sequences)
    users = np.empty(n, dtype=np.int64)
    items = np.empty(n, dtype=np.int64)
    weights = np.empty(n, dtype=np.float32)
    hist = np.zeros((n, history_len), dtype=np.int32)
    e = 0
    for r, seq in enumerate(sequences):
        past: list[int] = []
        for i, w in seq:
            users[e], items[e], weights[e] = r, i, w
            tail = past[-history_len:]
            if tail:
                hist[e, history_len - len(tail) :] = tail
            if w > 0:
                past.append(i)
            e += 1
    labels = (weights > 0).astype(np.float32)
    return TrainingExamples(users, hist, items, labels, np.abs(weights))
