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

import orjson  # noqa: E402

from bench.harness import load1, wait_committed  # noqa: E402
from bench.ml100k_live import parse_movielens_args, run, train_from_topic  # noqa: E402
from models import load_artifact  # noqa: E402
from streams.core.jsonl import read_jsonl  # noqa: E402
from streams.core.offline import score_stream_offline  # noqa: E402
from streams.core.processing import DictStateStore, InMessage, Processor  # noqa: E402
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


def score_in_order_at_offsets(
    bundle: Any, settings: Settings, lines: list[dict[str, Any]], ends: dict[int, int]
) -> list[dict[str, Any]]:
    """The Processor, one message at a time in file order, each event at the partition and offset
    it gets on user-events after the training log (``ends``): the model's training watermark is
    then judged by offsets, as the worker judges it, not by timestamps (``score_stream_offline``
    has no offsets, and an event stamped in the watermark's own second counts there as trained)."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(settings.partitions))
    partitioner = DefaultPartitioner()
    next_offset = dict(ends)
    processor = Processor(bundle, settings, DictStateStore())
    results: list[dict[str, Any]] = []
    for line in lines:
        record = {k: v for k, v in line.items() if k != "kind"}
        key = str(record["user_id"]).encode()
        partition = int(partitioner(key, every, every))
        if line["kind"] == "event":
            offset = next_offset.get(partition, 0)
            next_offset[partition] = offset + 1
            message = InMessage(settings.events_topic, partition, offset, None, key, orjson.dumps(record))
        else:
            message = InMessage(settings.requests_topic, partition, None, None, key, orjson.dumps(record))
        for out in processor.process([message]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results


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
    n_train = sum(1 for _ in open(split / "train.jsonl"))
    cases: list[tuple[str, dict[str, str]]] = [("caught_up", {})]
    cases += [(f"backlog_barrier_{ms}ms", {"RERANKER_READ_BARRIER_MAX_MS": ms}) for ms in a.barrier_ms.split(",")]
    offline: list[dict[str, Any]] | None = None
    by_timestamp: list[dict[str, Any]] | None = None
    for name, extra in cases:
        # A fresh broker per case: user-events holds the training log alone (at the offsets the
        # model was trained from), never an earlier case's replayed events.
        broker = start_embedded_broker(port=free_port(), log_file=work / f"broker-{name}.log")
        worker = None
        try:
            env = embedded_env(broker.bootstrap)
            settings = Settings.load(env=env)
            create_topics(settings)
            run(
                cli + ["produce", "--topic", "user-events", "--file", str(split / "train.jsonl")],
                env,
                timings,
                f"produce_{name}",
            )
            if not (work / "model" / "manifest.json").exists():
                train_from_topic(cli, work / "model", "dnn", env, timings)
            if offline is None or by_timestamp is None:
                bundle = load_artifact(work / "model")
                offline = score_in_order_at_offsets(bundle, settings, lines, _ends(settings, split / "train.jsonl"))
                by_timestamp = score_stream_offline(bundle, settings, lines)
            case_env = {**env, **extra}
            worker = launch_worker(
                work / "model",
                web_port=free_port(),
                data_dir=work / f"worker-{name}",
                log_path=work / f"worker-{name}.log",
                extra_args=["--log-level", "WARNING"],
                env=case_env,
                cwd=REPO,
            )
            if name == "caught_up":
                # Everything on user-events is the training log: wait until the group is past it.
                ends = _ends(settings, split / "train.jsonl")
                wait_committed(broker.bootstrap, settings.app_id, settings.events_topic, ends, timeout=600)
            out = work / f"live-{name}.jsonl"
            started = time.monotonic()
            run(
                cli + ["replay", "--stream", str(stream), "--out", str(out), "--timeout", "120"],
                case_env,
                timings,
                f"replay_{name}",
            )
            live = list(read_jsonl(out))
            report[name] = {
                **compare(live, offline),
                "parity_vs_score_stream_offline": compare(live, by_timestamp)["parity"],
                "replay_s": round(time.monotonic() - started, 1),
                "backlog_events": 0 if name == "caught_up" else n_train,
                "load1": load1(),
            }
            print(name, json.dumps(report[name]), flush=True)
        finally:
            if worker is not None:
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
