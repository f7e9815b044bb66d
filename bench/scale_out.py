#!/usr/bin/env python3
"""Scale-out under a stream replay: one worker, two more join mid-stream, one is SIGKILLed and
restarted; every answer and every user's final state is compared with offline in-order handling.

The stream (``{"kind": "event"|"request", ...}`` lines, as ``reranker replay --stream`` takes)
is replayed in four segments: worker A alone; B and C started (the replay goes on while they
join); B killed with SIGKILL, with one probe request per partition sent at that moment; B
restarted. The figures: requests answered, rankings identical to `score_stream_offline`, user
states equal to the offline ones (read from the table's changelog), and the time from the kill to
the answer of each partition's probe (the partitions that moved answer last).

Usage (a fresh embedded broker each run):
    python bench/scale_out.py --split SPLIT --model MODEL --lines 4000 --standby 0
    python bench/scale_out.py --synthetic --standby 1
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_artifact
from streams.core.offline import score_stream_offline
from streams.core.processing import DictStateStore
from streams.core.state import UserState, decode_state
from streams.devtools.processes import launch_worker, stop_process
from streams.devtools.replay import replay_stream
from streams.kafka.clients import KafkaSender, ResultCollector, message_key
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings
from streams.worker.tables import USER_STATE_TABLE

REPO = Path(__file__).resolve().parents[1]

# Online updates of a batch of users and of one user at a time differ by float32 rounding only.
STATE_ATOL = 1e-5
# Scores of one item from forward passes of different batch shapes differ by float32 ulps
# (tests/conftest.py SCORE_ATOL says why).
SCORE_ATOL = 1e-4


def partition_of(user_id: str, partitions: int) -> int:
    """The partition murmur2 places a user's key on (the producers' and the worker's partitioner)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def keyed_records(
    settings: Settings, topic: str, max_idle: float = 2.0
) -> list[tuple[bytes | None, int, bytes | None]]:
    """(key, offset, value) of every record of ``topic``, each partition in offset order, read
    until ``max_idle`` seconds pass without one (the topic is no longer written to)."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka.clients import consumer_config, partitions_of

    consumer = Consumer({**consumer_config(settings), "enable.auto.commit": False})
    out: list[tuple[bytes | None, int, bytes | None]] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(consumer, topic)])
        last = time.monotonic()
        while time.monotonic() - last < max_idle:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    out.append((message.key(), message.offset() or 0, message.value()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def changelog_states(settings: Settings) -> dict[str, UserState]:
    """Each user's last state in the user-state table's changelog topic."""
    topic = f"{settings.app_id}-{USER_STATE_TABLE}-changelog"
    return {key.decode(): decode_state(value) for key, _, value in keyed_records(settings, topic) if key and value}


def last_event_offsets(settings: Settings) -> dict[str, int]:
    """Each user's last event's offset on the events topic (its dedupe position in the state)."""
    return {
        orjson.loads(value)["user_id"]: offset
        for _, offset, value in keyed_records(settings, settings.events_topic)
        if value is not None
    }


def scrape(port: int, prefix: str) -> float:
    """Sum of a worker's samples whose name starts with ``prefix``; -1 while it is not up."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return -1.0
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(prefix))


@dataclasses.dataclass
class Worker:
    name: str
    web_port: int
    metrics_port: int
    log_path: Path
    process: Any = None


@dataclasses.dataclass
class Outcome:
    results: list[dict[str, Any]]
    missing: list[str]
    kill_to_answer_s: dict[int, float]
    workers: list[Worker]

    @property
    def moved_partitions_answering_s(self) -> float:
        return max(self.kill_to_answer_s.values(), default=float("nan"))


