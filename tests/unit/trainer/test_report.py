import json
import math
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import main as cli_main
from trainer.report import baseline_rankings, build_report, event_popularity, write_report
from trainer.validation import rank_metrics

SCORE_PY = Path("/work/shared/eval/score.py")

REQUESTS = [
    {
        "request_id": "r1",
        "user_id": "u1",
        "candidates": [{"item_id": "a", "score": 0.1}, {"item_id": "b", "score": 0.9}, {"item_id": "c"}],
    },
    {"request_id": "r2", "user_id": "u2", "candidates": [{"item_id": "c"}, {"item_id": "d"}, {"item_id": "a"}]},
    {"request_id": "r3", "user_id": "u3", "candidates": ["b", "d", "e"]},
    {"request_id": "r4", "user_id": "u4", "candidates": [{"item_id": "a"}, {"item_id": "e"}]},
]
TRUTH = [
    {"request_id": "r1", "item_id": "c"},
    {"request_id": "r2", "item_id": "a"},
    {"request_id": "r3", "item_id": "b"},
    {"request_id": "r4", "item_id": "e"},
]
RESULTS = [
    {"request_id": "r1", "items": [{"item_id": "b"}, {"item_id": "a"}, {"item_id": "c"}]},  # rank 3
    {"request_id": "r2", "items": ["a", "d"]},  # rank 1, plain ids
    {"request_id": "r3", "items": [{"item_id": "d"}, {"item_id": "e"}]},  # truth missing from the list
    # r4: no result at all
]
EVENTS = [{"user_id": "x", "item_id": i, "event_type": "click", "ts": n} for n, i in enumerate("eeeaab")] + [
    {"user_id": "x", "item_id": "d", "event_type": "dismiss", "ts": 9},
    {"user_id": "x", "item_id": "d", "event_type": "dismiss", "ts": 10},
]


def test_metric_definitions_on_a_hand_computed_fixture() -> None:
    truth = {t["request_id"]: t["item_id"] for t in TRUTH}
    ranked = {"r1": ["b", "a", "c"], "r2": ["a", "d"], "r3": ["d", "e"]}
    m = rank_metrics(ranked, truth, k=2)
    assert m["requests"] == 4 and m["missing"] == 1
    assert m["hr@2"] == pytest.approx(1 / 4)  # only r2 in the top 2
    assert m["ndcg@2"] == pytest.approx(1 / 4)
    assert m["mrr"] == pytest.approx((1 / 3 + 1) / 4)  # MRR counts r1's rank 3 beyond k
    m10 = rank_metrics(ranked, truth, k=10)
    assert m10["hr@10"] == pytest.approx(2 / 4) and m10["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)


@pytest.mark.skipif(not SCORE_PY.is_file(), reason="shared benchmark scorer not present")
@pytest.mark.parametrize("k", [1, 2, 10])
def test_numbers_equal_the_shared_scorer(tmp_path: Path, k: int) -> None:
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TRUTH))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RESULTS))
    cmd = [
        sys.executable,
        str(SCORE_PY),
        "--truth",
        str(tmp_path / "t.jsonl"),
        "--results",
        str(tmp_path / "r.jsonl"),
        "-k",
        str(k),
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout)
    ours = build_report(REQUESTS, TRUTH, RESULTS, k=k)["systems"]["model"]
    assert ours["missing"] == theirs["missing"] and ours["requests"] == theirs["requests"]
    for key in (f"hr@{k}", f"ndcg@{k}", "mrr"):
        assert round(ours[key], 4) == theirs[key], key


def test_baselines_order_candidates() -> None:
    pop = event_popularity(EVENTS)
    assert pop == {"e": 3, "a": 2, "b": 1}  # dismisses do not count
    r = baseline_rankings(REQUESTS, pop, seed=0)
    assert r["upstream"]["r1"] == ["b", "a", "c"]  # by score, unscored last
    assert r["upstream"]["r2"] == ["c", "d", "a"]  # no scores: request order
    assert r["popularity"]["r2"] == ["a", "c", "d"]  # ties keep request order
    assert r["popularity"]["r3"] == ["e", "b", "d"]
    assert sorted(r["random"]["r2"]) == ["a", "c", "d"]
    assert baseline_rankings(REQUESTS, pop, seed=0)["random"] == r["random"]
    assert "popularity" not in baseline_rankings(REQUESTS, None)


def test_report_files_and_notes(tmp_path: Path) -> None:
    for name, recs in (("req", REQUESTS), ("truth", TRUTH), ("res", RESULTS), ("ev", EVENTS)):
        (tmp_path / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in recs))
    rep = write_report(tmp_path / "out", tmp_path / "req.jsonl", tmp_path / "truth.jsonl", tmp_path / "res.jsonl")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["systems"] == rep["systems"] and set(saved["systems"]) == {"model", "random", "upstream"}
    assert any("popularity skipped" in n for n in saved["notes"])
    assert any("1 requests have no result" in n for n in saved["notes"])
    # Popularity ranks e first in r4 and a first in r2: 2 hits at rank 1, r1 (c unseen) and r3 (b 2nd).
    rep = write_report(
        tmp_path / "out2",
        tmp_path / "req.jsonl",
        tmp_path / "truth.jsonl",
        tmp_path / "res.jsonl",
        tmp_path / "ev.jsonl",
        k=1,
    )
    assert rep["systems"]["popularity"]["hr@1"] == pytest.approx(2 / 4)
    pytest.importorskip("matplotlib")
    png = tmp_path / "out2" / "report.png"
    assert rep["chart"] == "report.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, recs in (("req", REQUESTS), ("truth", TRUTH), ("res", RESULTS), ("ev", EVENTS)):
        (tmp_path / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in recs))
    with pytest.raises(SystemExit) as done:
        cli_main(
            [
                "evaluate",
                "--requests",
                str(tmp_path / "req.jsonl"),
                "--truth",
                str(tmp_path / "truth.jsonl"),
                "--results",
                str(tmp_path / "res.jsonl"),
                "--events",
                str(tmp_path / "ev.jsonl"),
                "--out",
                str(tmp_path / "rep"),
            ]
        )
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "popularity" in printed and "report written to" in printed
    assert set(json.loads((tmp_path / "rep" / "report.json").read_text())["systems"]) == {
        "model",
        "random",
        "popularity",
        "upstream",
    }
