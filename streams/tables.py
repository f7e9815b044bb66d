"""The changelog-backed table of user states, and its adapter to processing.StateStore."""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import faust
from faust import streams as faust_streams
from faust.types import EventT

from streams.processing import InMessage
from streams.settings import Settings
from streams.state import UserState, decode_state, encode_state

USER_STATE_TABLE = "user-state"


def define_user_state_table(app: faust.App, settings: Settings) -> faust.Table:
    """Table user_id (bytes) -> encoded UserState, partitioned like the input topics."""
    # bytes key and value types make faust use the "raw" codec for the table and its changelog.
    return app.Table(USER_STATE_TABLE, default=None, partitions=settings.partitions,
                     key_type=bytes, value_type=bytes, help="Per-user online state of the re-ranker.")


@contextlib.contextmanager
def _as_current_event(event: EventT | None) -> Iterator[None]:
    # faust picks a table write's changelog partition (and RocksDB picks the
    # per-partition database on reads and writes) from the "current event".
    # The agent works on batches, where that is the last event taken, not the
    # one being handled, so it is set for each access.
    if event is None:
        yield
        return
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


class TableStateStore:
    """processing.StateStore over a faust Table."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        with _as_current_event(source.handle):  # type: ignore[arg-type]
            raw = self.table.get(user_id.encode())
        return decode_state(raw) if raw is not None else None

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        with _as_current_event(source.handle):  # type: ignore[arg-type]
            self.table[user_id.encode()] = encode_state(state)
