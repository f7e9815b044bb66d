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

Every worker converges on the newest announced model: the watcher reads ``model-updates`` from
its start. Of the announcements made before the worker started (up to the topic's end offsets
taken once it has picked its first model from ``models_dir``: ``backlog_until``) only the last
is acted on: earlier ones were superseded and may have been pruned. Every later one is handled,
including those made while the worker was starting, which a watcher beginning at the topic's
end would miss. A load
that fails in a way a moment can mend (the artifact not there yet, a file still being copied)
is tried again with backoff until a later announcement swaps in; each failed announcement counts
once in reranker_model_load_failures_total and each retry in reranker_model_load_retries_total.
Item metadata that arrives while a model loads is registered with it right after the swap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
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


# Waits before the retries of a failed load (the last one repeats): an artifact still being
# copied or synced into models_dir is there within seconds; one still missing after
# LOAD_ATTEMPTS tries (about a minute and a half) is given up until it is announced again.
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
LOAD_ATTEMPTS = 8

# Failures that waiting can mend; the others (a malformed announcement, a path outside
# models_dir, a model from the future) are refused at once.
RETRYABLE = frozenset({"missing_artifact", "invalid_artifact"})


def last_announcement(raws: list[bytes | None]) -> list[bytes | None]:
    """The last well-formed announcement of ``raws`` (as a list of zero or one)."""
    for raw in reversed(raws):
        try:
            announcement = orjson.loads(raw or b"")
            str(announcement["path"]), str(announcement["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        return [raw]
    return []


class ModelSwapper:
    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        metrics: WorkerMetrics,
        catalog: Any = None,
        clock: Callable[[], float] = time.time,
        on_swap: Callable[[ModelBundle], Awaitable[None]] | None = None,
        backoff_s: tuple[float, ...] = RETRY_BACKOFF_S,
        attempts: int = LOAD_ATTEMPTS,
        backlog_until: Mapping[int, int] | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.catalog = catalog
        self.clock = clock
        self.on_swap = on_swap
        self.backoff_s = backoff_s
        self.attempts = max(1, attempts)
        self.swaps = 0
        self.backlog_until = backlog_until
        self._retries: set[asyncio.Task[bool]] = set()

    def _reject(self, reason: str, message: str, *args: object, count: bool = True) -> str:
        log.error(message, *args)
        if count:
            self.metrics.model_load_failures.labels(reason).inc()
        return reason

    async def handle(self, raw: bytes | None) -> bool:
        """Act on one announcement; True when the serving model changed.

        A load that fails for a reason in RETRYABLE is tried again in the background (see
        `_retry`); the announcement counts as one failure however many tries it takes.
        """
        outcome = await self._attempt(raw, count=True)
        if outcome in RETRYABLE and self.attempts > 1:
            task = asyncio.create_task(self._retry(raw, self.swaps))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
        return outcome == "swapped"

    async def _retry(self, raw: bytes | None, swaps_when_announced: int) -> bool:
        """Try ``raw`` again with backoff until it loads, fails for good, or a later swap makes it moot."""
        for attempt in range(1, self.attempts):
            await asyncio.sleep(self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)])
            if self.swaps != swaps_when_announced:
                # A model announced after this one is serving: this one is superseded.
                return False
            self.metrics.model_load_retries.inc()
            outcome = await self._attempt(raw, count=False)
            if outcome not in RETRYABLE:
                return outcome == "swapped"
        log.error("gave up on a model announcement after %d attempts: %r", self.attempts, (raw or b"")[:200])
        return False

    async def _attempt(self, raw: bytes | None, *, count: bool) -> str:
        """One try at an announcement: "swapped", "ignored", or the reason it failed (counted when ``count``)."""
        try:
            announcement = orjson.loads(raw or b"")
            path, version = str(announcement["path"]), str(announcement["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._reject(
                "malformed_announcement",
                "ignoring a malformed model announcement: %r",
                (raw or b"")[:200],
                count=count,
            )
        serving = self.processor.bundle
        if version == serving.version:
            return "ignored"
        rejected = "rejected model %s at %s, still serving %s: %s"
        try:
            where = store.confined(path, self.settings.models_dir)
        except FileNotFoundError as exc:
            return self._reject("missing_artifact", rejected, version, path, serving.version, exc, count=count)
        except (OSError, ValueError) as exc:
            return self._reject("outside_models_dir", rejected, version, path, serving.version, exc, count=count)
        load = functools.partial(
            load_and_validate,
            where,
            max_bytes=self.settings.max_model_bytes,
            created_not_after=self.clock() + self.settings.max_clock_skew_s,
        )
        loop = asyncio.get_running_loop()
        registered: dict[str, Any] = {}
        try:
            bundle = await loop.run_in_executor(None, load)
            if self.catalog is not None and self.catalog.items:
                # The new model is not serving yet, so its tables can grow off the event loop.
                registered = dict(self.catalog.items)
                await loop.run_in_executor(None, bundle.register_items, list(registered.values()))
        except FutureArtifactError as exc:
            return self._reject("future_version", rejected, version, path, serving.version, exc, count=count)
        except Exception as exc:  # noqa: BLE001  a bad artifact must never stop serving the current one
            return self._reject("invalid_artifact", rejected, version, path, serving.version, exc, count=count)
        serving = self.processor.bundle  # another load may have swapped while this one ran
        if not is_newer(bundle.manifest, serving):
            log.info("ignoring announcement of %s: not newer than the serving %s", version, serving.version)
            return "ignored"
        if self.catalog is not None:
            # Items that arrived during the load were registered with the old model only.
            arrived = [r for k, r in self.catalog.items.items() if registered.get(k) is not r]
            if arrived:
                bundle.register_items(arrived)
        self.processor.bundle = bundle
        self.swaps += 1
        self.metrics.model_swaps.inc()
        self.metrics.set_serving_model(bundle.name, bundle.version)
        log.info("now serving model %s %s (was %s)", bundle.name, bundle.version, serving.version)
        if self.on_swap is not None:
            await self.on_swap(bundle)
        return "swapped"

    async def watch(self) -> None:
        """Follow the announcements topic until cancelled: of those up to ``backlog_until`` (default:
        the end when it starts) only the last announcement, then every later one."""

        async def handle_all(raws: list[bytes | None]) -> None:
            for raw in raws:
                await self.handle(raw)

        async def handle_backlog(raws: list[bytes | None]) -> None:
            await handle_all(last_announcement(raws))

        await follow_topic(
            self.settings,
            self.settings.model_updates_topic,
            handle_all,
            from_beginning=True,
            backlog=handle_backlog,
            backlog_until=self.backlog_until,
        )
