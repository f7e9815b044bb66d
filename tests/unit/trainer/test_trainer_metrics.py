"""Trainer metrics: names, label sets and what each call of the service records."""

from __future__ import annotations

import math
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.ports import free_port
from trainer.service_metrics import TrainerMetrics, metric_label

EXPECTED = {
    "reranker_trainer_last_success_timestamp_seconds": ("gauge", set()),
    "reranker_trainer_last_run_start_timestamp_seconds": ("gauge", set()),
    "reranker_trainer_run_duration_seconds": ("gauge", set()),
    "reranker_trainer_validation_metric": ("gauge", {"metric"}),
    "reranker_trainer_validation_requests": ("gauge", set()),
    "reranker_trainer_promotions_total": ("counter", {"decision"}),
    "reranker_trainer_runs_total": ("counter", {"outcome"}),
}


def values(metrics: TrainerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_names_types_and_labels() -> None:
    metrics = TrainerMetrics()
    metrics.run_finished(1.0, {"ndcg@10": 0.3}, promoted=True)
    families = {}
    for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if f.name.startswith("reranker_"):
            families[f.name + ("_total" if f.type == "counter" else "")] = (
                f.type,
                {k for s in f.samples for k in s.labels},
            )
    assert families == EXPECTED


def test_process_and_python_runtime_metrics_are_on_the_trainer_registry() -> None:
    names = {name for name, _ in values(TrainerMetrics())}
    # process_* comes from /proc, so only on Linux, where the services run.
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= names
    assert {"python_info", "python_gc_collections_total"} <= names


def test_counters_start_at_zero_for_every_known_label() -> None:
    v = values(TrainerMetrics())
    for decision in ("promoted", "rejected"):
        assert v[("reranker_trainer_promotions_total", (("decision", decision),))] == 0
    for outcome in ("success", "skipped", "failure"):
        assert v[("reranker_trainer_runs_total", (("outcome", outcome),))] == 0


def test_a_finished_run_records_its_metrics_and_decision() -> None:
    metrics = TrainerMetrics(clock=lambda: 1234.0)
    metrics.run_started()
    metrics.run_finished(12.5, {"ndcg@10": 0.41, "hr@10": 0.7, "mrr": math.nan, "requests": 300.0}, promoted=False)
    v = values(metrics)
    assert v[("reranker_trainer_last_run_start_timestamp_seconds", ())] == 1234.0
    assert v[("reranker_trainer_last_success_timestamp_seconds", ())] == 1234.0
    assert v[("reranker_trainer_run_duration_seconds", ())] == 12.5
    assert v[("reranker_trainer_validation_metric", (("metric", "ndcg_at_10"),))] == 0.41
    assert v[("reranker_trainer_validation_metric", (("metric", "hr_at_10"),))] == 0.7
    assert ("reranker_trainer_validation_metric", (("metric", "mrr"),)) not in v  # NaN left out
    assert v[("reranker_trainer_validation_requests", ())] == 300.0
    assert v[("reranker_trainer_promotions_total", (("decision", "rejected"),))] == 1
    assert v[("reranker_trainer_runs_total", (("outcome", "success"),))] == 1


def test_validation_metrics_are_those_of_the_last_run_only() -> None:
    metrics = TrainerMetrics()
    metrics.run_finished(1.0, {"ndcg@10": 0.2, "hr@10": 0.5}, promoted=True)
    metrics.run_finished(1.0, {"ndcg@10": 0.3}, promoted=True)
    series = {
        labels: value
        for (name, labels), value in values(metrics).items()
        if name == "reranker_trainer_validation_metric"
    }
    assert series == {(("metric", "ndcg_at_10"),): 0.3}


def test_failed_and_skipped_runs_do_not_touch_the_last_success() -> None:
    metrics = TrainerMetrics(clock=lambda: 99.0)
    metrics.run_started()
    metrics.run_failed(3.0)
    metrics.run_started()
    metrics.run_skipped()
    v = values(metrics)
    assert v[("reranker_trainer_runs_total", (("outcome", "failure"),))] == 1
    assert v[("reranker_trainer_runs_total", (("outcome", "skipped"),))] == 1
    assert v[("reranker_trainer_last_success_timestamp_seconds", ())] == 0
    assert v[("reranker_trainer_run_duration_seconds", ())] == 3.0


def test_metric_label_spells_metric_keys_for_queries() -> None:
    assert metric_label("ndcg@10") == "ndcg_at_10"
    assert metric_label("hr@5") == "hr_at_5"
    assert metric_label("mrr") == "mrr"
    assert metric_label("pretrained_ndcg@10") == "pretrained_ndcg_at_10"


def test_serve_exposes_the_registry_on_the_given_address() -> None:
    metrics = TrainerMetrics()
    metrics.run_finished(2.0, {"ndcg@10": 0.25}, promoted=True)
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'reranker_trainer_validation_metric{metric="ndcg_at_10"} 0.25' in body
