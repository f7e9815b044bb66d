"""Peak memory and wall time of one trainer run on a large synthetic event log.

    python -m bench.trainer_scale fill --broker HOST:PORT --topic T --events 5000000
    python -m bench.trainer_scale run --broker HOST:PORT --topic T [--repo DIR] [train-service args]
    python -m bench.trainer_scale file --file EVENTS.jsonl [--repo DIR] [--max-epochs N]

``fill`` produces planted synthetic events (streams/devtools/synthetic.py) in chunks, so the
producer itself stays small. ``run`` times ``reranker train-service --once`` from the checkout
``--repo`` (default: this one) under ``/usr/bin/time -v`` and prints its peak RSS and wall time;
the model directory is fresh, so the run trains, gates and publishes a first model.

``file`` times the same run (`trainer.service.run_once`) in process with the topic read replaced
by a JSONL file served as a 4-partition log (partition = crc32(user_id) % 4): the embedded broker
serves fetches from deep in a topic of millions of records too slowly for a reader (over 10 s
per fetch), so at that scale only the trainer's own cost can be measured on it. Checkouts that
read the whole log (`read_topic`) get the whole file as raw records, as a broker would give them;
those that stream (`scan_topic`) get only the window, parsed as it is read.
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


def _serve_file(path: str, repo: Path) -> None:
    """Replace the event log's reader of the checkout on sys.path by one of ``path``."""
    import zlib

    import orjson

    import trainer.event_log as event_log
    import trainer.service as service

    def records():  # type: ignore[no-untyped-def]
        offsets = [0, 0, 0, 0]
        with open(path, "rb") as fh:
            for line in fh:
                part = zlib.crc32(orjson.loads(line)["user_id"].encode()) % 4
                yield part, offsets[part], line.rstrip(b"\n")
                offsets[part] += 1

    def ends_of() -> dict[int, int]:
        counts = dict.fromkeys(range(4), 0)
        for part, _, _ in records():
            counts[part] += 1
        return counts

    if hasattr(event_log, "scan_topic"):
        from streams.kafka.clients import tail_shares

        def scan_topic(settings, topic, visit, *, tail=0, **_):  # type: ignore[no-untyped-def]
            ends = ends_of()
            first = {p: ends[p] - share for p, share in tail_shares(dict.fromkeys(ends, 0), ends, tail).items()}
            for part, offset, value in records():
                if offset >= first.get(part, 0):
                    visit(part, offset, value)
            return {str(p): end for p, end in ends.items()}

        event_log.scan_topic = scan_topic  # type: ignore[attr-defined]
    else:

        def read_topic(settings, topic, **_):  # type: ignore[no-untyped-def]
            out = list(records())
            return out, {str(p): end for p, end in ends_of().items()}

        event_log.read_topic = read_topic  # type: ignore[attr-defined]
    service.items_from_topic = lambda settings: []  # type: ignore[assignment]


def in_process(path: str, repo: Path, max_epochs: int) -> None:
    sys.path.insert(0, str(repo))
    _serve_file(path, repo)
    from trainer.service import run_once

    with tempfile.TemporaryDirectory() as models:
        settings = Settings.load(env={}, overrides={"models_dir": models})
        started = time.monotonic()
        result = run_once(
            settings, max_epochs=max_epochs, announce=False, progress=lambda line: print(line, flush=True)
        )
        print(f"{result.decision} in {time.monotonic() - started:.0f}s: {result.candidate}", flush=True)


def run_file(path: str, repo: Path, max_epochs: int) -> None:
    script = Path(__file__).resolve()
    command = ["/usr/bin/time", "-v", sys.executable, str(script), "_inprocess", "--file", path, "--repo", str(repo)]
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [*command, "--max-epochs", str(max_epochs)], cwd=repo, env=env, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    sys.stdout.write(done.stdout[-3000:] + done.stderr[-1500:])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    print(f"exit {done.returncode}  wall {wall:.0f} s  peak RSS {int(rss[1]) / 1024 if rss else float('nan'):.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fill", "run", "file", "_inprocess"])
    p.add_argument("--broker")
    p.add_argument("--topic")
    p.add_argument("--file")
    p.add_argument("--max-epochs", type=int, default=1)
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--repo", type=Path, default=REPO)
    # Anything else goes to train-service, e.g. --max-epochs 1.
    a, extra = p.parse_known_args()
    if a.what == "file":
        run_file(a.file, a.repo, a.max_epochs)
    elif a.what == "_inprocess":
        in_process(a.file, a.repo, a.max_epochs)
    elif a.what == "fill":
        fill(a.broker, a.topic, a.events, a.users, a.items)
    else:
        run(a.broker, a.topic, a.repo, [x for x in extra if x != "--"])


if __name__ == "__main__":
    main()
