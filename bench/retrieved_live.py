#!/usr/bin/env python3
"""Re-ranking retrieved candidates on MovieLens-100K, through the live Kafka path.

The retrieved split (``make_split.py --protocol retrieved``): each request carries the top 100
unseen items of an item-kNN retriever, in its order and with its score, and logged.jsonl is a
serving log of earlier requests to learn from. Steps, each a real `reranker` command against a
fresh embedded broker:
  make_split.py --protocol retrieved -> produce train.jsonl to user-events and logged.jsonl to
  rerank-requests -> train --topic user-events (reads rerank-requests too) per kind -> per kind:
  worker, replay requests.jsonl, score.py --items; then `reranker score` offline on the same
  model and events, and the share of requests whose order is identical.

Needs ../shared (data and the yardstick scripts): exits 77 with a reason when absent.
Usage: python bench/retrieved_live.py [--shared ../shared] [--work DIR] [--kinds dnn,gan]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ml100k_live import parse_movielens_args, run  # noqa: E402
from streams.core.jsonl import read_jsonl  # noqa: E402
from streams.devtools.broker import embedded_env, start_embedded_broker  # noqa: E402
from streams.devtools.processes import launch_worker, stop_process  # noqa: E402
from streams.ports import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="dnn,gan", help="model kinds, comma-separated, each served in turn")
    a, shared, work = parse_movielens_args(ap, "retrieved-")
    kinds = [k for k in a.kinds.split(",") if k] or [a.kind]
    py = sys.executable
    timings: dict[str, float] = {}
    split = work / "split"
    run(
        [
            py,
            str(shared / "eval" / "make_split.py"),
            "--data",
            str(shared / "data" / "ml-100k"),
            "--protocol",
            "retrieved",
            "--out",
            str(split),
        ],
        dict(os.environ),
        timings,
        "make_split",
    )
    broker = start_embedded_broker(port=free_port(), log_file=work / "broker.log")
    try:
        env = embedded_env(broker.bootstrap)
        cli = [py, "-m", "streams"]
        run(cli + ["produce", "--topic", "user-events", "--file", str(split / "train.jsonl")], env, timings, "produce")
        run(
            cli + ["produce", "--topic", "rerank-requests", "--file", str(split / "logged.jsonl")],
            env,
            timings,
            "produce_logged",
        )
        for kind in kinds:
            out = run(
                [*cli, "train", "--topic", "user-events", "--out", str(work / f"model-{kind}"), "--kind", kind],
                env,
                timings,
                f"train_{kind}",
            )
            (work / f"train-{kind}.log").write_text(out)
            print(out.strip().splitlines()[-1], flush=True)
        for kind in kinds:
            started = time.monotonic()
            worker = launch_worker(
                work / f"model-{kind}",
                web_port=free_port(),
                data_dir=work / f"worker-{kind}",
                log_path=work / f"worker-{kind}.log",
                env=env,
                cwd=REPO,
            )
            try:
                print(
                    run(
                        cli
                        + [
                            "replay",
                            "--requests",
                            str(split / "requests.jsonl"),
                            "--out",
                            str(work / f"live-{kind}.jsonl"),
                            "--timeout",
                            "600",
                        ],
                        env,
                        timings,
                        f"replay_{kind}",
                    ).strip(),
                    flush=True,
                )
            finally:
                stop_process(worker, 30)
            timings[f"worker_start_and_replay_{kind}"] = round(time.monotonic() - started, 1)
            run(
                cli
                + [
                    "score",
                    "--model",
                    str(work / f"model-{kind}"),
                    "--requests",
                    str(split / "requests.jsonl"),
                    "--events",
                    str(split / "train.jsonl"),
                    "--out",
                    str(work / f"offline-{kind}.jsonl"),
                ],
                env,
                timings,
                f"offline_score_{kind}",
            )
    finally:
        broker.stop()

    score = [
        py,
        str(shared / "eval" / "score.py"),
        "--truth",
        str(split / "truth.jsonl"),
        "--items",
        str(split / "items.jsonl"),
        "--json",
    ]

    def orders(path: Path) -> dict[str, list[str]]:
        return {r["request_id"]: [i["item_id"] for i in r["items"]] for r in read_jsonl(path)}

    upstream_path = work / "upstream.jsonl"
    upstream_path.write_text(
        "".join(
            json.dumps({"request_id": r["request_id"], "items": [c["item_id"] for c in r["candidates"][:10]]}) + "\n"
            for r in read_jsonl(split / "requests.jsonl")
        )
    )
    report: dict[str, object] = {
        "upstream": json.loads(subprocess.check_output(score + ["--results", str(upstream_path)])),
    }
    for kind in kinds:
        live = json.loads(subprocess.check_output(score + ["--results", str(work / f"live-{kind}.jsonl")]))
        offline = json.loads(subprocess.check_output(score + ["--results", str(work / f"offline-{kind}.jsonl")]))
        lo, oo = orders(work / f"live-{kind}.jsonl"), orders(work / f"offline-{kind}.jsonl")
        same = sum(lo.get(k) == v for k, v in oo.items())
        manifest = json.loads((work / f"model-{kind}" / "manifest.json").read_text())
        report[kind] = {
            "live": live,
            "offline": offline,
            "parity": {"identical": same, "requests": len(oo), "share": round(same / max(1, len(oo)), 4)},
            "training_metrics": manifest.get("metrics"),
        }
    report["seconds"] = timings
    report["work"] = str(work)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
