"""A live worker fed a stream one message at a time gives exactly what ``reranker score --stream`` gives."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from models import load_artifact
from streams.core.jsonl import read_jsonl, write_jsonl
from streams.core.offline import score_offline
from streams.devtools.synthetic import events_for_cluster, generate_requests
from streams.kafka.clients import KafkaSender, message_key
from tests.conftest import assert_same_results, isolated_settings, run_cli, start_worker, wait_until
from tests.integration.test_end_to_end import ask
from tests.integration.test_faulty_models import metric
from tests.integration.test_placement_live import CLICKS_OK, warm

pytestmark = pytest.mark.integration


def test_sequential_live_replay_equals_score_stream(broker, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    world = trained_world.world
    world.user_cluster["parity-history"] = 0
    history = events_for_cluster(world, "parity-history", 0, 4, seed=7, start_ts=1.75e9)
    lines: list[dict] = []
    for n in range(3):
        user = f"parity-{n}"
        world.user_cluster[user] = (n + 1) % world.n_clusters
        clicks = events_for_cluster(world, user, (n + 1) % world.n_clusters, 3, seed=n, start_ts=1.75e9 + 100 * n)
        for step, click in enumerate(clicks):
            [request] = generate_requests(
                world, 1, n_candidates=25, seed=20 * n + step, users=[user], k=10, prefix=f"p{n}{step}"
            )
            lines += [{"kind": "request", **request}, {"kind": "event", **click}]
    [last] = generate_requests(world, 1, n_candidates=25, seed=77, users=["parity-history"], k=10, prefix="ph")
    lines.append({"kind": "request", **last})
    write_jsonl(tmp_path / "train.jsonl", history)
    write_jsonl(tmp_path / "stream.jsonl", lines)

    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    live: list[dict] = []
    try:
        warm(settings, world, worker)
        sender = KafkaSender(settings)
        applied = 0
        # Each event is applied before the next message is sent: no ordering across the two
        # topics is left to chance, so the answers must be exactly the offline ones.
        for kind, record in [("event", e) for e in history] + [
            (line["kind"], {k: v for k, v in line.items() if k != "kind"}) for line in lines
        ]:
            if kind == "event":
                sender.send(settings.events_topic, message_key(record), orjson.dumps(record))
                sender.flush()
                applied += 1
                wait_until(
                    lambda n=applied: metric(worker.metrics_port, CLICKS_OK) >= n, timeout=60, what="event applied"
                )
            else:
                got = ask(settings, [record], timeout=60)
                assert record["request_id"] in got, worker.log()[-3000:]
                live.append(got[record["request_id"]])
        sender.close()
    finally:
        worker.stop()
    done = run_cli(
        settings,
        "score",
        "--stream",
        str(tmp_path / "stream.jsonl"),
        "--events",
        str(tmp_path / "train.jsonl"),
        "--model",
        str(trained_world.model_dir),
        "--out",
        str(tmp_path / "offline.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    assert_same_results(live, list(read_jsonl(tmp_path / "offline.jsonl")), ignore=("ts",))
    # The events shape the answers: without them most rankings would differ, so the equality
    # above says that the worker applied each one before the next request.
    requests = [{k: v for k, v in line.items() if k != "kind"} for line in lines if line["kind"] == "request"]
    cold = score_offline(load_artifact(trained_world.model_dir), settings, requests)
    moved = sum([i["item_id"] for i in a["items"]] != [i["item_id"] for i in b["items"]] for a, b in zip(live, cold))
    assert moved >= 5, moved
