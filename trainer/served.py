"""Served lists: logged re-rank requests labelled by the events that followed them.

A re-rank request on the requests topic is a list the service was asked to order (or, in a
serving log, one it served). Joined with the events of its user that followed it within
`label_window_s`, it becomes a labelled list: a candidate the user then interacted with is a
positive, weighted by its event type; the other candidates were shown but not chosen. A request
without a ts, or that no positive event followed, cannot be labelled and is left out.

The trainer fits a list-wise loss over these lists (`list_loss`), and the promotion gate compares
a model with the upstream order on the newest of them (`evaluate_lists`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from models.base import Reranker
from models.sequence import fold_features
from models.upstream import upstream_batch
from streams.core.records import ContractError, parse_request
from streams.core.scoring import SCORE_DECIMALS, rank_order
from streams.settings import Settings
from trainer.data import EventColumns

log = logging.getLogger(__name__)


@dataclass
class LoggedRequest:
    """One re-rank request of the log, as the trainer uses it.

    Attributes:
        request_id, user_id: As in the request.
        ts: The request's time (seconds).
        item_ids: Candidate ids in request order.
        scores: [n] float64 upstream scores, NaN where absent.
        labels: [n] float32 after `label_requests`: the weight of the event that followed on each
            candidate (the largest positive one, else a negative one), 0 for none, NaN for a
            candidate the user took only later (neither chosen nor a true negative).
    """

    request_id: str
    user_id: str
    ts: float
    item_ids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None = None


def parse_logged(value: bytes | str | None, max_candidates: int = 100_000) -> LoggedRequest | None:
    """A `LoggedRequest` of one requests-topic value; None when it is invalid or has no ts."""
    try:
        req = parse_request(value, max_candidates=max_candidates, max_bytes=1 << 30)
    except ContractError:
        return None
    if req.ts is None or not req.item_ids:
        return None
    return LoggedRequest(req.request_id, req.user_id, float(req.ts), req.item_ids, np.asarray(req.scores, np.float64))


def logged_from_records(records: Iterable[Mapping[str, Any]]) -> list[LoggedRequest]:
    """`parse_logged` of request records (e.g. a logged.jsonl file); invalid ones are skipped."""
    out = [parse_logged(orjson.dumps(r)) for r in records]
    return [r for r in out if r is not None]


def logged_from_topic(
    settings: Settings,
    topic: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    window: int = 0,
) -> list[LoggedRequest]:
    """The requests of ``topic`` (default: the requests topic) that carry a ts; an absent topic
    gives none. With ``window`` > 0 only the newest ``window`` records are read (`scan_topic`)."""
    from streams.kafka.clients import scan_topic
    from streams.kafka.topics import existing_topics

    topic = topic or settings.requests_topic
    if topic not in existing_topics(settings, timeout=10):
        return []
    out: list[LoggedRequest] = []
    skipped = 0

    def keep(partition: int, offset: int, value: bytes | None) -> None:
        nonlocal skipped
        req = parse_logged(value, settings.max_candidates)
        if req is None:
            skipped += 1
        else:
            out.append(req)

    scan_topic(settings, topic, keep, tail=window, progress=progress)
    if skipped:
        log.info("%d requests of %s are invalid or have no ts: not used as served lists", skipped, topic)
    return out


def label_requests(
    requests: Sequence[LoggedRequest],
    events: EventColumns,
    event_weights: Mapping[str, float],
    window_s: float,
    *,
    not_after: float = math.inf,
    label_rows: list[int] | None = None,
) -> list[LoggedRequest]:
    """Label each request with its user's events in (ts, ts + window_s] (and <= ``not_after``).

    Args:
        label_rows: When given, receives the rows of `events` that labelled a returned list's
            candidates (so a caller can hold them out of training).

    A candidate that the user took (a positive event) only after the window is not counted as
    shown-but-not-chosen: its label is NaN, and it is left out of the list. At serving time the
    candidates are items the user has not taken yet; counting these as negatives would teach
    the model to rank a user's future items low.

    Returns:
        Copies of the requests that at least one positive event followed, with `labels` set,
        oldest first.
    """
    if not len(events) or not requests:
        return []
    weight_of = np.array([float(event_weights.get(t) or 0.0) for t in events.event_types] or [0.0])
    w = weight_of[events.event_type]
    rows = np.flatnonzero(w != 0)
    order = rows[np.lexsort((events.ts[rows], events.user[rows]))]
    users, ts = events.user[order], events.ts[order]
    user_code = {u: c for c, u in enumerate(events.user_ids)}
    out: list[LoggedRequest] = []
    for req in sorted(requests, key=lambda r: r.ts):
        code = user_code.get(req.user_id)
        if code is None:
            continue
        lo, hi = np.searchsorted(users, [code, code + 1])
        a = lo + np.searchsorted(ts[lo:hi], req.ts, side="right")
        b = lo + np.searchsorted(ts[lo:hi], min(req.ts + window_s, not_after), side="right")
        if a >= b:
            continue
        label: dict[str, float] = {}
        candidates = set(req.item_ids)
        used: list[int] = []
        for row in order[a:b].tolist():
            item, weight = events.item_ids[events.item[row]], float(w[row])
            if item not in candidates:
                continue
            used.append(row)
            old = label.get(item, 0.0)
            # A positive wins over a negative; the strongest of each kind counts.
            if (weight > 0 and weight > old) or (weight < 0 and old <= 0 and weight < old):
                label[item] = weight
        # Later positives, up to not_after (what the caller knows of the future).
        c = lo + np.searchsorted(ts[lo:hi], not_after, side="right")
        later = {events.item_ids[events.item[row]] for row in order[b:c].tolist() if w[row] > 0} - label.keys()
        labels = np.array([np.nan if i in later else label.get(i, 0.0) for i in req.item_ids], dtype=np.float32)
        if (labels > 0).any():
            if label_rows is not None:
                label_rows.extend(used)
            out.append(LoggedRequest(req.request_id, req.user_id, req.ts, req.item_ids, req.scores, labels))
    return out


def split_newest(lists: Sequence[LoggedRequest], share: float) -> tuple[list[LoggedRequest], list[LoggedRequest]]:
    """(older, newest ``share``) of labelled lists by ts; the held-out part is empty for share 0."""
    ordered = sorted(lists, key=lambda r: r.ts)
    keep = len(ordered) - math.floor(len(ordered) * share)
    return ordered[:keep], ordered[keep:]


@dataclass
class ServedLists:
    """Labelled lists as padded tensors for a model.

    Attributes:
        users: [L] int64 user rows (0 = unknown). history: [L, H] int64 the user's positives
            up to the request's ts, 0-padded, most recent last. items: [L, N] int64 candidate rows
            (0 = unknown item or padding). upstream: [L, N, U] float32 `models.upstream` features.
        scores: [L, N] float64 raw upstream scores (NaN where absent or padding).
        labels: [L, N] float32 positive event weights (0 for the others). valid: [L, N] bool.
        sequence: [L, N, S] float32 transition features (`with_sequence_features`); S = 0 until
            set, and for a model without a transition table.
    """

    users: np.ndarray
    history: np.ndarray
    items: np.ndarray
    upstream: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    sequence: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def positive_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) of every positive candidate."""
        r, c = np.nonzero(self.labels > 0)
        return self.users[r], self.items[r, c]

    def take(self, rows: np.ndarray) -> ServedLists:
        """The lists at ``rows``."""
        return ServedLists(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def served_lists(
    lists: Sequence[LoggedRequest],
    events: EventColumns,
    event_weights: Mapping[str, float],
    user_index: Mapping[str, int],
    item_index: Mapping[str, int],
    history_len: int,
) -> ServedLists:
    """Tensors of labelled lists for a model with these user and item indexes.

    A list's history is its user's positive events (of items the model knows) up to the
    request's ts, as a worker would hold them.
    """
    n = max((len(r.item_ids) for r in lists), default=1)
    L, H = len(lists), history_len
    users = np.zeros(L, dtype=np.int64)
    history = np.zeros((L, H), dtype=np.int64)
    items = np.zeros((L, n), dtype=np.int64)
    scores = np.full((L, n), np.nan)
    labels = np.zeros((L, n), dtype=np.float32)
    valid = np.zeros((L, n), dtype=bool)
    weight_of = np.array([float(event_weights.get(t) or 0.0) for t in events.event_types] or [0.0])
    rows = np.flatnonzero(weight_of[events.event_type] > 0) if len(events) else np.zeros(0, dtype=np.int64)
    order = rows[np.lexsort((rows, events.ts[rows], events.user[rows]))]
    ev_users, ev_ts = events.user[order], events.ts[order]
    item_row = np.array([item_index.get(i, 0) for i in events.item_ids] or [0], dtype=np.int64)
    ev_items = item_row[events.item[order]] if order.size else np.zeros(0, dtype=np.int64)
    user_code = {u: c for c, u in enumerate(events.user_ids)}
    for r, req in enumerate(lists):
        k = len(req.item_ids)
        users[r] = user_index.get(req.user_id, 0)
        items[r, :k] = [item_index.get(i, 0) for i in req.item_ids]
        scores[r, :k] = req.scores
        valid[r, :k] = True
        if req.labels is not None:
            taken_later = np.isnan(req.labels)
            labels[r, :k] = np.where(taken_later, 0.0, np.maximum(req.labels, 0.0))
            valid[r, :k] &= ~taken_later
        code = user_code.get(req.user_id)
        if code is None:
            continue
        lo, hi = np.searchsorted(ev_users, [code, code + 1])
        # Events of the request's own second count as before it: a worker has usually applied
        # them, and stored histories (the artifact's, a replay's) hold them.
        end = lo + np.searchsorted(ev_ts[lo:hi], req.ts, side="right")
        past = ev_items[lo:end]
        past = past[past > 0][-H:]
        if past.size:
            history[r, H - past.size :] = past
    upstream = upstream_batch([scores[r, : len(req.item_ids)] for r, req in enumerate(lists)], n)
    return ServedLists(users, history, items, upstream, scores, labels, valid, np.zeros((L, n, 0), np.float32))


def with_sequence_features(
    lists: ServedLists, tables: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> ServedLists:
    """The lists with transition features (`models.sequence`) from the fold tables of their
    users (`fold_tables` over the sequences the model's table holds): a list's own user's steps,
    the one to its answer among them, are not in the table its features come from, as a served
    request's table never holds the step to an item its user has not taken yet."""
    out = lists.take(np.arange(len(lists)))
    with torch.no_grad():
        feats = fold_features(
            tables, torch.from_numpy(lists.users), torch.from_numpy(lists.history), torch.from_numpy(lists.items)
        )
    out.sequence = feats.numpy() * lists.valid[:, :, None]
    return out


def drop_pairs(lists: ServedLists, users: np.ndarray, items: np.ndarray) -> ServedLists:
    """The lists without the candidates (user row, item row) of the given pairs (e.g. the training
    validation carve-out, whose answers the lists must not teach), and without the lists that
    have no positive left; the dropped candidates become padding."""
    held = {(int(u), int(i)) for u, i in zip(users.tolist(), items.tolist(), strict=True)}
    if not held or not len(lists):
        return lists
    out = lists.take(np.arange(len(lists)))
    for r in range(len(out)):
        u = int(out.users[r])
        for j in np.flatnonzero(out.valid[r]).tolist():
            if (u, int(out.items[r, j])) in held:
                out.valid[r, j] = False
                out.labels[r, j] = 0.0
    return out.take(np.flatnonzero((out.labels > 0).any(axis=1)))


def _sequence(lists: ServedLists) -> torch.Tensor | None:
    """The lists' own transition features for the model, None when they have none."""
    return torch.from_numpy(lists.sequence) if lists.sequence.shape[-1] else None


def list_loss(model: Reranker, users: torch.Tensor, batch: ServedLists) -> torch.Tensor:
    """List-wise softmax loss over served lists: each list's positives, weighted by their labels,
    against every other candidate of the list.

    Args:
        users: [L, D] the users' vectors (differentiable when the user table trains).
        batch: The lists, every one with a positive.
    """
    items = torch.from_numpy(batch.items)
    s = model(users, torch.from_numpy(batch.history), items, torch.from_numpy(batch.upstream), _sequence(batch))
    s = s.masked_fill(~torch.from_numpy(batch.valid), -torch.inf)
    y = torch.from_numpy(batch.labels)
    logp = torch.log_softmax(s, dim=1)
    per_list = -(y * logp.masked_fill(y == 0, 0.0)).sum(1) / y.sum(1).clamp_min(1e-12)
    return per_list.mean()


def _ndcg(order: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Binary NDCG@k of one ranking (indexes best first) against relevant [n] bool."""
    gains = relevant[order[:k]].astype(np.float64)
    dcg = float((gains / np.log2(np.arange(2, gains.size + 2))).sum())
    ideal = min(int(relevant.sum()), k)
    return dcg / float((1.0 / np.log2(np.arange(2, ideal + 2))).sum()) if ideal else 0.0


@torch.no_grad()
def list_scores(model: Reranker, lists: ServedLists, batch_size: int = 256) -> np.ndarray:
    """[L, N] model scores of the lists, rounded as the worker rounds them."""
    was_training = model.training
    model.eval()
    uv = model.user_vectors()
    out = []
    for a in range(0, len(lists), batch_size):
        b = lists.take(np.arange(a, min(a + batch_size, len(lists))))
        users = uv[torch.from_numpy(b.users)]
        s = model(
            users, torch.from_numpy(b.history), torch.from_numpy(b.items), torch.from_numpy(b.upstream), _sequence(b)
        )
        out.append(s.double().numpy())
    model.train(was_training)
    width = lists.items.shape[1]
    return np.round(np.concatenate(out), SCORE_DECIMALS) if out else np.zeros((0, width))


def evaluate_lists(model: Reranker | None, lists: ServedLists, k: int = 10) -> dict[str, float]:
    """NDCG@k of the model's order and of the upstream order on labelled lists.

    The model's order breaks ties as the worker does (`rank_order`); the upstream order is the
    candidates by upstream score, then request order. With ``model`` None only the upstream
    order is measured.

    Returns:
        {"ndcg@k" (NaN without a model), "upstream_ndcg@k", "lists"}; NaN metrics for no list.
    """
    if not len(lists):
        return {f"ndcg@{k}": math.nan, f"upstream_ndcg@{k}": math.nan, "lists": 0}
    scores = list_scores(model, lists) if model is not None else None
    mine, theirs = [], []
    for r in range(len(lists)):
        # Left-out candidates (taken later, or padding) are not ranked; the others keep their order.
        idx = np.flatnonzero(lists.valid[r])
        relevant = lists.labels[r, idx] > 0
        up = lists.scores[r, idx]
        theirs.append(_ndcg(rank_order(np.zeros(idx.size), up), relevant, k))
        if scores is not None:
            mine.append(_ndcg(rank_order(scores[r, idx], up), relevant, k))
    return {
        f"ndcg@{k}": float(np.mean(mine)) if mine else math.nan,
        f"upstream_ndcg@{k}": float(np.mean(theirs)),
        "lists": len(lists),
    }
