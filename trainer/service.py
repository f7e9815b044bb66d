"""``reranker trainer``: retrain periodically from the event log, gate, publish, announce.

One run:
1. Read the newest ``train_window_events`` of the event log (0: all of it) with Kafka positions,
   parsing each record into compact columns as it arrives.
2. Hold out the newest ``holdout_share`` of every partition. The candidate trains on the rest,
   starting from the serving model's weights (``train_warm_start``); its watermark is the cut,
   so workers learn the held-out events online after a swap.
3. Score the candidate and the serving model on the same held-out interactions, each ranked
   among 99 sampled unseen items, through the worker's own Processor: events are applied in
   log order with online updates, and every held-out interaction is asked for just before it
   happens. Both models see identical data.
   With ``train_from_requests``, the requests topic is read too: its requests labelled by the
   events that followed them within ``label_window_s`` are served lists (`trainer.served`). The
   newest ``holdout_share`` of them, and the events that label them, are held out; the candidate
   trains on the older ones, and is scored on the held-out ones against the upstream order.
4. Publish only if candidate NDCG@10 >= serving NDCG@10 - ``promotion_tolerance`` on at least
   one held-out interaction, and the candidate beats the upstream order (NDCG@10) on the
   held-out served lists when there are some, or if no model is serving yet (`gate`): the
   artifact is written into a hidden staging directory and renamed into
   ``models_dir/<version>`` in one step, so no reader ever sees half a model.
5. Announce ``{"name", "version", "path"}`` on ``model-updates`` and keep ``keep_versions``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models import ModelBundle, load_artifact, store
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.kafka.clients import produce_records
from streams.kafka.topics import create_topics
from streams.settings import Settings
from trainer.data import EventColumns
from trainer.event_log import log_from_topic
from trainer.served import LoggedRequest, evaluate_lists, label_requests, logged_from_topic, served_lists, split_newest
from trainer.validation import ranking_metrics

log = logging.getLogger(__name__)

DECISIONS_LOG = "decisions.jsonl"


@dataclasses.dataclass
class RunResult:
    decision: str  # promoted | rejected | skipped
    version: str | None
    path: Path | None
    candidate: dict[str, float]
    serving: dict[str, float] | None
    seconds: float
    reason: str = ""


def split_holdout(
    events: EventColumns, ends: dict[str, int], share: float
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Cut each partition at (1 - share) of what the window holds of it.

    Args:
        events: Each partition's events in offset order (partitions may interleave).

    Returns:
        (rows of the training events, rows of the held-out events, each partition's in offset
        order, {partition: first held-out offset}).
    """
    cut: dict[str, int] = {}
    train: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for partition, end in ends.items():
        part = np.flatnonzero(events.partition == int(partition))
        keep = math.floor(part.size * (1.0 - share))
        cut[partition] = int(events.offset[part[keep]]) if keep < part.size else end
        train.append(part[:keep])
        held.append(part[keep:])
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate([empty, *train]), np.concatenate([empty, *held]), cut


