#!/usr/bin/env python3
"""Leave-one-out quality of the live Kafka path on MovieLens-100K, with replay/offline parity.

Steps, each a real `reranker` command against a fresh embedded broker:
  make_split.py -> produce train.jsonl to user-events -> train --topic -> worker ->
  replay requests.jsonl -> score.py; then `reranker score` offline on the same model and
  events, and the share of requests whose order is identical.

Needs ../shared (data and the yardstick scripts): exits 77 with a reason when absent.
Usage: python bench/ml100k_live.py [--shared ../shared] [--work DIR] [--kind dnn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.core.jsonl import read_jsonl  # noqa: E402
from streams.devtools.broker import embedded_env, start_embedded_broker  # noqa: E402
from streams.devtools.processes import launch_worker, stop_process  # noqa: E402
from streams.ports import free_port  # noqa: E402


def run(cmd: list[str], env: dict[str, str], timings: dict[str, float], name: str) -> str:
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    timings[name] = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def parse_movielens_args(ap: argparse.ArgumentParser, work_prefix: str) -> tuple[argparse.Namespace, Path, Path]:
    """The options of the MovieLens scripts: ``ap``'s own plus --shared, --work and --kind; returns
    the arguments, the shared directory and the work directory. Exits 77 (the skip status callers
    look for) when the data or the yardstick scripts are absent."""
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--kind", default="dnn")
    a = ap.parse_args()
    shared = Path(a.shared)
    if not (shared / "data" / "ml-100k" / "u.data").exists() or not (shared / "eval" / "score.py").exists():
        print(f"skipped: MovieLens-100K or the eval scripts are not under {shared}")
        sys.exit(77)
    work = Path(a.work or tempfile.mkdtemp(prefix=work_prefix))
    work.mkdir(parents=True, exist_ok=True)
    return a, shared, work


def train_from_topic(cli: list[str], out: Path, kind: str, env: dict[str, str], timings: dict[str, float]) -> None:
    """`reranker train --topic user-events` into ``out``; prints its last line (where it wrote)."""
    trained = run([*cli, "train", "--topic", "user-events", "--out", str(out), "--kind", kind], env, timings, "train")
    print(trained.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a, shared, work = parse_movielens_args(ap, "ml100k-")
    py = sys.executable
    timings: dict[str, float] = {}
    run(
        [
            py,
            str(shared / "eval" / "make_split.py"),
            "--data",
            str(shared / "data" / "ml-100k"),
            "--out",
            str(work / "split"),
        ],
        dict(os.environ),
        timings,
        "make_split",
    )
    broker = start_embedded_broker(port=free_port(), log_file=work / "broker.log")
    worker = None
    try:
        env = embedded_env(broker.bootstrap)
        cli = [py, "-m", "streams"]
        run(
            cli + ["produce", "--topic", "user-events", "--file", str(work / "split" / "train.jsonl")],
            env,
            timings,
            "produce",
        )
        train_from_topic(cli, work / "model", a.kind, env, timings)
        started = time.monotonic()
        worker = launch_worker(
            work / "model",
            web_port=free_port(),
            data_dir=work / "worker",
            log_path=work / "worker.log",
            env=env,
            cwd=REPO,
        )
        print(
            run(
                cli
                + [
                    "replay",
                    "--requests",
                    str(work / "split" / "requests.jsonl"),
                    "--out",
                    str(work / "live.jsonl"),
                    "--timeout",
                    "300",
                ],
                env,
                timings,
                "replay",
            ).strip()
        )
        timings["worker_start_and_replay"] = round(time.monotonic() - started, 1)
        run(
            cli
            + [
                "score",
                "--model",
                str(work / "model"),
                "--requests",
                str(work / "split" / "requests.jsonl"),
                "--events",
                str(work / "split" / "train.jsonl"),
                "--out",
                str(work / "offline.jsonl"),
            ],
            env,
            timings,
            "offline_score",
        )
    finally:
        if worker is not None:
            stop_process(worker, 30)
        broker.stop()
    score = [py, str(shared / "eval" / "score.py"), "--truth", str(work / "split" / "truth.jsonl"), "--json"]
    live = json.loads(subprocess.check_output(score + ["--results", str(work / "live.jsonl")]))
    offline = json.loads(subprocess.check_output(score + ["--results", str(work / "offline.jsonl")]))

    def orders(path: Path) -> dict[str, list[str]]:
        return {r["request_id"]: [i["item_id"] for i in r["items"]] for r in read_jsonl(path)}

    lo, oo = orders(work / "live.jsonl"), orders(work / "offline.jsonl")
    same = sum(lo.get(k) == v for k, v in oo.items())
    report = {
        "kind": a.kind,
        "live": live,
        "offline": offline,
        "parity": {"identical": same, "requests": len(oo), "share": round(same / max(1, len(oo)), 4)},
        "seconds": timings,
        "work": str(work),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
