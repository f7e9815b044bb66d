"""Worker metrics: names, types and label sets, the serving-model gauge, latency start, lag."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import TP
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.core import records
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.core.worker_metrics import LATENCY_BUCKETS, WorkerMetrics, liveness, request_start
from streams.settings import Settings
from streams.worker.monitoring import TableCounter, consumer_lag, lag_known

# name -> (type, label names), exactly what a worker exports (README.md "Metrics").
EXPECTED = {
    "reranker_request_latency_seconds": ("histogram", set()),
    "reranker_score_duration_seconds": ("histogram", set()),
    "reranker_batch_requests": ("histogram", set()),
    "reranker_batch_messages": ("histogram", set()),
    "reranker_request_candidates": ("histogram", set()),
    "reranker_requests_total": ("counter", {"outcome"}),
    "reranker_events_total": ("counter", {"event_type", "outcome"}),
    "reranker_dead_letters_total": ("counter", {"reason"}),
    "reranker_state_update_lag_seconds": ("histogram", set()),
    "reranker_state_rewrites_total": ("counter", set()),
    "reranker_stale_answers_total": ("counter", set()),
    "reranker_read_barrier_wait_seconds": ("histogram", set()),
    "reranker_model_info": ("gauge", {"name", "version"}),
    "reranker_model_swaps_total": ("counter", set()),
    "reranker_model_load_failures_total": ("counter", {"reason"}),
    "reranker_model_load_retries_total": ("counter", set()),
    "reranker_consumer_lag": ("gauge", {"topic"}),
    "reranker_worker_last_batch_timestamp_seconds": ("gauge", set()),
    "reranker_users_in_state": ("gauge", set()),
    "reranker_send_failures_total": ("counter", {"topic", "reason"}),
    "reranker_wrong_partition_total": ("counter", {"topic"}),
}


def exported(metrics: WorkerMetrics) -> dict[str, tuple[str, set[str]]]:
    """{sample family name: (type, label names)} as a Prometheus scrape would read them."""
    out: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if not family.name.startswith("reranker_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        out[name] = (family.type, labels)
    return out


def samples(metrics: WorkerMetrics, name: str) -> list[Any]:
    return [
        s
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if s.name == name
    ]


def test_every_metric_has_its_name_type_and_labels() -> None:
    metrics = WorkerMetrics()
    # Labelled series exist once used; use each as the worker does.
    metrics.events.labels("click", "ok").inc()
    metrics.dead_letters.labels("invalid_json").inc()
    metrics.set_serving_model("dnn", "v1")
    metrics.consumer_lag.labels("user-events").set(3)
    metrics.add_output_topics(["reranked-results"])
    metrics.add_input_topics(["user-events"])
    assert exported(metrics) == EXPECTED


def test_latency_histogram_has_explicit_buckets_from_1ms_to_2_minutes() -> None:
    metrics = WorkerMetrics()
    metrics.request_latency.observe(0.004)
    bounds = [float(s.labels["le"]) for s in samples(metrics, "reranker_request_latency_seconds_bucket")]
    assert bounds[0] == 0.001 and bounds[-1] == float("inf")
    assert tuple(bounds[:-1]) == LATENCY_BUCKETS
    # A backlog answers seconds to minutes late: quantiles must be able to say so.
    assert {2.5, 5.0, 10.0, 30.0, 60.0, 120.0} <= set(bounds)


def test_a_backlog_of_40_seconds_shows_in_the_quantile_buckets() -> None:
    metrics = WorkerMetrics()
    metrics.request_latency.observe(40.0)
    buckets = {float(s.labels["le"]): s.value for s in samples(metrics, "reranker_request_latency_seconds_bucket")}
    assert buckets[30.0] == 0 and buckets[60.0] == 1


def test_rates_of_healthy_requests_exist_before_any_traffic() -> None:
    metrics = WorkerMetrics()
    ok = [s for s in samples(metrics, "reranker_requests_total") if s.labels == {"outcome": "ok"}]
    assert [s.value for s in ok] == [0]
    assert [s.value for s in samples(metrics, "reranker_model_swaps_total")] == [0]


def _codes_raised_in_records() -> set[str]:
    source = Path(records.__file__).read_text()
    return set(re.findall(r'ContractError\(\s*"(\w+)"', source))


def test_every_contract_error_code_is_listed_by_message_kind() -> None:
    raised = _codes_raised_in_records()
    assert raised  # the pattern still matches how the module raises
    assert set(records.REQUEST_ERROR_CODES) | set(records.EVENT_ERROR_CODES) == raised


def test_labelled_counters_start_at_zero_for_every_known_label_value() -> None:
    metrics = WorkerMetrics(event_types=["click", "purchase"])

    def zeros(name: str) -> set[tuple[str, ...]]:
        return {tuple(s.labels.values()) for s in samples(metrics, name) if s.value == 0}

    reasons = {r for (r,) in zeros("reranker_dead_letters_total")}
    assert reasons >= _codes_raised_in_records() | {"internal_error"}
    outcomes = {o for (o,) in zeros("reranker_requests_total")}
    assert outcomes >= set(records.REQUEST_ERROR_CODES) | {"ok", "internal_error"}
    events = zeros("reranker_events_total")
    for event_type in ("click", "purchase"):
        for outcome in ("ok", "trained", "frozen", "duplicate", "error"):
            assert (event_type, outcome) in events
    for code in records.EVENT_ERROR_CODES:
        assert ("invalid", code) in events


def test_a_processor_starts_its_configured_event_types_at_zero(bundle) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env={})
    settings = dataclasses.replace(settings, event_weights={**settings.event_weights, "wishlist": 1.5})
    processor = Processor(bundle, settings, DictStateStore(), WorkerMetrics())
    events = {tuple(s.labels.values()) for s in samples(processor.metrics, "reranker_events_total")}
    assert ("wishlist", "ok") in events


def test_process_and_python_runtime_metrics_are_on_the_worker_registry() -> None:
    names = {
        s.name
        for f in text_string_to_metric_families(generate_latest(WorkerMetrics().registry).decode())
        for s in f.samples
    }
    # process_* comes from /proc, so only on Linux, where the services run.
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= names
    assert {"python_info", "python_gc_collections_total"} <= names


def test_model_info_keeps_one_series_after_a_swap() -> None:
    metrics = WorkerMetrics()
    metrics.set_serving_model("dnn", "v1")
    metrics.set_serving_model("dnn", "v2")
    series = samples(metrics, "reranker_model_info")
    assert [(s.labels, s.value) for s in series] == [({"name": "dnn", "version": "v2"}, 1.0)]


@pytest.mark.parametrize(
    ("request_ts", "kafka_ts", "expected"),
    [
        (990.0, 995.0, 990.0),  # the client's ts is plausible: it wins
        (1000.5, 995.0, 1000.5),  # slightly ahead of the worker's clock: within the skew
        (1005.0, 995.0, 995.0),  # too far in the future: the Kafka timestamp
        (1000.0 - 7200, 995.0, 995.0),  # two hours old (a replay): the Kafka timestamp
        (None, 995.0, 995.0),
        (None, None, None),
        (1e12, None, None),  # milliseconds by mistake, and no Kafka timestamp
    ],
)
def test_request_start_prefers_a_plausible_request_ts(
    request_ts: float | None, kafka_ts: float | None, expected: float | None
) -> None:
    assert request_start(request_ts, kafka_ts, now=1000.0) == expected


def _latencies(metrics: WorkerMetrics) -> tuple[float, float]:
    count = samples(metrics, "reranker_request_latency_seconds_count")[0].value
    total = samples(metrics, "reranker_request_latency_seconds_sum")[0].value
    return count, total


def _ask(bundle, kafka_ts: float | None, request_ts: float | None, now: float) -> WorkerMetrics:  # type: ignore[no-untyped-def]
    settings = Settings.load(env={})
    metrics = WorkerMetrics()
    request: dict[str, Any] = {
        "request_id": "r",
        "user_id": "u",
        "candidates": [{"item_id": i} for i in bundle.item_ids[1:4]],
    }
    if request_ts is not None:
        request["ts"] = request_ts
    processor = Processor(bundle, settings, DictStateStore(), metrics, clock=lambda: now)
    processor.process([InMessage(settings.requests_topic, 0, 0, kafka_ts, b"u", orjson.dumps(request))])
    return metrics


def test_processor_measures_latency_from_the_request_ts(bundle) -> None:  # type: ignore[no-untyped-def]
    now = 1_700_000_000.0
    count, total = _latencies(_ask(bundle, kafka_ts=now - 0.010, request_ts=now - 0.250, now=now))
    assert count == 1 and total == pytest.approx(0.250)


def test_processor_falls_back_to_the_kafka_timestamp(bundle) -> None:  # type: ignore[no-untyped-def]
    now = 1_700_000_000.0
    count, total = _latencies(_ask(bundle, kafka_ts=now - 0.010, request_ts=now - 86_400, now=now))
    assert count == 1 and total == pytest.approx(0.010)
    count, total = _latencies(_ask(bundle, kafka_ts=now - 0.020, request_ts=None, now=now))
    assert count == 1 and total == pytest.approx(0.020)


def test_processor_skips_latency_without_any_start(bundle) -> None:  # type: ignore[no-untyped-def]
    count, _ = _latencies(_ask(bundle, kafka_ts=None, request_ts=None, now=1_700_000_000.0))
    assert count == 0


class FakeConsumer:
    """The parts of a faust consumer that lag reads."""

    def __init__(
        self, highwaters: dict[Any, int | None], committed: dict[Any, int | None], positions: dict[Any, int | None]
    ) -> None:
        self.highwaters, self._committed_offset, self.positions = highwaters, committed, positions

    def assignment(self) -> set[Any]:
        return set(self.highwaters)

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: Any) -> int | None:
        return self.positions.get(tp)


def test_consumer_lag_sums_assigned_partitions_per_input_topic() -> None:
    events0, events1, requests0 = TP("events", 0), TP("events", 1), TP("requests", 0)
    changelog, unfetched = TP("app-user-state-changelog", 0), TP("requests", 1)
    consumer = FakeConsumer(
        highwaters={events0: 100, events1: 50, requests0: 7, changelog: 999, unfetched: None},
        committed={events0: 90, requests0: 7, changelog: 0},
        positions={events1: 45},
    )  # nothing committed yet on events1: its position counts
    lag = asyncio.run(consumer_lag(consumer, ["events", "requests", "idle"]))
    assert lag == {"events": 10 + 5, "requests": 0, "idle": 0}


def test_lag_is_known_only_once_every_assigned_input_partition_has_been_fetched() -> None:
    events0, requests0, unfetched = TP("events", 0), TP("requests", 0), TP("requests", 1)
    fetched = FakeConsumer(highwaters={events0: 10, requests0: 0, TP("other", 0): None}, committed={}, positions={})
    assert lag_known(fetched, ["events", "requests"])
    # A partition not fetched yet would be left out of the sum: the lag would read too low.
    partly = FakeConsumer(highwaters={events0: 10, unfetched: None}, committed={}, positions={})
    assert not lag_known(partly, ["events", "requests"])
    # A worker without partitions of the inputs has nothing waiting.
    assert lag_known(FakeConsumer(highwaters={}, committed={}, positions={}), ["events", "requests"])


async def _counted(counter: TableCounter) -> int | None:
    """count() once, then the count it started, once finished."""
    counter.count()
    while counter.running is not None:
        await asyncio.sleep(0.005)
    return counter.count()


def test_table_counter_refreshes_a_slow_count_less_often() -> None:
    now = [0.0]

    class SlowTable:
        calls = 0

        def __len__(self) -> int:
            SlowTable.calls += 1
            now[0] += 0.1  # counting takes 100 ms
            return 42

    async def scenario() -> None:
        counter = TableCounter(SlowTable(), time_share=0.02, clock=lambda: now[0])
        assert await _counted(counter) == 42 and SlowTable.calls == 1
        now[0] += 2.0
        assert await _counted(counter) == 42 and SlowTable.calls == 1  # 100 ms at 2 % -> next in 5 s
        now[0] += 3.0
        assert await _counted(counter) == 42 and SlowTable.calls == 2

    asyncio.run(scenario())


def test_counting_a_big_table_never_blocks_the_event_loop() -> None:
    class BigTable:
        def __len__(self) -> int:
            time.sleep(1.0)  # a walk over a million RocksDB keys
            return 1_000_000

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        counter = TableCounter(BigTable())
        fired: list[float] = []
        due = loop.time() + 0.01
        loop.call_at(due, lambda: fired.append(loop.time()))
        first = counter.count()
        await asyncio.sleep(0.05)
        deadline = loop.time() + 10.0
        while counter.count() is None and loop.time() < deadline:
            await asyncio.sleep(0.005)
        assert fired, "the callback never ran"
        # On the loop the count held the callback for the whole second.
        assert fired[0] - due < 0.1, f"callback {fired[0] - due:.3f} s late"
        assert first is None  # the count runs in a thread: nothing is known yet
        assert counter.count() == 1_000_000

    asyncio.run(scenario())


def test_a_failed_count_is_tried_again() -> None:
    class Unrecovered:
        calls = 0

        def __len__(self) -> int:
            Unrecovered.calls += 1
            if Unrecovered.calls == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return 7

    async def scenario() -> None:
        counter = TableCounter(Unrecovered())
        assert await _counted(counter) is None
        assert await _counted(counter) == 7

    asyncio.run(scenario())


def exposition(last_batch: float | None, lag: dict[str, int], started: float = 1000.0) -> str:
    """A worker's /metrics text with the given last batch time, lag per topic and process start."""
    metrics = WorkerMetrics()
    if last_batch is not None:
        metrics.last_batch.set(last_batch)
    for topic, value in lag.items():
        metrics.consumer_lag.labels(topic).set(value)
    text = generate_latest(metrics.registry).decode()
    return re.sub(r"^process_start_time_seconds .*$", f"process_start_time_seconds {started}", text, flags=re.M)


def test_an_idle_worker_is_alive_however_old_its_last_batch() -> None:
    healthy, reason = liveness(exposition(2000.0, {"user-events": 0, "rerank-requests": 0}), 9000.0, 60.0)
    assert healthy, reason


def test_a_worker_that_finishes_no_batch_while_messages_wait_is_not_alive() -> None:
    healthy, reason = liveness(exposition(2000.0, {"user-events": 0, "rerank-requests": 7}), 2061.0, 60.0)
    assert not healthy and "61 s" in reason and "7 messages" in reason
    assert liveness(exposition(2000.0, {"rerank-requests": 7}), 2059.0, 60.0)[0]


def test_a_worker_yet_to_finish_a_batch_counts_from_its_start() -> None:
    text = exposition(None, {"rerank-requests": 3}, started=5000.0)
    assert liveness(text, 5030.0, 60.0)[0]
    assert not liveness(text, 5061.0, 60.0)[0]


def test_metrics_of_something_else_are_not_a_live_worker() -> None:
    assert not liveness("# nothing here\n", 1.0, 60.0)[0]
