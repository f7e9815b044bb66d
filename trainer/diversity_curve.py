"""The diversity trade-off: NDCG@k and ild@k of a model's results at a range of diversity weights.

Every point scores the requests offline through the worker's own Processor
(`streams.core.offline.score_offline`) with the diversity stage at that weight as the default, so
the figures are those of the live path. ild@k is the intra-list distance of the top k: the mean
pairwise Jaccard distance between the items' sets of genres (two items without genres are at
distance 0), averaged over the answered requests; the shared scorer (`score.py --items`) computes
the same figure, which is the yardstick for published numbers.

The chart is a small hand-written SVG (no plotting dependency): NDCG@k against ild@k, one point
per weight, with the lines where ild@k is 10% above and NDCG@k 3% below the weight-0 point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from models import ModelBundle
from streams.core.offline import score_offline
from streams.settings import Settings
from trainer.validation import rank_metrics

DEFAULT_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0)


def intra_list_distance(
    ranked: Mapping[str, Sequence[str]], genres: Mapping[str, frozenset[str]], k: int = 10
) -> float:
    """Mean over the lists of the mean pairwise Jaccard distance of the top k items' genre sets."""
    total = 0.0
    for ids in ranked.values():
        sets = [genres.get(i, frozenset()) for i in ids[:k]]
        pairs = [(a, b) for p, a in enumerate(sets) for b in sets[p + 1 :]]
        total += sum(1.0 - len(a & b) / len(a | b) if a | b else 0.0 for a, b in pairs) / max(1, len(pairs))
    return total / max(1, len(ranked))


def diversity_curve(
    bundle: ModelBundle,
    settings: Settings,
    requests: list[dict[str, Any]],
    truth: Mapping[str, str],
    items: list[dict[str, Any]],
    *,
    method: str = "mmr",
    weights: Iterable[float] = DEFAULT_WEIGHTS,
    k: int = 10,
) -> list[dict[str, float]]:
    """[{"weight", "hr@k", "ndcg@k", "ild@k"}] for each weight, in the order given."""
    genres = {str(r["item_id"]): frozenset(str(g) for g in r.get("genres") or []) for r in items}
    points = []
    for weight in weights:
        at = dataclasses.replace(settings, diversity_method=method, diversity_weight=float(weight))
        results = score_offline(bundle, at, requests, (), items)
        ranked = {str(r["request_id"]): [str(i["item_id"]) for i in r["items"]] for r in results if not r.get("error")}
        metrics = rank_metrics(ranked, truth, k)
        points.append(
            {
                "weight": float(weight),
                f"hr@{k}": metrics[f"hr@{k}"],
                f"ndcg@{k}": metrics[f"ndcg@{k}"],
                f"ild@{k}": intra_list_distance(ranked, genres, k),
            }
        )
    return points


def write_curve_svg(points: Sequence[Mapping[str, float]], path: str | Path, *, k: int = 10, title: str = "") -> None:
    """NDCG@k (y) against ild@k (x), each point labelled with its weight."""
    width, height, left, right, top, bottom = 640, 420, 70, 20, 40, 50
    xs = [p[f"ild@{k}"] for p in points]
    ys = [p[f"ndcg@{k}"] for p in points]
    base = next((p for p in points if p["weight"] == 0.0), points[0])
    ild_target, ndcg_floor = 1.1 * base[f"ild@{k}"], 0.97 * base[f"ndcg@{k}"]
    x_lo, x_hi = min(xs + [ild_target]), max(xs + [ild_target])
    y_lo, y_hi = min(ys + [ndcg_floor]), max(ys + [ndcg_floor])
    x_pad, y_pad = (x_hi - x_lo) * 0.08 or 0.01, (y_hi - y_lo) * 0.08 or 0.001
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">ild@{k}</text>',
        f'<text x="16" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(top + height - bottom) / 2})">NDCG@{k}</text>',
    ]
    for i in range(6):
        x = x_lo + (x_hi - x_lo) * i / 5
        y = y_lo + (y_hi - y_lo) * i / 5
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 15}" text-anchor="middle">{x:.3f}</text>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4f}</text>')
    out.append(
        f'<line x1="{sx(ild_target):.1f}" y1="{top}" x2="{sx(ild_target):.1f}" y2="{height - bottom}" '
        'stroke="green" stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<text x="{sx(ild_target) + 4:.1f}" y="{top + 12}" fill="green">ild +10%</text>'
        f'<line x1="{left}" y1="{sy(ndcg_floor):.1f}" x2="{width - right}" y2="{sy(ndcg_floor):.1f}" '
        'stroke="red" stroke-dasharray="4 3"/>'
        f'<text x="{width - right - 4}" y="{sy(ndcg_floor) - 4:.1f}" text-anchor="end" fill="red">NDCG -3%</text>'
    )
    path_d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(zip(xs, ys)))
    out.append(f'<path d="{path_d}" fill="none" stroke="steelblue" stroke-width="1.5"/>')
    for p, x, y in zip(points, xs, ys):
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="steelblue"/>')
        out.append(f'<text x="{sx(x) + 6:.1f}" y="{sy(y) - 6:.1f}">w={p["weight"]:g}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def format_curve(points: Sequence[Mapping[str, float]], k: int = 10) -> str:
    """One line per weight: weight, HR@k, NDCG@k, ild@k."""
    lines = [f"{'weight':>8}{'HR@' + str(k):>9}{'NDCG@' + str(k):>9}{'ild@' + str(k):>9}"]
    for p in points:
        lines.append(f"{p['weight']:>8g}{p[f'hr@{k}']:>9.4f}{p[f'ndcg@{k}']:>9.4f}{p[f'ild@{k}']:>9.4f}")
    return "\n".join(lines)
