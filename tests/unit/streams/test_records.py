import math

import orjson
import pytest

from streams.core.records import (
    ContractError,
    encode_error_result,
    encode_result,
    parse_event,
    parse_request,
    recover_request_id,
)
from streams.settings import DEFAULT_EVENT_WEIGHTS


def event(**fields):  # type: ignore[no-untyped-def]
    base = {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 10}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def request(**fields):  # type: ignore[no-untyped-def]
    base = {"request_id": "r1", "user_id": "u1", "candidates": [{"item_id": "a"}, {"item_id": "b", "score": 0.5}]}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_event_with_integer_ids() -> None:
    parsed = parse_event(event(user_id=7, item_id=42, value=4.5, request_id="r9"), event_types=DEFAULT_EVENT_WEIGHTS)
    assert (parsed.user_id, parsed.item_id, parsed.event_type, parsed.ts) == ("7", "42", "click", 10.0)
    assert parsed.value == 4.5 and parsed.request_id == "r9"


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_type"),
        (event(user_id=...), "missing_field"),
        (event(item_id=None), "missing_field"),
        (event(event_type="teleport"), "unknown_event_type"),
        (event(event_type=3), "missing_field"),
        (event(ts="yesterday"), "invalid_field"),
        (event(user_id=True), "invalid_field"),
        (event(user_id=""), "invalid_field"),
        (event(value=[1]), "invalid_field"),
        (b'{"user_id":"u","item_id":"i","event_type":"click","ts":NaN}', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw: bytes, code: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_event(raw, event_types=DEFAULT_EVENT_WEIGHTS)
    assert info.value.code == code


def test_oversize_message_is_rejected() -> None:
    with pytest.raises(ContractError) as info:
        parse_event(event(item_id="x" * 200), event_types=DEFAULT_EVENT_WEIGHTS, max_bytes=100)
    assert info.value.code == "too_large"


def test_valid_request() -> None:
    parsed = parse_request(request(k=1, ts=5, context={"page": "home"}), max_candidates=10)
    assert parsed.request_id == "r1" and parsed.k == 1 and parsed.context == {"page": "home"}
    assert [(c.item_id, c.score) for c in parsed.candidates] == [("a", None), ("b", 0.5)]


@pytest.mark.parametrize(
    "raw, code",
    [
        (request(candidates=[]), "no_candidates"),
        (request(candidates=...), "no_candidates"),
        (request(candidates=[{"item_id": "a"}, {"item_id": "a"}]), "duplicate_candidates"),
        (request(candidates=[{"item_id": str(i)} for i in range(11)]), "too_many_candidates"),
        (request(candidates=["a"]), "invalid_field"),
        (request(candidates=[{"item_id": "a", "score": "high"}]), "invalid_field"),
        (request(k=0), "invalid_field"),
        (request(k=2.5), "invalid_field"),
        (request(context="x"), "invalid_field"),
        (request(request_id=...), "missing_field"),
    ],
)
def test_bad_requests_keep_their_request_id(raw: bytes, code: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_request(raw, max_candidates=10)
    assert info.value.code == code
    expected_id = orjson.loads(raw).get("request_id")
    assert info.value.request_id == expected_id


def test_non_finite_scores_are_rejected() -> None:
    # JSON has no NaN literal, but a float that overflows to inf is valid JSON.
    raw = b'{"request_id":"r","user_id":"u","candidates":[{"item_id":"a","score":1e999}]}'
    with pytest.raises(ContractError) as info:
        parse_request(raw, max_candidates=10)
    assert info.value.code in ("invalid_field", "invalid_json")


def test_recover_request_id() -> None:
    assert recover_request_id(b'{"request_id": 5, "user_id": "u"}') == ("5", "u")
    assert recover_request_id(b"garbage") == (None, None)
    assert recover_request_id(b'{"request_id": {"x": 1}}') == (None, None)


def test_result_encoding() -> None:
    result = orjson.loads(encode_result("r", "u", [("a", 2.0), ("b", 1.0)], "dnn", "v1", 3.0))
    assert result["items"] == [{"item_id": "a", "score": 2.0, "rank": 1}, {"item_id": "b", "score": 1.0, "rank": 2}]
    assert result["model"] == {"name": "dnn", "version": "v1"} and "error" not in result
    error = orjson.loads(encode_error_result("r", None, "no_candidates", "empty", "dnn", "v1", 3.0))
    assert error["error"] == {"code": "no_candidates", "message": "empty"} and error["items"] == []
    assert not math.isnan(result["ts"])


def test_an_oversize_request_still_names_its_request_id() -> None:
    raw = request(context={"blob": "x" * 500})
    with pytest.raises(ContractError) as info:
        parse_request(raw, max_candidates=10, max_bytes=200)
    assert info.value.code == "too_large" and info.value.request_id == "r1"