def holdout_stream(
    settings: Settings,
    topic: str,
    events: EventColumns,
    train: np.ndarray,
    held: np.ndarray,
    *,
    max_requests: int,
    n_negatives: int = 99,
    seed: int = 0,
) -> tuple[list[InMessage], dict[str, str]]:
    """Messages to replay (training events, then held-out events with a request before each
    scored interaction) and the truth {request_id: item_id}.

    Only the events of users with a scored interaction are replayed: a user's state depends
    on that user's events alone, so the others cannot change an answer, and the replay costs
    the scored users' events, not the whole window's.
    """
    weights = np.array([settings.event_weights.get(t, 0.0) for t in events.event_types] or [0.0])
    positive = weights[events.event_type] > 0
    held_sorted = held[np.lexsort((events.offset[held], events.partition[held], events.ts[held]))]
    has_past = set(np.unique(events.user[train[positive[train]]]).tolist())
    eligible = []
    for index, (user, is_positive) in enumerate(
        zip(events.user[held_sorted].tolist(), positive[held_sorted].tolist(), strict=True)
    ):
        if is_positive:
            if user in has_past:
                eligible.append(index)
            has_past.add(user)
    if len(eligible) > max_requests:
        eligible = [eligible[int(i)] for i in np.linspace(0, len(eligible) - 1, max_requests)]
    asked = set(eligible)
    asked_users = np.unique(events.user[held_sorted[eligible]]) if eligible else np.zeros(0, dtype=np.int32)
    both = np.concatenate([train, held])
    all_items = sorted(events.item_ids[c] for c in np.unique(events.item[both]).tolist())
    seen: dict[int, set[str]] = {}
    for row in both[np.isin(events.user[both], asked_users)].tolist():
        seen.setdefault(int(events.user[row]), set()).add(events.item_ids[events.item[row]])
    rng = np.random.default_rng(seed)

    def message(row: int) -> InMessage:
        return InMessage(
            topic, int(events.partition[row]), int(events.offset[row]), None, None, orjson.dumps(events.event(row))
        )

    messages = [message(row) for row in train[np.isin(events.user[train], asked_users)].tolist()]
    truth: dict[str, str] = {}
    for index, row in enumerate(held_sorted.tolist()):
        user = int(events.user[row])
        if user not in seen:
            continue
        if index in asked:
            user_seen = seen[user]
            item_id = events.item_ids[events.item[row]]
            negatives: set[str] = set()
            while len(negatives) < min(n_negatives, len(all_items) - len(user_seen)):
                item = all_items[int(rng.integers(len(all_items)))]
                if item not in user_seen:
                    negatives.add(item)
            candidates = [*negatives, item_id]
            rng.shuffle(candidates)
            request_id = f"holdout-{events.partition[row]}-{events.offset[row]}"
            truth[request_id] = item_id
            messages.append(
                InMessage(
                    settings.requests_topic,
                    None,
                    None,
                    None,
                    None,
                    orjson.dumps(
                        {
                            "request_id": request_id,
                            "user_id": events.user_ids[user],
                            "k": 10,
                            "candidates": [{"item_id": c} for c in candidates],
                        }
                    ),
                )
            )
        messages.append(message(row))
    return messages, truth


