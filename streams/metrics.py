"""Prometheus metrics of a worker (``reranker_`` prefix, base units, no ids in labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Explicit buckets: the interesting range of a re-ranker is well below 100 ms.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
                 0.1, 0.25)


class WorkerMetrics:
    """All metrics of one worker, on their own registry so tests can build several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "reranker_request_latency_seconds",
            "End to end: request ts (or its Kafka timestamp) to result publish.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.score_duration = Histogram(
            "reranker_score_duration_seconds", "Model forward and ordering of one batch.",
            buckets=SCORE_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "reranker_batch_requests", "Requests scored in one forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.candidates = Histogram(
            "reranker_request_candidates", "Candidates per request.",
            buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000), registry=r)
        self.requests = Counter("reranker_requests_total", "Requests by outcome.", ["outcome"],
                                registry=r)
        self.events = Counter("reranker_events_total", "Events by type and outcome.",
                              ["event_type", "outcome"], registry=r)
        self.dead_letters = Counter("reranker_dead_letters_total", "Dead-lettered messages by reason.",
                                    ["reason"], registry=r)
        self.state_update_lag = Histogram(
            "reranker_state_update_lag_seconds", "Event ts to the user-state update.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("reranker_model_info", "The serving model (value 1).",
                                ["name", "version"], registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on addr:port (0 = off)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)
