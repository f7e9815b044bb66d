"""Peak memory and wall time of one trainer run on a large synthetic event log.

    python -m bench.trainer_scale fill --broker HOST:PORT --topic T --events 5000000
    python -m bench.trainer_scale run --broker HOST:PORT --topic T [--repo DIR] [-- extra args]

``fill`` produces planted synthetic events (streams/devtools/synthetic.py) in chunks, so the
producer itself stays small. ``run`` times ``reranker train-service --once`` from the checkout
``--repo`` (default: this one) under ``/usr/bin/time -v`` and prints its peak RSS and wall time;
the model directory is fresh, so the run trains, gates and publishes a first model.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streams.devtools.synthetic import generate_events, make_world
from streams.kafka.clients import produce_records
from streams.kafka.topics import create_topics
from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CHUNK = 200_000


def fill(broker: str, topic: str, n_events: int, n_users: int, n_items: int) -> None:
    settings = Settings.load(env={}, overrides={"broker": broker, "profile": "embedded"})
    create_topics(settings, [topic])
    world = make_world(n_users=n_users, n_items=n_items, n_clusters=8)
    started = time.monotonic()
    for n, start in enumerate(range(0, n_events, CHUNK)):
        events = generate_events(world, min(CHUNK, n_events - start), seed=n + 1, start_ts=1_700_000_000.0 + start)
        produce_records(settings, topic, events)
        print(f"{start + len(events)} events in {time.monotonic() - started:.0f}s", flush=True)


def run(broker: str, topic: str, repo: Path, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as models:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")},
            "RERANKER_BROKER": broker,
            "RERANKER_PROFILE": "embedded",
            "RERANKER_EVENTS_TOPIC": topic,
            "RERANKER_ITEMS_TOPIC": f"{topic}-items",
            "RERANKER_MODEL_UPDATES_TOPIC": f"{topic}-model-updates",
        }
        command = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "streams",
            "train-service",
            "--once",
            "--metrics-port",
            "0",
            "--models-dir",
            models,
            *extra,
        ]
        started = time.monotonic()
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
    sys.stdout.write(done.stdout[-3000:] + done.stderr[-6000:])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    print(f"exit {done.returncode}  wall {wall:.0f} s  peak RSS {int(rss[1]) / 1024 if rss else float('nan'):.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fill", "run"])
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--repo", type=Path, default=REPO)
    p.add_argument("extra", nargs="*", help="arguments for train-service, after --")
    a = p.parse_args()
    if a.what == "fill":
        fill(a.broker, a.topic, a.events, a.users, a.items)
    else:
        run(a.broker, a.topic, a.repo, a.extra)


if __name__ == "__main__":
    main()
