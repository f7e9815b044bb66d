"""Offline scoring of make_split-style requests with an artifact's frozen user state."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from models.artifact import ModelBundle, load_artifact


def score_requests(bundle: ModelBundle, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank each request's candidates, best first.

    Known users use their trained vector and training-time history; unknown users get a zero
    vector and an empty history; unknown items map to row 0 (the mean item).

    Args:
        bundle: Loaded artifact.
        requests: {"request_id", "user_id", "candidates": [{"item_id"}...] or ids, "k"?}.

    Returns:
        One {"request_id", "items": [{"item_id", "score", "rank"}...]} per request, all
        candidates ranked (score.py reads the top k itself).
    """
    uv = bundle.model.user_vectors()
    out = []
    with torch.no_grad():
        for req in requests:
            cands = [str(c["item_id"] if isinstance(c, dict) else c) for c in req["candidates"]]
            row = bundle.user_index.get(str(req["user_id"]), 0)
            items = torch.tensor([[bundle.item_index.get(c, 0) for c in cands]], dtype=torch.int64)
            hist = torch.from_numpy(bundle.user_history[row : row + 1])
            s = bundle.model(uv[row : row + 1], hist, items)[0].numpy()
            # Stable sort: equal scores keep candidate order.
            order = np.argsort(-s, kind="stable")
            out.append(
                {
                    "request_id": req["request_id"],
                    "items": [
                        {"item_id": cands[j], "score": float(s[j]), "rank": r + 1} for r, j in enumerate(order)
                    ],
                }
            )
    return out


def write_results(bundle: ModelBundle, requests_path: str | Path, results_path: str | Path) -> int:
    """Score every request in a JSON-lines file and write results JSON lines; returns the count."""
    with open(requests_path, "rb") as f:
        requests = [orjson.loads(line) for line in f if line.strip()]
    results = score_requests(bundle, requests)
    with open(results_path, "wb") as f:
        for r in results:
            f.write(orjson.dumps(r) + b"\n")
    return len(results)


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m trainer.evaluate --artifact DIR --requests R.jsonl --out results.jsonl"""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    n = write_results(load_artifact(a.artifact), a.requests, a.out)
    print(f"{n} requests scored -> {a.out}")


if __name__ == "__main__":
    main()
