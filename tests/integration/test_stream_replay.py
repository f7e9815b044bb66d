"""replay --stream: in-order events and requests against a live worker, equal to offline handling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models import load_artifact
from streams.core.jsonl import read_jsonl, write_jsonl
from streams.core.offline import score_stream_offline
from streams.devtools.synthetic import cluster_share_at_k, events_for_cluster, generate_requests
from tests.conftest import isolated_settings, run_cli, start_worker

pytestmark = pytest.mark.integration


def test_stream_replay_learns_online_and_matches_offline(broker, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    settings = isolated_settings(broker)
    lines: list[dict] = []
    newcomers = {f"stream-user-{n}": n % world.n_clusters for n in range(6)}
    for n, (user, cluster) in enumerate(newcomers.items()):
        world.user_cluster[user] = cluster
        clicks = events_for_cluster(world, user, cluster, 5, seed=100 + n, start_ts=1.75e9 + 1000 * n)
        for step, click in enumerate(clicks):
            [request] = generate_requests(
                world, 1, n_candidates=30, seed=n * 10 + step, users=[user], k=10, prefix=f"s{n}-{step}"
            )
            lines += [{"kind": "request", **request}, {"kind": "event", **click}]
    stream = write_jsonl(tmp_path / "stream.jsonl", lines)
    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    try:
        done = run_cli(
            settings, "replay", "--stream", str(stream), "--out", str(tmp_path / "live.jsonl"), "--timeout", "120"
        )
    finally:
        worker.stop()
    assert done.returncode == 0, done.stdout + done.stderr + worker.log()[-2000:]
    live = list(read_jsonl(tmp_path / "live.jsonl"))
    offline = score_stream_offline(load_artifact(trained_world.model_dir), dataclasses.replace(settings), lines)
    assert [r["request_id"] for r in live] == [r["request_id"] for r in offline]
    # Kafka does not order two topics: a request produced within a few milliseconds of the
    # event before it is sometimes delivered first and answered without that event (README,
    # "Ordering"). Most requests must still match strict in-order handling exactly.
    same = sum([i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]] for a, b in zip(live, offline))
    assert same >= 0.8 * len(live), f"{same} of {len(live)} identical"
    # The first request of each newcomer is a cold start; the last comes after four clicks.
    step = lambda r: int(r["request_id"].split("-")[1])
    first = [r for r in live if step(r) == 0]
    last = [r for r in live if step(r) == 4]
    share = lambda rs: (
        sum(cluster_share_at_k(world, r["user_id"], [i["item_id"] for i in r["items"]], 10) for r in rs) / len(rs)
    )
    assert share(last) > share(first) + 0.2, (share(first), share(last))
