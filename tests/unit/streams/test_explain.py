"""Explanations, and the rules and diversity fields, through the worker's Processor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
import torch

from streams.core.explain import BECAUSE_ITEMS, PARTS_ATOL
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.core.state import history_rows
from streams.devtools.synthetic import generate_requests
from streams.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


@pytest.fixture
def settings() -> Settings:
    return Settings.load(env={})


def ask(processor: Processor, *requests: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    settings = processor.settings
    outputs = processor.process(
        [InMessage(settings.requests_topic, 0, n, None, b"k", orjson.dumps(r)) for n, r in enumerate(requests)]
    )
    results = [orjson.loads(o.value) for o in outputs if o.topic == settings.results_topic]
    letters = [orjson.loads(o.value) for o in outputs if o.topic == settings.dead_letter_topic]
    return results, letters


def items_of(world: Any) -> dict[str, dict[str, Any]]:
    return {i: {"item_id": i, "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()}


def known_user(bundle: Any) -> str:
    """A user with a full history in the model."""
    return next(u for u, row in bundle.user_index.items() if (bundle.user_history[row] > 0).sum() >= 5)


def test_explain_parts_sum_to_the_score_and_name_history_items(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    user = known_user(bundle)
    [request] = generate_requests(trained_world.world, 1, n_candidates=30, users=[user], k=8)
    processor = Processor(bundle, settings, DictStateStore())
    [result], _ = ask(processor, {**request, "explain": True})
    [plain], _ = ask(processor, request)
    assert [i["item_id"] for i in result["items"]] == [i["item_id"] for i in plain["items"]]
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / "reranked-result.schema.json").read_text())).validate(result)
    history = processor.state_of(user, None).history  # type: ignore[arg-type]
    upstream = {c["item_id"]: c["score"] for c in request["candidates"]}
    for item in result["items"]:
        explain = item["explain"]
        assert explain["model"] == item["score"]
        assert abs(sum(explain["parts"].values()) - item["score"]) <= PARTS_ATOL
        assert explain["upstream"] == upstream[item["item_id"]]
        assert len(explain["because"]) <= BECAUSE_ITEMS and set(explain["because"]) <= set(history)
    assert any(item["explain"]["because"] for item in result["items"])
    state = result["state"]
    assert state["model_version"] == bundle.version and state["events_applied"] == 0
    assert state["history_items"] == len(history) and state["last_event_ts"] is None
    assert "explain" not in plain["items"][0] and "state" not in plain


def test_because_names_the_history_items_whose_removal_lowers_the_score_most(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    user = known_user(bundle)
    [request] = generate_requests(trained_world.world, 1, n_candidates=20, users=[user], k=1)
    processor = Processor(bundle, settings, DictStateStore())
    [result], _ = ask(processor, {**request, "explain": True})
    [top] = result["items"]
    state = processor.state_of(user, None)  # type: ignore[arg-type]
    rows = history_rows(bundle, state.history)
    model = bundle.model

    def score(history: np.ndarray) -> float:
        with torch.inference_mode():
            return float(
                model(
                    torch.from_numpy(state.vector[None]),
                    torch.from_numpy(history[None]),
                    torch.tensor([[bundle.item_index[top["item_id"]]]]),
                )[0, 0]
            )

    full = score(rows)
    drops = {}
    for item in set(state.history):
        without = rows.copy()
        without[without == bundle.item_index[item]] = 0
        drops[item] = full - score(without)
    expected = [i for i in sorted(drops, key=lambda i: -drops[i]) if drops[i] > 0][:BECAUSE_ITEMS]
    assert top["explain"]["because"] == expected


def test_explain_sums_every_part_a_model_reports(bundle, trained_world, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    original = bundle.model.score_parts

    def two_parts(user_vec, history, items, upstream=None):  # type: ignore[no-untyped-def]
        whole = original(user_vec, history, items, upstream)["model"]
        return {"model": whole * 0.75, "upstream": whole * 0.25}

    monkeypatch.setattr(bundle.model, "score_parts", two_parts)
    [request] = generate_requests(trained_world.world, 1, n_candidates=10, users=[known_user(bundle)], k=5)
    [result], _ = ask(Processor(bundle, settings, DictStateStore()), {**request, "explain": True})
    for item in result["items"]:
        assert set(item["explain"]["parts"]) == {"model", "upstream"}
        assert abs(sum(item["explain"]["parts"].values()) - item["score"]) <= PARTS_ATOL


def test_a_failing_explanation_fails_only_its_request(bundle, trained_world, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("explain exploded")

    monkeypatch.setattr("streams.core.processing.explain_request", broken)
    first, second = generate_requests(trained_world.world, 2, n_candidates=10, k=3)
    processor = Processor(bundle, settings, DictStateStore())
    results, letters = ask(processor, {**first, "explain": True}, second)
    by_id = {r["request_id"]: r for r in results}
    assert by_id[first["request_id"]]["error"]["code"] == "internal_error"
    assert len(by_id[second["request_id"]]["items"]) == 3 and "error" not in by_id[second["request_id"]]
    assert [d["reason"] for d in letters] == ["internal_error"]
    assert processor.metrics.requests.labels("internal_error")._value.get() == 1


def test_rules_are_honoured_and_scores_stay_the_models(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    [request] = generate_requests(world, 1, n_candidates=20, users=[known_user(bundle)])
    processor = Processor(bundle, settings, DictStateStore(), items=items_of(world))
    [plain], _ = ask(processor, request)
    order = [i["item_id"] for i in plain["items"]]
    score = {i["item_id"]: i["score"] for i in plain["items"]}
    rules = {"exclude": order[:2], "pin": {order[-1]: 2}, "boost": {order[-2]: 1e9}, "max_per": {"genres": 2}}
    [ruled], _ = ask(processor, {**request, "k": 5, "rules": rules})
    got = [i["item_id"] for i in ruled["items"]]
    assert not set(order[:2]) & set(got)
    assert got[1] == order[-1] and got[0] == order[-2]
    genres = [world.item_cluster[i] for i in got]
    assert max(genres.count(g) for g in genres) <= 2
    assert all(i["score"] == score[i["item_id"]] for i in ruled["items"])
    assert [i["rank"] for i in ruled["items"]] == [1, 2, 3, 4, 5]


def test_invalid_rules_give_an_error_result_a_dead_letter_and_a_metric(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    first, second = generate_requests(trained_world.world, 2, n_candidates=10, k=3)
    pinned_twice = {c["item_id"]: 1 for c in first["candidates"][:2]}
    processor = Processor(bundle, settings, DictStateStore())
    results, letters = ask(processor, {**first, "rules": {"pin": pinned_twice}}, second)
    by_id = {r["request_id"]: r for r in results}
    assert by_id[first["request_id"]]["error"]["code"] == "invalid_rules"
    assert "both pinned to rank 1" in by_id[first["request_id"]]["error"]["message"]
    assert len(by_id[second["request_id"]]["items"]) == 3
    assert [d["reason"] for d in letters] == ["invalid_rules"]
    assert processor.metrics.requests.labels("invalid_rules")._value.get() == 1
    assert processor.metrics.dead_letters.labels("invalid_rules")._value.get() == 1


def test_diversity_from_the_request_or_the_settings(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    user = known_user(bundle)
    [request] = generate_requests(world, 1, n_candidates=40, users=[user], k=6)
    items = items_of(world)

    def clusters(result: dict) -> int:
        return len({world.item_cluster[i["item_id"]] for i in result["items"]})

    plain_processor = Processor(bundle, settings, DictStateStore(), items=items)
    [plain], _ = ask(plain_processor, request)
    for method in ("mmr", "dpp"):
        for similarity in ("features", "embedding"):
            diversity = {"method": method, "weight": 0.9, "similarity": similarity}
            [diverse], _ = ask(plain_processor, {**request, "diversity": diversity})
            assert [i["item_id"] for i in diverse["items"]] != [i["item_id"] for i in plain["items"]]
            assert diverse["items"][0]["item_id"] == plain["items"][0]["item_id"]
            if similarity == "features":
                assert clusters(diverse) > clusters(plain)
    # The settings' method serves requests without the field; weight 0 there turns it off.
    on = Processor(
        bundle,
        dataclasses.replace(settings, diversity_method="mmr", diversity_weight=0.9),
        DictStateStore(),
        items=items,
    )
    [default], _ = ask(on, request)
    [explicit], _ = ask(plain_processor, {**request, "diversity": {"method": "mmr", "weight": 0.9}})
    assert default["items"] == explicit["items"]
    [off], _ = ask(on, {**request, "diversity": {"method": "mmr", "weight": 0}})
    assert off["items"] == plain["items"]


def test_the_state_summary_follows_online_events(bundle, trained_world, settings) -> None:  # type: ignore[no-untyped-def]
    processor = Processor(bundle, settings, DictStateStore())
    [request] = generate_requests(trained_world.world, 1, n_candidates=10, users=["newcomer"], k=3)
    [cold], _ = ask(processor, {**request, "request_id": "cold", "explain": True})
    assert all(item["explain"]["because"] == [] for item in cold["items"])  # no history yet
    assert cold["state"]["events_applied"] == 0 and cold["state"]["history_items"] == 0
    clicked = [c["item_id"] for c in request["candidates"][:2]]
    # Later than anything the model was trained on, so the events are learned online.
    ts = max(e["ts"] for e in trained_world.events) + 60
    events = [
        {"user_id": "newcomer", "item_id": item, "event_type": "click", "ts": ts + n} for n, item in enumerate(clicked)
    ]
    processor.process(
        [InMessage(settings.events_topic, 0, n, None, b"k", orjson.dumps(e)) for n, e in enumerate(events)]
    )
    [warm], _ = ask(processor, {**request, "request_id": "warm", "explain": True})
    assert warm["state"]["events_applied"] == 2 and warm["state"]["event_counts"] == {"click": 2}
    assert warm["state"]["last_event_ts"] == ts + 1 and warm["state"]["history_items"] == 2
    assert {i for item in warm["items"] for i in item["explain"]["because"]} <= set(clicked)


def test_a_failing_rules_stage_fails_only_its_request(bundle, trained_world, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from streams.core import rules

    real = rules.arrange

    def broken_for_k2(order, scores, candidates, spec):  # type: ignore[no-untyped-def]
        if spec.k == 2:
            raise RuntimeError("rules exploded")
        return real(order, scores, candidates, spec)

    monkeypatch.setattr(rules, "arrange", broken_for_k2)
    first, second = generate_requests(trained_world.world, 2, n_candidates=10)
    exclude = {"exclude": [first["candidates"][0]["item_id"]]}
    processor = Processor(bundle, settings, DictStateStore())
    results, letters = ask(processor, {**first, "k": 2, "rules": exclude}, {**second, "k": 3, "rules": exclude})
    by_id = {r["request_id"]: r for r in results}
    assert by_id[first["request_id"]]["error"]["code"] == "internal_error"
    assert len(by_id[second["request_id"]]["items"]) == 3 and "error" not in by_id[second["request_id"]]
    assert [d["reason"] for d in letters] == ["internal_error"]
