"""Turn wire-format user events into index maps, per-user sequences and training tensors.

An event is `{"user_id", "item_id", "event_type", "ts", "value"?, "request_id"?}`. Each event type
has a weight: positive = implicit positive, negative = explicit negative (dismiss); types without
a weight, and weight 0, are ignored. Ids are always compared as `str`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
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


class EventColumns:
    """Events as parallel arrays over interned id vocabularies, with their log positions.

    A trainer holds millions of events: as one dict each they cost about 500 bytes apiece, as
    these columns about 40.

    Attributes:
        user_ids, item_ids, event_types: Vocabularies; the code columns index them.
        user, item: [N] int32 codes. event_type: [N] int32 code. ts: [N] float64.
        value: [N] float64, NaN where the event had none.
        partition: [N] int32, offset: [N] int64: where the event sits in the log (-1 when it
            came from elsewhere).
    """

    def __init__(self) -> None:
        self.user_ids: list[str] = []
        self.item_ids: list[str] = []
        self.event_types: list[str] = []
        self._codes: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        self._ints = {name: array("i") for name in ("user", "item", "event_type", "partition")}
        self._floats = {name: array("d") for name in ("ts", "value")}
        self._offsets = array("q")
        self._frozen: dict[str, np.ndarray] | None = None

    @staticmethod
    def _intern(vocab: list[str], codes: dict[str, int], value: str) -> int:
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(vocab)
            vocab.append(value)
        return code

    def append(
        self,
        user_id: str,
        item_id: str,
        event_type: str,
        ts: float,
        value: float | None = None,
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        """Add one event (before the first read of a column)."""
        users, items, types = self._codes
        ints = self._ints
        ints["user"].append(self._intern(self.user_ids, users, user_id))
        ints["item"].append(self._intern(self.item_ids, items, item_id))
        ints["event_type"].append(self._intern(self.event_types, types, event_type))
        ints["partition"].append(partition)
        self._floats["ts"].append(ts)
        self._floats["value"].append(math.nan if value is None else value)
        self._offsets.append(offset)

    def _columns(self) -> dict[str, np.ndarray]:
        if self._frozen is None:
            # The arrays are views of the growable buffers: nothing is copied, and appending
            # after a read is not allowed (it could move the buffers under the views).
            cols: dict[str, np.ndarray] = {
                "user": np.frombuffer(self._ints["user"], dtype=np.int32),
                "item": np.frombuffer(self._ints["item"], dtype=np.int32),
                "event_type": np.frombuffer(self._ints["event_type"], dtype=np.int32),
                "partition": np.frombuffer(self._ints["partition"], dtype=np.int32),
                "ts": np.frombuffer(self._floats["ts"], dtype=np.float64),
                "value": np.frombuffer(self._floats["value"], dtype=np.float64),
                "offset": np.frombuffer(self._offsets, dtype=np.int64),
            }
            self._frozen = cols
        return self._frozen

    @classmethod
    def from_arrays(cls, source: EventColumns, rows: np.ndarray) -> EventColumns:
        """The events at ``rows`` of ``source``, in that order, over the same vocabularies."""
        out = cls()
        out.user_ids, out.item_ids, out.event_types = source.user_ids, source.item_ids, source.event_types
        out._frozen = {name: col[rows] for name, col in source._columns().items()}
        return out

    def take(self, rows: np.ndarray) -> EventColumns:
        """The events at ``rows``, in that order."""
        return EventColumns.from_arrays(self, rows)

    def __len__(self) -> int:
        return int(self._columns()["user"].shape[0])

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._columns()[name]
        except KeyError:
            raise AttributeError(name) from None

    def event(self, row: int) -> dict[str, Any]:
        """The wire-format event at ``row``."""
        c = self._columns()
        event: dict[str, Any] = {
            "user_id": self.user_ids[c["user"][row]],
            "item_id": self.item_ids[c["item"][row]],
            "event_type": self.event_types[c["event_type"][row]],
            "ts": float(c["ts"][row]),
        }
        if not math.isnan(c["value"][row]):
            event["value"] = float(c["value"][row])
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.event(row) for row in range(len(self)))


def to_columns(
    events: Iterable[Mapping[str, Any]] | EventColumns, not_after: float | None = None
) -> tuple[EventColumns, int, int]:
    """Wire-format events as `EventColumns` (given columns are returned as they are).

    An event without a numeric ts, or with a ts `check_event_ts` refuses, is skipped; one without
    a user or item id is kept with empty ids (and type), so its ts still counts for max_ts.

    Returns:
        (columns, events skipped, of which for a bad ts).
    """
    skipped = bad_ts = 0
    if isinstance(events, EventColumns):
        return events, 0, 0
    cols = EventColumns()
    for ev in events:
        ts = ev.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            skipped += 1
            continue
        if check_event_ts(ts, not_after) is not None:
            # Left out of max_ts too: it would carry the watermark past every live event.
            skipped += 1
            bad_ts += 1
            continue
        u, i = ev.get("user_id"), ev.get("item_id")
        if u is None or i is None:
            # Kept for max_ts only (build_interactions' weight filter counts it as skipped): an
            # unusable event still says how far the data reaches.
            cols.append("", "", "", ts)
            continue
        cols.append(str(u), str(i), str(ev.get("event_type")), ts)
    return cols, skipped, bad_ts


def build_interactions(
    events: Iterable[Mapping[str, Any]] | EventColumns,
    event_weights: Mapping[str, float],
    *,
    not_after: float | None = None,
) -> Interactions:
    """Index users and items and build each user's time-ordered weighted sequence.

    Args:
        events: Wire-format events in arrival order, or `EventColumns` (read without a dict
            per event).
        event_weights: Weight per event type.
        not_after: Latest trusted event time (now plus the allowed clock skew). Later events,
            and times in milliseconds, are skipped: they would carry the model's max_ts
            watermark past every live event to come.

    Returns:
        The `Interactions`; rows are assigned in `id_sort_key` order, so they do not depend on the
        order of the events.
    """
    cols, skipped, bad_ts = to_columns(events, not_after)
    max_ts: int | float | None = None
    if len(cols):
        top = float(cols.ts.max())
        max_ts = int(top) if top.is_integer() else top
    by_type = np.array([float(event_weights.get(t) or 0.0) for t in cols.event_types] or [0.0])
    weight = by_type[cols.event_type] if len(cols) else np.zeros(0)
    kept = np.flatnonzero(weight != 0)
    skipped += len(cols) - kept.size
    user_codes = np.unique(cols.user[kept])
    item_codes = np.unique(cols.item[kept])
    user_ids = [""] + sorted((cols.user_ids[c] for c in user_codes), key=id_sort_key)
    item_ids = [""] + sorted((cols.item_ids[c] for c in item_codes), key=id_sort_key)
    user_index = {u: r for r, u in enumerate(user_ids) if r}
    item_index = {i: r for r, i in enumerate(item_ids) if r}
    user_row = np.zeros(max(1, len(cols.user_ids)), dtype=np.int64)
    user_row[user_codes] = [user_index[cols.user_ids[c]] for c in user_codes]
    item_row = np.zeros(max(1, len(cols.item_ids)), dtype=np.int64)
    item_row[item_codes] = [item_index[cols.item_ids[c]] for c in item_codes]
    users = user_row[cols.user[kept]]
    # Sorting by (user, ts, arrival) groups each user's events in time order with ties kept in
    # arrival order, as the stream would have delivered them.
    order = kept[np.lexsort((kept, cols.ts[kept], users))]
    users = user_row[cols.user[order]]
    items = item_row[cols.item[order]].tolist()
    weights = weight[order].tolist()
    bounds = np.searchsorted(users, np.arange(len(user_ids) + 1)).tolist()
    sequences: list[list[tuple[int, float]]] = [
        list(zip(items[bounds[r] : bounds[r + 1]], weights[bounds[r] : bounds[r + 1]], strict=True))
        for r in range(len(user_ids))
    ]
    return Interactions(user_ids, item_ids, user_index, item_index, sequences, int(kept.size), skipped, max_ts, bad_ts)


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

    def take(self, rows: np.ndarray) -> TrainingExamples:
        """The examples at ``rows``."""
        return TrainingExamples(
            self.users[rows], self.history[rows], self.items[rows], self.labels[rows], self.weights[rows]
        )


def sample_unseen(rng: np.random.Generator, n_items: int, seen: np.ndarray, size: int) -> np.ndarray:
    """Up to ``size`` distinct item rows of 1..n_items outside ``seen``, uniformly at random.

    Rejection sampling costs O(size + len(seen)) per user instead of the O(n_items) of listing
    every unseen item; the unseen items are listed only when they are so few (at most 4 x size)
    that drawing would mostly hit seen ones, which bounds that case by the user's own history.
    """
    seen = np.unique(seen)
    n_unseen = n_items - int(np.count_nonzero((seen >= 1) & (seen <= n_items)))
    size = min(size, n_unseen)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_unseen <= 4 * size:
        unseen = np.setdiff1d(np.arange(1, n_items + 1), seen, assume_unique=True)
        return rng.choice(unseen, size=size, replace=False)
    out = np.zeros(0, dtype=np.int64)
    while out.size < size:
        draw = rng.integers(1, n_items + 1, size=2 * (size - out.size) + 8)
        out = np.concatenate([out, draw[~np.isin(draw, seen)]])
        # First occurrences in draw order: sorting would favour low rows when cut to size.
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return out[:size]


def split_validation(
    data: Interactions,
    history_len: int,
    *,
    n_negatives: int = 99,
    min_positives: int = 3,
    max_users: int = 0,
    seed: int = 0,
) -> tuple[list[list[tuple[int, float]]], ValidationSplit]:
    """Carve each user's last positive event out of training, for early stopping.

    Only users with at least `min_positives` positive events give one up, so every user keeps
    training signal; with `max_users` > 0, at most that many of them, drawn at random (the others
    keep all their events). Negatives are drawn uniformly, without replacement, from items the
    user never had an event with, like the offline benchmark's candidates.

    Returns:
        (training sequences without the carved-out events, the validation split).
    """
    rng = np.random.default_rng(seed)
    positives = [[k for k, (_, w) in enumerate(seq) if w > 0] for seq in data.sequences]
    eligible = [r for r, pos_at in enumerate(positives) if r and len(pos_at) >= min_positives]
    if 0 < max_users < len(eligible):
        chosen = set(rng.choice(np.asarray(eligible), size=max_users, replace=False).tolist())
    else:
        chosen = set(eligible)
    train_seqs: list[list[tuple[int, float]]] = []
    users, hists, cands, valids = [], [], [], []
    for r, seq in enumerate(data.sequences):
        pos_at = positives[r]
        if r not in chosen:
            train_seqs.append(seq)
            continue
        cut = pos_at[-1]
        train_seqs.append(seq[:cut] + seq[cut + 1 :])
        before = [seq[k][0] for k in pos_at[:-1]][-history_len:]
        h = np.zeros(history_len, dtype=np.int64)
        h[history_len - len(before) :] = before
        negs = sample_unseen(rng, data.n_items, np.fromiter((i for i, _ in seq), dtype=np.int64), n_negatives)
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
