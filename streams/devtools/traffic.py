"""``reranker loadgen``: demo-like traffic against a running stack.

Seeds the events topic with a history of synthetic interactions when it is
empty (so the trainer has something to learn), then sends re-rank requests at
a steady rate, each user clicking inside their planted taste now and then, and
reports the client round trip of the answers. The world is seeded, so the
live users are the ones the history (and hence the model) knows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.devtools.synthetic import World, generate_events, generate_requests, make_world
from streams.kafka.clients import KafkaSender, ResultCollector, consumer_config, message_key, produce_records
from streams.kafka.topics import create_topics
from streams.settings import Settings

CANDIDATES = 40
TOP_K = 10
DRAIN_S = 10.0


@dataclass
class LoadStats:
    """What a load run sent and got back; latencies are client round trips in seconds."""

    sent: int = 0
    events: int = 0
    answered: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> str:
        if self.latencies:
            lat = np.array(self.latencies) * 1000.0
            timing = f"round trip p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms"
        else:
            timing = "no answers yet"
        return (
            f"{self.sent} requests sent, {self.answered} answered ({self.errors} with an error), "
            f"{self.events} events; {timing}"
        )


def topic_is_empty(settings: Settings, topic: str, timeout: float = 5.0) -> bool:
    """True when no message can be read from the start of ``topic``.

    Reads rather than asking for end offsets: the embedded broker's ListOffsets
    answer can say 0 for a topic that holds one batch.
    """
    consumer = Consumer(consumer_config(settings))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and ((err := msg.error()) is None or err.code() != KafkaError._PARTITION_EOF):
                return False
        return True
    finally:
        consumer.close()


def seed_history(settings: Settings, world: World, n_events: int, seed: int) -> int:
    """Produce ``n_events`` past interactions ending now; returns how many were sent."""
    history = generate_events(world, n_events, seed=seed, start_ts=time.time() - n_events)
    return produce_records(settings, settings.events_topic, history)


def run_loadgen(
    settings: Settings,
    *,
    rate: float,
    duration: float = 0.0,
    history: int = 8000,
    seed: int = 7,
    click_share: float = 0.5,
    report_every: float = 10.0,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = print,
) -> LoadStats:
    """Send ``rate`` requests per second for ``duration`` seconds (0 = until ``stop`` is set).

    Args:
        history: past interactions to produce first, only if the events topic is empty.
        click_share: share of requests preceded by a click of the same user.
    """
    stop = stop or threading.Event()
    create_topics(settings)
    world = make_world(n_users=300, n_items=160, n_clusters=4, seed=seed)
    if history and topic_is_empty(settings, settings.events_topic):
        sent = seed_history(settings, world, history, seed + 1)
        say(f"loadgen: produced a history of {sent} interactions to {settings.events_topic}")
    stats = LoadStats()
    run = uuid.uuid4().hex[:6]  # request ids stay unique across restarts of the generator
    rng = np.random.default_rng(seed + 2)
    sender = KafkaSender(settings)
    collector = ResultCollector(settings)
    sent_at: dict[str, float] = {}

    def collect(timeout: float) -> None:
        for result in collector.poll(timeout):
            started = sent_at.pop(str(result.get("request_id")), None)
            if started is None:
                continue  # another client's answer
            stats.answered += 1
            stats.errors += int("error" in result)
            stats.latencies.append(time.perf_counter() - started)

    say(f"loadgen: {rate:g} requests/s to {settings.requests_topic} on {settings.bootstrap}")
    interval = 1.0 / rate
    started = next_at = last_report = time.monotonic()
    try:
        while not stop.is_set() and (duration <= 0 or time.monotonic() - started < duration):
            user = world.users[int(rng.integers(len(world.users)))]
            if rng.random() < click_share:
                items = world.cluster_items[world.user_cluster[user]]
                event = {
                    "user_id": user,
                    "item_id": items[int(rng.integers(len(items)))],
                    "event_type": "click",
                    "ts": time.time(),
                }
                sender.send(settings.events_topic, message_key(event), orjson.dumps(event))
                stats.events += 1
            [request] = generate_requests(
                world,
                1,
                n_candidates=CANDIDATES,
                users=[user],
                k=TOP_K,
                seed=int(rng.integers(1 << 30)),
                prefix=f"loadgen-{run}-{stats.sent}",
                ts=time.time(),
            )
            sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
            sent_at[request["request_id"]] = time.perf_counter()
            stats.sent += 1
            next_at += interval
            # Answers are read while waiting for the next send, which also paces the loop.
            while not stop.is_set() and (wait := next_at - time.monotonic()) > 0:
                collect(min(wait, 0.1))
            if time.monotonic() - last_report >= report_every:
                last_report = time.monotonic()
                say(f"loadgen: {stats.summary()}")
        sender.flush()
        deadline = time.monotonic() + DRAIN_S
        while sent_at and time.monotonic() < deadline and not stop.is_set():
            collect(0.2)
    finally:
        collector.close()
        sender.close()
    say(f"loadgen: done: {stats.summary()}")
    return stats
