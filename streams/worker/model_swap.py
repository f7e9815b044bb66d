"""Hot swap: follow ``model-updates``, load announced models off the event loop, swap between batches.

Every worker reads the announcements whole (no consumer group: each worker must
see each one). A model is loaded and validated in a thread (load_artifact checks
the manifest, checksums and shapes and runs a smoke forward; a real re-rank
then runs here), and only then replaces the Processor's model. The agent
handles a batch synchronously, so the swap always falls between two batches:
no request waits for a load, and every result names the model that scored it.

Whoever can write to the topic names the path, so an announcement is trusted no further
than the settings allow: the path must resolve (symbolic links followed) inside
``models_dir``, where the trainer publishes, even for a worker started with ``--model``
naming one artifact elsewhere; the model may not be created further in the future than
``max_clock_skew_s`` (it would outrank every later version); and its tensors may not
exceed ``max_model_bytes``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models import ModelBundle, load_artifact, store
from models.artifact import FutureArtifactError
from streams.core.processing import Processor
from streams.core.scoring import ScoringInput, rerank_batch
from streams.core.worker_metrics import WorkerMetrics
from streams.kafka.follow import follow_topic
from streams.settings import Settings

log = logging.getLogger(__name__)


def load_and_validate(
    path: str | Path, *, max_bytes: int | None = None, created_not_after: float | None = None
) -> ModelBundle:
    """Load an announced artifact (arguments as `load_artifact`'s) and prove it can re-rank.

    Raises:
        FutureArtifactError: created after ``created_not_after``.
        ValueError: anything else wrong with the artifact.
    """
    bundle = load_artifact(path, max_bytes=max_bytes, created_not_after=created_not_after)
    items = bundle.item_ids[1:6] + ["an-unknown-item"]
    smoke = ScoringInput(
        np.zeros(bundle.model.dim, dtype=np.float32),
        np.zeros(bundle.history_len, dtype=np.int64),
        items,
        np.full(len(items), np.nan),
        None,
    )
    [ranked] = rerank_batch(bundle, [smoke])
    if len(ranked) != len(items) or not all(np.isfinite(score) for _, score in ranked):
        raise ValueError(f"model at {path} produced unusable scores in the smoke test")
    return bundle


def is_newer(candidate: dict[str, Any], serving: ModelBundle) -> bool:
    """Announcements older than the serving model are ignored, so re-reading old ones never rolls back."""
    return str(candidate.get("created", "")) > str(serving.manifest.get("created", ""))


class ModelSwapper:
    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        metrics: WorkerMetrics,
        catalog: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.catalog = catalog
        self.clock = clock

    def _reject(self, reason: str, message: str, *args: object) -> bool:
        log.error(message, *args)
        self.metrics.model_load_failures.labels(reason).inc()
        return False

    async def handle(self, raw: bytes | None) -> bool:
        """Act on one announcement; True when the serving model changed."""
        try:
            announcement = orjson.loads(raw or b"")
            path, version = str(announcement["path"]), str(announcement["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._reject(
                "malformed_announcement", "ignoring a malformed model announcement: %r", (raw or b"")[:200]
            )
        serving = self.processor.bundle
        if version == serving.version:
            return False
        rejected = "rejected model %s at %s, still serving %s: %s"
        try:
            where = store.confined(path, self.settings.models_dir)
        except (OSError, ValueError) as exc:
            return self._reject("outside_models_dir", rejected, version, path, serving.version, exc)
        load = functools.partial(
            load_and_validate,
            where,
            max_bytes=self.settings.max_model_bytes,
            created_not_after=self.clock() + self.settings.max_clock_skew_s,
        )
        loop = asyncio.get_running_loop()
        try:
            bundle = await loop.run_in_executor(None, load)
            if self.catalog is not None and self.catalog.items:
                # The new model is not serving yet, so its tables can grow off the event loop.
                await loop.run_in_executor(None, bundle.register_items, list(self.catalog.items.values()))
        except FutureArtifactError as exc:
            return self._reject("future_version", rejected, version, path, serving.version, exc)
        except Exception as exc:  # noqa: BLE001  a bad artifact must never stop serving the current one
            return self._reject("invalid_artifact", rejected, version, path, serving.version, exc)
        if not is_newer(bundle.manifest, serving):
            log.info("ignoring announcement of %s: not newer than the serving %s", version, serving.version)
            return False
        self.processor.bundle = bundle
        self.metrics.model_swaps.inc()
        self.metrics.set_serving_model(bundle.name, bundle.version)
        log.info("now serving model %s %s (was %s)", bundle.name, bundle.version, serving.version)
        return True

    async def watch(self) -> None:
        """Follow the announcements topic from its end until cancelled."""

        async def handle_all(raws: list[bytes | None]) -> None:
            for raw in raws:
                await self.handle(raw)

        await follow_topic(self.settings, self.settings.model_updates_topic, handle_all, from_beginning=False)
