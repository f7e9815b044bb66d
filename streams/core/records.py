"""Strict parsing and encoding of the messages on the service's topics.

The contract is the JSON Schemas in docs/schemas/. Parsing is explicit, not
left to faust's deserializer, so that a malformed message becomes a clear
error (dead letter and, for a request, an error result) instead of an
exception inside the agent, which faust would acknowledge and silently drop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, overload

import orjson

from streams.settings import DIVERSITY_METHODS, DIVERSITY_SIMILARITIES

__all__ = [
    "ContractError",
    "DiversitySpec",
    "ParsedRequest",
    "RankingRules",
    "UserEvent",
    "check_event_ts",
    "check_key",
    "encode_error_result",
    "encode_result",
    "parse_event",
    "parse_item",
    "parse_request",
    "recover_request_id",
]


@dataclass(slots=True)
class UserEvent:
    """A validated interaction from ``user-events`` (docs/schemas/user-event.schema.json)."""

    user_id: str
    item_id: str
    event_type: str
    ts: float
    value: float | None = None
    request_id: str | None = None


# Every code a ContractError carries, by the message kind that can raise it: the worker
# starts its counters at 0 for each (streams/core/worker_metrics.py), so a dead-letter rate
# reads 0 rather than "no data" before the first bad message. tests/unit/streams/test_metrics.py
# checks that every code raised in this module is listed.
COMMON_ERROR_CODES = (
    "empty",
    "too_large",
    "invalid_json",
    "invalid_type",
    "missing_field",
    "invalid_field",
    "key_mismatch",
)
REQUEST_ERROR_CODES = (
    *COMMON_ERROR_CODES,
    "no_candidates",
    "too_many_candidates",
    "duplicate_candidates",
    "invalid_rules",
    "invalid_diversity",
)
EVENT_ERROR_CODES = (*COMMON_ERROR_CODES, "unknown_event_type", "bad_timestamp")

# No event time in seconds reaches this before the year 5138, while every millisecond time since
# March 1973 exceeds it: a larger ts is a producer sending milliseconds.
MILLISECOND_TS_FLOOR = 1e11


class ContractError(ValueError):
    """A message that breaks the wire contract.

    Attributes:
        code: stable machine-readable reason (also the dead-letter reason and metric label).
        request_id: the request id, when it could be recovered from the bad message.
        user_id: the user id, when it could be recovered.
    """

    def __init__(self, code: str, message: str, *, request_id: str | None = None, user_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.user_id = user_id


def _load_object(raw: bytes | str | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise ContractError("empty", "message has no value")
    if len(raw) > max_bytes:
        raise ContractError("too_large", f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError("invalid_json", f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("invalid_type", f"value must be a JSON object, got {type(obj).__name__}")
    return obj


@overload
def _id(obj: Mapping[str, Any], name: str, *, required: Literal[True] = ...) -> str: ...
@overload
def _id(obj: Mapping[str, Any], name: str, *, required: bool) -> str | None: ...


def _id(obj: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ContractError("missing_field", f"field {name!r} is required")
        return None
    # Integer ids are accepted and normalised: many catalogues use them.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ContractError("invalid_field", f"field {name!r} must be a string or integer")
    text = str(value)
    if not text or len(text) > 256:
        raise ContractError("invalid_field", f"field {name!r} must have 1 to 256 characters")
    return text


@overload
def _number(obj: Mapping[str, Any], name: str, *, required: Literal[True]) -> float: ...
@overload
def _number(obj: Mapping[str, Any], name: str, *, required: bool) -> float | None: ...


def _number(obj: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ContractError("missing_field", f"field {name!r} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError("invalid_field", f"field {name!r} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ContractError("invalid_field", f"field {name!r} must be finite")
    return number


def check_event_ts(ts: float, not_after: float | None) -> str | None:
    """Why an event time cannot be trusted, or None when it can.

    A time in milliseconds, or ahead of the clock by more than the allowed skew, would pass the
    time watermark of every model trained on it (``trained_through.max_ts``): every later live
    event would then count as already learned.

    Args:
        ts: the event time, seconds since the epoch.
        not_after: the latest acceptable time (now plus the allowed clock skew); None = no clock.
    """
    if ts >= MILLISECOND_TS_FLOOR:
        return f"ts {ts!r} looks like milliseconds since the epoch; ts must be in seconds"
    if not_after is not None and ts > not_after:
        return f"ts {ts!r} is {ts - not_after:.0f} s beyond the allowed clock skew in the future"
    return None


def parse_event(
    raw: bytes | str | None,
    *,
    event_types: Mapping[str, float],
    max_bytes: int = 1_048_576,
    not_after: float | None = None,
) -> UserEvent:
    """Parse and validate a ``user-events`` value.

    Args:
        raw: the message value.
        event_types: the known event types (the configured weights).
        max_bytes: size limit of a message.
        not_after: the latest acceptable event time (now plus the allowed clock skew);
            None checks only for millisecond times.

    Raises:
        ContractError: anything malformed, including an unknown event type or a ts from the
            future or in milliseconds (``bad_timestamp``).
    """
    obj = _load_object(raw, max_bytes)
    user_id = _id(obj, "user_id")
    item_id = _id(obj, "item_id")
    event_type = obj.get("event_type")
    if not isinstance(event_type, str):
        raise ContractError("missing_field", "field 'event_type' is required and must be a string", user_id=user_id)
    if event_type not in event_types:
        raise ContractError(
            "unknown_event_type", f"event_type {event_type!r} is not one of {sorted(event_types)}", user_id=user_id
        )
    ts = _number(obj, "ts", required=True)
    bad_ts = check_event_ts(ts, not_after)
    if bad_ts is not None:
        raise ContractError("bad_timestamp", bad_ts, user_id=user_id)
    value = _number(obj, "value", required=False)
    request_id = _id(obj, "request_id", required=False)
    return UserEvent(user_id=user_id, item_id=item_id, event_type=event_type, ts=ts, value=value, request_id=request_id)


def check_key(key: bytes | None, user_id: str, *, request_id: str | None = None) -> None:
    """Refuse a message whose Kafka key is not its ``user_id`` in UTF-8.

    The key decides the partition, and the partition decides which worker holds the user's
    state and where it is read from and written to: a message under another key (or none)
    would be applied to, or answered from, a state that is not the user's, or dropped as a
    duplicate of another partition's offsets.

    Raises:
        ContractError: ``key_mismatch``.
    """
    expected = user_id.encode()
    if key != expected:
        shown = "no key" if key is None else f"key {key[:300]!r}"
        raise ContractError(
            "key_mismatch",
            f"{shown} is not the user_id {expected[:300]!r}: key messages by their user_id (UTF-8)",
            request_id=request_id,
            user_id=user_id,
        )


def recover_request_id(raw: bytes | str | None) -> tuple[str | None, str | None]:
    """Best effort (request_id, user_id) from a message that failed to parse."""
    try:
        obj = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    out = []
    for name in ("request_id", "user_id"):
        value = obj.get(name)
        out.append(
            str(value)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and 0 < len(str(value)) <= 256
            else None
        )
    return out[0], out[1]


RULE_KEYS = ("exclude", "pin", "boost", "max_per")


@dataclass(slots=True, frozen=True)
class DiversitySpec:
    """How to diversify a request's list (streams/core/diversity.py).

    Attributes:
        method: "mmr" (maximal marginal relevance) or "dpp" (greedy DPP MAP).
        weight: 0 = relevance only (the stage is off), 1 = diversity only; None for the
            ``diversity_weight`` setting.
        similarity: "features" (item records' attributes), "embedding" (the model's item
            vectors), or None for the ``diversity_similarity`` setting.
    """

    method: str
    weight: float | None = None
    similarity: str | None = None


@dataclass(slots=True, frozen=True)
class RankingRules:
    """Business rules of a request, validated against its candidates (streams/core/rules.py).

    Attributes:
        exclude: item ids that must not be returned (ids that are not candidates are ignored).
        pin: candidate id -> the 1-based rank it must have in the result.
        boost: item id -> factor > 0 by which its exp(score) is multiplied (score + ln factor).
        max_per: item attribute -> most items returned that share any one of its values.
    """

    exclude: frozenset[str] = frozenset()
    pin: Mapping[str, int] = field(default_factory=dict)
    boost: Mapping[str, float] = field(default_factory=dict)
    max_per: Mapping[str, int] = field(default_factory=dict)


def _rule_id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not 0 < len(str(value)) <= 256:
        raise ContractError("invalid_rules", f"{what}: {value!r} is not an item id (string or integer, 1-256 chars)")
    return str(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_rules(obj: Any, item_ids: list[str], k: int | None) -> RankingRules | None:
    """Validate the ``rules`` field of a request against its candidates and ``k``.

    Raises:
        ContractError: ``invalid_rules``: an unknown key, a wrong type, a pinned item that is not
            a candidate or is excluded, two items pinned to one rank, a rank beyond ``k`` or
            beyond the candidates left after the exclusions, a factor that is not > 0, a
            ``max_per`` limit that is not a positive integer.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ContractError("invalid_rules", "field 'rules' must be an object")
    unknown = sorted(set(obj) - set(RULE_KEYS))
    if unknown:
        raise ContractError("invalid_rules", f"rules: unknown keys {unknown}; known: {list(RULE_KEYS)}")
    exclude_raw = obj.get("exclude", [])
    if not isinstance(exclude_raw, list):
        raise ContractError("invalid_rules", "rules.exclude must be a list of item ids")
    exclude = frozenset(_rule_id(x, "rules.exclude") for x in exclude_raw)
    candidates = set(item_ids)
    pin_raw = obj.get("pin", {})
    if not isinstance(pin_raw, dict):
        raise ContractError("invalid_rules", "rules.pin must be an object {item_id: rank}")
    left = len(candidates - exclude)
    pin: dict[str, int] = {}
    ranks: dict[int, str] = {}
    for item, rank in pin_raw.items():
        if not _positive_int(rank):
            raise ContractError("invalid_rules", f"rules.pin[{item!r}]: rank must be an integer >= 1, got {rank!r}")
        if item not in candidates:
            raise ContractError("invalid_rules", f"rules.pin: {item!r} is not a candidate")
        if item in exclude:
            raise ContractError("invalid_rules", f"rules.pin: {item!r} is also excluded")
        if rank in ranks:
            raise ContractError(
                "invalid_rules", f"rules.pin: {ranks[rank]!r} and {item!r} are both pinned to rank {rank}"
            )
        if k is not None and rank > k:
            raise ContractError("invalid_rules", f"rules.pin[{item!r}]: rank {rank} is beyond k = {k}")
        if rank > left:
            raise ContractError(
                "invalid_rules", f"rules.pin[{item!r}]: rank {rank} is beyond the {left} candidates not excluded"
            )
        ranks[rank] = item
        pin[item] = rank
    boost_raw = obj.get("boost", {})
    if not isinstance(boost_raw, dict):
        raise ContractError("invalid_rules", "rules.boost must be an object {item_id: factor}")
    boost: dict[str, float] = {}
    for item, factor in boost_raw.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise ContractError(
                "invalid_rules", f"rules.boost[{item!r}]: factor must be a finite number > 0, got {factor!r}"
            )
        boost[item] = float(factor)
    max_per_raw = obj.get("max_per", {})
    if not isinstance(max_per_raw, dict):
        raise ContractError("invalid_rules", "rules.max_per must be an object {attribute: n}")
    max_per: dict[str, int] = {}
    for attribute, n in max_per_raw.items():
        if not attribute or attribute == "item_id":
            raise ContractError("invalid_rules", f"rules.max_per: {attribute!r} is not an item attribute")
        if not _positive_int(n):
            raise ContractError("invalid_rules", f"rules.max_per[{attribute!r}] must be an integer >= 1, got {n!r}")
        max_per[attribute] = n
    return RankingRules(exclude=exclude, pin=pin, boost=boost, max_per=max_per)


