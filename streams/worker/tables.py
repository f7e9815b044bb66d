"""The changelog-backed table of user states, and its adapter to processing.StateStore."""

from __future__ import annotations

import os
import signal

import faust
from faust.types import TableT

from streams.core.processing import InMessage
from streams.core.state import UserState, decode_state, encode_state
from streams.settings import Settings
from streams.worker.faust_hooks import as_current_event

USER_STATE_TABLE = "user-state"

# Fault injection for the reliability tests, inert unless set: the worker SIGKILLs itself right
# after it writes this user's state to its local store, before faust sends the changelog record
# of the write (a table write queues that record, sent later from the producer's buffer). This is
# the crash window that docs/RELIABILITY.md describes and tests/integration/test_state_rewrite.py
# reproduces. Never set it in production.
FAULT_KILL_AFTER_STATE_WRITE_ENV = "RERANKER_FAULT_KILL_AFTER_STATE_WRITE"


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
        # See FAULT_KILL_AFTER_STATE_WRITE_ENV.
        self.kill_after_writing = os.environ.get(FAULT_KILL_AFTER_STATE_WRITE_ENV) or None

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        with as_current_event(source.handle):  # type: ignore[arg-type]
            raw = self.table.get(user_id.encode())
        return decode_state(raw) if raw is not None else None

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        with as_current_event(source.handle):  # type: ignore[arg-type]
            self.table[user_id.encode()] = encode_state(state)
        if user_id == self.kill_after_writing:
            # No await since the write: the changelog record is still in the producer's buffer.
            os.kill(os.getpid(), signal.SIGKILL)
