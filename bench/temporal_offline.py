#!/usr/bin/env python3
"""The temporal protocol without Kafka: stream.jsonl handled strictly in order by the worker's
Processor, for several online-learning settings. Isolates the effect of online updates from
transport timing.

Usage: python bench/temporal_offline.py --split DIR --model DIR [SPEC ...]
SPEC is "frozen" or "STEPS,LR,NEGATIVES" (default: frozen and the settings' defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_artifact
from streams.core.jsonl import read_jsonl, write_jsonl
from streams.core.offline import score_stream_offline
from streams.settings import Settings
from trainer.validation import ranking_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", required=True, help="make_split.py --protocol temporal output")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", help="directory for each spec's results, to score with score.py")
    ap.add_argument("specs", nargs="*")
    a = ap.parse_args()
    base = Settings.load()
    bundle = load_artifact(a.model)
    truth = {r["request_id"]: r["item_id"] for r in read_jsonl(Path(a.split) / "truth.jsonl")}
    lines = list(read_jsonl(Path(a.split) / "stream.jsonl"))
    specs = a.specs or ["frozen", f"{base.online_steps},{base.online_lr},{base.online_negatives}"]
    for spec in specs:
        if spec == "frozen":
            settings = dataclasses.replace(base, online_updates=False)
        else:
            steps, lr, negatives = spec.split(",")
            settings = dataclasses.replace(
                base, online_steps=int(steps), online_lr=float(lr), online_negatives=int(negatives)
            )
        started = time.monotonic()
        results = score_stream_offline(bundle, settings, lines)
        metrics = ranking_metrics(results, truth)
        if a.out:
            write_jsonl(Path(a.out) / f"{spec.replace(',', '_')}.jsonl", results)
        print(
            json.dumps(
                {
                    "spec": spec,
                    **{k: round(v, 4) for k, v in metrics.items()},
                    "seconds": round(time.monotonic() - started, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
