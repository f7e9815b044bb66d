"""Per-user state: an online-learned user vector, the recent item history and counts.

State is built from the serving model for everything the model was trained on
(its user vector and history at training time), and online updates apply only
to events after the model's training watermark, so nothing is learned twice.
Online updates are seeded per user and per event count, so replaying the same
events gives the same state.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models import ModelBundle, online_update_batch


@dataclass(slots=True)
class UserState:
    """What a worker keeps for one user.

    Attributes:
        vector: [D] float32 user vector, updated online.
        history: recent positive item ids, oldest first, at most the model's history length.
        counts: events applied per event type (after the model's watermark).
        applied: number of events applied online; part of each update's seed.
        model_version: version of the model whose space ``vector`` lives in.
        last_ts: ts of the last event applied.
        last_offset: Kafka offset of the last event applied (a user's events all come from one
            partition), so an event redelivered after a crash is not learned twice.
        rows_memo: (`rows_key` of a model, `history_rows` of ``history`` for it), carried from
            state to state by `apply_events` so that an update looks up one new item, not the
            whole history; not part of the state's value (neither compared nor encoded).
    """

    vector: np.ndarray
    history: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    model_version: str = ""
    last_ts: float = 0.0
    last_offset: int | None = None
    rows_memo: tuple[tuple[str, int], np.ndarray] | None = field(default=None, compare=False, repr=False)


def encode_state(state: UserState) -> bytes:
    return orjson.dumps(
        {
            "v": base64.b64encode(np.ascontiguousarray(state.vector, dtype=np.float32).tobytes()).decode(),
            "h": state.history,
            "c": state.counts,
            "n": state.applied,
            "m": state.model_version,
            "t": state.last_ts,
            "o": state.last_offset,
        }
    )


def decode_state(raw: bytes) -> UserState:
    obj = orjson.loads(raw)
    return UserState(
        vector=np.frombuffer(base64.b64decode(obj["v"]), dtype=np.float32).copy(),
        history=list(obj["h"]),
        counts=dict(obj["c"]),
        applied=int(obj["n"]),
        model_version=str(obj["m"]),
        last_ts=float(obj["t"]),
        last_offset=obj.get("o"),
    )


def initial_state(bundle: ModelBundle, user_id: str) -> UserState:
    """State as of the model's training: its learned vector and history, or zeros for a new user."""
    row = bundle.user_index.get(user_id, 0)
    vectors = bundle.cache.get("user_vectors")
    if vectors is None:
        # Every user met for the first time starts here: indexing the torch weights each time
        # cost more than the rest of the state.
        vectors = bundle.cache["user_vectors"] = bundle.model.user_vectors().cpu().numpy()
    vector = np.array(vectors[row], dtype=np.float32)
    item_ids = bundle.item_ids
    history = [item_ids[r] for r in bundle.user_history[row].tolist() if r > 0]
    return UserState(vector=vector, history=history, model_version=bundle.version)


def history_rows(bundle: ModelBundle, history: list[str]) -> np.ndarray:
    """[H] int64 item rows for the model, 0-padded on the left, most recent last; unknown ids -> 0."""
    length = bundle.history_len
    rows = np.zeros(length, dtype=np.int64)
    recent = history[-length:]
    if recent:
        rows[length - len(recent) :] = [bundle.item_index.get(item, 0) for item in recent]
    return rows


def rows_key(bundle: ModelBundle) -> tuple[str, int]:
    """What a history's item rows depend on: the model, and how many items it has (items from
    the items topic get new rows appended, `ModelBundle.register_items`; no row ever changes)."""
    return bundle.version, len(bundle.item_ids)


def _memo_rows(bundle: ModelBundle, state: UserState) -> np.ndarray | None:
    memo = state.rows_memo
    return memo[1] if memo is not None and memo[0] == rows_key(bundle) else None


def state_history_rows(bundle: ModelBundle, state: UserState) -> np.ndarray:
    """`history_rows` of the state's history for ``bundle`` (from its memo when it has one)."""
    rows = _memo_rows(bundle, state)
    return rows if rows is not None else history_rows(bundle, state.history)


def already_trained(
    trained_through: Mapping[str, Any], topic: str | None, partition: int | None, offset: int | None, ts: float
) -> bool:
    """Whether the model already learned from this event.

    Kafka positions are exact and preferred: they apply when the model was
    trained from this topic and the event's position is known. Otherwise the
    model's timestamp watermark decides (events at or before it count as
    learned).
    """
    offsets = trained_through.get("offsets")
    if (
        offsets
        and topic is not None
        and topic == trained_through.get("topic")
        and partition is not None
        and offset is not None
    ):
        return offset < int(offsets.get(str(partition), 0))
    max_ts = trained_through.get("max_ts")
    return max_ts is not None and ts <= float(max_ts)


def update_seed(user_id: str, applied: int) -> int:
    """Deterministic per-user, per-event seed (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"{user_id}\x00{applied}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class Interaction:
    """One event to apply to a user's state (the arguments of `apply_event`, as a record).

    Attributes:
        user_id: The user; with the state's `applied` count it seeds the online update.
        item_id: The item interacted with.
        event_type: Counted in the state's `counts`.
        ts: Event time; `last_ts` keeps the largest.
        weight: > 0 positive (enters the history), < 0 explicit negative, 0 counted only.
        offset: Kafka offset, kept as `last_offset`; None keeps the previous one.
    """

    user_id: str
    item_id: str
    event_type: str
    ts: float
    weight: float
    offset: int | None = None


def apply_event(
    bundle: ModelBundle,
    state: UserState,
    user_id: str,
    item_id: str,
    event_type: str,
    ts: float,
    weight: float,
    *,
    online: bool,
    steps: int,
    lr: float,
    negatives: int,
    offset: int | None = None,
) -> UserState:
    """Apply one interaction to a user's state and return the new state.

    A learning step moves the user vector towards the item (away from it for
    negative feedback) against the model's item representations; positive
    interactions also enter the history. `apply_events` with one row.
    """
    [updated] = apply_events(
        bundle,
        [state],
        [Interaction(user_id, item_id, event_type, ts, weight, offset)],
        online=online,
        steps=steps,
        lr=lr,
        negatives=negatives,
    )
    return updated


def apply_events(
    bundle: ModelBundle,
    states: Sequence[UserState],
    interactions: Sequence[Interaction],
    *,
    online: bool,
    steps: int,
    lr: float,
    negatives: int,
) -> list[UserState]:
    """Apply interaction i to states[i], for every i, with one batched online update.

    Rows are independent: result i is bit for bit what `apply_event` gives for that state and
    interaction alone, whatever the other rows hold (`online_update_batch` guarantees it for the
    vectors). A user's successive events therefore go in successive calls, each on the state the
    previous one returned.

    Args:
        bundle: The serving model.
        states: B current states.
        interactions: B events, interactions[i] for states[i].
        online: Whether vectors learn; False still advances history, counts and the rest.
        steps: Gradient steps per event.
        lr: Step size.
        negatives: Sampled negatives per positive event.

    Returns:
        B new states (the inputs are not modified).
    """
    if len(states) != len(interactions):
        raise ValueError(f"{len(states)} states for {len(interactions)} interactions")
    vectors = [state.vector for state in states]
    rows = [bundle.item_index.get(it.item_id, 0) for it in interactions]
    learn = [i for i, (row, it) in enumerate(zip(rows, interactions)) if online and row and it.weight != 0.0]
    histories = {i: state_history_rows(bundle, states[i]) for i in learn}
    if learn:
        learned = online_update_batch(
            bundle,
            np.stack([np.asarray(states[i].vector, dtype=np.float32).reshape(-1) for i in learn]),
            np.stack([histories[i] for i in learn]),
            np.array([rows[i] for i in learn], dtype=np.int64),
            np.array([interactions[i].weight for i in learn], dtype=np.float64),
            [update_seed(interactions[i].user_id, states[i].applied) for i in learn],
            steps=steps,
            lr=lr,
            n_negatives=negatives,
        )
        for k, i in enumerate(learn):
            vectors[i] = learned[k].copy()  # its own buffer, not a view pinning the whole batch
    return [
        _advanced(bundle, state, it, vector, row, histories.get(i))
        for i, (state, it, vector, row) in enumerate(zip(states, interactions, vectors, rows))
    ]


def _advanced(
    bundle: ModelBundle,
    state: UserState,
    it: Interaction,
    vector: np.ndarray,
    row: int,
    history_of_state: np.ndarray | None,
) -> UserState:
    """The state after `it`, with `vector` as its (already updated) user vector.

    Args:
        row: The model's row of ``it.item_id`` (0 when unknown).
        history_of_state: `history_rows` of ``state.history`` when the caller has it, for the
            new state's memo.
    """
    history = state.history
    rows = history_of_state if history_of_state is not None else _memo_rows(bundle, state)
    if it.weight > 0:
        history = (history + [it.item_id])[-bundle.history_len :]
        if rows is not None and len(rows):
            # The history's last H items, 0-padded on the left: one place left, the new item last.
            shifted = np.empty_like(rows)
            shifted[:-1] = rows[1:]
            shifted[-1] = row
            rows = shifted
    counts = dict(state.counts)
    counts[it.event_type] = counts.get(it.event_type, 0) + 1
    return UserState(
        vector=vector,
        history=history,
        counts=counts,
        applied=state.applied + 1,
        model_version=state.model_version,
        last_ts=max(state.last_ts, it.ts),
        last_offset=it.offset if it.offset is not None else state.last_offset,
        rows_memo=(rows_key(bundle), rows) if rows is not None else None,
    )


class RecentStates:
    """The decoded states of the users most recently used, at most ``max_users`` of
    them (0 keeps none), each with the store partition it belongs to.

    Decoding a state from the store took about a tenth of a worker's time per event; a user's
    next event or request finds it here instead. The owner keeps it equal to the store: every
    state it writes is put here, and it clears this whenever the store may change under it (a
    rebalance: a partition that was away may come back with another worker's writes). States are
    shared, not copied: nothing modifies a UserState in place (`apply_events` returns new ones).
    The least recently put state goes first when it is full.
    """

    def __init__(self, max_users: int) -> None:
        self.max_users = max(0, max_users)
        # An OrderedDict, not a dict: taking the first key of a dict whose front entries were
        # deleted scans past them, 12.6 us a put once it is full (0.75 us here).
        self._states: OrderedDict[str, tuple[int, UserState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, user_id: str, partition: int) -> UserState | None:
        hit = self._states.get(user_id)
        return hit[1] if hit is not None and hit[0] == partition else None

    def put(self, user_id: str, partition: int, state: UserState) -> None:
        if not self.max_users:
            return
        states = self._states
        states[user_id] = (partition, state)
        states.move_to_end(user_id)  # the order is the order of use
        if len(states) > self.max_users:
            states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()
