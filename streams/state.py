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
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import orjson

from models import ModelBundle, online_update


@dataclass
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
    """

    vector: np.ndarray
    history: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    model_version: str = ""
    last_ts: float = 0.0
    last_offset: int | None = None


def encode_state(state: UserState) -> bytes:
    return orjson.dumps({
        "v": base64.b64encode(np.ascontiguousarray(state.vector, dtype=np.float32).tobytes()).decode(),
        "h": state.history,
        "c": state.counts,
        "n": state.applied,
        "m": state.model_version,
        "t": state.last_ts,
        "o": state.last_offset,
    })


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
    vector = bundle.model.user_vectors()[row].detach().cpu().numpy().astype(np.float32, copy=True)
    history = [bundle.item_ids[r] for r in bundle.user_history[row] if r > 0]
    return UserState(vector=vector, history=history, model_version=bundle.version)


def history_rows(bundle: ModelBundle, history: list[str]) -> np.ndarray:
    """[H] int64 item rows for the model, 0-padded on the left, most recent last; unknown ids -> 0."""
    length = bundle.history_len
    rows = np.zeros(length, dtype=np.int64)
    recent = history[-length:]
    if recent:
        rows[length - len(recent):] = [bundle.item_index.get(item, 0) for item in recent]
    return rows


def already_trained(trained_through: Mapping[str, Any], topic: str | None, partition: int | None,
                    offset: int | None, ts: float) -> bool:
    """Whether the model already learned from this event.

    Kafka positions are exact and preferred: they apply when the model was
    trained from this topic and the event's position is known. Otherwise the
    model's timestamp watermark decides (events at or before it count as
    learned).
    """
    offsets = trained_through.get("offsets")
    if offsets and topic is not None and topic == trained_through.get("topic") \
            and partition is not None and offset is not None:
        return offset < int(offsets.get(str(partition), 0))
    max_ts = trained_through.get("max_ts")
    return max_ts is not None and ts <= float(max_ts)


def update_seed(user_id: str, applied: int) -> int:
    """Deterministic per-user, per-event seed (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"{user_id}\x00{applied}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def apply_event(bundle: ModelBundle, state: UserState, user_id: str, item_id: str, event_type: str, ts: float,
                weight: float, *, online: bool, steps: int, lr: float, negatives: int,
                offset: int | None = None) -> UserState:
    """Apply one interaction to a user's state and return the new state.

    A learning step moves the user vector towards the item (away from it for
    negative feedback) against the model's item representations; positive
    interactions also enter the history.
    """
    vector = state.vector
    item_row = bundle.item_index.get(item_id, 0)
    if online and item_row and weight != 0.0:
        vector = online_update(bundle, vector, history_rows(bundle, state.history), item_row, weight,
                               seed=update_seed(user_id, state.applied),
                               steps=steps, lr=lr, n_negatives=negatives)
    history = state.history
    if weight > 0:
        history = (history + [item_id])[-bundle.history_len:]
    counts = dict(state.counts)
    counts[event_type] = counts.get(event_type, 0) + 1
    return UserState(vector=vector, history=history, counts=counts, applied=state.applied + 1,
                     model_version=state.model_version, last_ts=max(state.last_ts, ts),
                     last_offset=offset if offset is not None else state.last_offset)