def run_scenario(
    settings: Settings,
    env: Mapping[str, str],
    model_dir: Path,
    lines: list[dict[str, Any]],
    workdir: Path,
    probe_users: Mapping[int, str],
    *,
    backlog: Sequence[dict[str, Any]] = (),
    timeout: float = 60.0,
    join_timeout: float = 60.0,
    say: Callable[[str], None] = print,
) -> Outcome:
    """The join/kill/restart scenario (module docstring) against real worker processes.

    ``backlog`` events are produced before the first worker starts and applied by it before the
    replay begins: user state to move between workers (each partition's changelog to recover).
    """
    create_topics(settings)
    if backlog:
        from streams.kafka.clients import produce_records

        produce_records(settings, settings.events_topic, list(backlog))
    requests_at = [n for n, line in enumerate(lines) if line.get("kind") == "request"]
    if len(requests_at) < 8:
        raise ValueError("the stream needs at least 8 requests")
    cuts = [0] + [requests_at[len(requests_at) * q // 4] for q in (1, 2, 3)] + [len(lines)]
    segments = [lines[a:b] for a, b in itertools.pairwise(cuts)]
    workers = [Worker(n, free_port(), free_port(), workdir / f"worker-{n}.log") for n in "ABC"]

    def start(worker: Worker) -> None:
        worker.process = launch_worker(
            model_dir,
            web_port=worker.web_port,
            metrics_port=worker.metrics_port,
            data_dir=workdir / f"data-{worker.name}",
            log_path=worker.log_path,
            env=env,
            cwd=REPO,
        )

    results: list[dict[str, Any]] = []
    missing: list[str] = []
    answered_at: dict[int, float] = {}

    def replay(segment: list[dict[str, Any]], what: str) -> None:
        started = time.monotonic()
        got, lost = replay_stream(settings, segment, timeout=timeout)
        results.extend(got)
        missing.extend(lost)
        say(f"{what}: {len(got)} answered, {len(lost)} missing in {time.monotonic() - started:.1f}s")

    a, b, c = workers
    try:
        start(a)
        if backlog:
            began = time.monotonic()
            while scrape(a.metrics_port, 'reranker_events_total{event_type="') < len(backlog):
                time.sleep(0.5)
            say(f"A applied the backlog of {len(backlog)} events in {time.monotonic() - began:.1f}s")
        replay(segments[0], "A alone")
        start(b)
        start(c)
        replay(segments[1], "B and C joining")
        deadline = time.monotonic() + join_timeout
        while scrape(b.metrics_port, "reranker_requests_total") <= 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        collector = ResultCollector(settings)
        sender = KafkaSender(settings)
        probes = {
            f"probe-{p}": {
                "request_id": f"probe-{p}",
                "user_id": user,
                "candidates": [{"item_id": "probe-item", "score": 0.5}],
            }
            for p, user in probe_users.items()
        }
        killed = time.monotonic()
        b.process.send_signal(signal.SIGKILL)
        b.process.wait()
        for probe in probes.values():
            sender.send(settings.requests_topic, message_key(probe), orjson.dumps(probe))
        sender.flush()

        def collect() -> None:
            pending = set(probes)
            end = killed + timeout * 2
            while pending and time.monotonic() < end:
                for result in collector.poll(0.05):
                    if result.get("request_id") in pending:
                        pending.discard(result["request_id"])
                        answered_at[int(result["request_id"].split("-")[1])] = time.monotonic() - killed

        prober = threading.Thread(target=collect)
        prober.start()
        replay(segments[2], "B killed")
        prober.join()
        collector.close()
        sender.close()
        start(b)
        replay(segments[3], "B restarted")
    finally:
        for worker in workers:
            if worker.process is not None:
                stop_process(worker.process, 30)
    return Outcome(results, missing, answered_at, workers)


def compare(settings: Settings, model_dir: Path, lines: list[dict[str, Any]], outcome: Outcome) -> dict[str, Any]:
    """Rankings and final user states against offline in-order handling of the same lines."""
    store = DictStateStore()
    offline = score_stream_offline(load_artifact(model_dir), settings, lines, store=store)
    first: dict[str, dict[str, Any]] = {}
    for result in outcome.results:
        first.setdefault(result["request_id"], result)
    ranking = lambda r: [i["item_id"] for i in r.get("items", [])]
    differ = [r["request_id"] for r in offline if ranking(first.get(r["request_id"], {})) != ranking(r)]
    by_id = {r["request_id"]: r for r in offline}
    # A ranking that differs only where two items' scores are within SCORE_ATOL is an order of
    # near-ties, which float noise of different batch shapes can flip.
    flips = [rid for rid in differ if rid in first and near_tie_order(first[rid], by_id[rid])]
    live_states = changelog_states(settings)
    positions = last_event_offsets(settings)
    state_differ = [
        user
        for user, state in store.states.items()
        if not same_state(live_states.get(user), state) or live_states[user].last_offset != positions.get(user)
    ]
    return {
        "requests": len(offline),
        "answered": len(first),
        "missing": len(outcome.missing),
        "identical_rankings": len(offline) - len(differ),
        "parity": round((len(offline) - len(differ)) / max(1, len(offline)), 5),
        "differing_requests": differ[:20],
        "differing_only_in_near_ties": len(flips),
        # Answers given past read_barrier_max_ms, possibly without their user's latest events.
        "stale_answers": sum(1 for r in first.values() if r.get("stale")),
        "differing_and_stale": sum(1 for rid in differ if first.get(rid, {}).get("stale")),
        "users": len(store.states),
        "states_equal": len(store.states) - len(state_differ),
        "differing_users": state_differ[:20],
        "kill_to_answer_max_s": round(outcome.moved_partitions_answering_s, 2),
        "kill_to_answer_median_s": round(statistics.median(outcome.kill_to_answer_s.values()), 2)
        if outcome.kill_to_answer_s
        else None,
        "probes_answered": len(outcome.kill_to_answer_s),
    }


def near_tie_order(live: dict[str, Any], offline: dict[str, Any], atol: float = SCORE_ATOL) -> bool:
    """Whether each position where the two rankings differ holds scores within ``atol``."""
    a, b = live.get("items", []), offline.get("items", [])
    return len(a) == len(b) and all(
        abs(x["score"] - y["score"]) <= atol for x, y in zip(a, b) if x["item_id"] != y["item_id"]
    )


def same_state(live: UserState | None, offline: UserState) -> bool:
    """Equal up to float rounding of the vector (the dedupe position, an offset only the live
    state has, is compared by the caller)."""
    return (
        live is not None
        and np.allclose(live.vector, offline.vector, atol=STATE_ATOL, rtol=0)
        and live.history == offline.history
        and live.counts == offline.counts
        and live.applied == offline.applied
        and live.last_ts == offline.last_ts
        and live.model_version == offline.model_version
    )


def synthetic_stream(world: Any, n_events: int, n_requests: int, seed: int = 5) -> list[dict[str, Any]]:
    """Events after any training history (ts from 1.75e9), a request after every few of them."""
    from streams.devtools.synthetic import generate_events, generate_requests

    events = generate_events(world, n_events, seed=seed, start_ts=1.75e9)
    requests = generate_requests(world, n_requests, n_candidates=20, seed=seed + 1, prefix="so", k=10)
    every = max(1, n_events // n_requests)
    lines: list[dict[str, Any]] = []
    for n, event in enumerate(events):
        lines.append({"kind": "event", **event})
        if n % every == every - 1 and requests:
            lines.append({"kind": "request", **requests.pop(0)})
    lines += [{"kind": "request", **r} for r in requests]
    return lines


def probe_users_for(lines: list[dict[str, Any]], partitions: int) -> dict[int, str]:
    """One user of the stream per partition (where the stream has one)."""
    out: dict[int, str] = {}
    for line in lines:
        out.setdefault(partition_of(str(line["user_id"]), partitions), str(line["user_id"]))
    return out


def main() -> None:
    from streams.core.jsonl import read_jsonl
    from streams.devtools.broker import embedded_env, start_embedded_broker

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", help="make_split.py --protocol temporal output (stream.jsonl)")
    ap.add_argument("--model", help="model for --split (trained on its train.jsonl)")
    ap.add_argument("--lines", type=int, default=4000, help="first lines of stream.jsonl")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic world, history and stream instead")
    ap.add_argument("--standby", type=int, default=0, help="table_standby_replicas")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--store", default="memory://")
    ap.add_argument("--backlog", type=int, default=0, help="events applied before the replay (state to move)")
    ap.add_argument("--backlog-users", type=int, default=20000)
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="scale-out-"))
    with start_embedded_broker(port=free_port(), log_file=workdir / "broker.log") as broker:
        overrides = {
            "partitions": a.partitions,
            "table_standby_replicas": a.standby,
            "store": a.store,
            "models_dir": str(workdir / "models"),
        }
        settings = Settings.load(env={}, overrides={"broker": broker.bootstrap, "profile": "embedded", **overrides})
        env = embedded_env(broker.bootstrap, {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")})
        env.update({f"RERANKER_{k.upper()}": str(v) for k, v in overrides.items()})
        create_topics(settings)
        if a.synthetic:
            from streams.devtools.synthetic import generate_events, make_world
            from streams.kafka.clients import produce_records
            from trainer.event_log import events_from_topic
            from trainer.train import train_to_artifact

            world = make_world(n_users=300, n_items=150, n_clusters=4, seed=81)
            produce_records(settings, settings.events_topic, generate_events(world, 20000, seed=82))
            events, through = events_from_topic(settings, settings.events_topic)
            model_dir = Path(
                train_to_artifact(
                    events, workdir / "models" / "v1", trained_through=through, max_epochs=5, log=lambda line: None
                )
            )
            lines = synthetic_stream(world, 3000, 1000)
        else:
            if not a.split or not a.model:
                ap.error("give --split and --model, or --synthetic")
            model_dir = Path(a.model)
            lines = [line for _, line in zip(range(a.lines), read_jsonl(Path(a.split) / "stream.jsonl"))]
        backlog: list[dict[str, Any]] = []
        if a.backlog:
            from streams.devtools.synthetic import generate_events, make_world

            crowd = make_world(n_users=a.backlog_users, n_items=150, n_clusters=4, seed=83)
            # Users of their own ("b" prefix): the stream's users and their answers are unchanged.
            backlog = [
                {**e, "user_id": f"b{e['user_id']}"}
                for e in generate_events(crowd, a.backlog, seed=84, start_ts=1.74e9)
            ]
        started = time.monotonic()
        outcome = run_scenario(
            settings, env, model_dir, lines, workdir, probe_users_for(lines, a.partitions), backlog=backlog, say=print
        )
        figures = compare(settings, model_dir, [{"kind": "event", **e} for e in backlog] + lines, outcome)
    print(
        json.dumps(
            {
                "standby": a.standby,
                "partitions": a.partitions,
                "store": a.store,
                "lines": len(lines),
                "backlog_events": len(backlog),
                "seconds": round(time.monotonic() - started, 1),
                **figures,
                "load_average": os.getloadavg(),
                "workdir": str(workdir),
            }
        )
    )


if __name__ == "__main__":
    main()
