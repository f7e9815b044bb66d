"""The changelog-backed table of user states, and its adapter to processing.StateStore."""

from __future__ import annotations

import faust
from faust.types import TableT

from streams.core.processing import InMessage
from streams.core.state import UserState, decode_state, encode_state
from streams.settings import Settings
from streams.worker.faust_hooks import as_current_event

USER_STATE_TABLE = "user-state"


def define_user_state_table(app: faust.App, settings: Settings) -> TableT:
    """Table user_id (bytes) -> encoded UserState, partitioned like the input topics."""
    # bytes key and value types make faust use the "raw" codec for the table and its changelog.
    return app.Table(
        USER_STATE_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help="Per-user online state of the re-ranker.",
    )


class TableStateStore:
    """processing.StateStore over a faust Table."""

    def __init__(self, table: TableT) -> None:
        self.table = table

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        with as_current_event(source.handle):  # type: ignore[arg-type]
            raw = self.table.get(user_id.encode())
        return decode_state(raw) if raw is not None else None

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        with as_current_event(source.handle):  # type: ignore[arg-type]
            self.table[user_id.encode()] = encode_state(state)
