"""Micro-batches from a faust stream without a timer: a batch is what has already arrived.

faust's ``Stream.take_events(max_, within)`` hands over a batch on a fixed tick
(every ``within`` seconds) unless it fills first. At moderate rates that holds
every message for half a tick on average, and an idle worker wakes up on every
tick. ``take_available`` waits for the first message, lets the stream move into
the batch whatever is already queued behind it (those messages came in the same
fetch or while the previous batch was being handled), and hands the batch over
as soon as nothing more is immediately available, the batch is full, or
``within`` has passed. Under load batches grow on their own, because messages
queue up while a batch is being handled; a lone message goes out at once.

Acknowledgements are as in ``take_events``: a batch's events are acknowledged
(their offsets become committable) only after the consumer of the batch has
finished with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT, StreamT
from mode.utils.aiter import aiter

from streams.worker.faust_hooks import drain_in_background

# Turns of the event loop without a new message after which a batch is closed.
QUIET_TURNS = 16


async def take_available(stream: StreamT, max_: int, within: float, *, ack: bool = True) -> AsyncIterator[list[EventT]]:
    """Yield lists of at most ``max_`` events: each one what had arrived when it was handed over.

    Args:
        stream: the agent's stream.
        max_: most events in one batch.
        within: longest time, in seconds, spent gathering one batch once its first event is in.
        ack: acknowledge a batch's events once its consumer is done with it; False: the consumer
            acknowledges each event itself (``stream.ack``), when it is done with that one.
    """
    loop = asyncio.get_running_loop()
    events: list[EventT] = []
    has_events = asyncio.Event()
    # Cleared while a batch is out (so it cannot change under its consumer) or full.
    room = asyncio.Event()
    room.set()

    async def add_to_buffer(value: Any) -> Any:
        while not room.is_set():
            # stream.wait returns early when the stream stops, so a shutdown never hangs here.
            if (await stream.wait(room)).stopped:  # type: ignore[attr-defined]  # on Stream (a mode Service), not StreamT
                return value
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_available found no current event")
        events.append(event)
        has_events.set()
        if len(events) >= max_:
            room.clear()
        return value

    # The batch's consumer acknowledges; the stream must not do it as each event passes.
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    drain_in_background(stream, aiter(stream.channel))
    while not stream.should_stop:
        if await stream.wait_for_stopped(has_events):  # type: ignore[attr-defined]  # as above
            break
        if not events:
            continue
        deadline = loop.time() + within
        idle_turns = 0
        # Each turn of the event loop lets the stream move queued messages into the batch. faust
        # hands a fetched message to the stream through a task, which takes more than one turn,
        # so the batch is closed only after a few turns in a row added nothing.
        while idle_turns < QUIET_TURNS and len(events) < max_ and loop.time() < deadline:
            seen = len(events)
            await asyncio.sleep(0)
            idle_turns = idle_turns + 1 if len(events) == seen else 0
        room.clear()
        batch = list(events)
        try:
            yield batch
        finally:
            events.clear()
            has_events.clear()
            if ack:
                for event in batch:
                    await stream.ack(event)
            room.set()
