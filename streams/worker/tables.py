"""The changelog-backed table of user states, and its adapter to processing.StateStore."""

from __future__ import annotations

import faust
from faust.types import TableT

from streams.core.processing import InMessage
from streams.core.state import RecentStates, UserState, decode_state
from streams.settings import Settings
from streams.worker.faust_hooks import as_partition, read_table_value

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


class TableStates:
    """Reads of the user-state table's store (under the partition of the message they serve),
    with the users' recent states kept decoded (`RecentStates`, ``settings.state_cache_users``).

    Writes go through `ChunkStore.flush` (streams/worker/consuming.py), which puts what it wrote
    in ``recent``; the worker clears ``recent`` at every rebalance (streams/worker/agents.py).
    """

    def __init__(self, table: TableT, max_users: int) -> None:
        self.table = table
        self.recent = RecentStates(max_users)

    def read(self, user_id: str, source: InMessage, *, remember: bool = True) -> UserState | None:
        """The user's state (None when the store has none); ``remember`` keeps a state read from
        the store in ``recent`` (the events path does not: it puts the state it writes)."""
        partition = source.partition or 0
        state = self.recent.get(user_id, partition)
        if state is not None:
            return state
        with as_partition(source.topic, partition):
            raw = read_table_value(self.table, user_id.encode())
        if raw is None:
            return None
        state = decode_state(raw)
        if remember:
            self.recent.put(user_id, partition, state)
        return state


class TableStateStore:
    """processing.StateStore over the table for the request path, which only reads: states
    are written by the events path (streams/worker/consuming.py, ``ChunkStore``), a chunk at a time."""

    def __init__(self, states: TableStates) -> None:
        self.states = states

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        return self.states.read(user_id, source)

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        raise RuntimeError(
            f"state of {user_id} written outside the events path (message {source.topic}[{source.partition}]"
            f"@{source.offset}): only ChunkStore writes states"
        )
