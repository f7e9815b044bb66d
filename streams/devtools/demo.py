"""``reranker demo``: the whole system on the embedded broker, with synthetic users.

Starts a fresh embedded broker, produces a history of interactions with
planted tastes, trains a model from the topic, starts a worker process, then
streams live events and requests and prints what comes back: a few users,
their planted taste, their top items and the measured round-trip latency.
Each round also follows a newcomer, unknown to the model, whose taste the
online updates have to discover from their first clicks.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams.devtools.broker import embedded_env, start_embedded_broker
from streams.devtools.processes import launch_worker, stop_process
from streams.devtools.synthetic import World, cluster_share_at_k, generate_events, generate_requests, make_world
from streams.kafka.clients import KafkaSender, ResultCollector, message_key, produce_records
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings
from trainer.event_log import events_from_topic

TOP_K = 5
CANDIDATES = 40


def _say(text: str = "") -> None:
    print(text, flush=True)


def _describe(world: World, user: str, items: list[dict], latency_ms: float, label: str) -> str:
    taste = world.cluster_name(world.user_cluster[user])
    ranked = [i["item_id"] for i in items]
    tops = " ".join(f"{i}[{world.cluster_name(world.item_cluster[i])}]" for i in ranked[:TOP_K])
    share = cluster_share_at_k(world, user, ranked, TOP_K)
    return f"  {label:<9} {user} taste={taste:<12} own-taste in top {TOP_K}: {share:4.0%}  {latency_ms:6.1f} ms  {tops}"


def run_demo(settings: Settings, *, duration: float = 0.0, port: int | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="reranker-demo-"))
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    broker = start_embedded_broker(port=port or free_port(), log_file=workdir / "broker.log")
    settings = dataclasses.replace(settings, broker=broker.bootstrap)
    worker = None
    latencies: list[float] = []
    try:
        create_topics(settings)
        _say(f"embedded broker on {broker.bootstrap} (fresh, in memory); work dir {workdir}")
        world = make_world(n_users=300, n_items=160, n_clusters=4, seed=7)
        history = generate_events(world, 8000, seed=1, start_ts=time.time() - 8000)
        produce_records(settings, settings.events_topic, history)
        _say(
            f"produced {len(history)} past interactions of {len(world.users)} users over "
            f"{len(world.items)} items in {world.n_clusters} taste clusters "
            f"({', '.join(world.cluster_name(c) for c in range(world.n_clusters))})"
        )

        from trainer.train import train_to_artifact

        started = time.monotonic()
        events, trained_through = events_from_topic(settings, settings.events_topic)
        model_dir = train_to_artifact(
            events,
            workdir / "model",
            event_weights=settings.event_weights,
            trained_through=trained_through,
            log=lambda line: None,
            model_hparams=settings.model_hparams,
        )
        _say(f"trained the initial model from the topic in {time.monotonic() - started:.1f}s -> {model_dir}")

        metrics_port = free_port()
        worker = launch_worker(
            model_dir,
            web_port=free_port(),
            metrics_port=metrics_port,
            data_dir=workdir / "worker-data",
            log_path=workdir / "worker.log",
            extra_args=["--log-level", "WARNING"],
            env=embedded_env(settings.bootstrap),
        )
        collector = ResultCollector(settings)
        sender = KafkaSender(settings)
        started = time.monotonic()
        probe = generate_requests(world, 1, n_candidates=CANDIDATES, seed=0, prefix="probe")[0]
        sender.send(settings.requests_topic, message_key(probe), orjson.dumps(probe))
        sender.flush()
        if not collector.wait_for([probe["request_id"]], timeout=120):
            _say(f"the worker did not answer within 120 s; see {workdir / 'worker.log'}")
            return 1
        _say(f"worker ready in {time.monotonic() - started:.1f}s; metrics on http://127.0.0.1:{metrics_port}/metrics")
        _say("live re-ranking (Ctrl-C to stop):")

        rng = np.random.default_rng(11)
        deadline = time.monotonic() + duration if duration > 0 else float("inf")
        for round_no in itertools.count(1):
            if stop or time.monotonic() >= deadline:
                break
            newcomer = f"new{round_no:04d}"
            world.user_cluster[newcomer] = int(rng.integers(world.n_clusters))
            regulars = [world.users[int(i)] for i in rng.choice(len(world.users) - round_no, 2, replace=False)]
            _say(f"round {round_no}")
            for step, label in ((0, "newcomer"), (1, "+3 clicks"), (2, "+6 clicks")):
                if step:
                    cluster_items = world.cluster_items[world.user_cluster[newcomer]]
                    for _ in range(3):
                        item = cluster_items[int(rng.integers(len(cluster_items)))]
                        event = {"user_id": newcomer, "item_id": item, "event_type": "click", "ts": time.time()}
                        sender.send(settings.events_topic, message_key(event), orjson.dumps(event))
                    # Delivered before the request that should reflect them.
                    sender.flush()
                users = [newcomer] + (regulars if step == 0 else [])
                requests = generate_requests(
                    world,
                    len(users),
                    n_candidates=CANDIDATES,
                    users=users,
                    k=TOP_K * 2,
                    seed=int(rng.integers(1 << 30)),
                    prefix=f"r{round_no}-{step}",
                    ts=time.time(),
                )
                sent_at = {}
                for request in requests:
                    sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
                    sent_at[request["request_id"]] = time.perf_counter()
                sender.flush()
                arrived: dict[str, float] = {}

                def note_arrival(result: dict[str, Any], arrived: dict[str, float] = arrived) -> None:
                    arrived.setdefault(result["request_id"], time.perf_counter())

                got = collector.wait_for(list(sent_at), timeout=30, on_result=note_arrival)
                for request in requests:
                    result = got.get(request["request_id"])
                    if result is None:
                        _say(f"  no answer for {request['request_id']} within 30 s")
                        continue
                    latency = (arrived[request["request_id"]] - sent_at[request["request_id"]]) * 1000
                    latencies.append(latency)
                    user = request["user_id"]
                    _say(_describe(world, user, result["items"], latency, label if user == newcomer else "regular"))
            if not stop:
                time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        collector.close()
        sender.close()
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            stop_process(worker, 20)
        broker.stop()
        if latencies:
            lat = np.array(latencies)
            _say(
                f"{len(lat)} requests answered; client round trip p50 {np.percentile(lat, 50):.1f} ms, "
                f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms"
            )
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
