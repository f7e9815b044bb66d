"""The documented JSON Schemas match what the service accepts and produces."""

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from streams.core.processing import DictStateStore, InMessage, Processor
from streams.devtools.synthetic import generate_events, generate_requests, make_world
from streams.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def test_generated_inputs_and_produced_outputs_validate(bundle) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env={})
    world = make_world(20, 30, 3, seed=1)
    events = generate_events(world, 50, seed=2, start_ts=1.75e9)
    requests = generate_requests(world, 10, n_candidates=8, seed=3, k=4)
    for event in events:
        validator("user-event").validate(event)
    for request in requests:
        validator("rerank-request").validate(request)
    bad = InMessage(settings.requests_topic, 0, 1, None, b"u", orjson.dumps({"request_id": "x", "user_id": "u"}))
    outputs = Processor(bundle, settings, DictStateStore()).process(
        [InMessage(settings.events_topic, None, None, None, None, orjson.dumps(e)) for e in events]
        + [InMessage(settings.requests_topic, None, None, None, None, orjson.dumps(r)) for r in requests]
        + [bad]
    )
    results = [orjson.loads(o.value) for o in outputs if o.topic == settings.results_topic]
    letters = [orjson.loads(o.value) for o in outputs if o.topic == settings.dead_letter_topic]
    assert len(results) == 11 and len(letters) == 1
    for result in results:
        validator("reranked-result").validate(result)
    validator("dead-letter").validate(letters[0])


def test_a_truncated_dead_letter_validates_and_says_so(bundle) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env={})
    big = InMessage(settings.events_topic, 0, 1, None, b"u", b"\xff" * 950_000)
    (out,) = Processor(bundle, settings, DictStateStore()).process([big])
    letter = orjson.loads(out.value)
    validator("dead-letter").validate(letter)
    assert letter["raw_truncated"] is True and letter["raw_bytes"] == 950_000
    with pytest.raises(jsonschema.ValidationError):
        validator("dead-letter").validate({k: v for k, v in letter.items() if k != "raw_truncated"})


def test_schemas_reject_what_the_parser_rejects() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator("rerank-request").validate({"request_id": "r", "user_id": "u", "candidates": []})
    with pytest.raises(jsonschema.ValidationError):
        validator("user-event").validate({"user_id": "u", "item_id": "i", "event_type": "click"})


def test_the_dead_letter_schema_lists_every_reason_the_worker_uses() -> None:
    from streams.core.worker_metrics import DEAD_LETTER_REASONS

    schema = json.loads((SCHEMAS / "dead-letter.schema.json").read_text())
    assert schema["properties"]["reason"]["enum"] == list(DEAD_LETTER_REASONS)


def test_a_stale_answer_says_so_and_validates(bundle) -> None:  # type: ignore[no-untyped-def]
    settings = Settings()
    request = {"request_id": "r1", "user_id": "u1", "candidates": [{"item_id": bundle.item_ids[1]}]}
    message = InMessage(settings.requests_topic, 0, 0, None, b"u1", orjson.dumps(request), stale=True)
    processor = Processor(bundle, settings, DictStateStore())
    (out,) = processor.process([message])
    result = orjson.loads(out.value)
    assert result["stale"] is True
    validator("reranked-result").validate(result)
    fresh = orjson.loads(
        processor.process([InMessage(settings.requests_topic, 0, 1, None, b"u1", message.value)])[0].value
    )
    assert "stale" not in fresh
    assert processor.metrics.stale_answers._value.get() == 1
