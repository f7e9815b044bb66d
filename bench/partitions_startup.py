#!/usr/bin/env python3
"""What the partition count costs a worker's start: a fresh worker's time to its first answers
(topics empty), and a replacement's after state for every user was written (group join and the
restore of every partition's user state from the changelog, as when partitions move to a worker
that never had them).

Each (partitions, store) pair runs on a fresh embedded broker with the bench harness's world and
model. Usage: python bench/partitions_startup.py [--partitions 4,12] [--stores memory://,rocksdb://]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    DEFAULT_WORK,
    _ready_workers,
    _settings,
    fresh_broker,
    load1,
    prepare_world,
    produce_events,
    start_worker,
    state_events,
    wait_committed,
)
from streams.kafka.topics import create_topics


def one(bw, partitions: int, store: str, work: Path) -> dict:  # type: ignore[no-untyped-def]
    with fresh_broker(work) as broker:
        overrides = {"partitions": str(partitions)}
        settings = _settings(broker.bootstrap, overrides)
        create_topics(settings)
        load = load1()
        started = time.monotonic()
        worker = start_worker(broker.bootstrap, bw.model_dir, work, overrides, store=store)
        try:
            _ready_workers(broker.bootstrap, [worker], bw, settings)
            first = time.monotonic() - started
            positions = produce_events(settings, state_events(bw, 2))
            wait_committed(broker.bootstrap, settings.app_id, settings.events_topic, positions, 300)
        finally:
            worker.stop(30.0)
        started = time.monotonic()
        # A data dir of its own: every partition's state is restored from the changelog.
        again = start_worker(broker.bootstrap, bw.model_dir, work, overrides, store=store, index=1)
        try:
            _ready_workers(broker.bootstrap, [again], bw, settings)
            restart = time.monotonic() - started
        finally:
            again.stop(30.0)
    return {
        "partitions": partitions,
        "store": store,
        "users": len(bw.users),
        "first_answer_s": round(first, 1),
        "recovered_answer_s": round(restart, 1),
        "load1": load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", default="4,12")
    ap.add_argument("--stores", default="memory://,rocksdb://")
    a = ap.parse_args()
    bw = prepare_world(DEFAULT_WORK)
    for store in a.stores.split(","):
        for partitions in (int(p) for p in a.partitions.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps(one(bw, partitions, store, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
