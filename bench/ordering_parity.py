#!/usr/bin/env python3
"""Ordering parity: a live worker against the offline Processor on the MovieLens-100K temporal stream.

make_split.py --protocol temporal, the first ``--limit`` lines of stream.jsonl. The offline
reference handles them strictly in file order, one message at a time
(``streams.core.offline.score_stream_offline``, the path of bench/temporal_offline.py). Live, on
a fresh embedded broker holding train.jsonl on user-events and a model trained from that topic,
``reranker replay --stream`` sends them to a worker, in two cases:

* caught-up: the worker has consumed the training events before the replay starts;
* backlog: a worker of a new consumer group starts together with the replay, so the training
  events are an unconsumed backlog on user-events while the first requests arrive.

A request is at parity when its live ranking has the offline one's items in the same order with
scores within 1e-4 (tests/conftest.py SCORE_ATOL). Prints one JSON object.

Needs ../shared: exits 77 with a reason when absent.
Usage: python bench/ordering_parity.py [--limit 4000] [--barrier-ms 1000,60000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import load1, wait_committed  # noqa: E402
from bench.ml100k_live import parse_movielens_args, run, train_from_topic  # noqa: E402
from models import load_artifact  # noqa: E402
from streams.core.jsonl import read_jsonl  # noqa: E402
from streams.core.offline import score_stream_offline  # noqa: E402
from streams.devtools.broker import embedded_env, start_embedded_broker  # noqa: E402
from streams.devtools.processes import launch_worker, stop_process  # noqa: E402
from streams.kafka.topics import create_topics  # noqa: E402
from streams.ports import free_port  # noqa: E402
from streams.settings import Settings  # noqa: E402

SCORE_ATOL = 1e-4


def same_ranking(live: dict[str, Any], offline: dict[str, Any]) -> bool:
    a, b = live.get("items") or [], offline.get("items") or []
    if [i["item_id"] for i in a] != [i["item_id"] for i in b]:
        return False
    return all(abs(x["score"] - y["score"]) <= SCORE_ATOL for x, y in zip(a, b))


def compare(live: list[dict[str, Any]], offline: list[dict[str, Any]]) -> dict[str, Any]:
    by_id = {r["request_id"]: r for r in live}
    matched = sum(1 for r in offline if r["request_id"] in by_id and same_ranking(by_id[r["request_id"]], r))
    return {
        "requests": len(offline),
        "answered": sum(1 for r in offline if r["request_id"] in by_id),
        "same_ranking": matched,
        "parity": round(matched / max(1, len(offline)), 4),
        "stale": sum(1 for r in live if r.get("stale")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=4000, help="stream lines replayed")
    ap.add_argument("--barrier-ms", default="1000", help="read_barrier_max_ms values for the backlog case")
    a, shared, work = parse_movielens_args(ap, "parity-")
    py = sys.executable
    timings: dict[str, float] = {}
    split = work / "split"
    if not (split / "stream.jsonl").exists():
        run(
            [
                py,
                str(shared / "eval" / "make_split.py"),
                "--data",
                str(shared / "data" / "ml-100k"),
                "--out",
                str(split),
            ]
            + ["--protocol", "temporal"],
            dict(os.environ),
            timings,
            "make_split",
        )
    stream = work / f"stream-{a.limit}.jsonl"
    stream.write_text("".join(open(split / "stream.jsonl").readlines()[: a.limit]))
    lines = list(read_jsonl(stream))
    report: dict[str, Any] = {"stream_lines": len(lines), "load1_start": load1()}
    cli = [py, "-m", "streams"]
    broker = start_embedded_broker(port=free_port(), log_file=work / "broker.log")
    workers: list[Any] = []
    try:
        env = embedded_env(broker.bootstrap)
        settings = Settings.load(env=env)
        create_topics(settings)
        run(cli + ["produce", "--topic", "user-events", "--file", str(split / "train.jsonl")], env, timings, "produce")
        if not (work / "model" / "manifest.json").exists():
            train_from_topic(cli, work / "model", "dnn", env, timings)
        offline = score_stream_offline(load_artifact(work / "model"), settings, lines)
        n_train = sum(1 for _ in open(split / "train.jsonl"))
        cases: list[tuple[str, dict[str, str]]] = [("caught_up", {})]
        cases += [(f"backlog_barrier_{ms}ms", {"RERANKER_READ_BARRIER_MAX_MS": ms}) for ms in a.barrier_ms.split(",")]
        for name, extra in cases:
            case_env = {**env, "RERANKER_APP_ID": f"parity-{name}", **extra}
            worker = launch_worker(
                work / "model",
                web_port=free_port(),
                data_dir=work / f"worker-{name}",
                log_path=work / f"worker-{name}.log",
                extra_args=["--log-level", "WARNING"],
                env=case_env,
                cwd=REPO,
            )
            workers.append(worker)
            if name == "caught_up":
                # Everything on user-events is the training log: wait until the group is past it.
                ends = _ends(settings, split / "train.jsonl")
                wait_committed(broker.bootstrap, f"parity-{name}", settings.events_topic, ends, timeout=600)
            out = work / f"live-{name}.jsonl"
            started = time.monotonic()
            run(
                cli + ["replay", "--stream", str(stream), "--out", str(out), "--timeout", "120"],
                case_env,
                timings,
                f"replay_{name}",
            )
            report[name] = {
                **compare(list(read_jsonl(out)), offline),
                "replay_s": round(time.monotonic() - started, 1),
                "backlog_events": 0 if name == "caught_up" else n_train,
                "load1": load1(),
            }
            print(name, json.dumps(report[name]), flush=True)
            stop_process(worker, 30)
            workers.remove(worker)
    finally:
        for worker in workers:
            stop_process(worker, 30)
        broker.stop()
    report["seconds"] = timings
    report["work"] = str(work)
    print(json.dumps(report, indent=1))


def _ends(settings: Settings, train: Path) -> dict[int, int]:
    """End offset per partition of a fresh user-events holding ``train`` (keyed by user, murmur2):
    counted, since the embedded broker's ListOffsets reports the base of the last batch."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(settings.partitions))
    partitioner = DefaultPartitioner()
    out: dict[int, int] = {}
    for record in read_jsonl(train):
        p = int(partitioner(str(record["user_id"]).encode(), every, every))
        out[p] = out.get(p, 0) + 1
    return out


if __name__ == "__main__":
    main()
