"""``reranker score --stream``: the Processor fed one message at a time, in file order."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.core.jsonl import read_jsonl, write_jsonl
from streams.core.processing import DictStateStore, InMessage, Processor
from streams.devtools.synthetic import events_for_cluster, generate_requests
from streams.settings import Settings
from tests.conftest import assert_same_results, run_cli


def synthetic_stream(world) -> tuple[list[dict], list[dict]]:  # type: ignore[no-untyped-def]
    """(history events, stream lines): newcomers asked before and after each click."""
    history = events_for_cluster(world, "history-user", 2, 4, seed=5, start_ts=1.75e9)
    world.user_cluster["history-user"] = 2
    lines: list[dict] = []
    for n in range(4):
        user = f"stream-{n}"
        world.user_cluster[user] = n % world.n_clusters
        clicks = events_for_cluster(world, user, n % world.n_clusters, 3, seed=n, start_ts=1.75e9 + 100 * n)
        for step, click in enumerate(clicks):
            [request] = generate_requests(
                world, 1, n_candidates=20, seed=10 * n + step, users=[user], k=8, prefix=f"s{n}{step}"
            )
            lines += [{"kind": "request", **request}, {"kind": "event", **click}]
    [last] = generate_requests(world, 1, n_candidates=20, seed=99, users=["history-user"], k=8, prefix="h")
    lines.append({"kind": "request", **last})
    return history, lines


def message_by_message(bundle, settings: Settings, history: list[dict], lines: list[dict]) -> list[dict]:  # type: ignore[no-untyped-def]
    processor = Processor(bundle, settings, DictStateStore())
    topics = {"event": settings.events_topic, "request": settings.requests_topic}
    kinds = [("event", e) for e in history] + [
        (line["kind"], {k: v for k, v in line.items() if k != "kind"}) for line in lines
    ]
    results = []
    for kind, record in kinds:
        for out in processor.process([InMessage(topics[kind], None, None, None, None, orjson.dumps(record))]):
            if out.topic == settings.results_topic:
                results.append(orjson.loads(out.value))
    return results


def test_score_stream_equals_the_processor_fed_message_by_message(bundle, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env={})
    history, lines = synthetic_stream(trained_world.world)
    write_jsonl(tmp_path / "train.jsonl", history)
    write_jsonl(tmp_path / "stream.jsonl", lines)
    done = run_cli(
        settings,
        "score",
        "--stream",
        str(tmp_path / "stream.jsonl"),
        "--model",
        str(trained_world.model_dir),
        "--events",
        str(tmp_path / "train.jsonl"),
        "--out",
        str(tmp_path / "offline.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    got = list(read_jsonl(tmp_path / "offline.jsonl"))
    expected = message_by_message(bundle, settings, history, lines)
    assert len(got) == sum(line["kind"] == "request" for line in lines)
    assert_same_results(got, expected, ignore=("ts",))
    # In file order: the same requests answered with every event first (as --requests does)
    # rank differently, so the order of the stream is what these results reflect.
    requests = [line for line in lines if line["kind"] == "request"]
    clicks = [{k: v for k, v in line.items() if k != "kind"} for line in lines if line["kind"] == "event"]
    events_first = message_by_message(bundle, settings, history + clicks, requests)
    differ = sum(
        [i["item_id"] for i in a["items"]] != [i["item_id"] for i in b["items"]] for a, b in zip(got, events_first)
    )
    assert differ >= 4, differ


def test_a_stream_line_of_no_kind_is_a_one_line_error(trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_jsonl(tmp_path / "stream.jsonl", [{"kind": "event", "user_id": "u"}, {"user_id": "u"}])
    done = run_cli(
        Settings.load(env={}),
        "score",
        "--stream",
        str(tmp_path / "stream.jsonl"),
        "--model",
        str(trained_world.model_dir),
        "--out",
        str(tmp_path / "out.jsonl"),
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"reranker score: {tmp_path / 'stream.jsonl'}:2: 'kind' must be 'event' or 'request', got None"
    )
