"""Cost of the stages after scoring, for one request of 100 candidates: diversity (MMR, DPP),
business rules and explain.

    python bench/post_stages.py [--model DIR --requests REQUESTS.jsonl --items ITEMS.jsonl] [--calls 2000]

Without --model it trains a small synthetic model first (a few seconds). Each figure is the median
wall and CPU time of one call, one torch thread (the worker's setting), after 100 warm-up calls:

* the diversity stage alone: the similarity matrix and the greedy picks (`rules.arrange` with
  only diversity), for the first 10 picks (k = 10) and for the whole list (k absent);
* `rerank_batch` of one request: plain, with each stage, and with business rules;
* explain: `explain.explain_request` for the 10 returned items (score_parts and the batched
  leave-one-out over the history), on top of scoring.

One JSON line per figure goes to stdout, then a table; every line carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# As the worker does (streams/cli.py, torch_threads = 1): one BLAS thread, set before numpy loads.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ModelBundle, load_artifact  # noqa: E402
from streams.core.diversity import similarity_of  # noqa: E402
from streams.core.explain import explain_request  # noqa: E402
from streams.core.jsonl import read_jsonl  # noqa: E402
from streams.core.records import DiversitySpec, RankingRules  # noqa: E402
from streams.core.rules import Arrangement, arrange  # noqa: E402
from streams.core.scoring import ScoringInput, rerank_batch  # noqa: E402
from streams.core.state import history_rows, initial_state  # noqa: E402


def timed(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    for _ in range(100):
        fn()
    wall, cpu = [], []
    for _ in range(calls):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {
        "wall_median_ms": round(1000 * statistics.median(wall), 4),
        "cpu_mean_ms": round(1000 * statistics.fmean(cpu), 4),
    }


def synthetic(workdir: Path) -> tuple[ModelBundle, list[str], dict[str, dict[str, Any]], str]:
    from streams.devtools.synthetic import generate_events, make_world
    from trainer.train import train_to_artifact

    world = make_world(n_users=300, n_items=400, n_clusters=8, seed=1)
    model = train_to_artifact(
        generate_events(world, 20000, seed=2), workdir / "model", max_epochs=3, log=lambda _: None
    )
    bundle = load_artifact(model)
    items = {i: {"item_id": i, "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()}
    rng = np.random.default_rng(3)
    candidates = [world.items[int(i)] for i in rng.choice(len(world.items), size=100, replace=False)]
    user = max(bundle.user_index, key=lambda u: int((bundle.user_history[bundle.user_index[u]] > 0).sum()))
    return bundle, candidates, items, user


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model artifact (default: a small synthetic one)")
    ap.add_argument("--requests", help="requests JSON lines: the first with 100 candidates is used")
    ap.add_argument("--items", help="item records JSON lines (genres)")
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.model:
        bundle = load_artifact(a.model)
        request = next(r for r in read_jsonl(a.requests) if len(r["candidates"]) >= 100)
        candidates = [str(c["item_id"]) for c in request["candidates"][:100]]
        user = str(request["user_id"])
        items = {str(r["item_id"]): r for r in read_jsonl(a.items)} if a.items else {}
    else:
        bundle, candidates, items, user = synthetic(Path(tempfile.mkdtemp()))
    state = initial_state(bundle, user)
    history = history_rows(bundle, state.history)
    upstream = np.linspace(1.0, 0.0, len(candidates))
    n_history = int((history > 0).sum())

    def scoring_input(k: int | None, arrangement: Arrangement | None = None) -> ScoringInput:
        arranged = None if arrangement is None else arrangement
        return ScoringInput(state.vector, history, candidates, upstream, k, arranged)

    def diversity(method: str, k: int | None, similarity: str = "features") -> Arrangement:
        return Arrangement(
            k=k,
            diversity=DiversitySpec(method, 0.2),
            similarity=similarity_of(similarity, bundle, items, ["genres"], candidates),
        )

    order = np.arange(len(candidates))
    scores = np.linspace(2.0, -2.0, len(candidates))
    rules = RankingRules(
        exclude=frozenset(candidates[90:95]),
        pin={candidates[50]: 1, candidates[60]: 4},
        boost={candidates[70]: 3.0, candidates[80]: 0.5},
        max_per={"genres": 2},
    )
    ranked_10 = rerank_batch(bundle, [scoring_input(10)])[0]
    position = {c: i for i, c in enumerate(candidates)}
    returned = [position[c] for c, _ in ranked_10]
    cases: dict[str, Callable[[], Any]] = {
        "stage: mmr, k=10": lambda: arrange(order, scores, candidates, diversity("mmr", 10)),
        "stage: mmr, all 100": lambda: arrange(order, scores, candidates, diversity("mmr", None)),
        "stage: dpp, k=10": lambda: arrange(order, scores, candidates, diversity("dpp", 10)),
        "stage: dpp, all 100": lambda: arrange(order, scores, candidates, diversity("dpp", None)),
        "stage: mmr, embedding, k=10": lambda: arrange(order, scores, candidates, diversity("mmr", 10, "embedding")),
        "stage: rules, k=10": lambda: arrange(order, scores, candidates, Arrangement(k=10, rules=rules, items=items)),
        "rerank_batch, k=10": lambda: rerank_batch(bundle, [scoring_input(10)]),
        "rerank_batch + mmr, k=10": lambda: rerank_batch(bundle, [scoring_input(10, diversity("mmr", 10))]),
        "rerank_batch + dpp, k=10": lambda: rerank_batch(bundle, [scoring_input(10, diversity("dpp", 10))]),
        "rerank_batch + rules + mmr, k=10": lambda: rerank_batch(
            bundle,
            [
                scoring_input(
                    10,
                    Arrangement(
                        k=10,
                        rules=rules,
                        diversity=DiversitySpec("mmr", 0.2),
                        similarity=similarity_of("features", bundle, items, ["genres"], candidates),
                        items=items,
                    ),
                )
            ],
        ),
        "explain, 10 returned": lambda: explain_request(bundle, scoring_input(10), returned, [s for _, s in ranked_10]),
    }
    rows = []
    for name, fn in cases.items():
        load = os.getloadavg()[0]
        figure = {"case": name, "candidates": len(candidates), "history": n_history, **timed(fn, a.calls)}
        figure["load1"] = round(load, 2)
        rows.append(figure)
        print(orjson.dumps(figure).decode(), flush=True)
    print(f"\n{'case':<36}{'wall median ms':>16}{'CPU mean ms':>14}{'load':>7}")
    for r in rows:
        print(f"{r['case']:<36}{r['wall_median_ms']:>16.4f}{r['cpu_mean_ms']:>14.4f}{r['load1']:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
