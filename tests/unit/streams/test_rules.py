"""Business rules: their parsing (records.parse_rules / parse_diversity) and their application
after scoring (rules.arrange), in the documented order."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from streams.core.diversity import feature_similarity
from streams.core.records import ContractError, DiversitySpec, RankingRules, parse_request, parse_rules
from streams.core.rules import Arrangement, arrange

IDS = ["a", "b", "c", "d", "e", "f"]
SCORES = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # a is best, f worst
ORDER = np.arange(6)
ITEMS: dict[str, dict[str, Any]] = {
    "a": {"item_id": "a", "genres": ["drama"]},
    "b": {"item_id": "b", "genres": ["drama", "comedy"]},
    "c": {"item_id": "c", "genres": ["drama"]},
    "d": {"item_id": "d", "genres": ["horror"]},
    "e": {"item_id": "e", "genres": ["comedy"], "studio": "x"},
    "f": {"item_id": "f", "genres": ["horror"], "studio": "x"},
}


def run(k: int | None = None, diversity: DiversitySpec | None = None, **rules: Any) -> list[str]:
    spec = Arrangement(
        k=k,
        rules=parse_rules(rules, IDS, k),
        diversity=diversity,
        similarity=lambda index: feature_similarity([IDS[i] for i in index], ITEMS, ["genres"]),
        items=ITEMS,
    )
    return [IDS[i] for i in arrange(ORDER, SCORES, IDS, spec)]


def test_without_rules_the_model_order_is_cut_to_k() -> None:
    assert run() == IDS
    assert run(k=3) == ["a", "b", "c"]


def test_excluded_items_are_absent() -> None:
    assert run(k=3, exclude=["a", "c", "not-a-candidate"]) == ["b", "d", "e"]


def test_pins_take_their_ranks() -> None:
    assert run(k=4, pin={"f": 1, "e": 3}) == ["f", "a", "e", "b"]
    assert run(pin={"a": 6}) == ["b", "c", "d", "e", "f", "a"]


def test_a_boost_moves_an_item() -> None:
    assert run(k=3, boost={"e": float(np.exp(3.5))}) == ["a", "e", "b"]  # 6 > 2 + 3.5 > 5
    assert run(k=3, boost={"e": float(np.exp(4.5))}) == ["e", "a", "b"]
    assert run(k=3, boost={"a": 0.01}) == ["b", "c", "d"]  # 6 - 4.6 < 2


def test_max_per_counts_each_value_of_a_list() -> None:
    # a, b, c are drama; with two per genre c is skipped, and b takes a comedy slot too.
    assert run(max_per={"genres": 2}) == ["a", "b", "d", "e", "f"]
    assert run(max_per={"genres": 1}) == ["a", "d", "e"]
    assert run(k=3, max_per={"studio": 1}) == ["a", "b", "c"]  # items without the field are not limited
    assert run(max_per={"studio": 1}) == ["a", "b", "c", "d", "e"]


def test_pinned_items_count_towards_max_per_and_are_kept() -> None:
    assert run(k=3, pin={"c": 3}, max_per={"genres": 1}) == ["d", "e", "c"]


def test_the_order_of_the_stages() -> None:
    # exclude -> boost -> diversity -> max_per -> pin -> cut: the boost lifts f (1 + 4.6) over b;
    # the pinned b (drama, comedy) counts first, so max_per skips a and e, keeps f and then skips
    # d (horror, after f); b goes to rank 1 of a list shorter than k.
    got = run(k=4, exclude=["c"], boost={"f": 100.0}, max_per={"genres": 1}, pin={"b": 1})
    assert got == ["b", "f"]
    assert run(k=4, exclude=["c"], boost={"f": 100.0}, pin={"b": 1}) == ["b", "a", "f", "d"]


def test_diversity_reorders_what_is_not_pinned() -> None:
    plain = run(k=3)
    diverse = run(k=3, diversity=DiversitySpec("mmr", 0.9))
    assert plain == ["a", "b", "c"]
    assert diverse[0] == "a" and "d" in diverse  # a horror item comes up among dramas
    assert run(k=3, diversity=DiversitySpec("mmr", 0.9), pin={"c": 1})[0] == "c"


def test_a_pin_beyond_a_shortened_list_goes_to_its_end() -> None:
    assert run(pin={"e": 5}, max_per={"genres": 1}) == ["a", "d", "e"]


@pytest.mark.parametrize(
    "rules, k, fragment",
    [
        ([], None, "must be an object"),
        ({"exclude": "a"}, None, "exclude must be a list"),
        ({"exclude": [{"id": 1}]}, None, "not an item id"),
        ({"pin": {"a": 0}}, None, "rank must be an integer >= 1"),
        ({"pin": {"a": 1.5}}, None, "rank must be an integer >= 1"),
        ({"pin": {"a": True}}, None, "rank must be an integer >= 1"),
        ({"pin": {"zz": 1}}, None, "not a candidate"),
        ({"pin": {"a": 1, "b": 1}}, None, "both pinned to rank 1"),
        ({"pin": {"a": 4}}, 3, "beyond k = 3"),
        ({"pin": {"a": 7}}, None, "beyond the 6 candidates"),
        ({"pin": {"a": 6}, "exclude": ["b"]}, None, "beyond the 5 candidates"),
        ({"pin": {"a": 1}, "exclude": ["a"]}, None, "also excluded"),
        ({"boost": {"a": -2}}, None, "factor must be a finite number > 0"),
        ({"boost": {"a": 0}}, None, "factor must be a finite number > 0"),
        ({"boost": {"a": "2"}}, None, "factor must be a finite number > 0"),
        ({"boost": ["a"]}, None, "boost must be an object"),
        ({"max_per": {"genres": 0}}, None, "must be an integer >= 1"),
        ({"max_per": {"": 1}}, None, "not an item attribute"),
        ({"pinned": {"a": 1}}, None, "unknown keys ['pinned']"),
    ],
)
def test_invalid_rules_are_refused_with_their_reason(rules: Any, k: int | None, fragment: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_rules(rules, IDS, k)
    assert caught.value.code == "invalid_rules"
    assert fragment in caught.value.message


def request(**extra: Any) -> bytes:
    return orjson.dumps({"request_id": "r1", "user_id": "u1", "candidates": [{"item_id": i} for i in IDS], **extra})


def test_a_request_carries_its_rules_diversity_and_explain() -> None:
    parsed = parse_request(
        request(
            k=3,
            rules={"exclude": ["a", 7], "pin": {"b": 2}, "boost": {"c": 2}, "max_per": {"genres": 2}},
            diversity={"method": "dpp", "weight": 0.3},
            explain=True,
        ),
        max_candidates=100,
    )
    assert parsed.rules == RankingRules(
        exclude=frozenset({"a", "7"}), pin={"b": 2}, boost={"c": 2.0}, max_per={"genres": 2}
    )
    assert parsed.diversity == DiversitySpec("dpp", 0.3)
    assert parsed.explain is True
    plain = parse_request(request(), max_candidates=100)
    assert (plain.rules, plain.diversity, plain.explain) == (None, None, False)
    assert parse_request(request(diversity={"method": "mmr"}), max_candidates=100).diversity == DiversitySpec("mmr")


@pytest.mark.parametrize(
    "extra, code",
    [
        ({"rules": {"pin": {"a": 9}}}, "invalid_rules"),
        ({"diversity": {"method": "random", "weight": 0.2}}, "invalid_diversity"),
        ({"diversity": {"method": "mmr", "weight": 1.5}}, "invalid_diversity"),
        ({"diversity": {"method": "mmr", "similarity": "colour"}}, "invalid_diversity"),
        ({"diversity": "mmr"}, "invalid_diversity"),
        ({"explain": "yes"}, "invalid_field"),
    ],
)
def test_a_bad_field_is_refused_and_the_request_id_recovered(extra: dict[str, Any], code: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_request(request(**extra), max_candidates=100)
    assert (caught.value.code, caught.value.request_id, caught.value.user_id) == (code, "r1", "u1")


def request_schema() -> Any:
    import json
    from pathlib import Path

    import jsonschema

    path = Path(__file__).resolve().parents[3] / "docs" / "schemas" / "rerank-request.schema.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


def test_the_request_schema_takes_the_new_fields() -> None:
    full = orjson.loads(
        request(
            k=3,
            rules={"exclude": ["a", 7], "pin": {"b": 2}, "boost": {"c": 2.5}, "max_per": {"genres": 2}},
            diversity={"method": "mmr", "weight": 0.2, "similarity": "features"},
            explain=True,
        )
    )
    request_schema().validate(full)
    parse_request(orjson.dumps(full), max_candidates=100)


@pytest.mark.parametrize(
    "extra",
    [
        {"rules": {"boost": {"a": -1}}},
        {"rules": {"boost": {"a": 0}}},
        {"rules": {"pin": {"a": 0}}},
        {"rules": {"max_per": {"genres": 0}}},
        {"rules": {"exclude": "a"}},
        {"rules": {"pinned": {}}},
        {"diversity": {"method": "mmr", "weight": 2}},
        {"diversity": {"weight": 0.2}},
        {"diversity": {"method": "mmr", "extra": 1}},
        {"explain": "yes"},
    ],
)
def test_what_the_schema_rejects_the_parser_rejects(extra: dict[str, Any]) -> None:
    import jsonschema

    body = orjson.loads(request(**extra))
    with pytest.raises(jsonschema.ValidationError):
        request_schema().validate(body)
    with pytest.raises(ContractError):
        parse_request(orjson.dumps(body), max_candidates=100)
