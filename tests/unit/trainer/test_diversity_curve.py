"""The diversity trade-off curve of `reranker evaluate --diversity-curve`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from streams.cli import main
from streams.devtools.synthetic import generate_requests
from streams.settings import Settings
from trainer.diversity_curve import diversity_curve, intra_list_distance, write_curve_svg


def test_intra_list_distance_is_the_mean_pairwise_jaccard_distance() -> None:
    genres = {"a": frozenset({"x"}), "b": frozenset({"x", "y"}), "c": frozenset({"z"})}
    # pairs: a-b 1 - 1/2, a-c 1, b-c 1; d has no genres and is at distance 0 from e (same as score.py)
    ranked = {"r1": ["a", "b", "c"], "r2": ["d", "e"]}
    assert intra_list_distance(ranked, genres, k=10) == pytest.approx(((0.5 + 1 + 1) / 3 + 0) / 2)
    assert intra_list_distance({"r": ["a", "b", "c"]}, genres, k=2) == pytest.approx(0.5)


def test_the_curve_trades_ndcg_for_diversity_and_is_charted(bundle, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    requests = generate_requests(world, 40, n_candidates=30, seed=8, k=10)
    # The held-out item: the model's own top pick, so weight 0 has NDCG@10 = 1.
    items = [{"item_id": i, "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()]
    points0 = diversity_curve(bundle, Settings.load(env={}), requests, {}, items, weights=[0.0])
    assert points0[0]["ndcg@10"] == 0.0  # no truth: nothing to find
    truth = {}
    from streams.core.offline import score_offline

    for result in score_offline(bundle, Settings.load(env={}), requests):
        truth[result["request_id"]] = result["items"][0]["item_id"]
    points = diversity_curve(bundle, Settings.load(env={}), requests, truth, items, weights=[0.0, 0.5, 1.0])
    assert [p["weight"] for p in points] == [0.0, 0.5, 1.0]
    assert points[0]["ndcg@10"] == pytest.approx(1.0)
    assert points[-1]["ild@10"] > points[0]["ild@10"]
    chart = tmp_path / "curve.svg"
    write_curve_svg(points, chart, title="test")
    svg = ET.parse(chart).getroot()
    assert len(svg.findall("{http://www.w3.org/2000/svg}circle")) == 3


def test_evaluate_writes_the_curve(trained_world, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import orjson

    from streams.core.jsonl import write_jsonl

    world = trained_world.world
    requests = generate_requests(world, 10, n_candidates=20, seed=9, k=10)
    truth = [{"request_id": r["request_id"], "item_id": r["candidates"][0]["item_id"]} for r in requests]
    items = [{"item_id": i, "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()]
    paths = {
        name: write_jsonl(tmp_path / f"{name}.jsonl", rows)
        for name, rows in [("requests", requests), ("truth", truth), ("items", items)]
    }
    results = [{"request_id": r["request_id"], "items": r["candidates"]} for r in requests]
    paths["results"] = write_jsonl(tmp_path / "results.jsonl", results)
    args = ["evaluate", "--requests", str(paths["requests"]), "--truth", str(paths["truth"])]
    args += ["--results", str(paths["results"]), "--out", str(tmp_path / "report")]
    with pytest.raises(SystemExit) as refused:
        main([*args, "--diversity-curve", str(tmp_path / "c.svg")])
    assert refused.value.code == 2 and "needs --model and --items" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(
            [
                *args,
                "--diversity-curve",
                str(tmp_path / "c.svg"),
                "--model",
                str(trained_world.model_dir),
                "--items",
                str(paths["items"]),
                "--diversity-weights",
                "0,0.5",
            ]
        )
    assert done.value.code == 0
    report = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert [p["weight"] for p in report["diversity_curve"]["points"]] == [0.0, 0.5]
    assert (tmp_path / "c.svg").read_text().startswith("<svg")
