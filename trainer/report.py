"""Compare a model's re-ranked results with simple orderings of the same requests.

Systems, each ranking every request's candidates:
    model       the given results file
    random      a seeded shuffle of the candidates
    popularity  most events in a training events file first (skipped without one)
    upstream    the candidates' "score" when any candidate has one (highest first), else the
                order in the request

Metrics over the requests in the truth file, as in the shared benchmark's scorer:
    HR@K     share of requests whose held-out item is in the top K
    NDCG@K   mean of 1 / log2(rank + 1) when rank <= K, else 0
    MRR      mean of 1 / rank when the item appears anywhere in the ranked list, else 0
A request without a result (or whose ranking lacks the item) counts as a miss.

With a model artifact and logged requests (with ts), the report also compares the model with
the upstream order on held-out served lists, as the trainer's promotion gate does: the newest
``holdout_share`` of the logged requests that the events label within ``label_window_s``
(`trainer.served`). A model that does not beat the upstream order there, or on the truth
requests, is named in the notes.

Writes OUT/report.json and, with matplotlib installed (extra "report"), OUT/report.png.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from streams.core.jsonl import read_jsonl
from streams.settings import DEFAULT_EVENT_WEIGHTS, Settings
from trainer.validation import rank_metrics

SYSTEMS = ("model", "random", "popularity", "upstream")
METRICS = ("hr", "ndcg", "mrr")


def _ids(items: Iterable[Any]) -> list[str]:
    """Item ids of a ranked list or candidate list whose entries are {"item_id", ...} or plain ids."""
    return [str(x["item_id"] if isinstance(x, Mapping) else x) for x in items]


def event_popularity(events: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Event counts per item id, leaving out event types with a negative default weight (dismiss)."""
    counts: Counter[str] = Counter()
    for ev in events:
        if DEFAULT_EVENT_WEIGHTS.get(str(ev.get("event_type")), 1.0) > 0 and ev.get("item_id") is not None:
            counts[str(ev["item_id"])] += 1
    return counts


