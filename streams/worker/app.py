"""Builds the faust App of a worker: topics, table, agent, monitor, model swaps and item catalog."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import TableT

from models import ModelBundle
from streams.core.processing import Processor
from streams.core.worker_metrics import WorkerMetrics
from streams.settings import Settings
from streams.worker.agents import register_agents
from streams.worker.faust_hooks import (
    PromptTableManager,
    RerankerApp,
    bound_rocksdb_memory,
    faust_credentials,
    skip_to,
)
from streams.worker.items import ItemCatalog
from streams.worker.model_swap import ModelSwapper
from streams.worker.monitoring import register_monitor
from streams.worker.tables import TableStates, TableStateStore, define_user_state_table
from streams.worker.topics import Topics, define_topics

log = logging.getLogger(__name__)


def _seconds(ms: Any) -> float:
    return float(ms) / 1000.0


def _acks(value: Any) -> int:
    return -1 if str(value) == "all" else int(value)


# Records the consumer decodes and hands over per call (``max.poll.records`` overrides it): it runs on
# the event loop, so a fetch of a backlog is taken a bounded slice at a time.
MAX_POLL_RECORDS = 1000
# Net allocations of tracked objects between young collections of the garbage collector.
GC_YOUNG_THRESHOLD = 10_000

# Kafka client properties (the *_extra_config settings) that faust's app settings can carry to its
# aiokafka consumer and producer, with the conversion to faust's unit. Others have no equivalent
# there, or are settings of their own (session, heartbeat, fetch wait, linger, security), and are
# not passed to the worker's faust clients.
FAUST_CONSUMER_PROPERTIES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "client.id": ("broker_client_id", str),
    "request.timeout.ms": ("broker_request_timeout", _seconds),
    "max.poll.records": ("broker_max_poll_records", int),
    "max.poll.interval.ms": ("broker_max_poll_interval", _seconds),
    "max.partition.fetch.bytes": ("consumer_max_fetch_size", int),
    "auto.offset.reset": ("consumer_auto_offset_reset", str),
    "group.instance.id": ("consumer_group_instance_id", str),
    "metadata.max.age.ms": ("consumer_metadata_max_age_ms", int),
    "connections.max.idle.ms": ("consumer_connections_max_idle_ms", int),
}
FAUST_PRODUCER_PROPERTIES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "acks": ("producer_acks", _acks),
    "compression.type": ("producer_compression_type", str),
    "batch.size": ("producer_max_batch_size", int),
    "max.request.size": ("producer_max_request_size", int),
    "linger.ms": ("producer_linger", _seconds),
    "request.timeout.ms": ("producer_request_timeout", _seconds),
    "metadata.max.age.ms": ("producer_metadata_max_age_ms", int),
    "connections.max.idle.ms": ("producer_connections_max_idle_ms", int),
}


def faust_client_settings(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """faust app settings from ``consumer_extra_config`` and ``producer_extra_config``.

    Returns:
        (app settings, the properties that were left out, as ``consumer:NAME``/``producer:NAME``).
    """
    out: dict[str, Any] = {}
    left_out: list[str] = []
    for side, properties, table in (
        ("consumer", settings.consumer_extra_config, FAUST_CONSUMER_PROPERTIES),
        ("producer", settings.producer_extra_config, FAUST_PRODUCER_PROPERTIES),
    ):
        for key, value in properties.items():
            if key in table:
                name, convert = table[key]
                out[name] = convert(value)
            else:
                left_out.append(f"{side}:{key}")
    return out, left_out


@dataclass
class Worker:
    app: RerankerApp
    topics: Topics
    table: TableT
    processor: Processor
    metrics: WorkerMetrics


def trained_offsets(bundle: ModelBundle, events_topic: str) -> dict[int, int]:
    """{partition: offset} of ``events_topic`` below which ``bundle`` was trained on every event
    (its ``trained_through`` watermark); {} for a model trained on another topic or a file."""
    through = bundle.trained_through
    if through.get("topic") != events_topic:
        return {}
    return {int(p): int(o) for p, o in (through.get("offsets") or {}).items()}


def build_worker(
    settings: Settings,
    bundle: ModelBundle,
    *,
    web_port: int,
    data_dir: Path,
    metrics: WorkerMetrics | None = None,
    partitions: Mapping[str, int] | None = None,
    announced_until: Mapping[int, int] | None = None,
) -> Worker:
    """A configured App with its topics, table and agent, serving ``bundle``.

    Args:
        settings: service settings.
        bundle: the model to serve.
        web_port: faust's web server port; also names the default data directory.
        data_dir: this worker's own directory (table stores); never shared by two workers.
        partitions: the broker's partition count of each input topic, against which the
            Processor checks that every message is on its key's partition (None: unchecked).
        announced_until: end offsets of ``model-updates`` taken before ``bundle`` was chosen
            (`ModelSwapper`); None: when the watcher starts.
    """
    extra, left_out = faust_client_settings(settings)
    if left_out:
        log.warning("client properties with no faust equivalent, not passed to faust: %s", left_out)
    conf: dict[str, Any] = dict(
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        datadir=str(data_dir),
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_linger=settings.producer_linger_ms / 1000.0,
        broker_max_poll_records=MAX_POLL_RECORDS,
        # faust's default (1,000,000) is below max_message_bytes: a result of a large request, or
        # a dead letter of one, was refused and the worker stopped answering.
        producer_max_request_size=settings.worker_max_request_bytes(),
        table_standby_replicas=settings.table_standby_replicas,
        TableManager=PromptTableManager,
    )
    app = RerankerApp(settings.app_id, **{**conf, **extra})
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    app.fetch_wait_ms = settings.consumer_fetch_wait_ms
    app.priority_topics = {settings.requests_topic}
    app.verify_end_offsets = settings.verify_end_offsets
    topics = define_topics(app, settings)
    table = define_user_state_table(app, settings)
    bound_rocksdb_memory(
        table,
        block_cache_bytes=settings.rocksdb_block_cache_mb << 20,
        write_buffer_bytes=settings.rocksdb_write_buffer_mb << 20,
    )
    metrics = metrics or WorkerMetrics()
    metrics.set_serving_model(bundle.name, bundle.version)
    states = TableStates(table, settings.state_cache_users)
    processor = Processor(bundle, settings, TableStateStore(states), metrics, partitions=partitions, check_keys=True)
    register_agents(app, settings, topics, processor, states)
    register_monitor(app, table, [settings.events_topic, settings.requests_topic], metrics)
    catalog = ItemCatalog(settings, processor)

    def watermark() -> dict[int, int]:
        return trained_offsets(processor.bundle, settings.events_topic)

    # A partition with no committed offset starts at the serving model's watermark (faust_hooks).
    app.start_offsets = lambda: (settings.events_topic, watermark())

    async def skip_trained(bundle: ModelBundle) -> None:
        # Events below the new model's watermark would be skipped as trained one by one anyway.
        try:
            moved = await skip_to(app.consumer, settings.events_topic, watermark(), fetch_log=app.fetch_log)
        except Exception:  # a consumer between rebalances: the events are then skipped as trained
            log.warning("could not skip to the watermark of model %s", bundle.version, exc_info=True)
            return
        if moved:
            log.info("skipped to the watermark of model %s: %s", bundle.version, moved)

    swapper = ModelSwapper(settings, processor, metrics, catalog, on_swap=skip_trained, backlog_until=announced_until)

    @app.task
    async def follow_model_updates() -> None:
        await swapper.watch()

    @app.task
    async def follow_items() -> None:
        await catalog.follow()

    return Worker(app, topics, table, processor, metrics)


def run_worker(worker: Worker, log_level: str = "INFO") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker as FaustWorker

    # What exists now (the model, torch, faust) lives as long as the process: frozen, it is left
    # out of the collector's full passes, which otherwise stall the event loop for milliseconds.
    gc.collect()
    gc.freeze()
    # Most objects of a chunk of events or a batch of requests are freed before the next one, so
    # young collections are needed far less often than Python's default (700 net allocations).
    # Measured (BENCHMARKS.md, "The collector's threshold"): the collector's time during
    # ingestion 0.00-0.05 s in every 2 s instead of 0.07-0.13 s.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    # The command has set up logging (streams/logs.py, the same for every service); faust's own
    # setup would replace it with its coloured text and send print() output into the log.
    FaustWorker(worker.app, loglevel=log_level, quiet=True, override_logging=False).execute_from_commandline()
