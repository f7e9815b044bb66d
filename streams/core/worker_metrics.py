"""Prometheus metrics of a worker (``reranker_`` prefix, base units, no ids in labels).

Every metric lives on the worker's own registry, so tests can build several
workers in one process. README.md ("Metrics") lists them with their meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families

from streams.core.records import EVENT_ERROR_CODES, REQUEST_ERROR_CODES

# The text format would add a *_created gauge beside every counter and histogram: one
# more series each that no query of this project reads.
disable_created_metrics()

# Explicit buckets: the interesting range of a re-ranker is well below 100 ms, but a backlog
# (a stalled or overloaded worker) answers seconds to minutes late, and quantiles cannot
# exceed the highest finite bucket: without the tail a backlog would read as a flat 2.5 s.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
SCORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25)

# A request ts older than this, or ahead of the worker's clock by more than the skew, is
# not trusted as the start of the request: a replayed or badly clocked client would
# otherwise fill the top bucket (or none) with meaningless values.
REQUEST_TS_MAX_AGE_S = 3600.0
REQUEST_TS_MAX_SKEW_S = 1.0

# Outcomes of a parsed request and of a parsed event (streams/core/processing.py); the
# rejection codes come from streams/core/records.py.
REQUEST_OUTCOMES = ("ok", "internal_error", *REQUEST_ERROR_CODES)
EVENT_OUTCOMES = ("ok", "trained", "frozen", "duplicate", "error")
# A rejected event has no trustworthy type: it is counted under this one, by its code.
INVALID_EVENT_TYPE = "invalid"
# Why an output did not reach its topic (streams/worker/agents.py): the producer refused it as
# too large, sending failed after every retry, or the broker refused it after the hand-off.
SEND_FAILURE_REASONS = ("too_large", "error", "delivery")
DEAD_LETTER_REASONS = ("internal_error", *dict.fromkeys((*REQUEST_ERROR_CODES, *EVENT_ERROR_CODES)))
# Why an announced model was not loaded (streams/worker/model_swap.py).
MODEL_LOAD_FAILURE_REASONS = (
    "malformed_announcement",
    "outside_models_dir",
    "missing_artifact",
    "future_version",
    "invalid_artifact",
)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, file descriptors), python_info and python_gc_* on ``registry``.

    prometheus_client registers them only on its global registry, which this project does not
    serve; without them a leak or a CPU-bound worker would not show on the dashboard.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def request_start(
    request_ts: float | None,
    kafka_ts: float | None,
    now: float,
    *,
    max_age_s: float = REQUEST_TS_MAX_AGE_S,
    max_skew_s: float = REQUEST_TS_MAX_SKEW_S,
) -> float | None:
    """When a request started, for the end-to-end latency.

    The client's own ``ts`` includes the time spent before Kafka accepted the
    message, so it wins when it is plausible: no older than ``max_age_s`` and
    no more than ``max_skew_s`` in the future. Otherwise the Kafka timestamp.

    Args:
        request_ts: the request's ``ts`` field, seconds since the epoch, if any.
        kafka_ts: the Kafka record timestamp in seconds, if any.
        now: the worker's clock at publish time.

    Returns:
        The start time in seconds, or None when neither is known.
    """
    if request_ts is not None and now - max_age_s <= request_ts <= now + max_skew_s:
        return request_ts
    return kafka_ts


class WorkerMetrics:
    """All metrics of one worker, on their own registry so tests can build several."""

    def __init__(self, registry: CollectorRegistry | None = None, event_types: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        register_runtime_collectors(r)
        self.request_latency = Histogram(
            "reranker_request_latency_seconds",
            "End to end: request ts (or its Kafka timestamp) to result publish.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score_duration = Histogram(
            "reranker_score_duration_seconds",
            "Model forward and ordering of one batch.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "reranker_batch_requests",
            "Requests scored in one forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_messages = Histogram(
            "reranker_batch_messages",
            "Messages (events and requests) taken from the stream as one batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.candidates = Histogram(
            "reranker_request_candidates",
            "Candidates per request.",
            buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.requests = Counter("reranker_requests_total", "Requests by outcome.", ["outcome"], registry=r)
        self.events = Counter(
            "reranker_events_total", "Events by type and outcome.", ["event_type", "outcome"], registry=r
        )
        self.dead_letters = Counter(
            "reranker_dead_letters_total", "Dead-lettered messages by reason.", ["reason"], registry=r
        )
        self.state_update_lag = Histogram(
            "reranker_state_update_lag_seconds",
            "Event ts to the user-state update.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge("reranker_model_info", "The serving model (value 1).", ["name", "version"], registry=r)
        self.model_swaps = Counter("reranker_model_swaps_total", "Model versions swapped in while running.", registry=r)
        self.model_load_failures = Counter(
            "reranker_model_load_failures_total",
            "Model versions that failed to load (the previous model keeps serving), by reason.",
            ["reason"],
            registry=r,
        )
        self.model_load_retries = Counter(
            "reranker_model_load_retries_total",
            "Further tries to load an announced model whose load failed in a way that waiting can mend "
            "(missing, unreadable), each after a backoff.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "reranker_consumer_lag",
            "Messages not yet processed: sum over this worker's partitions of the topic of "
            "high watermark minus committed offset.",
            ["topic"],
            registry=r,
        )
        self.last_batch = Gauge(
            "reranker_worker_last_batch_timestamp_seconds",
            "When the agent last finished a batch (seconds since the epoch).",
            registry=r,
        )
        self.send_failures = Counter(
            "reranker_send_failures_total",
            "Results and dead letters that did not reach their topic, by topic and reason; a result is "
            "replaced by an error result when one can be sent.",
            ["topic", "reason"],
            registry=r,
        )
        self.stale_answers = Counter(
            "reranker_stale_answers_total",
            "Requests answered before their partition's events were applied up to the end offset "
            'taken after they arrived (read_barrier_max_ms ran out); the result says "stale": true.',
            registry=r,
        )
        self.read_barrier_wait = Histogram(
            "reranker_read_barrier_wait_seconds",
            "Time a request was held for the events of its partition before it was answered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.state_rewrites = Counter(
            "reranker_state_rewrites_total",
            "User states written again because redelivered events were duplicates (after a crash), "
            "so that their changelog records are sent.",
            registry=r,
        )
        self.wrong_partition = Counter(
            "reranker_wrong_partition_total",
            "Events and requests found on another partition than murmur2(key) mod the partition count "
            "(a producer not on the murmur2 partitioner), re-routed to their own partition, by topic.",
            ["topic"],
            registry=r,
        )
        self.users_in_state = Gauge(
            "reranker_users_in_state", "Users in this worker's partitions of the user-state table.", registry=r
        )
        # A counter with labels has no series until first used: every known label value is
        # created now, so that rates, ratios and alerts read 0, not "no data", on a worker yet
        # to see traffic or its first bad message.
        for outcome in REQUEST_OUTCOMES:
            self.requests.labels(outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for code in EVENT_ERROR_CODES:
            self.events.labels(INVALID_EVENT_TYPE, code)
        for reason in MODEL_LOAD_FAILURE_REASONS:
            self.model_load_failures.labels(reason)
        self.add_event_types(event_types)

    def add_event_types(self, event_types: Iterable[str]) -> None:
        """Start the event counters of ``event_types`` (the configured ones) at 0 for every outcome."""
        for event_type in event_types:
            for outcome in EVENT_OUTCOMES:
                self.events.labels(event_type, outcome)

    def add_input_topics(self, topics: Iterable[str]) -> None:
        """Start the wrong-partition counters of ``topics`` (the input topics) at 0."""
        for topic in topics:
            self.wrong_partition.labels(topic)

    def add_output_topics(self, topics: Iterable[str]) -> None:
        """Start the send-failure counters of ``topics`` (the configured ones) at 0 for every reason."""
        for topic in topics:
            for reason in SEND_FAILURE_REASONS:
                self.send_failures.labels(topic, reason)

    def set_serving_model(self, name: str, version: str) -> None:
        """Mark ``name``/``version`` as the one serving model.

        The old label set is removed first, so the gauge never reports two
        models at once and ``count(reranker_model_info)`` counts workers.
        """
        self.model_info.clear()
        self.model_info.labels(name, version).set(1)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on addr:port (0 = off)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)


def liveness(exposition: str, now: float, max_stale_s: float) -> tuple[bool, str]:
    """Whether a worker is making progress, from its /metrics text.

    Unhealthy when messages wait (``reranker_consumer_lag`` > 0 on some topic) and the agent has
    finished no batch for ``max_stale_s`` seconds, counted from the process start when it has
    finished none. An idle worker (no lag) is healthy however old its last batch: a consumer that
    stops without an error (faust issue #175) shows only as this pair.

    Args:
        exposition: the Prometheus text format, as /metrics serves it.
        now: seconds since the epoch.
        max_stale_s: the longest time without a finished batch while lag > 0.

    Returns:
        (healthy, a one-line reason).
    """
    values: dict[str, float] = {}
    lag = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "reranker_consumer_lag":
                lag += sample.value
            else:
                values[sample.name] = sample.value
    if "reranker_worker_last_batch_timestamp_seconds" not in values:
        return False, "no reranker_worker_last_batch_timestamp_seconds: not a worker's /metrics"
    since = max(values["reranker_worker_last_batch_timestamp_seconds"], values.get("process_start_time_seconds", 0.0))
    stale = now - since
    if lag > 0 and stale > max_stale_s:
        return False, f"no batch finished for {stale:.0f} s while {lag:.0f} messages wait"
    return True, f"lag {lag:.0f}, last batch {stale:.0f} s ago"
