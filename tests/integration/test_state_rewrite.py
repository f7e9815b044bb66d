"""A kill between the local state write and its changelog send: the state still reaches the
changelog, so a partition moved to a fresh worker serves it (docs/RELIABILITY.md)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from models import load_artifact
from streams.core.offline import score_offline
from streams.devtools.synthetic import events_for_cluster
from streams.worker.tables import FAULT_KILL_AFTER_STATE_WRITE_ENV
from tests.conftest import SCORE_ATOL, isolated_settings, start_worker
from tests.integration.test_end_to_end import ask, produce_and_locate

pytestmark = pytest.mark.integration


def same_ranking(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]] and all(
        abs(i["score"] - j["score"]) <= SCORE_ATOL for i, j in zip(got["items"], want["items"])
    )


def test_a_kill_before_the_changelog_send_does_not_lose_the_state(broker, trained_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    world = trained_world.world
    settings = isolated_settings(broker, store="rocksdb://")
    user = "killed-mid-write"
    # After the model's training window (so it is learned online) and not in the future.
    events = events_for_cluster(world, user, 1, 1, seed=5, start_ts=time.time() - 60)
    request = {"request_id": "r", "user_id": user, "candidates": [{"item_id": i} for i in world.items]}
    bundle = load_artifact(trained_world.model_dir)
    [reference] = score_offline(bundle, settings, [request], events)
    [without] = score_offline(bundle, settings, [request])
    assert not same_ranking(reference, without), "the event must change the ranking, or the test proves nothing"

    # 1. The worker writes the user's state to RocksDB and dies before the changelog send.
    doomed = start_worker(
        settings,
        trained_world.model_dir,
        tmp_path,
        "--store",
        "rocksdb://",
        extra_env={FAULT_KILL_AFTER_STATE_WRITE_ENV: user},
    )
    produce_and_locate(settings, events)
    assert doomed.process.wait(timeout=120) == -9, doomed.log()[-3000:]

    # 2. Restarted on the same data dir, it gets the event again: a duplicate of its RocksDB state.
    started = time.monotonic()
    restarted = start_worker(
        settings, trained_world.model_dir, tmp_path, "--store", "rocksdb://", web_port=doomed.web_port
    )
    try:
        answer = ask(settings, [{**request, "request_id": "after-restart"}], timeout=120)["after-restart"]
        restart_s = time.monotonic() - started
        assert same_ranking(answer, reference), "the restarted worker lost its own RocksDB state"
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]

    # 3. The partition moves to a fresh worker (empty data dir): it has only what the changelog has.
    started = time.monotonic()
    fresh = start_worker(settings, trained_world.model_dir, tmp_path, "--store", "memory://")
    try:
        moved = ask(settings, [{**request, "request_id": "after-move"}], timeout=120)["after-move"]
        move_s = time.monotonic() - started
    finally:
        fresh.stop()
    print(f"state rewrite: restart to answer {restart_s:.1f}s, fresh worker to answer {move_s:.1f}s")
    assert same_ranking(moved, reference), "the changelog kept the state from before the kill"