def evaluate_on_stream(
    bundle: ModelBundle, settings: Settings, messages: Sequence[InMessage], truth: dict[str, str]
) -> dict[str, float]:
    """Replay ``messages`` through a Processor serving ``bundle`` with online updates on."""
    online = dataclasses.replace(settings, online_updates=True)
    processor = Processor(bundle, online, DictStateStore())
    results = []
    step = 512
    for start in range(0, len(messages), step):
        for out in processor.process(messages[start : start + step]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return ranking_metrics(results, truth)


def gate(
    candidate: dict[str, float],
    serving: dict[str, float] | None,
    held_out: int,
    tolerance: float,
    lists: dict[str, float] | None = None,
) -> tuple[bool, str]:
    """Whether to publish the candidate, and why.

    ``lists`` is `trainer.served.evaluate_lists` of the candidate on held-out served lists
    ({"ndcg@10", "upstream_ndcg@10", "lists"}), or None. With at least one list, a candidate
    whose NDCG@10 there does not exceed the upstream order's is refused: re-ranking would make
    the lists worse than they arrived.

    Without a serving model the candidate is published whatever the evidence: a fresh stack
    has nothing else to serve (the reason then says when it does not beat the upstream order).
    With one, no held-out interaction means no evidence that the candidate is not worse (a
    window of newcomers' first events only), so the serving model stays.
    """
    worse_than_upstream = ""
    # NaN (no model score) compares False, so it never beats the upstream order.
    if lists is not None and lists.get("lists") and not lists["ndcg@10"] > lists["upstream_ndcg@10"]:
        worse_than_upstream = (
            f"candidate does not beat the upstream order on {int(lists['lists'])} held-out served lists "
            f"(ndcg@10 {lists['ndcg@10']:.4f} vs {lists['upstream_ndcg@10']:.4f})"
        )
    if serving is None:
        return True, "no serving model" + (f"; {worse_than_upstream}" if worse_than_upstream else "")
    if worse_than_upstream:
        return False, worse_than_upstream
    if not held_out:
        return False, "no held-out interactions: no evidence against the serving model"
    if candidate["ndcg@10"] >= serving["ndcg@10"] - tolerance:
        return True, "candidate within the tolerance of the serving model"
    return False, "candidate worse than the serving model"


def _split_served(
    settings: Settings, logged: list[LoggedRequest], events: EventColumns, train: np.ndarray
) -> tuple[list[LoggedRequest], list[LoggedRequest], np.ndarray]:
    """Hold out the newest ``holdout_share`` of the labelled served lists.

    Returns:
        (the logged requests older than the held-out lists, for training; the held-out lists,
        labelled by every event of the window; the training event rows without the events that
        label the held-out lists, so the candidate cannot have learned their answers).
    """
    if not logged:
        return [], [], train
    labelled = label_requests(logged, events, settings.event_weights, settings.label_window_s)
    _, newest = split_newest(labelled, settings.holdout_share)
    if not newest:
        return logged, [], train
    first = newest[0].ts
    rows: list[int] = []
    held = label_requests(
        [r for r in logged if r.ts >= first], events, settings.event_weights, settings.label_window_s, label_rows=rows
    )
    return [r for r in logged if r.ts < first], held, train[~np.isin(train, np.asarray(rows, dtype=np.int64))]


def items_from_topic(settings: Settings) -> list[dict[str, Any]]:
    """The latest metadata record per item on the items topic (empty when there is no topic)."""
    from streams.core.records import parse_item
    from streams.kafka.clients import read_topic
    from streams.kafka.topics import existing_topics

    if settings.items_topic not in existing_topics(settings, timeout=10):
        return []
    latest: dict[str, dict[str, Any]] = {}
    for _, _, value in read_topic(settings, settings.items_topic)[0]:
        record = parse_item(value)
        if record is not None:
            latest[record["item_id"]] = record
    return list(latest.values())


def run_once(
    settings: Settings,
    *,
    topic: str | None = None,
    kind: str = "dnn",
    seed: int = 0,
    max_epochs: int | None = None,
    announce: bool = True,
    progress: Callable[[str], None] = print,
    train_fn: Callable[..., Path] | None = None,
) -> RunResult:
    """One training run: read, hold out, train, gate, publish, announce."""
    from trainer.train import train_to_artifact

    train_fn = train_fn or train_to_artifact
    started = time.monotonic()
    topic = topic or settings.events_topic
    root = Path(settings.models_dir)
    events, ends, invalid = log_from_topic(settings, topic, window=settings.train_window_events)
    train, held, cut = split_holdout(events, ends, settings.holdout_share)
    logged: list[LoggedRequest] = []
    held_lists: list[LoggedRequest] = []
    if settings.train_from_requests:
        # The same bound as the events' window: a request is one record, like an event.
        requests = logged_from_topic(settings, window=settings.train_window_events)
        logged, held_lists, train = _split_served(settings, requests, events, train)
    # A version from the future is no serving model: workers refuse it.
    serving_path = store.newest(root, created_not_after=time.time() + settings.max_clock_skew_s)
    serving = load_artifact(serving_path) if serving_path else None
    if (
        serving is not None
        and serving.trained_through.get("topic") == topic
        and all(int(serving.trained_through.get("offsets", {}).get(p, -1)) >= c for p, c in cut.items())
    ):
        return RunResult(
            "skipped", None, None, {}, None, time.monotonic() - started, "no events since the serving model's watermark"
        )
    if not train.size:
        return RunResult("skipped", None, None, {}, None, time.monotonic() - started, "no events")
    items = items_from_topic(settings)
    progress(
        f"trainer: {len(train)} events to train on, {len(held)} held out, {invalid} invalid skipped"
        + (f", {len(items)} items with metadata" if items else "")
    )
    staging = store.staging_dir(root, "train")
    try:
        artifact = Path(
            train_fn(
                events.take(train),
                staging / "artifact",
                kind=kind,
                event_weights=settings.event_weights,
                seed=seed,
                max_epochs=max_epochs,
                log=progress,
                items=items or None,
                model_hparams=settings.model_hparams,
                trained_through={"topic": topic, "offsets": cut, "max_ts": float(events.ts[train].max())},
                **({"warm_from": serving} if settings.train_warm_start and serving is not None else {}),
                **({"logged": logged, "label_window_s": settings.label_window_s} if logged else {}),
            )
        )
        candidate = load_artifact(artifact)
        lists_metrics = None
        if held_lists:
            tensors = served_lists(
                held_lists,
                events,
                settings.event_weights,
                candidate.user_index,
                candidate.item_index,
                candidate.history_len,
            )
            lists_metrics = evaluate_lists(candidate.model, tensors)
        messages, truth = holdout_stream(
            settings, topic, events, train, held, max_requests=settings.eval_max_requests, seed=seed
        )
        candidate_metrics = evaluate_on_stream(candidate, settings, messages, truth)
        serving_metrics = evaluate_on_stream(serving, settings, messages, truth) if serving is not None else None
        promote, reason = gate(
            candidate_metrics, serving_metrics, len(truth), settings.promotion_tolerance, lists_metrics
        )
        decision = {
            "decision": "promoted" if promote else "rejected",
            "reason": reason,
            "tolerance": settings.promotion_tolerance,
            "held_out_requests": len(truth),
            "candidate": candidate_metrics,
            "serving": serving_metrics,
            "serving_version": serving.version if serving else None,
            "served_lists": lists_metrics,
        }
        progress(
            f"trainer: candidate {candidate.version} ndcg@10 {candidate_metrics['ndcg@10']:.4f}"
            + (
                f" vs serving {serving.version} {serving_metrics['ndcg@10']:.4f}"
                if serving is not None and serving_metrics
                else " (no serving model)"
            )
            + f" on {len(truth)} held-out interactions"
            + (
                f"; {lists_metrics['ndcg@10']:.4f} vs upstream order {lists_metrics['upstream_ndcg@10']:.4f}"
                f" on {lists_metrics['lists']} held-out served lists"
                if lists_metrics
                else ""
            )
            + f" -> {decision['decision']} ({reason})"
        )
        if not truth:
            log.warning("trainer: no held-out interactions to evaluate candidate %s on: %s", candidate.version, reason)
        manifest_path = artifact / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["promotion"] = decision
        manifest_path.write_text(json.dumps(manifest, indent=1))
        # Rejected candidates are never published, so every decision also goes to a log.
        with open(root / DECISIONS_LOG, "a") as fh:
            fh.write(json.dumps({"version": candidate.version, "created": manifest.get("created"), **decision}) + "\n")
        if not promote:
            return RunResult(
                "rejected",
                candidate.version,
                None,
                candidate_metrics,
                serving_metrics,
                time.monotonic() - started,
                reason,
            )
        published = store.publish(artifact, root, candidate.version)
        store.prune(root, settings.keep_versions, protect=published.name)
        if announce:
            create_topics(settings, [settings.model_updates_topic])
            produce_records(
                settings,
                settings.model_updates_topic,
                [{"name": candidate.name, "version": candidate.version, "path": str(published.resolve())}],
            )
        progress(f"trainer: published {published}")
        return RunResult(
            "promoted", candidate.version, published, candidate_metrics, serving_metrics, time.monotonic() - started
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_and_record(settings: Settings, metrics: Any = None, **run_args: Any) -> RunResult:
    """`run_once`, reporting its start and outcome to ``metrics`` (a `TrainerMetrics`, or None).

    Raises:
        Whatever the run raised, after counting it as a failure.
    """
    started = time.monotonic()
    if metrics is not None:
        metrics.run_started()
    try:
        result = run_once(settings, **run_args)
    except Exception:
        if metrics is not None:
            metrics.run_failed(time.monotonic() - started)
        raise
    if metrics is not None:
        if result.decision == "skipped":
            metrics.run_skipped()
        else:
            metrics.run_finished(result.seconds, result.candidate, result.decision == "promoted")
    return result


# Until a first model exists the workers have nothing to serve, so a run that found too little
# to train on (an empty log on a fresh stack, or one that is still being filled) is retried
# after this many seconds rather than after the full period: a fresh stack then serves within
# about a minute of its first events, not one period later.
COLD_START_RETRY_S = 20.0


def next_wait(settings: Settings, every_s: float, result: RunResult | None) -> float:
    """Seconds from the start of a run to the next one; ``result`` None means the run failed."""
    if (result is None or result.decision == "skipped") and store.newest(Path(settings.models_dir)) is None:
        return min(every_s, COLD_START_RETRY_S)
    return every_s


def run_forever(
    settings: Settings, *, every_s: float, stop: threading.Event, metrics: Any = None, **run_args: Any
) -> None:
    """Run, then wait ``every_s`` (interruptible), until ``stop`` is set. A failed run is logged
    and counted; the service keeps going. Before a first model exists, a skipped or failed run
    is retried after `COLD_START_RETRY_S`."""
    while not stop.is_set():
        started = time.monotonic()
        result: RunResult | None = None
        try:
            result = run_and_record(settings, metrics, **run_args)
        except Exception:
            log.exception("training run failed")
        else:
            if result.decision == "skipped":
                log.info("trainer: skipped: %s", result.reason)
        stop.wait(max(0.0, next_wait(settings, every_s, result) - (time.monotonic() - started)))