def parse_diversity(obj: Any) -> DiversitySpec | None:
    """Validate the ``diversity`` field of a request; None when absent (the settings decide).

    Raises:
        ContractError: ``invalid_diversity``: not an object, an unknown key or method, a weight
            outside 0..1, an unknown similarity.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ContractError("invalid_diversity", "field 'diversity' must be an object {method, weight}")
    unknown = sorted(set(obj) - {"method", "weight", "similarity"})
    if unknown:
        raise ContractError("invalid_diversity", f"diversity: unknown keys {unknown}")
    method = obj.get("method")
    if method not in DIVERSITY_METHODS:
        raise ContractError("invalid_diversity", f"diversity.method must be one of {list(DIVERSITY_METHODS)}")
    weight = obj.get("weight")
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0
    ):
        raise ContractError("invalid_diversity", f"diversity.weight must be a number in 0..1, got {weight!r}")
    similarity = obj.get("similarity")
    if similarity is not None and similarity not in DIVERSITY_SIMILARITIES:
        raise ContractError("invalid_diversity", f"diversity.similarity must be one of {list(DIVERSITY_SIMILARITIES)}")
    return DiversitySpec(method=method, weight=None if weight is None else float(weight), similarity=similarity)


class ParsedCandidate(NamedTuple):
    item_id: str
    score: float | None


@dataclass(slots=True)
class ParsedRequest:
    """A validated request (docs/schemas/rerank-request.schema.json), as the worker uses it.

    The candidates are kept as two parallel lists rather than one object each:
    building those cost ~5 us per candidate, most of a request's CPU time.

    Attributes:
        item_ids: candidate item ids in request order.
        scores: their upstream scores, NaN where absent.
    """

    request_id: str
    user_id: str
    item_ids: list[str]
    scores: list[float]
    k: int | None = None
    ts: float | None = None
    context: dict | None = None
    diversity: DiversitySpec | None = None
    rules: RankingRules | None = None
    explain: bool = False

    @property
    def candidates(self) -> list[ParsedCandidate]:
        return [ParsedCandidate(i, None if s != s else s) for i, s in zip(self.item_ids, self.scores)]


def parse_request(raw: bytes | str | None, *, max_candidates: int, max_bytes: int = 1_048_576) -> ParsedRequest:
    """Parse and validate a ``rerank-requests`` value.

    Raises:
        ContractError: anything malformed: missing ids, no or duplicate candidates,
            more than ``max_candidates``, non-finite scores, a bad ``k``.
    """
    try:
        obj = _load_object(raw, max_bytes)
        request_id = _id(obj, "request_id")
        user_id = _id(obj, "user_id")
        candidates = obj.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise ContractError("no_candidates", "field 'candidates' must be a non-empty list")
        if len(candidates) > max_candidates:
            raise ContractError(
                "too_many_candidates", f"{len(candidates)} candidates exceed the limit of {max_candidates}"
            )
        item_ids: list[str] = []
        scores: list[float] = []
        seen: set[str] = set()
        nan = math.nan
        isfinite = math.isfinite
        for entry in candidates:
            if type(entry) is not dict:
                raise ContractError("invalid_field", "each candidate must be an object with 'item_id'")
            # Fast path for the common shapes (string id, float or absent score); anything
            # else goes through the general checks, which accept or reject it as before.
            item_id = entry.get("item_id")
            if type(item_id) is not str or not 0 < len(item_id) <= 256:
                item_id = _id(entry, "item_id")
            if item_id in seen:
                raise ContractError("duplicate_candidates", f"candidate {item_id!r} appears twice")
            seen.add(item_id)
            item_ids.append(item_id)
            score = entry.get("score")
            if score is None:
                scores.append(nan)
            elif type(score) is float and isfinite(score):
                scores.append(score)
            else:
                scores.append(_number(entry, "score", required=False))  # type: ignore[arg-type]
        k = obj.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ContractError("invalid_field", "field 'k' must be a positive integer")
        context = obj.get("context")
        if context is not None and not isinstance(context, dict):
            raise ContractError("invalid_field", "field 'context' must be an object")
        ts = _number(obj, "ts", required=False)
        diversity = parse_diversity(obj.get("diversity"))
        rules = parse_rules(obj.get("rules"), item_ids, k)
        explain = obj.get("explain", False)
        if not isinstance(explain, bool):
            raise ContractError("invalid_field", "field 'explain' must be true or false")
    except ContractError as exc:
        exc.request_id, exc.user_id = recover_request_id(raw)
        raise
    return ParsedRequest(
        request_id=request_id,
        user_id=user_id,
        item_ids=item_ids,
        scores=scores,
        k=k,
        ts=ts,
        context=context,
        diversity=diversity,
        rules=rules,
        explain=explain,
    )


def encode_result(
    request_id: str,
    user_id: str,
    ranked: list[tuple[str, float]],
    model_name: str,
    model_version: str,
    ts: float,
    explains: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
    *,
    stale: bool = False,
) -> bytes:
    """JSON of a successful result; ``ranked`` is best first.

    Args:
        explains: for an ``explain`` request, one object per ranked item (its "explain" field).
        state: for an ``explain`` request, the user-state summary (the result's "state" field).
        stale: answered before the worker had applied every event of the user that preceded the
            request (the read barrier's wait ran out); the key is absent otherwise.
    """
    items = [{"item_id": item, "score": score, "rank": rank} for rank, (item, score) in enumerate(ranked, start=1)]
    if explains is not None:
        for entry, explain in zip(items, explains):
            entry["explain"] = explain
    result: dict[str, Any] = {
        "request_id": request_id,
        "user_id": user_id,
        "items": items,
        "model": {"name": model_name, "version": model_version},
        "ts": ts,
    }
    if state is not None:
        result["state"] = state
    if stale:
        result["stale"] = True
    return orjson.dumps(result)


def encode_error_result(
    request_id: str | None, user_id: str | None, code: str, message: str, model_name: str, model_version: str, ts: float
) -> bytes:
    """JSON of an error result, so a client waiting on the request id is answered."""
    return orjson.dumps(
        {
            "request_id": request_id,
            "user_id": user_id,
            "items": [],
            "model": {"name": model_name, "version": model_version},
            "ts": ts,
            "error": {"code": code, "message": message},
        }
    )


def parse_item(raw: bytes | None) -> dict[str, Any] | None:
    """An ``items`` record with its ``item_id`` as a string, or None for a value that is not
    one (or a tombstone)."""
    try:
        record = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("item_id"), (str, int))
        or isinstance(record.get("item_id"), bool)
    ):
        return None
    return {**record, "item_id": str(record["item_id"])}
