"""The promotion gate refuses a candidate that does not beat the upstream order on held-out
served lists, whatever it does against the serving model."""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np
import pytest

from streams.settings import Settings
from trainer import service
from trainer.data import EventColumns
from trainer.served import LoggedRequest
from trainer.service import RunResult, gate

BETTER_THAN_SERVING = {"ndcg@10": 0.50, "hr@10": 0.8}
SERVING = {"ndcg@10": 0.40, "hr@10": 0.7}


def test_a_candidate_worse_than_the_upstream_order_is_refused() -> None:
    lists = {"ndcg@10": 0.30, "upstream_ndcg@10": 0.35, "lists": 40}
    promote, reason = gate(BETTER_THAN_SERVING, SERVING, 100, 0.01, lists)
    assert not promote
    assert "does not beat the upstream order on 40 held-out served lists" in reason


def test_a_tie_with_the_upstream_order_is_refused_too() -> None:
    lists = {"ndcg@10": 0.35, "upstream_ndcg@10": 0.35, "lists": 40}
    assert gate(BETTER_THAN_SERVING, SERVING, 100, 0.01, lists)[0] is False


def test_a_candidate_that_beats_the_upstream_order_goes_on_to_the_serving_comparison() -> None:
    lists = {"ndcg@10": 0.40, "upstream_ndcg@10": 0.35, "lists": 40}
    assert gate(BETTER_THAN_SERVING, SERVING, 100, 0.01, lists) == (
        True,
        "candidate within the tolerance of the serving model",
    )
    worse_than_serving = {"ndcg@10": 0.2, "hr@10": 0.5}
    assert gate(worse_than_serving, SERVING, 100, 0.01, lists) == (False, "candidate worse than the serving model")


def test_no_held_out_list_means_no_upstream_check() -> None:
    empty = {"ndcg@10": float("nan"), "upstream_ndcg@10": float("nan"), "lists": 0}
    assert gate(BETTER_THAN_SERVING, SERVING, 100, 0.01, empty)[0] is True
    assert gate(BETTER_THAN_SERVING, SERVING, 100, 0.01, None)[0] is True


def test_a_first_model_is_published_but_the_reason_says_it_loses_to_upstream() -> None:
    lists = {"ndcg@10": 0.30, "upstream_ndcg@10": 0.35, "lists": 40}
    promote, reason = gate(BETTER_THAN_SERVING, None, 100, 0.01, lists)
    assert promote and "does not beat the upstream order" in reason


def upstream_run(monkeypatch: pytest.MonkeyPatch, trained_world: Any, root: Any, *, upstream_first: bool) -> RunResult:
    """`run_once` with a served model and, on the requests topic, one logged request before each
    held-out positive event: its item among 19 others. With ``upstream_first`` the upstream score
    puts that item first (an order no model can beat), else last."""
    events = trained_world.events
    log = EventColumns()
    for offset, e in enumerate(events):
        log.append(e["user_id"], e["item_id"], e["event_type"], e["ts"], e.get("value"), 0, offset)
    items = sorted({e["item_id"] for e in events})
    rng = np.random.default_rng(3)
    logged = []
    for n, e in enumerate(events[-250:]):
        if e["event_type"] == "dismiss":
            continue
        others = [i for i in rng.choice(items, size=20, replace=False).tolist() if i != e["item_id"]][:19]
        ids = [e["item_id"], *others] if upstream_first else [*others, e["item_id"]]
        scores = np.linspace(1.0, 0.0, len(ids))
        logged.append(LoggedRequest(f"log-{n}", e["user_id"], e["ts"] - 1.0, ids, scores))
    monkeypatch.setattr(service, "log_from_topic", lambda settings, topic, window=0: (log, {"0": len(events)}, 0))
    monkeypatch.setattr(service, "items_from_topic", lambda settings: [])
    monkeypatch.setattr(service, "logged_from_topic", lambda settings, window=0: logged)
    shutil.copytree(trained_world.model_dir, root / "serving")

    def copy_model(events: Any, out: Any, **kwargs: Any) -> Any:
        shutil.copytree(trained_world.model_dir, out)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["version"] = "candidate"
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    settings = Settings(models_dir=str(root))
    return service.run_once(settings, topic="events", announce=False, progress=lambda line: None, train_fn=copy_model)


def test_a_run_refuses_a_candidate_that_loses_to_the_upstream_order(
    monkeypatch: pytest.MonkeyPatch, trained_world: Any, tmp_path: Any
) -> None:
    # The candidate is the serving model itself: the serving comparison alone would promote it.
    result = upstream_run(monkeypatch, trained_world, tmp_path, upstream_first=True)
    assert result.decision == "rejected", result
    assert "does not beat the upstream order" in result.reason
    decision = json.loads((tmp_path / service.DECISIONS_LOG).read_text().splitlines()[-1])
    lists = decision["served_lists"]
    assert lists["lists"] > 0 and lists["upstream_ndcg@10"] == pytest.approx(1.0)


def test_a_run_promotes_a_candidate_that_beats_the_upstream_order(
    monkeypatch: pytest.MonkeyPatch, trained_world: Any, tmp_path: Any
) -> None:
    result = upstream_run(monkeypatch, trained_world, tmp_path, upstream_first=False)
    assert result.decision == "promoted", result
    decision = json.loads((tmp_path / service.DECISIONS_LOG).read_text().splitlines()[-1])
    assert decision["served_lists"]["ndcg@10"] > decision["served_lists"]["upstream_ndcg@10"]


def test_the_report_says_when_the_model_does_not_beat_the_upstream_order() -> None:
    from trainer.report import build_report, served_note

    requests = [
        {
            "request_id": f"r{n}",
            "user_id": "u",
            "candidates": [{"item_id": f"i{j}", "score": 10 - j} for j in range(10)],
        }
        for n in range(4)
    ]
    truth = [{"request_id": f"r{n}", "item_id": "i0"} for n in range(4)]
    reversed_results = [
        {"request_id": f"r{n}", "items": [{"item_id": f"i{j}"} for j in reversed(range(10))]} for n in range(4)
    ]
    worse = build_report(requests, truth, reversed_results)
    assert any("does not beat the upstream order" in note for note in worse["notes"]), worse["notes"]
    # A tie is no better: upstream already puts the item first.
    same_first = [{"request_id": f"r{n}", "items": [{"item_id": "i0"}]} for n in range(4)]
    assert any("does not beat" in note for note in build_report(requests, truth, same_first)["notes"])
    last = [{"request_id": f"r{n}", "item_id": "i9"} for n in range(4)]
    better = build_report(requests, last, reversed_results)
    assert not any("upstream order" in note for note in better["notes"]), better["notes"]

    refused = served_note({"ndcg@10": 0.2, "upstream_ndcg@10": 0.3, "lists": 12, "beats_upstream": False})
    assert "does not beat the upstream order on 12 held-out lists" in refused and "gate would refuse" in refused
    assert "beats the upstream order" in served_note(
        {"ndcg@10": 0.4, "upstream_ndcg@10": 0.3, "lists": 12, "beats_upstream": True}
    )
