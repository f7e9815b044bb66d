"""What one trainer run reports to its metrics, whichever command started it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from streams.settings import Settings
from tests.unit.trainer.test_trainer_metrics import values
from trainer import service
from trainer.data import EventColumns
from trainer.service import RunResult, run_and_record, run_forever
from trainer.service_metrics import TrainerMetrics


def fake_run(outcome: str | Exception):  # type: ignore[no-untyped-def]
    def run_once(settings: Settings, **run_args: Any) -> RunResult:
        if isinstance(outcome, Exception):
            raise outcome
        return RunResult(outcome, "v1", None, {"ndcg@10": 0.4, "requests": 10.0}, None, 2.0)

    return run_once


def runs(metrics: TrainerMetrics) -> dict[str, float]:
    return {
        labels[0][1]: value
        for (name, labels), value in values(metrics).items()
        if name == "reranker_trainer_runs_total"
    }


@pytest.mark.parametrize("decision", ["promoted", "rejected"])
def test_a_finished_run_is_recorded_with_its_decision(monkeypatch: pytest.MonkeyPatch, decision: str) -> None:
    monkeypatch.setattr(service, "run_once", fake_run(decision))
    metrics = TrainerMetrics(clock=lambda: 7.0)
    assert run_and_record(Settings(), metrics).decision == decision
    v = values(metrics)
    assert v[("reranker_trainer_last_run_start_timestamp_seconds", ())] == 7.0
    assert v[("reranker_trainer_promotions_total", (("decision", decision),))] == 1
    assert v[("reranker_trainer_validation_metric", (("metric", "ndcg_at_10"),))] == 0.4
    assert runs(metrics) == {"success": 1, "skipped": 0, "failure": 0}


def test_skipped_and_failed_runs_are_counted_and_a_failure_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = TrainerMetrics()
    monkeypatch.setattr(service, "run_once", fake_run("skipped"))
    run_and_record(Settings(), metrics)
    monkeypatch.setattr(service, "run_once", fake_run(RuntimeError("broker gone")))
    with pytest.raises(RuntimeError, match="broker gone"):
        run_and_record(Settings(), metrics)
    assert runs(metrics) == {"success": 0, "skipped": 1, "failure": 1}


def test_the_service_loop_counts_a_failed_run_and_keeps_going(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def run_once(settings: Settings, **run_args: Any) -> RunResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        stop.set()
        return fake_run("promoted")(settings)

    monkeypatch.setattr(service, "run_once", run_once)
    metrics = TrainerMetrics()
    run_forever(Settings(), every_s=0.0, stop=stop, metrics=metrics)
    assert len(calls) == 2
    assert runs(metrics) == {"success": 1, "skipped": 0, "failure": 1}


class RecordedWaits(threading.Event):
    """A stop event that records how long the loop would sleep instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return self.is_set()


def test_the_service_retries_soon_until_a_first_model_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    settings = Settings(models_dir=str(tmp_path / "models"))
    stop = RecordedWaits()
    outcomes: list[str | Exception] = ["skipped", RuntimeError("log too small to train on"), "promoted", "skipped"]

    def run_once(settings: Settings, **run_args: Any) -> RunResult:
        outcome = outcomes.pop(0)
        if outcome == "promoted":
            version = tmp_path / "models" / "v1"
            version.mkdir(parents=True)
            (version / "manifest.json").write_text('{"created": "2024-01-01T00:00:00"}')
        if not outcomes:
            stop.set()
        return fake_run(outcome)(settings)

    monkeypatch.setattr(service, "run_once", run_once)
    run_forever(settings, every_s=600.0, stop=stop)
    # An empty log and a failed run retry soon; once a model is served, the full period applies.
    assert len(stop.waits) == 4 and max(stop.waits[:2]) <= 30.0, stop.waits
    assert stop.waits[2:] == pytest.approx([600.0, 600.0], abs=1.0)


def gated_run(monkeypatch: pytest.MonkeyPatch, trained_world: Any, root: Any, *, serving: bool) -> RunResult:
    """`run_once` on a log whose held-out tail is only newcomers' first events (nothing to ask
    for), with the candidate a copy of ``trained_world``'s model and no broker."""
    import json
    import shutil

    log = EventColumns()
    newcomers = [{**trained_world.events[n], "user_id": f"newcomer-{n}"} for n in range(100)]
    for offset, e in enumerate([*trained_world.events[:900], *newcomers]):
        log.append(e["user_id"], e["item_id"], e["event_type"], e["ts"], e.get("value"), 0, offset)
    monkeypatch.setattr(service, "log_from_topic", lambda settings, topic, window=0: (log, {"0": 1000}, 0))
    monkeypatch.setattr(service, "items_from_topic", lambda settings: [])
    monkeypatch.setattr(service, "logged_from_topic", lambda settings, window=0: [])
    if serving:
        shutil.copytree(trained_world.model_dir, root / "serving")

    def copy_model(events: Any, out: Any, **kwargs: Any) -> Any:
        shutil.copytree(trained_world.model_dir, out)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["version"] = "candidate"
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    settings = Settings(models_dir=str(root))
    return service.run_once(settings, topic="events", announce=False, progress=lambda line: None, train_fn=copy_model)


def test_no_held_out_evidence_keeps_the_serving_model(
    monkeypatch: pytest.MonkeyPatch, trained_world: Any, tmp_path: Any
) -> None:
    result = gated_run(monkeypatch, trained_world, tmp_path, serving=True)
    assert result.decision == "rejected" and result.path is None, result
    assert "no held-out interactions" in result.reason
    assert not (tmp_path / "candidate").exists()


def test_a_first_model_is_published_without_held_out_evidence(
    monkeypatch: pytest.MonkeyPatch, trained_world: Any, tmp_path: Any
) -> None:
    result = gated_run(monkeypatch, trained_world, tmp_path, serving=False)
    assert result.decision == "promoted" and result.path == tmp_path / "candidate", result