def baseline_rankings(
    requests: Iterable[Mapping[str, Any]], popularity: Mapping[str, int] | None, seed: int = 0
) -> dict[str, dict[str, list[str]]]:
    """Rank each request's candidates by the baseline orders.

    Returns:
        {"random": ..., "upstream": ..., "popularity": ... (only when `popularity` is given)},
        each request id -> item ids best first. Sorts are stable: ties keep request order.
    """
    rng = random.Random(seed)
    out: dict[str, dict[str, list[str]]] = {"random": {}, "upstream": {}}
    if popularity is not None:
        out["popularity"] = {}
    for req in requests:
        rid = str(req["request_id"])
        cands = list(req.get("candidates") or [])
        ids = _ids(cands)
        shuffled = list(ids)
        rng.shuffle(shuffled)
        out["random"][rid] = shuffled
        scores = [c.get("score") if isinstance(c, Mapping) else None for c in cands]
        if any(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            key = [float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else -math.inf for s in scores]
            out["upstream"][rid] = [ids[j] for j in sorted(range(len(ids)), key=lambda j: -key[j])]
        else:
            out["upstream"][rid] = ids
        if popularity is not None:
            out["popularity"][rid] = sorted(ids, key=lambda i: -popularity.get(i, 0))
    return out


def build_report(
    requests: list[dict[str, Any]],
    truth: list[dict[str, Any]],
    results: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
    *,
    k: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """The report as a JSON-ready dict: {"k", "requests", "systems": {name: metrics}, "notes"}."""
    truth_map = {str(t["request_id"]): str(t["item_id"]) for t in truth}
    ranked = {"model": {str(r["request_id"]): _ids(r.get("items") or []) for r in results}}
    pop = event_popularity(events) if events is not None else None
    ranked.update(baseline_rankings(requests, pop, seed))
    notes = []
    if pop is None:
        notes.append("popularity skipped: no events file given (--events)")
    if not any(isinstance(c, Mapping) and "score" in c for r in requests for c in r.get("candidates") or []):
        notes.append("upstream: no candidate carries a score, so upstream is the request order")
    systems = {name: rank_metrics(ranked[name], truth_map, k) for name in SYSTEMS if name in ranked}
    if systems["model"]["missing"]:
        notes.append(f"model: {systems['model']['missing']} requests have no result and count as misses")
    if truth_map and not systems["model"][f"ndcg@{k}"] > systems["upstream"][f"ndcg@{k}"]:
        notes.append(
            f"model does not beat the upstream order on these requests (ndcg@{k} "
            f"{systems['model'][f'ndcg@{k}']:.4f} vs {systems['upstream'][f'ndcg@{k}']:.4f})"
        )
    return {"k": k, "requests": len(truth_map), "seed": seed, "systems": systems, "notes": notes}


def served_comparison(
    model_path: str | Path,
    logged_path: str | Path,
    events_path: str | Path,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The model against the upstream order on held-out served lists, as the promotion gate
    measures it (`trainer.served.evaluate_lists` on the newest ``holdout_share`` of the logged
    requests that the events label within ``label_window_s``).

    Returns:
        {"ndcg@10", "upstream_ndcg@10", "lists", "beats_upstream"}.
    """
    from models import load_artifact
    from trainer.data import to_columns
    from trainer.served import evaluate_lists, label_requests, logged_from_records, served_lists, split_newest

    settings = settings or Settings()
    bundle = load_artifact(model_path, max_bytes=settings.max_model_bytes)
    events, _, _ = to_columns(read_jsonl(events_path))
    labelled = label_requests(
        logged_from_records(read_jsonl(logged_path)), events, settings.event_weights, settings.label_window_s
    )
    _, held = split_newest(labelled, settings.holdout_share)
    tensors = served_lists(
        held, events, settings.event_weights, bundle.user_index, bundle.item_index, bundle.history_len
    )
    m = evaluate_lists(bundle.model, tensors)
    return {**m, "beats_upstream": bool(m["ndcg@10"] > m["upstream_ndcg@10"])}


def served_note(served: Mapping[str, Any]) -> str:
    """The report's line on a `served_comparison`."""
    if not served["lists"]:
        return "served lists: no logged request was labelled by the events"
    verdict = "beats" if served["beats_upstream"] else "does not beat"
    return (
        f"served lists: model {verdict} the upstream order on {served['lists']} held-out lists "
        f"(ndcg@10 {served['ndcg@10']:.4f} vs {served['upstream_ndcg@10']:.4f})"
        + ("" if served["beats_upstream"] else ": the promotion gate would refuse it")
    )


def write_chart(report: Mapping[str, Any], path: str | Path) -> bool:
    """Grouped bar chart of HR@k, NDCG@k and MRR per system; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    k = report["k"]
    names = list(report["systems"])
    keys = [f"hr@{k}", f"ndcg@{k}", "mrr"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for j, name in enumerate(names):
        values = [report["systems"][name][key] for key in keys]
        bars = ax.bar([x + (j - (len(names) - 1) / 2) * width for x in range(len(keys))], values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(keys)), [f"HR@{k}", f"NDCG@{k}", "MRR"])
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['requests']} requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(
    out_dir: str | Path,
    requests_path: str | Path,
    truth_path: str | Path,
    results_path: str | Path,
    events_path: str | Path | None = None,
    *,
    k: int = 10,
    seed: int = 0,
    model_path: str | Path | None = None,
    logged_path: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Build the report from files and write report.json (and report.png when possible) into `out_dir`.

    With ``model_path``, ``logged_path`` and ``events_path``, it also holds "served_lists", the
    `served_comparison`, and a note on it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(
        list(read_jsonl(requests_path)),
        list(read_jsonl(truth_path)),
        list(read_jsonl(results_path)),
        list(read_jsonl(events_path)) if events_path else None,
        k=k,
        seed=seed,
    )
    if model_path and logged_path and events_path:
        report["served_lists"] = served_comparison(model_path, logged_path, events_path, settings)
        report["notes"].append(served_note(report["served_lists"]))
    report["inputs"] = {
        "requests": str(requests_path),
        "truth": str(truth_path),
        "results": str(results_path),
        "events": str(events_path) if events_path else None,
    }
    if write_chart(report, out / "report.png"):
        report["chart"] = "report.png"
    else:
        report["chart"] = None
        report["notes"].append("no chart: matplotlib is not installed (pip install 'stream-reranker[report]')")
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def format_table(report: Mapping[str, Any]) -> str:
    """One line per system: name, HR@k, NDCG@k, MRR."""
    k = report["k"]
    lines = [f"{'system':<12}{'HR@' + str(k):>9}{'NDCG@' + str(k):>9}{'MRR':>9}"]
    for name, m in report["systems"].items():
        lines.append(f"{name:<12}{m[f'hr@{k}']:>9.4f}{m[f'ndcg@{k}']:>9.4f}{m['mrr']:>9.4f}")
    return "\n".join(lines + list(report["notes"]))


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m trainer.report --requests R --truth T --results S --out DIR [--events E]"""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--events")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    report = write_report(a.out, a.requests, a.truth, a.results, a.events, k=a.k, seed=a.seed)
    print(format_table(report))


if __name__ == "__main__":
    main()
