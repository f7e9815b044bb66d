#!/usr/bin/env python3
"""Is online learning worth it? MovieLens-100K temporal protocol through the live Kafka path.

make_split.py --protocol temporal: train on the oldest 80% of interactions, then stream the rest
in time order, each interaction preceded by a re-rank request for it (users first seen after the
cut are cold starts). For each mode (online updates on, then off), on a fresh embedded broker:
produce train.jsonl -> train --topic (once; both modes serve the same model) -> worker ->
replay --stream -> score.py.

Needs ../shared: exits 77 with a reason when absent.
Usage: python bench/temporal_live.py [--shared ../shared] [--work DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ml100k_live import parse_movielens_args, run, train_from_topic  # noqa: E402
from streams.core.jsonl import read_jsonl, write_jsonl  # noqa: E402
from streams.devtools.broker import embedded_env, start_embedded_broker  # noqa: E402
from streams.devtools.processes import launch_worker, stop_process  # noqa: E402
from streams.ports import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="replay only the first N stream lines")
    a, shared, work = parse_movielens_args(ap, "temporal-")
    py = sys.executable
    timings: dict[str, float] = {}
    split = work / "split"
    run(
        [
            py,
            str(shared / "eval" / "make_split.py"),
            "--data",
            str(shared / "data" / "ml-100k"),
            "--out",
            str(split),
            "--protocol",
            "temporal",
        ],
        dict(os.environ),
        timings,
        "make_split",
    )
    stream = split / "stream.jsonl"
    if a.limit:
        stream = work / "stream-limited.jsonl"
        stream.write_text("".join(open(split / "stream.jsonl").readlines()[: a.limit]))
    truth = split / "truth.jsonl"
    if a.limit:
        asked = {r["request_id"] for r in read_jsonl(stream) if r["kind"] == "request"}
        truth = write_jsonl(
            work / "truth-limited.jsonl", (r for r in read_jsonl(split / "truth.jsonl") if r["request_id"] in asked)
        )
    report: dict[str, object] = {"kind": a.kind, "stream_lines": sum(1 for _ in open(stream))}
    cli = [py, "-m", "streams"]
    for mode in ("online", "frozen"):
        broker = start_embedded_broker(port=free_port(), log_file=work / f"broker-{mode}.log")
        worker = None
        try:
            env = embedded_env(broker.bootstrap)
            run(
                cli + ["produce", "--topic", "user-events", "--file", str(split / "train.jsonl")],
                env,
                timings,
                f"produce_{mode}",
            )
            if not (work / "model" / "manifest.json").exists():
                # Both modes serve this model: the fresh broker holds the same log at the same offsets.
                train_from_topic(cli, work / "model", a.kind, env, timings)
            extra = ["--no-online-updates"] if mode == "frozen" else []
            worker = launch_worker(
                work / "model",
                web_port=free_port(),
                data_dir=work / f"worker-{mode}",
                log_path=work / f"worker-{mode}.log",
                extra_args=["--log-level", "WARNING", *extra],
                env=env,
                cwd=REPO,
            )
            out = run(
                cli + ["replay", "--stream", str(stream), "--out", str(work / f"{mode}.jsonl"), "--timeout", "60"],
                env,
                timings,
                f"replay_{mode}",
            )
            print(mode, out.strip().splitlines()[-1], flush=True)
        finally:
            if worker is not None:
                stop_process(worker, 30)
            broker.stop()
        report[mode] = json.loads(
            subprocess.check_output(
                [
                    py,
                    str(shared / "eval" / "score.py"),
                    "--truth",
                    str(truth),
                    "--results",
                    str(work / f"{mode}.jsonl"),
                    "--json",
                ]
            )
        )
    online, frozen = report["online"]["ndcg@10"], report["frozen"]["ndcg@10"]  # type: ignore[index]
    report["relative_ndcg_gain"] = round(online / frozen - 1.0, 4) if frozen else None
    report["seconds"] = timings
    report["work"] = str(work)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
