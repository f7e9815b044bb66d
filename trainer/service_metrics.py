"""Prometheus metrics of the trainer service (``reranker trainer --metrics-port P``).

The service calls :meth:`TrainerMetrics.run_started` before each run and then
exactly one of :meth:`run_finished`, :meth:`run_skipped` or :meth:`run_failed`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, start_http_server

from streams.core.worker_metrics import register_runtime_collectors

# The text format would add a *_created gauge beside every counter and histogram: one
# more series each that no query of this project reads.
disable_created_metrics()

# Entries of a run's metrics dict that count held-out requests rather than measure quality.
COUNT_KEYS = frozenset({"n", "requests"})
DECISIONS = ("promoted", "rejected")
OUTCOMES = ("success", "skipped", "failure")


def metric_label(key: str) -> str:
    """A metric key (`trainer.validation`) as a label value: ``ndcg@10`` -> ``ndcg_at_10``.
    Label values may hold any character, but "@" would have to be quoted in every query."""
    return re.sub(r"[^a-z0-9_]+", "_", key.replace("@", "_at_")).strip("_")


class TrainerMetrics:
    """All metrics of one trainer, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        r = self.registry
        register_runtime_collectors(r)
        self.last_success = Gauge(
            "reranker_trainer_last_success_timestamp_seconds",
            "When the last run that trained and evaluated a model ended (seconds since the epoch).",
            registry=r,
        )
        self.last_run_start = Gauge(
            "reranker_trainer_last_run_start_timestamp_seconds",
            "When the last run started, whatever its outcome (seconds since the epoch).",
            registry=r,
        )
        self.run_duration = Gauge(
            "reranker_trainer_run_duration_seconds", "Wall time of the last finished or failed run.", registry=r
        )
        self.validation = Gauge(
            "reranker_trainer_validation_metric",
            "Held-out quality of the last trained candidate (ndcg_at_10, hr_at_10, ...).",
            ["metric"],
            registry=r,
        )
        self.validation_requests = Gauge(
            "reranker_trainer_validation_requests",
            "Held-out interactions the last candidate was evaluated on.",
            registry=r,
        )
        self.promotions = Counter(
            "reranker_trainer_promotions_total", "Gate decisions on trained candidates.", ["decision"], registry=r
        )
        self.runs = Counter("reranker_trainer_runs_total", "Runs by outcome.", ["outcome"], registry=r)
        # Known label values start at 0, so rates and increases read 0 rather than "no data".
        for decision in DECISIONS:
            self.promotions.labels(decision)
        for outcome in OUTCOMES:
            self.runs.labels(outcome)

    def run_started(self) -> None:
        """A run begins (liveness of the service loop, even when the run is then skipped)."""
        self.last_run_start.set(self.clock())

    def run_finished(self, duration_s: float, metrics: Mapping[str, float], promoted: bool) -> None:
        """A run trained and evaluated a candidate; ``promoted`` is the gate's decision.

        Args:
            duration_s: wall time of the run.
            metrics: the candidate's held-out metrics, e.g. ``{"ndcg@10": .., "hr@10": ..}``.
                Non-finite values are left out.
            promoted: whether the candidate was published.
        """
        self.runs.labels("success").inc()
        self.promotions.labels("promoted" if promoted else "rejected").inc()
        self.run_duration.set(duration_s)
        self.last_success.set(self.clock())
        # Only the last run's values: a metric it did not report must not linger from an older run.
        self.validation.clear()
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key in COUNT_KEYS:
                self.validation_requests.set(value)
            else:
                self.validation.labels(metric_label(key)).set(value)

    def run_skipped(self) -> None:
        """A run found nothing new to train on."""
        self.runs.labels("skipped").inc()

    def run_failed(self, duration_s: float) -> None:
        """A run raised; the previous model keeps serving."""
        self.runs.labels("failure").inc()
        self.run_duration.set(duration_s)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on addr:port (0 = off)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)
