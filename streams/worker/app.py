"""Builds the faust App of a worker: topics, table, agent, monitor, model swaps and item catalog."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

from faust.types import TableT

from models import ModelBundle
from streams.core.processing import Processor
from streams.core.worker_metrics import WorkerMetrics
from streams.settings import Settings
from streams.worker.agents import register_agents
from streams.worker.faust_hooks import RerankerApp, faust_credentials
from streams.worker.items import ItemCatalog
from streams.worker.model_swap import ModelSwapper
from streams.worker.monitoring import register_monitor
from streams.worker.tables import TableStateStore, define_user_state_table
from streams.worker.topics import Topics, define_topics

log = logging.getLogger(__name__)


@dataclass
class Worker:
    app: RerankerApp
    topics: Topics
    table: TableT
    processor: Processor
    metrics: WorkerMetrics


def build_worker(
    settings: Settings, bundle: ModelBundle, *, web_port: int, data_dir: Path, metrics: WorkerMetrics | None = None
) -> Worker:
    """A configured App with its topics, table and agent, serving ``bundle``.

    Args:
        settings: service settings.
        bundle: the model to serve.
        web_port: faust's web server port; also names the default data directory.
        data_dir: this worker's own directory (table stores); never shared by two workers.
    """
    app = RerankerApp(
        settings.app_id,
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
        # Standbys only pay off with several workers; the changelog restores state either way.
        table_standby_replicas=0,
    )
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    app.fetch_wait_ms = settings.consumer_fetch_wait_ms
    app.verify_end_offsets = settings.verify_end_offsets
    topics = define_topics(app, settings)
    table = define_user_state_table(app, settings)
    metrics = metrics or WorkerMetrics()
    metrics.set_serving_model(bundle.name, bundle.version)
    processor = Processor(bundle, settings, TableStateStore(table), metrics)
    register_agents(app, settings, topics, processor)
    register_monitor(app, table, [settings.events_topic, settings.requests_topic], metrics)
    catalog = ItemCatalog(settings, processor)
    swapper = ModelSwapper(settings, processor, metrics, catalog)

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
    FaustWorker(worker.app, loglevel=log_level, quiet=True).execute_from_commandline()
