"""The work of a worker, as plain functions over messages.

The faust agent hands batches of consumed messages to :class:`Processor`; the
offline ``reranker score`` command hands it messages read from files. Both get
the same ordering, state handling and scoring, which is what makes live and
offline results comparable.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from models import ModelBundle
from streams.core.diversity import similarity_of
from streams.core.explain import explain_request, state_summary
from streams.core.partitioning import partition_for
from streams.core.records import (
    ContractError,
    DiversitySpec,
    ParsedRequest,
    UserEvent,
    check_key,
    encode_error_result,
    encode_result,
    parse_event,
    parse_request,
)
from streams.core.rules import Arrangement
from streams.core.scoring import ScoringInput, rerank_batch
from streams.core.state import (
    Interaction,
    UserState,
    already_trained,
    apply_event,
    apply_events,
    initial_state,
    state_history_rows,
)
from streams.core.worker_metrics import INVALID_EVENT_TYPE, WorkerMetrics, request_start
from streams.settings import DEAD_LETTER_KEY_BYTES, Settings

log = logging.getLogger(__name__)


@dataclass
class InMessage:
    """A consumed message.

    Attributes:
        timestamp: the Kafka timestamp in seconds, if known.
        handle: the transport's own event object (the faust event), opaque here.
        stale: for a request, answered before the worker had applied every event of its user
            that preceded it (the read barrier's wait ran out): the result says so.
    """

    topic: str
    partition: int | None
    offset: int | None
    timestamp: float | None
    key: bytes | None
    value: bytes | None
    handle: object = None
    stale: bool = False


# An event, its message and what became of it ("ok", "duplicate"), as `_apply_rounds` reports it.
Outcome = tuple[UserEvent, InMessage, str]


@dataclass
class OutMessage:
    """A message to produce; a result also names its request, so that an error result can take
    its place when it cannot be sent.

    Attributes:
        partition: where it must go; None lets the producer's partitioner choose (by key).
        timestamp: its Kafka timestamp in seconds; None = when it is sent.
    """

    topic: str
    key: bytes | None
    value: bytes
    request_id: str | None = None
    user_id: str | None = None
    partition: int | None = None
    timestamp: float | None = None


class StateStore(Protocol):
    """Where user states live: a faust Table in a worker, a dict offline."""

    def get(self, user_id: str, source: InMessage) -> UserState | None: ...

    def put(self, user_id: str, state: UserState, source: InMessage) -> None: ...


class DictStateStore:
    """An in-memory store for offline scoring and tests."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def get(self, user_id: str, source: InMessage) -> UserState | None:
        return self.states.get(user_id)

    def put(self, user_id: str, state: UserState, source: InMessage) -> None:
        self.states[user_id] = state


# A dead letter's error text is the parser's message or an exception's repr: capped, as the
# raw part is, so that a dead letter always fits the producer's request size.
DEAD_LETTER_ERROR_CHARS = 1024


def dead_letter(settings: Settings, message: InMessage, reason: str, error: str) -> OutMessage:
    """A dead-letter record that keeps the raw message, as text when it is UTF-8, else base64.

    At most ``dead_letter_max_raw_bytes`` of it: a message near the size limit would otherwise
    give a dead letter (a third larger as base64) that the producer refuses.
    """
    whole = message.value or b""
    raw = whole[: settings.dead_letter_max_raw_bytes]
    truncated = len(raw) < len(whole)
    try:
        whole.decode("utf-8")
        # A cut can split a character; its leading bytes are dropped rather than made base64.
        text, encoding = raw.decode("utf-8", errors="ignore"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    value = orjson.dumps(
        {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "reason": reason,
            "error": error[:DEAD_LETTER_ERROR_CHARS],
            "raw": text,
            "raw_encoding": encoding,
            "raw_bytes": len(whole),
            "raw_truncated": truncated,
            "ts": time.time(),
        }
    )
    key = message.key[:DEAD_LETTER_KEY_BYTES] if message.key is not None else None
    return OutMessage(settings.dead_letter_topic, key, value)


def redelivered(message: InMessage, state: UserState) -> bool:
    """Whether the event was already applied to ``state``: Kafka redelivers what was consumed
    after the last committed offset when a worker restarts after the state write."""
    return message.offset is not None and state.last_offset is not None and message.offset <= state.last_offset


class Processor:
    """Applies events to user state and answers re-rank requests, in message order.

    Requests are collected and scored together in one forward pass; an event
    for a user with a request still waiting flushes the waiting requests first,
    so no request sees an interaction that came after it. Events are collected
    too and applied as a group (one batched online update per round, one state
    write per user) right before any flush, so every request still sees every
    event of its user that came before it.

    A consumed message must sit where its user's state is: keyed by its ``user_id`` (else it
    is dead-lettered as ``key_mismatch``) and, when the topic's partition count is known, on
    the partition murmur2 gives that key (else it is re-routed there, see `_misplaced`).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        settings: Settings,
        store: StateStore,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        items: dict[str, dict[str, Any]] | None = None,
        partitions: Mapping[str, int] | None = None,
        check_keys: bool = False,
    ) -> None:
        """
        Args:
            partitions: the partition count of each input topic, as the broker reports it; a
                topic not in it (offline scoring: none) has its partitions left unchecked.
            check_keys: refuse a message whose key is not its user_id. The worker's messages
                come from Kafka with their keys; those of offline scoring and of the trainer's
                validation are read from files and have none.
        """
        self.bundle = bundle
        self.settings = settings
        self.store = store
        self.metrics = metrics or WorkerMetrics()
        # Item records by id (the items topic): the worker's catalogue fills this same dict.
        self.items: dict[str, dict[str, Any]] = {} if items is None else items
        self.default_diversity = (
            DiversitySpec(settings.diversity_method, settings.diversity_weight) if settings.diversity_method else None
        )
        self.diversity_fields = [f.strip() for f in settings.diversity_fields.split(",") if f.strip()]
        # Event types are settings: their counters can only start at 0 once these are known.
        self.metrics.add_event_types(settings.event_weights)
        self.clock = clock
        self.partitions = dict(partitions or {})
        self.check_keys = check_keys
        self.metrics.add_input_topics(self.partitions)
        # Topics whose producer was already told (in the log) to fix its partitioner.
        self._warned_topics: set[str] = set()

    def process(self, messages: Sequence[InMessage]) -> list[OutMessage]:
        outputs: list[OutMessage] = []
        pending: list[tuple[ParsedRequest, InMessage]] = []
        pending_users: set[str] = set()
        group: list[tuple[UserEvent, InMessage]] = []
        # One reading per batch: an event time is judged against the clock when it is consumed.
        not_after = self.clock() + self.settings.max_clock_skew_s
        for message in messages:
            if message.topic == self.settings.requests_topic:
                request = self._parse_request(message, outputs)
                if request is not None and not self._misplaced(message, request.user_id, request.request_id, outputs):
                    # The group may hold events of this user: they came before the request and
                    # are applied before it is answered, since every answer applies the group
                    # first. No event after it can join the group while it waits (see below).
                    pending.append((request, message))
                    pending_users.add(request.user_id)
            elif message.topic == self.settings.events_topic:
                try:
                    event = parse_event(
                        message.value,
                        event_types=self.settings.event_weights,
                        max_bytes=self.settings.max_message_bytes,
                        not_after=not_after,
                    )
                except ContractError as exc:
                    self._reject_event(message, exc, outputs)
                    continue
                if self._misplaced(message, event.user_id, None, outputs):
                    continue
                if event.user_id in pending_users:
                    self._apply_group(group, outputs)
                    group = []
                    self._answer(pending, outputs)
                    pending, pending_users = [], set()
                group.append((event, message))
        self._apply_group(group, outputs)
        self._answer(pending, outputs)
        return outputs

    def _parse_request(self, message: InMessage, outputs: list[OutMessage]) -> ParsedRequest | None:
        try:
            return parse_request(
                message.value, max_candidates=self.settings.max_candidates, max_bytes=self.settings.max_message_bytes
            )
        except ContractError as exc:
            self._reject_request(message, exc, outputs)
            return None

    def _reject_request(self, message: InMessage, exc: ContractError, outputs: list[OutMessage]) -> None:
        self.metrics.requests.labels(exc.code).inc()
        self.metrics.dead_letters.labels(exc.code).inc()
        outputs.append(dead_letter(self.settings, message, exc.code, exc.message))
        # Answer whenever the request can be identified, so the client stops waiting.
        if exc.request_id is not None:
            key = exc.user_id.encode() if exc.user_id is not None else message.key
            outputs.append(self.error_result(exc.request_id, exc.user_id, key, exc.code, exc.message))

    def _reject_event(self, message: InMessage, exc: ContractError, outputs: list[OutMessage]) -> None:
        self.metrics.events.labels(INVALID_EVENT_TYPE, exc.code).inc()
        self.metrics.dead_letters.labels(exc.code).inc()
        outputs.append(dead_letter(self.settings, message, exc.code, exc.message))

    def _misplaced(self, message: InMessage, user_id: str, request_id: str | None, outputs: list[OutMessage]) -> bool:
        """Whether the message is not where its user's state is; if so, it is handled here.

        A key other than the user_id is dead-lettered (``key_mismatch``), with an error result
        for a request: the key is the producer's statement of where the message belongs, and
        guessing past it would hide a producer bug. A message under the right key but on another
        partition than murmur2(key) mod N (a producer on librdkafka's default partitioner) is
        re-routed: produced again, unchanged and with its timestamp, to its own partition, where
        the worker that owns the user's state handles it in turn. Its content is valid, so
        nothing is lost and the producer's mistake costs only a hop; the first one per topic is
        logged with the fix.
        """
        try:
            if self.check_keys:
                check_key(message.key, user_id, request_id=request_id)
        except ContractError as exc:
            if message.topic == self.settings.requests_topic:
                self._reject_request(message, exc, outputs)
            else:
                self._reject_event(message, exc, outputs)
            return True
        count = self.partitions.get(message.topic)
        if count is None or message.partition is None or message.key is None:
            return False
        home = partition_for(message.key, count)
        if home == message.partition:
            return False
        self.metrics.wrong_partition.labels(message.topic).inc()
        if message.topic not in self._warned_topics:
            self._warned_topics.add(message.topic)
            log.warning(
                "a message on %s[%d] belongs on partition %d (murmur2 of its key mod %d): its producer does "
                "not partition as the Java client and faust do. Re-routing such messages (counted in "
                "reranker_wrong_partition_total); fix the producer: librdkafka clients (confluent-kafka, "
                "kcat, node-rdkafka, Go) need partitioner=murmur2_random. Logged once per topic.",
                message.topic,
                message.partition,
                home,
                count,
            )
        outputs.append(
            OutMessage(message.topic, message.key, message.value or b"", partition=home, timestamp=message.timestamp)
        )
        return True

    def error_result(
        self, request_id: str | None, user_id: str | None, key: bytes | None, code: str, message: str
    ) -> OutMessage:
        """An error result for a request, so that its client stops waiting."""
        value = encode_error_result(
            request_id, user_id, code, message, self.bundle.name, self.bundle.version, self.clock()
        )
        return OutMessage(self.settings.results_topic, key, value, request_id, user_id)

    def _apply_one(self, event: UserEvent, message: InMessage, outputs: list[OutMessage], rewritten: set[str]) -> None:
        """Apply one event and write its user's state: the fallback when a group fails.

        The trained and frozen checks are the caller's (`_apply_group` has made and counted them).

        Args:
            event: The parsed event.
            message: Its message (offset for duplicate detection, source for the store).
            outputs: Where a dead letter goes if applying it fails.
            rewritten: Users whose state a duplicate already rewrote in this batch; updated.
        """
        try:
            state = self.state_of(event.user_id, message)
            if redelivered(message, state):
                # Redelivered after a crash between the state write and the offset commit.
                if event.user_id not in rewritten:
                    self._rewrite(event.user_id, state, message)
                    rewritten.add(event.user_id)
                self.metrics.events.labels(event.event_type, "duplicate").inc()
                return
            updated = apply_event(
                self.bundle,
                state,
                event.user_id,
                event.item_id,
                event.event_type,
                event.ts,
                self.settings.event_weights[event.event_type],
                online=True,
                steps=self.settings.online_steps,
                lr=self.settings.online_lr,
                negatives=self.settings.online_negatives,
                offset=message.offset,
            )
            self.store.put(event.user_id, updated, message)
        except Exception as exc:  # a bug must not stop the stream; the event is kept aside
            log.exception("failed to apply event at %s[%s]@%s", message.topic, message.partition, message.offset)
            self.metrics.events.labels(event.event_type, "error").inc()
            self.metrics.dead_letters.labels("internal_error").inc()
            outputs.append(dead_letter(self.settings, message, "internal_error", repr(exc)))
            return
        self.metrics.events.labels(event.event_type, "ok").inc()
        if message.timestamp is not None:
            self.metrics.state_update_lag.observe(max(0.0, self.clock() - message.timestamp))

    def _apply_group(self, group: list[tuple[UserEvent, InMessage]], outputs: list[OutMessage]) -> None:
        """Apply consecutive events as `_apply_one` would one by one, with batched online updates.

        A user's k-th event goes in round k, one `apply_events` call per round over all users
        that have one, each on the state the previous round left in a local dict; the store sees
        one write per user, of the final state, when all rounds are done. Checks and metrics are
        the one-by-one path's, per event. If the batched work fails, the group is applied again
        one event at a time through `_apply_one`, so a bad event only dead-letters itself.
        """
        if not group:
            return
        planned: list[tuple[UserEvent, InMessage]] = []
        for event, message in group:
            if already_trained(self.bundle.trained_through, message.topic, message.partition, message.offset, event.ts):
                self.metrics.events.labels(event.event_type, "trained").inc()
            elif not self.settings.online_updates:
                # Frozen serving: the model's own state only, neither vector nor history moves.
                self.metrics.events.labels(event.event_type, "frozen").inc()
            else:
                planned.append((event, message))
        if not planned:
            return
        by_user: dict[str, list[tuple[UserEvent, InMessage]]] = {}
        for event, message in planned:
            by_user.setdefault(event.user_id, []).append((event, message))
        try:
            results = self._apply_rounds(by_user)
        except Exception:  # a bug must not stop the stream; isolate it event by event
            # Nothing was written yet, so the one-by-one path starts from the same states.
            log.exception("batched update of %d events failed; applying them one by one", len(planned))
            rewritten: set[str] = set()
            for event, message in planned:
                self._apply_one(event, message, outputs, rewritten)
            return
        # Counted per kind and outcome once per group: a labelled child per event was ~2% of the
        # time per event.
        counted: Counter[tuple[str, str]] = Counter()
        lag = self.metrics.state_update_lag
        now = self.clock()
        for user_id, (state, source, outcomes) in results.items():
            try:
                if source is None:
                    # Every event of the user was a duplicate: the state is written again (once),
                    # since the crash that redelivered them may have come before its changelog
                    # record was sent.
                    self._rewrite(user_id, state, outcomes[-1][1])
                else:
                    self.store.put(user_id, state, source)
            except Exception:
                log.exception(
                    "failed to store the state of %d events of one user; applying them one by one", len(outcomes)
                )
                retried: set[str] = set()
                for event, message, _ in outcomes:
                    self._apply_one(event, message, outputs, retried)
                continue
            for event, message, outcome in outcomes:
                counted[event.event_type, outcome] += 1
                if outcome == "ok" and message.timestamp is not None:
                    lag.observe(max(0.0, now - message.timestamp))
        for (event_type, outcome), n in counted.items():
            self.metrics.events.labels(event_type, outcome).inc(n)

    def _apply_rounds(
        self, by_user: dict[str, list[tuple[UserEvent, InMessage]]]
    ) -> dict[str, tuple[UserState, InMessage | None, list[Outcome]]]:
        """Each user's events applied in order, in memory, batched across users.

        Args:
            by_user: Each user's events to apply (trained and frozen ones already set aside), in
                message order.

        Returns:
            Per user: the final state, the message of the last event applied (None when every
            event was a duplicate: nothing new to write) and each event's outcome, "ok" or
            "duplicate".
        """
        settings = self.settings
        states = {user_id: self.state_of(user_id, events[0][1]) for user_id, events in by_user.items()}
        sources: dict[str, InMessage | None] = dict.fromkeys(by_user)
        outcomes: dict[str, list[Outcome]] = {user_id: [] for user_id in by_user}
        queues = {user_id: deque(events) for user_id, events in by_user.items()}
        while queues:
            users: list[str] = []
            batch: list[tuple[UserEvent, InMessage]] = []
            for user_id, queue in list(queues.items()):
                while queue:
                    event, message = queue.popleft()
                    if redelivered(message, states[user_id]):
                        # Redelivered after a crash between the state write and the offset commit.
                        outcomes[user_id].append((event, message, "duplicate"))
                        continue
                    users.append(user_id)
                    batch.append((event, message))
                    break
                if not queue:
                    del queues[user_id]
            if not batch:
                break
            updated = apply_events(
                self.bundle,
                [states[user_id] for user_id in users],
                [
                    Interaction(
                        event.user_id,
                        event.item_id,
                        event.event_type,
                        event.ts,
                        settings.event_weights[event.event_type],
                        message.offset,
                    )
                    for event, message in batch
                ],
                online=True,
                steps=settings.online_steps,
                lr=settings.online_lr,
                negatives=settings.online_negatives,
            )
            for user_id, (event, message), state in zip(users, batch, updated):
                states[user_id] = state
                sources[user_id] = message
                outcomes[user_id].append((event, message, "ok"))
        return {user_id: (states[user_id], sources[user_id], outcomes[user_id]) for user_id in by_user}

    def _rewrite(self, user_id: str, state: UserState, source: InMessage) -> None:
        """Write ``state`` again because a redelivered event of its user was a duplicate.

        A worker writes a state to its local store before the changelog record of that write is
        sent (faust sends it soon after, from a buffer). Killed in between, the worker restarts
        with the new state on disk, finds the redelivered events already applied, and without
        this write the changelog would keep the old state until the user's next event: a
        partition moved to another worker, or a fresh data volume, would recover the old one.
        Writing the state again sends its changelog record.
        """
        self.store.put(user_id, state, source)
        self.metrics.state_rewrites.inc()

    def state_of(self, user_id: str, source: InMessage) -> UserState:
        """The user's current state, or the state the model knows for them."""
        state = self.store.get(user_id, source)
        if state is None:
            return initial_state(self.bundle, user_id)
        if state.model_version != self.bundle.version:
            # After a swap: the vector lives in the old model's space, so it restarts from the
            # new model's. The history is item ids, valid in any model: kept when it holds events
            # the new model was not trained on, else the model's copy is the newer one (events
            # between the state's last one and the model's watermark are skipped as trained, or
            # never read when the worker skips ahead to the watermark). Counts are kept.
            fresh = initial_state(self.bundle, user_id)
            covered = state.last_offset is None or already_trained(
                self.bundle.trained_through,
                self.settings.events_topic,
                source.partition,
                state.last_offset,
                state.last_ts,
            )
            return UserState(
                vector=fresh.vector,
                history=(fresh.history if covered else state.history) or fresh.history or state.history,
                counts=state.counts,
                applied=state.applied,
                model_version=self.bundle.version,
                last_ts=state.last_ts,
                last_offset=state.last_offset,
            )
        return state

    def _arrangement(self, request: ParsedRequest) -> Arrangement | None:
        """The stages after scoring of a request (None when it has no rules and no diversity)."""
        diversity = request.diversity or self.default_diversity
        if diversity is not None:
            weight = self.settings.diversity_weight if diversity.weight is None else diversity.weight
            diversity = dataclasses.replace(diversity, weight=weight) if weight > 0 else None
        if request.rules is None and diversity is None:
            return None
        similarity = None
        if diversity is not None:
            kind = diversity.similarity or self.settings.diversity_similarity
            similarity = similarity_of(kind, self.bundle, self.items, self.diversity_fields, request.item_ids)
        return Arrangement(
            k=request.k, rules=request.rules, diversity=diversity, similarity=similarity, items=self.items
        )

    @staticmethod
    def _guarded(
        arrangement: Arrangement | None, n: int, failed: dict[int, Exception]
    ) -> Callable[[np.ndarray, np.ndarray, Sequence[str]], np.ndarray] | None:
        """The request's stages after scoring, recording a failure under ``n`` instead of raising,
        so that a bug there fails that request, not the batch scored with it."""
        if arrangement is None:
            return None

        def arrange(order: np.ndarray, scores: np.ndarray, candidates: Sequence[str]) -> np.ndarray:
            try:
                return arrangement(order, scores, candidates)
            except Exception as exc:
                log.exception("the stages after scoring failed for one request")
                failed[n] = exc
                return order[:0]

        return arrange

    def _internal_error(
        self, request: ParsedRequest, message: InMessage, exc: Exception, text: str, outputs: list[OutMessage]
    ) -> None:
        """An error result and a dead letter for one request the worker failed to answer."""
        self.metrics.requests.labels("internal_error").inc()
        self.metrics.dead_letters.labels("internal_error").inc()
        outputs.append(dead_letter(self.settings, message, "internal_error", repr(exc)))
        outputs.append(
            self.error_result(request.request_id, request.user_id, request.user_id.encode(), "internal_error", text)
        )

    def _answer(self, pending: list[tuple[ParsedRequest, InMessage]], outputs: list[OutMessage]) -> None:
        if not pending:
            return
        metrics = self.metrics
        started = time.perf_counter()
        # Requests whose stages after scoring failed: they alone get an error result.
        failed: dict[int, Exception] = {}
        try:
            inputs: list[ScoringInput] = []
            states: list[UserState] = []
            for request, message in pending:
                state = self.state_of(request.user_id, message)
                states.append(state)
                inputs.append(
                    ScoringInput(
                        user_vector=state.vector,
                        history=state_history_rows(self.bundle, state),
                        candidates=request.item_ids,
                        upstream=np.array(request.scores, dtype=np.float64),
                        k=request.k,
                        arrange=self._guarded(self._arrangement(request), len(inputs), failed),
                    )
                )
            ranked = rerank_batch(self.bundle, inputs)
        except Exception as exc:  # answer every waiting client rather than drop the batch
            log.exception("scoring a batch of %d requests failed", len(pending))
            for request, message in pending:
                self._internal_error(request, message, exc, "the worker failed to score this request", outputs)
            return
        metrics.score_duration.observe(time.perf_counter() - started)
        metrics.batch_size.observe(len(pending))
        now = self.clock()
        for n, ((request, message), items, scored, state) in enumerate(zip(pending, ranked, inputs, states)):
            explains, summary = None, None
            if n in failed:
                self._internal_error(
                    request, message, failed[n], "the worker failed to apply this request's rules", outputs
                )
                continue
            if request.explain:
                try:
                    position = {item: i for i, item in enumerate(request.item_ids)}
                    returned = [position[item] for item, _ in items]
                    explains = explain_request(self.bundle, scored, returned, [score for _, score in items])
                    summary = state_summary(state)
                except Exception as exc:  # one request's explanation must not fail the others
                    log.exception("explaining request %s failed", request.request_id)
                    self._internal_error(request, message, exc, "the worker failed to explain this request", outputs)
                    continue
            outputs.append(
                OutMessage(
                    self.settings.results_topic,
                    request.user_id.encode(),
                    encode_result(
                        request.request_id,
                        request.user_id,
                        items,
                        self.bundle.name,
                        self.bundle.version,
                        now,
                        explains,
                        summary,
                        stale=message.stale,
                    ),
                    request.request_id,
                    request.user_id,
                )
            )
            metrics.requests.labels("ok").inc()
            if message.stale:
                metrics.stale_answers.inc()
            metrics.candidates.observe(len(request.item_ids))
            start = request_start(request.ts, message.timestamp, now)
            if start is not None:
                metrics.request_latency.observe(max(0.0, now - start))
