"""An event time from the future, or in milliseconds, is refused: it would pass the time watermark
(``max_ts``) of a model trained on it and mark every later live event as already learned."""

import dataclasses

import orjson
import pytest

from streams.core.processing import DictStateStore, InMessage, Processor
from streams.core.records import ContractError, parse_event
from streams.settings import DEFAULT_EVENT_WEIGHTS, Settings

NOW = 1_750_000_000.0


def event(ts: float, user: str = "u1") -> bytes:
    return orjson.dumps({"user_id": user, "item_id": "i00001", "event_type": "click", "ts": ts})


def test_parse_event_refuses_milliseconds_and_times_beyond_the_skew() -> None:
    with pytest.raises(ContractError, match="milliseconds") as exc:
        parse_event(event(NOW * 1000), event_types=DEFAULT_EVENT_WEIGHTS)
    assert exc.value.code == "bad_timestamp" and exc.value.user_id == "u1"
    with pytest.raises(ContractError, match="future") as exc:
        parse_event(event(NOW + 301), event_types=DEFAULT_EVENT_WEIGHTS, not_after=NOW + 300)
    assert exc.value.code == "bad_timestamp"
    for ts in (0.0, NOW - 86400, NOW + 300):
        assert parse_event(event(ts), event_types=DEFAULT_EVENT_WEIGHTS, not_after=NOW + 300).ts == ts


def test_the_processor_dead_letters_bad_timestamps_by_its_clock(bundle) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(Settings.load(env={}), max_clock_skew_s=300.0)
    store = DictStateStore()
    processor = Processor(bundle, settings, store, clock=lambda: NOW)
    messages = [
        InMessage(settings.events_topic, 0, offset, None, b"u1", value)
        for offset, value in enumerate((event(NOW * 1000), event(NOW + 3600), event(NOW + 10)))
    ]
    outputs = processor.process(messages)
    letters = [orjson.loads(o.value) for o in outputs if o.topic == settings.dead_letter_topic]
    assert [(d["offset"], d["reason"]) for d in letters] == [(0, "bad_timestamp"), (1, "bad_timestamp")]
    assert "milliseconds" in letters[0]["error"]
    assert processor.metrics.dead_letters.labels("bad_timestamp")._value.get() == 2
    assert processor.metrics.events.labels("invalid", "bad_timestamp")._value.get() == 2
    # Only the plausible event reached the state.
    assert store.states["u1"].last_ts == NOW + 10 and store.states["u1"].last_offset == 2
