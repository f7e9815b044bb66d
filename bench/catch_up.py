#!/usr/bin/env python3
"""Catch-up: a fresh worker (new consumer group) on an events topic holding a history, with a
model trained from that topic, answering requests at a steady rate from its start.

Per run, on a fresh embedded broker: the history (synthetic events, 1 partition share each of
``--partitions``) is produced, a model is trained on its newest ``--train-window`` events with the
watermark at the log's end (what ``train-service --window`` does), then the worker starts and
requests go out at ``--rate`` per second for ``--duration`` seconds from that moment. Reported:
seconds from the worker's start to steady state (the first request from which on every
``--steady-window`` seconds of requests have p99 < 100 ms and none missing), and to the consumer
lag metric's first appearance on its /metrics. ``--worker-repo`` runs another checkout's worker
(before/after a change) against the same history and model.

Usage: python bench/catch_up.py --history 100000 [--worker-repo /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import produce_events
from streams.devtools.broker import embedded_env, start_embedded_broker
from streams.devtools.processes import launch_worker, stop_process
from streams.devtools.synthetic import generate_events, generate_requests, make_world
from streams.kafka.clients import KafkaSender, ResultCollector, message_key
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings
from trainer.event_log import log_from_topic
from trainer.train import train_to_artifact

REPO = Path(__file__).resolve().parents[1]
STEADY_P99_S = 0.100


def steady_from(sent: list[tuple[float, str]], answered: dict[str, float], window: float) -> float | None:
    """Send time of the first request from which every ``window`` seconds of requests to the end
    have p99 under STEADY_P99_S and no request unanswered; None if never.

    A window starts at each request (those starting less than ``window`` before the last send
    are left out): the answer is the request after the last one that starts a bad window.
    """
    latencies = [(t, answered[rid] - t if rid in answered else float("inf")) for t, rid in sent]
    end = latencies[-1][0] if latencies else 0.0
    first: float | None = latencies[0][0] if latencies else None
    for i, (t, _) in enumerate(latencies):
        if t + window > end:
            break
        chunk = [lat for s, lat in latencies[i:] if s < t + window]
        # An unanswered request (inf) makes the window bad; percentile() over infs gives nan.
        if not all(np.isfinite(chunk)) or float(np.percentile(chunk, 99)) >= STEADY_P99_S:
            first = latencies[i + 1][0]
    return first if first is not None and first + window <= end else None


def steady_window_end(sent: list[tuple[float, str]], answered: dict[str, float], window: float) -> float | None:
    """The measure of the first catch-up table: the end of the last bad window, windows starting
    every ``window``/4 seconds from the first request (up to ``window`` later than `steady_from`)."""
    latencies = [(t, answered[rid] - t if rid in answered else float("inf")) for t, rid in sent]
    end = latencies[-1][0] if latencies else 0.0
    bad_after: float | None = None
    start = latencies[0][0] if latencies else 0.0
    t = start
    while t + window <= end:
        chunk = [lat for s, lat in latencies if t <= s < t + window]
        if chunk and (not all(np.isfinite(chunk)) or float(np.percentile(chunk, 99)) >= STEADY_P99_S):
            bad_after = t + window
        t += window / 4
    first = start if bad_after is None else bad_after
    return first if first + window <= end else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=100_000, help="events on the topic before the worker starts")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--train-window", type=int, default=100_000, help="newest events the model is trained on")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--steady-window", type=float, default=5.0)
    ap.add_argument("--worker-repo", default=str(REPO), help="checkout whose worker runs")
    ap.add_argument("--store", default="memory://")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="catch-up-"))
    with start_embedded_broker(port=free_port(), log_file=work / "broker.log") as broker:
        overrides = {"partitions": a.partitions, "store": a.store, "models_dir": str(work / "models")}
        settings = Settings.load(env={}, overrides={"broker": broker.bootstrap, "profile": "embedded", **overrides})
        create_topics(settings)
        world = make_world(n_users=a.users, n_items=a.items, n_clusters=8, seed=11)
        started = time.monotonic()
        produce_events(settings, generate_events(world, a.history, seed=12, start_ts=1.7e9))
        produced_s = time.monotonic() - started
        events, ends, _ = log_from_topic(settings, settings.events_topic, window=min(a.train_window, a.history))
        through = {"topic": settings.events_topic, "offsets": ends, "max_ts": float(events.ts.max())}
        model = Path(
            train_to_artifact(events, work / "models" / "v1", trained_through=through, max_epochs=1, log=lambda x: None)
        )
        env = embedded_env(broker.bootstrap, {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")})
        env.update({f"RERANKER_{k.upper()}": str(v) for k, v in overrides.items()})
        metrics_port = free_port()
        requests = generate_requests(world, int(a.rate * a.duration) + 1, n_candidates=20, seed=13, prefix="cu")
        collector = ResultCollector(settings)
        answered: dict[str, float] = {}
        stop = threading.Event()

        def collect() -> None:
            while not stop.is_set():
                for result in collector.poll(0.02):
                    answered.setdefault(str(result.get("request_id")), time.monotonic())

        reader = threading.Thread(target=collect)
        reader.start()
        t0 = time.monotonic()
        worker = launch_worker(
            model,
            web_port=free_port(),
            metrics_port=metrics_port,
            data_dir=work / "data",
            log_path=work / "worker.log",
            env=env,
            cwd=Path(a.worker_repo),
        )
        lag_seen: float | None = None
        sent: list[tuple[float, str]] = []
        sender = KafkaSender(settings)
        try:
            for n, request in enumerate(requests):
                due = t0 + n / a.rate
                while time.monotonic() < due:
                    if lag_seen is None:
                        try:
                            body = urllib.request.urlopen(
                                f"http://127.0.0.1:{metrics_port}/metrics", timeout=0.2
                            ).read()
                            if b"\nreranker_consumer_lag{" in body:
                                lag_seen = time.monotonic() - t0
                        except OSError:
                            pass
                    time.sleep(max(0.0, min(0.01, due - time.monotonic())))
                sent.append((time.monotonic(), request["request_id"]))
                sender.send(settings.requests_topic, message_key(request), orjson.dumps(request))
            sender.flush()
            time.sleep(3.0)
        finally:
            stop.set()
            reader.join()
            collector.close()
            stop_process(worker, 10)
        steady = steady_from(sent, answered, a.steady_window)
        window_end = steady_window_end(sent, answered, a.steady_window)
        lat = [answered[rid] - t for t, rid in sent if rid in answered]
    record: dict[str, Any] = {
        "history": a.history,
        "train_window": min(a.train_window, a.history),
        "partitions": a.partitions,
        "worker_repo": a.worker_repo,
        "rate": a.rate,
        "duration_s": a.duration,
        "produce_s": round(produced_s, 1),
        "steady_state_after_s": round(steady - t0, 1) if steady is not None else None,
        "steady_window_end_after_s": round(window_end - t0, 1) if window_end is not None else None,
        "lag_metric_after_s": round(lag_seen, 1) if lag_seen is not None else None,
        "first_answer_after_s": round(min(answered.values()) - t0, 1) if answered else None,
        "answered": len(lat),
        "sent": len(sent),
        "p99_whole_run_ms": round(float(np.percentile(lat, 99)) * 1000, 1) if lat else None,
        # What keeps a run from its steady state: requests sent after the first answer that took
        # 100 ms or more, as (sent after the start s, latency ms).
        "slow_after_first_answer": [
            (round(t - t0, 2), round((answered[rid] - t) * 1000, 1))
            for t, rid in sent
            if rid in answered and answered and t >= min(answered.values()) and answered[rid] - t >= 0.1
        ][:40],
        "load_average": os.getloadavg(),
        "workdir": str(work),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
